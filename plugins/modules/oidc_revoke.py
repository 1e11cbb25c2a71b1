#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_revoke
short_description: Revoke an account's refresh token and remove the account
version_added: 0.1.0
description:
  - Revokes (RFC 7009) the refresh token the account holds now, and deletes the account file. This is oidc-agent's
    C(oidc-token-exchange -r), done on the current token. The revocation happens under the account's lock, so a
    refresh running at the same moment cannot leave a newer, unrevoked token behind.
  - An account that does not exist is fine and reports no change, so teardown can run twice, or after a failed start.
  - When the provider cannot revoke the token, the task fails and the account is kept so that revocation can be tried
    again, unless O(force) is set.
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
      - In check mode nothing is revoked or deleted; the account is decrypted and the task reports whether its
        refresh token would be revoked and the file removed (with O(force=true), an account that cannot be
        decrypted is reported as removed without revocation, with the warning a normal run gives).
  diff_mode:
    support: full
    details:
      - The diff shows the account's non-secret fields before, and nothing after (with O(remove=false), the
        account without its refresh token).
  platform:
    platforms: posix
options:
  name:
    description:
      - The account's short name.
    type: str
    required: true
  remove:
    description:
      - Delete the account file. When false the file is kept with its refresh token emptied.
    type: bool
    default: true
  force:
    description:
      - Remove the account even when its refresh token cannot be revoked (the provider is unreachable, refuses, or
        the file cannot be decrypted). The task then warns that a token may still be valid at the provider.
    type: bool
    default: false
requirements:
  - requests
  - PyNaCl
seealso:
  - module: oidc.tokens.oidc_token_exchange
  - module: oidc.tokens.oidc_account
'''

EXAMPLES = r'''
- name: Job done, revoke its token
  oidc.tokens.oidc_revoke:
    name: job1
    encryption_password: "{{ vault_account_password }}"

- name: Teardown that must leave nothing behind, whatever the provider says
  oidc.tokens.oidc_revoke:
    name: job1
    force: true
    encryption_password_file: /run/secrets/job1
'''

RETURN = r'''
revoked:
  description: Whether the refresh token was revoked at the provider (or, in check mode, would be).
  returned: always
  type: bool
  sample: true
removed:
  description: Whether the account file was deleted (or, in check mode, would be).
  returned: always
  type: bool
  sample: true
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError
from ansible_collections.oidc.tokens.plugins.module_utils._options import (
    PROVIDER_ARGSPEC, STORE_ARGSPEC, account_store, argspec, encryption_password, oauth_client, require_libraries,
    run_module)
from ansible_collections.oidc.tokens.plugins.module_utils._tokens import account_facts, revoke_account


def run(module):
    params = module.params
    name = params['name']
    store = account_store(params.get)
    if not store.exists(name):
        return {'changed': False, 'revoked': False, 'removed': False, 'msg': 'Account %r does not exist.' % name}
    password = encryption_password(params.get)
    if module.check_mode:
        try:
            before = account_facts(name, store.load(name, password), store.path(name))
        except OidcTokensError as exc:
            if not params['force']:
                raise
            # What a forced run does with an account it cannot read (wrong password, corrupt file).
            return {'changed': True, 'revoked': False, 'removed': True, 'diff': {'before': {}, 'after': {}},
                    'warnings': ['Account %r could not be read (%s); it would be removed without revoking its refresh '
                                 'token because force is set.' % (name, exc)]}
        after = {} if params['remove'] else dict(before, has_refresh_token=False)
        return {'changed': params['remove'] or before['has_refresh_token'], 'revoked': before['has_refresh_token'],
                'removed': params['remove'], 'diff': {'before': before, 'after': after}}
    outcome = revoke_account(store, name, password, lambda account: oauth_client(params.get, account),
                             remove=params['remove'], force=params['force'])
    before = outcome['facts'] or {}
    after = {} if outcome['removed'] else dict(before, has_refresh_token=False)
    return {'changed': outcome['changed'], 'revoked': outcome['revoked'], 'removed': outcome['removed'],
            'warnings': outcome['warnings'], 'diff': {'before': before, 'after': after}}


def main():
    module = AnsibleModule(
        argument_spec=argspec(
            PROVIDER_ARGSPEC, STORE_ARGSPEC,
            name=dict(type='str', required=True),
            remove=dict(type='bool', default=True),
            force=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    require_libraries(module)
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
