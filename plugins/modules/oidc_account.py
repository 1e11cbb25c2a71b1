#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_account
short_description: Create, update or remove an encrypted account from a refresh token you already have
version_added: 0.1.0
description:
  - Manages one oidc-agent account file on the host from a refresh token you already hold, as oidc-agent's
    C(oidc-gen --rt) does, without a token exchange. M(oidc.tokens.oidc_token), the lookup, the on-host refresher,
    C(oidc-add) and C(oidc-token) then hand out access tokens from it.
  - O(state=present) creates the account, or updates the scope, audience, resource, lifetime, client or CA of an
    existing one. An existing account is read and rewritten under its lock with one key derivation, and is not
    written at all when nothing changes.
  - O(state=absent) revokes the account's current refresh token (unless O(revoke=false)) and deletes the file, like
    M(oidc.tokens.oidc_revoke).
  - A new refresh token is checked before it is written (see O(validate)); an update of other fields does not
    contact the provider.
author:
  - oidc.tokens maintainers (@oidc-tokens)
extends_documentation_fragment:
  - oidc.tokens.provider
  - oidc.tokens.connection
  - oidc.tokens.store
  - oidc.tokens.attributes
  - oidc.tokens.attributes.actiongroup_oidc
attributes:
  check_mode:
    support: full
    details:
      - In check mode nothing is written, validated, revoked or deleted; an existing account is decrypted to
        compare it, so the password is needed as usual.
      - As a new O(refresh_token) is not validated (see O(validate)), a token the provider would reject is
        reported as a change, and an account created without O(scope) shows no scope where a normal run stores
        the one introspection reports.
  diff_mode:
    support: full
    details:
      - The diff shows the account's non-secret fields. A replaced refresh token or client secret shows as a new
        RV(account.refresh_token_set_at) and in RV(changed_fields), never as a value.
  platform:
    platforms: posix
