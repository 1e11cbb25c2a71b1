#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_token_exchange
short_description: Exchange a user's token for a refresh token and keep it as an encrypted account
version_added: 0.1.0
description:
  - Trades a short-lived subject token (usually the user's access token) for a refresh token with OAuth 2.0
    Token Exchange (RFC 8693), using a confidential client that the provider allows the token-exchange grant.
  - Stores the refresh token, encrypted, as an oidc-agent account file on the host, so that
    M(oidc.tokens.oidc_token), the lookup, the on-host refresher, C(oidc-add) and C(oidc-token) can hand out fresh
    access tokens long after the subject token expired. This is what oidc-agent's C(oidc-token-exchange) did.
  - When an account of that name exists and is usable (it decrypts, holds a refresh token, its lifetime has not
    ended, and it belongs to the same issuer and client), nothing is exchanged and the task reports no change,
    unless O(force) is set. A replaced account's old refresh token is revoked.
  - Revoke the account with M(oidc.tokens.oidc_revoke) when the job is done.
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
      - In check mode nothing is exchanged, written or revoked; the task reports whether an exchange would happen.
        An existing account is decrypted to tell whether it is still usable, so the password is needed as usual.
      - Whether the provider would grant the exchange is not known in check mode.
  diff_mode:
    support: full
    details:
      - The diff shows the account's non-secret fields before and after. In check mode the after side is the
        planned account, with the scope asked for rather than the one the provider would grant.
  platform:
    platforms: posix
options:
  name:
    description:
      - The account's short name (oidc-agent's short name), also its file name in O(config_dir).
    type: str
    required: true
  issuer:
    description:
      - The OpenID provider's issuer URL, as its discovery document announces it.
    type: str
    required: true
    aliases: [issuer_url]
  client_id:
    description:
      - The confidential client that is allowed the token-exchange grant.
    type: str
    required: true
  subject_token:
    description:
      - The token to exchange, usually the user's access token. It must still be valid.
    type: str
    required: true
  subject_token_type:
    description:
      - The type of O(subject_token), a token-type URN or one of the short names C(access_token), C(id_token),
        C(jwt), C(refresh_token). CI systems' OIDC tokens (GitLab C(id_tokens), GitHub Actions) are C(jwt) or
        C(id_token).
    type: str
    default: access_token
  requested_token_type:
    description:
      - The token type to ask for. Anything but a refresh token fails, as this module keeps a refresh token.
    type: str
    default: refresh_token
  scope:
    description:
      - The scopes the refresh token should cover; may only narrow the subject token's. C(offline_access) is added
        when a refresh token is requested. When not set, the provider decides (usually the subject token's scopes).
    type: list
    elements: str
  audience:
    description:
      - RFC 8693 C(audience) values (logical names of the services the tokens are for).
    type: list
    elements: str
  resource:
    description:
      - RFC 8693 / RFC 8707 C(resource) values (URIs of the services the tokens are for).
    type: list
    elements: str
  actor_token:
    description:
      - An RFC 8693 actor token, for delegation. Needs O(actor_token_type).
    type: str
  actor_token_type:
    description:
      - The type of O(actor_token), as for O(subject_token_type).
    type: str
  lifetime:
    description:
      - Seconds after which the account hands out no more access tokens (oidc-agent's C(-t)). The first module or
        lookup that meets the account after that revokes its refresh token at the provider (best effort, reported)
        before it fails; the refresher of the role C(oidc.tokens.job_tokens) does so right at the end. Revoke it at
        teardown all the same.
    type: int
  offline_access:
    description:
      - Whether to add C(offline_access) to the scope of the exchange. Providers disagree. INDIGO IAM issues a
        refresh token only when the scope holds it; Keycloak's standard token exchange refuses the exchange
        when it does.
      - V(auto) asks with it and, if the provider refuses the exchange because of it (a refused exchange consumed
        nothing), asks once more without it. V(always) and V(never) ask only that way. RV(account.offline_access) says
        which way the refresh token was obtained.
      - C(offline_access) given in O(scope) is always sent.
    type: str
    choices: [auto, always, never]
    default: auto
  short_refresh_token:
    description:
      - What to do when the provider says (C(refresh_expires_in), the C(exp) of a JWT refresh token) that the
        refresh token dies before the account's O(lifetime) ends. Keycloak, for instance, binds an exchanged
        refresh token to the user's SSO session (SSO Session Max, 10 hours by default).
      - V(warn) keeps the account and warns with both times and what the provider's admin can change. V(fail)
        keeps nothing and fails with the same message. The refresh token is not revoked then, since on Keycloak
        that ends every refresh token of the user's session for that client, those of running jobs included.
    type: str
    choices: [warn, fail]
    default: warn
  force:
    description:
      - Exchange and replace the account even if a usable one exists (the old refresh token is revoked).
    type: bool
    default: false
  persist:
    description:
      - Write the account file. When false nothing is written and the refresh token is returned as RV(refresh_token)
        (then put C(no_log) on the task).
    type: bool
    default: true
  return_access_token:
    description:
      - Also return the access token the exchange gave, as RV(access_token). Put C(no_log) on the task.
    type: bool
    default: false
notes:
  - The module's results contain tokens only when asked for; Ansible does not mask returned secrets, so use
    C(no_log) on tasks that ask for them.
  - The provider's admin must allow the client the token-exchange grant and refresh tokens (and, for many providers,
    the C(offline_access) scope). See the collection's guide.
requirements:
  - requests
  - PyNaCl
seealso:
  - module: oidc.tokens.oidc_token
  - module: oidc.tokens.oidc_revoke
  - module: oidc.tokens.oidc_account
'''

EXAMPLES = r'''
- name: Trade the user's access token for an account that outlives it
  oidc.tokens.oidc_token_exchange:
    name: job1
    issuer: https://iam.example.org/
    client_id: job-runner
    client_secret: "{{ vault_job_runner_secret }}"
    subject_token: "{{ lookup('ansible.builtin.env', 'OIDC_AT') }}"
    scope: [openid, storage.read:/, compute.read]
    lifetime: 604800
    encryption_password: "{{ vault_account_password }}"

- name: A GitLab CI job's ID token as the subject
  oidc.tokens.oidc_token_exchange:
    name: ci
    issuer: https://keycloak.example.org/realms/hpc
    client_id: ci-exchanger
    client_secret: "{{ vault_ci_secret }}"
    subject_token: "{{ lookup('ansible.builtin.env', 'GITLAB_OIDC_TOKEN') }}"
    subject_token_type: jwt
    encryption_password_env: ACCOUNT_PASSWORD
'''

RETURN = r'''
account:
  description: The account's non-secret facts.
  returned: always
  type: dict
  contains:
    name: {description: The account name., type: str, sample: job1}
    path: {description: The account file., type: str, sample: /home/alice/.config/oidc-agent/job1}
    issuer: {description: The issuer URL., type: str, sample: https://iam.example.org/}
    client_id: {description: The client., type: str, sample: job-runner}
    scope: {description: The scopes the refresh token covers., type: list, elements: str, sample: [openid, offline_access]}
    audience: {description: The audiences asked for., type: list, elements: str, sample: []}
    resource: {description: The resources asked for., type: list, elements: str, sample: []}
    lifetime_end: {description: 'Epoch seconds after which the account hands out no token, or null.', type: int, sample: 1767225600}
    created_at: {description: Epoch seconds of the exchange., type: int, sample: 1766620800}
    source: {description: How the account was made., type: str, sample: token_exchange}
    has_refresh_token: {description: Whether the account holds a refresh token., type: bool, sample: true}
    offline_access: {description: 'Whether the exchange that gave the refresh token asked for offline_access.', type: bool, sample: false}
    refresh_token_expires_at:
      description: Epoch seconds when the refresh token dies as far as the provider says, or null when it does not say.
      type: int
      sample: 1766656800
exchanged:
  description: Whether a token exchange happened (or, in check mode, would happen).
  returned: always
  type: bool
  sample: true
access_token:
  description: The access token the exchange gave.
  returned: when O(return_access_token=true) and the provider returned one
  type: str
expires_at:
  description: Epoch seconds when RV(access_token) expires.
  returned: when O(return_access_token=true) and the provider returned one
  type: int
refresh_token:
  description: The refresh token.
  returned: when O(persist=false)
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils._options import (
    PROVIDER_ARGSPEC, STORE_ARGSPEC, account_store, argspec, encryption_password, oauth_client, require_libraries,
    run_module)
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import TOKEN_TYPE_REFRESH, resolve_token_type
from ansible_collections.oidc.tokens.plugins.module_utils._accounts import exchange_account
from ansible_collections.oidc.tokens.plugins.module_utils._tokens import OFFLINE_ACCESS_CHOICES


def run(module):
    params = module.params
    if resolve_token_type(params['requested_token_type']) != TOKEN_TYPE_REFRESH:
        module.fail_json(msg='requested_token_type must be a refresh token: this module keeps a refresh token. '
                             'Use the provider directly for other exchanges.')
    store = account_store(params.get)
    # A check run that would create the account needs no password: its source may be what an earlier task of the
    # same check run would have made (a password file), and nothing is encrypted.
    needs_password = params['persist'] and (store.exists(params['name']) or not module.check_mode)
    password = encryption_password(params.get) if needs_password else None
    return exchange_account(store, params['name'], password, oauth_client(params.get), params.get, module.check_mode)


def main():
    module = AnsibleModule(
        argument_spec=argspec(
            PROVIDER_ARGSPEC, STORE_ARGSPEC,
            name=dict(type='str', required=True),
            issuer=dict(PROVIDER_ARGSPEC['issuer'], required=True),
            client_id=dict(type='str', required=True),
            subject_token=dict(type='str', required=True, no_log=True),
            subject_token_type=dict(type='str', default='access_token'),
            requested_token_type=dict(type='str', default='refresh_token'),
            scope=dict(type='list', elements='str'),
            audience=dict(type='list', elements='str'),
            resource=dict(type='list', elements='str'),
            actor_token=dict(type='str', no_log=True),
            actor_token_type=dict(type='str'),
            lifetime=dict(type='int'),
            force=dict(type='bool', default=False),
            persist=dict(type='bool', default=True),
            return_access_token=dict(type='bool', default=False),
            offline_access=dict(type='str', default='auto', choices=list(OFFLINE_ACCESS_CHOICES)),
            short_refresh_token=dict(type='str', default='warn', choices=['warn', 'fail']),
        ),
        required_together=[('actor_token', 'actor_token_type')],
        supports_check_mode=True,
    )
    require_libraries(module, nacl=module.params['persist'])
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
