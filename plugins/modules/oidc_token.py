#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_token
short_description: Get an access token from an account on the host
version_added: 0.1.0
description:
  - Hands out an access token of an account made by M(oidc.tokens.oidc_token_exchange) or M(oidc.tokens.oidc_account)
    (or by oidc-agent's C(oidc-gen)), like C(oidc-token) does.
  - The default token (no O(scope), O(audience) or O(resource)) is kept, encrypted, in the account file and reused
    while it has at least O(min_valid_period) seconds left; otherwise the refresh token is used. When the provider
    rotates the refresh token, the new one is written to the account file before the access token is returned.
  - A token with O(scope), O(audience) or O(resource) is always fresh (down-scoping never uses the kept token).
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
    support: partial
    details:
      - In check mode a kept token that is still valid for O(min_valid_period) is returned, as in a normal run.
      - When a refresh would be needed (no kept token valid long enough, or O(force), O(scope), O(audience) or
        O(resource) given), it does not happen, since it could rotate the refresh token; the task reports a change
        and returns no RV(access_token).
      - An account past its lifetime fails in check mode without its refresh token being revoked.
  diff_mode:
    support: none
    details: No diff is returned; what a refresh changes in the account is a secret.
  platform:
    platforms: posix
options:
  name:
    description:
      - The account's short name.
    type: str
    required: true
  min_valid_period:
    description:
      - Seconds the returned token must still be valid (oidc-token's C(-t)).
    type: int
    default: 60
  scope:
    description:
      - Ask for a token with fewer scopes than the account holds (oidc-token's C(-s)). Asking for a scope the
        refresh token does not cover fails with the provider's up-scoping error, or, where the provider answers
        with a token without that scope (Keycloak), with an error naming what it did not grant.
    type: list
    elements: str
  audience:
    description:
      - Audiences for the token (oidc-token's C(--aud), sent as C(audience)).
    type: list
    elements: str
  resource:
    description:
      - RFC 8707 resources for the token (oidc-agent 5 sends C(--aud) this way).
    type: list
    elements: str
  force:
    description:
      - Refresh even if the kept token is still valid (oidc-token's C(-f)).
    type: bool
    default: false
  verify:
    description:
      - For a JWT access token, check its signature against the provider's JWKS, its issuer and its expiry before
        returning its RV(claims). An opaque token has no claims.
    type: bool
    default: true
notes:
  - The result holds the access token; put C(no_log) on the task, and show only RV(claims) if anything.
requirements:
  - requests
  - PyNaCl
  - cryptography (for O(verify))
seealso:
  - module: oidc.tokens.oidc_token_exchange
  - plugin: oidc.tokens.oidc_token
    plugin_type: lookup
'''

EXAMPLES = r'''
- name: A token with at least 10 minutes left
  oidc.tokens.oidc_token:
    name: job1
    min_valid_period: 600
    encryption_password: "{{ vault_account_password }}"
  register: job1_token
  no_log: true

- name: A down-scoped token for the storage only
  oidc.tokens.oidc_token:
    name: job1
    scope: [storage.read:/]
    encryption_password_file: /run/secrets/job1
  register: storage_token
  no_log: true

- name: Show who the token is for, never the token
  ansible.builtin.debug:
    msg: "{{ job1_token.claims | ansible.builtin.dict2items | selectattr('key', 'in', ['sub', 'scope', 'exp']) }}"
'''

RETURN = r'''
access_token:
  description: The access token.
  returned: success, except in check mode when a refresh would be needed
  type: str
expires_at:
  description: Epoch seconds when the token expires (null when the provider does not say).
  returned: success, except in check mode when a refresh would be needed
  type: int
  sample: 1766620800
issuer:
  description: The issuer of the account.
  returned: always
  type: str
  sample: https://iam.example.org/
scope:
  description: The scopes of the token.
  returned: success
  type: list
  elements: str
  sample: [openid, compute.read]
claims:
  description: The decoded claims of a JWT access token (verified when O(verify=true)); empty for an opaque token.
  returned: success
  type: dict
  sample: {sub: 8b7b42fd, iss: https://iam.example.org/, scope: compute.read, exp: 1766620800}
refreshed:
  description: Whether the refresh token was used (and possibly rotated) for this token.
  returned: always
  type: bool
lifetime_end:
  description: Epoch seconds when the account's lifetime ends (null when it has none); no token is handed out after.
  returned: success, except in check mode when a refresh would be needed
  type: int
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils._lists import as_list
from ansible_collections.oidc.tokens.plugins.module_utils._options import (
    PROVIDER_ARGSPEC, STORE_ARGSPEC, account_store, argspec, encryption_password, oauth_client, require_libraries,
    run_module)
from ansible_collections.oidc.tokens.plugins.module_utils._tokens import (
    access_token, account_issuer, cached_access_token, expired_error, is_expired)


def run(module):
    params = module.params
    store = account_store(params.get)
    password = encryption_password(params.get)

    def client_for(account):
        return oauth_client(params.get, account)

    if module.check_mode:
        return check_mode_result(store, params, password)
    token = access_token(store, params['name'], password, client_for, params['min_valid_period'], params['scope'],
                         params['audience'], params['resource'], params['force'],
                         claims='verify' if params['verify'] else 'decode')
    token['changed'] = token['refreshed']
    return token


def check_mode_result(store, params, password):
    """What check mode can honestly give: the kept token if it is good enough, else a note."""
    account = store.load(params['name'], password)
    if is_expired(account, time.time()):
        raise expired_error(params['name'], account, 'In check mode its refresh token is not revoked.')
    default = not (as_list(params['scope']) or as_list(params['audience']) or as_list(params['resource']))
    kept = cached_access_token(account, params['min_valid_period']) if default and not params['force'] else None
    if kept is not None:
        kept['changed'] = False
        return kept
    return {'changed': True, 'refreshed': True, 'issuer': account_issuer(account),
            'msg': 'A refresh would be needed; it does not happen in check mode.'}


def main():
    module = AnsibleModule(
        argument_spec=argspec(
            PROVIDER_ARGSPEC, STORE_ARGSPEC,
            name=dict(type='str', required=True),
            min_valid_period=dict(type='int', default=60),
            scope=dict(type='list', elements='str'),
            audience=dict(type='list', elements='str'),
            resource=dict(type='list', elements='str'),
            force=dict(type='bool', default=False),
            verify=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    require_libraries(module)
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