options:
  name:
    description:
      - The account's short name (oidc-agent's short name), also its file name in O(config_dir).
    type: str
    required: true
  state:
    description:
      - V(present) creates or updates the account; V(absent) revokes its refresh token and deletes it.
    type: str
    choices: [present, absent]
    default: present
  refresh_token:
    description:
      - The refresh token the account keeps. Needed to create the account.
      - For an existing account, a token that differs from the account's replaces it (a change). The account
        remembers a SHA-256 fingerprint of the token it was last given, so running the task again with the same
        token is no change even after the provider rotated the token in the account.
      - The replaced token is revoked when O(revoke=true) (a failure to revoke it is a warning). Providers such
        as node-oidc-provider end the whole grant when one of its refresh tokens is revoked, so set
        O(revoke=false) when the new token comes from the same grant as the old one.
    type: str
  issuer:
    description:
      - The OpenID provider's issuer URL. Needed to create the account.
      - For an existing account it defaults to the stored issuer; a different issuer needs a new O(refresh_token)
        (a refresh token belongs to its issuer and client).
    type: str
    aliases: [issuer_url]
  client_id:
    description:
      - The confidential client the refresh token was issued to. Needed to create the account.
      - For an existing account it defaults to the stored client; a different client needs a new O(refresh_token).
    type: str
  client_secret:
    description:
      - The client's secret, stored encrypted in the account. Needed to create the account.
      - For an existing account a different secret replaces the stored one (a change), for example after the
        provider's admin rotated it.
    type: str
  ca_path:
    description:
      - A CA bundle file to verify the provider's TLS certificate with. It is also stored in the account
        (oidc-agent's C(cert_path)); a different path updates the account.
    type: path
  scope:
    description:
      - The scopes stored in the account. oidc-agent asks for them when it refreshes; M(oidc.tokens.oidc_token)
        asks for the refresh token's full scope unless its own O(oidc.tokens.oidc_token#module:scope) narrows it.
        The order does not matter when comparing with the account.
      - When creating the account without O(scope), the scope the provider reports for the refresh token
        (introspection, see O(validate)) is stored, else none.
      - The module does not ask the provider whether the refresh token covers these scopes.
    type: list
    elements: str
  audience:
    description:
      - Audiences stored in the account (oidc-agent's C(--aud), which oidc-agent sends when it refreshes);
        V([]) clears them.
    type: list
    elements: str
  resource:
    description:
      - RFC 8707 resources stored in the account; V([]) clears them.
    type: list
    elements: str
  lifetime:
    description:
      - Seconds after which the account hands out no more access tokens (oidc-agent's C(-t)), counted from when
        the account is created, from when the value of O(lifetime) changes, or from when a new O(refresh_token)
        replaces the old one. Running the task again with the same O(lifetime) keeps the end it set before, so
        the task stays idempotent and the end does not move.
      - V(0) removes the limit. When not given, the account keeps whatever limit it has.
      - The refresh token itself lives as long as the provider allows; revoke it at teardown.
    type: int
  revoke:
    description:
      - With O(state=absent), revoke the account's refresh token before deleting the file. With V(false) the file
        is only deleted and the token stays valid at the provider.
      - With O(state=present), revoke the refresh token a new O(refresh_token) replaces.
    type: bool
    default: true
  force:
    description:
      - With O(state=absent), delete the account even when its refresh token cannot be revoked (the provider is
        unreachable or refuses) or the file cannot be decrypted. The task then warns that a token may still be
        valid at the provider.
    type: bool
    default: false
  validate:
    description:
      - Before a new O(refresh_token) is written, fetch the provider's discovery document (which fails on a wrong
        issuer) and, when the provider announces an introspection endpoint, introspect the token as the client
        (which fails on a wrong client secret, a token that is not active, or a token the provider says belongs to
        another client). Nothing is written when the check fails.
      - Set V(false) for providers that do not let the client introspect its refresh tokens; the token is then
        written unchecked and a bad one shows up at the first M(oidc.tokens.oidc_token).
    type: bool
    default: true
notes:
  - The module never returns a secret. The refresh token and the client secret are stored encrypted in the account
    file only.
  - A refresh token is never used (refreshed) by this module, so a provider that rotates refresh tokens does not
    spend the one you gave.
requirements:
  - requests
  - PyNaCl
seealso:
  - module: oidc.tokens.oidc_account_info
  - module: oidc.tokens.oidc_token_exchange
  - module: oidc.tokens.oidc_token
  - module: oidc.tokens.oidc_revoke
'''

EXAMPLES = r'''
- name: An account from a refresh token kept in Ansible Vault (oidc-gen --rt)
  oidc.tokens.oidc_account:
    name: wlcg
    issuer: https://wlcg.cloud.cnaf.infn.it/
    client_id: "{{ vault_wlcg_client_id }}"
    client_secret: "{{ vault_wlcg_client_secret }}"
    refresh_token: "{{ vault_wlcg_refresh_token }}"
    scope: [openid, offline_access, storage.read:/, compute.read]
    lifetime: 604800
    encryption_password: "{{ vault_account_password }}"

- name: Narrow the scope of an existing account; issuer, client and token stay as they are
  oidc.tokens.oidc_account:
    name: wlcg
    scope: [openid, offline_access, storage.read:/]
    encryption_password_file: /run/secrets/wlcg

- name: Teardown, revoke the token and delete the account
  oidc.tokens.oidc_account:
    name: wlcg
    state: absent
    encryption_password_file: /run/secrets/wlcg
'''

RETURN = r'''
account:
  description:
    - The account's non-secret facts after the task (before it, for O(state=absent)). Empty when there is no
      account.
  returned: always
  type: dict
  contains:
    name:
      description: The account name.
      type: str
      sample: wlcg
    path:
      description: The account file.
      type: str
      sample: /home/alice/.config/oidc-agent/wlcg
    issuer:
      description: The issuer URL.
      type: str
      sample: https://iam.example.org/
    client_id:
      description: The client.
      type: str
      sample: job-runner
    scope:
      description: The account's scopes.
      type: list
      elements: str
      sample: [openid, offline_access]
    audience:
      description: The account's audiences.
      type: list
      elements: str
      sample: []
    resource:
      description: The account's resources.
      type: list
      elements: str
      sample: []
    lifetime:
      description: The O(lifetime) in seconds the end was computed from, or null.
      type: int
      sample: 604800
    lifetime_end:
      description: Epoch seconds after which the account hands out no token, or null.
      type: int
      sample: 1767225600
    created_at:
      description: Epoch seconds when the account was made.
      type: int
      sample: 1766620800
    source:
      description: How the account was made (C(refresh_token) by this module).
      type: str
      sample: refresh_token
    has_refresh_token:
      description: Whether the account holds a refresh token.
      type: bool
      sample: true
    refresh_token_set_at:
      description: Epoch seconds when this module last gave the account a refresh token, or null.
      type: int
      sample: 1766620800
changed_fields:
  description: The names of the account fields the task changed (or, in check mode, would change). Secrets are
    named, never shown.
  returned: always
  type: list
  elements: str
  sample: [refresh_token, scope, lifetime]
revoked:
  description: Whether a refresh token was revoked (the account's with O(state=absent), the replaced one with
    O(state=present)); in check mode, whether it would be.
  returned: always
  type: bool
  sample: false
validated:
  description: Whether the provider confirmed the new refresh token as active by introspection.
  returned: when a new refresh token was written
  type: bool
  sample: true
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils._options import (
    PROVIDER_ARGSPEC, STORE_ARGSPEC, account_store, argspec, encryption_password, oauth_client, require_libraries,
    run_module)
from ansible_collections.oidc.tokens.plugins.module_utils._accounts import (
    check_create_options, check_lifetime, created_account, facts_of, plan_update, remove_account, replace_grant,
    replaced_token_client, validate_refresh_token)


class Present(object):
    """state=present: plan the account from the options and the current file, then write it or not."""

    def __init__(self, module, store, password):
        self.module = module
        self.params = module.params
        self.store = store
        self.password = password
        self.name = self.params['name']
        self.path = store.path(self.name)
        self.now = int(time.time())
        self.validated = None

    def check_token(self, client):
        """Validate the new refresh token (not in check mode, not with validate: false); its introspected scope."""
        if self.params['validate'] and not self.module.check_mode:
            self.validated, scope = validate_refresh_token(client, self.params['refresh_token'])
            return scope
        return None

    def create(self):
        check_create_options(self.name, self.params.get)
        client = oauth_client(self.params.get)
        account = created_account(self.name, self.params.get, self.check_token(client), self.now)
        if not self.module.check_mode:
            self.store.save(self.name, account, self.password, overwrite=False)
        return self.result({}, facts_of(self.name, account, self.path), ['account'], False)

    def update(self):
        seen = {}

        def replacement(current):
            seen['before'] = facts_of(self.name, current, self.path)
            plan = plan_update(self.name, current, self.params.get, self.now)
            seen['changed'] = plan.changed
            if plan.needs_validation:
                self.check_token(oauth_client(self.params.get, plan.account))
            return plan.account

        outcome = replace_grant(self.store, self.name, self.password, replacement,
                                lambda old: replaced_token_client(self.params.get, old),
                                revoke=self.params['revoke'], check_mode=self.module.check_mode)
        after = seen['before'] if outcome['new'] is None else facts_of(self.name, outcome['new'], self.path)
        result = self.result(seen['before'], after, seen['changed'], outcome['revoke'])
        result['warnings'] = outcome['warnings']
        return result

    def result(self, before, after, changed, revoked):
        result = {'changed': bool(changed), 'account': after, 'changed_fields': changed, 'revoked': revoked,
                  'diff': {'before': before, 'after': after}, 'warnings': []}
        if changed:
            result['diff']['after_header'] = '%s (changed: %s)' % (self.path, ', '.join(changed))
        if self.validated is not None:
            result['validated'] = self.validated
        return result

    def run(self):
        check_lifetime(self.params['lifetime'])
        return self.update() if self.store.exists(self.name) else self.create()


def run(module):
    params = module.params
    store = account_store(params.get)
    if params['state'] == 'absent':
        return remove_account(store, params['name'], params.get, lambda account: oauth_client(params.get, account),
                              revoke=params['revoke'], force=params['force'], check_mode=module.check_mode)
    result = Present(module, store, encryption_password(params.get)).run()
    if store.dir_changed:
        result['changed'] = True
        result['msg'] = 'Account directory: %s.' % '; '.join(store.dir_messages)
    return result


def main():
    module = AnsibleModule(
        argument_spec=argspec(
            PROVIDER_ARGSPEC, STORE_ARGSPEC,
            name=dict(type='str', required=True),
            state=dict(type='str', default='present', choices=['present', 'absent']),
            refresh_token=dict(type='str', no_log=True),
            scope=dict(type='list', elements='str'),
            audience=dict(type='list', elements='str'),
            resource=dict(type='list', elements='str'),
            lifetime=dict(type='int'),
            revoke=dict(type='bool', default=True),
            force=dict(type='bool', default=False),
            validate=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    require_libraries(module)
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
