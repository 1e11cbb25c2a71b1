#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_account_info
short_description: List the encrypted accounts on the host and what they hold, never a secret
version_added: 0.1.0
description:
  - Lists the oidc-agent account files in O(config_dir), like C(oidc-add -l) does, with each file's path, mode,
    owner, size and format version. This needs no password.
  - With a password source (O(encryption_password) and the like), each account is decrypted and its non-secret
    details are returned too (issuer, client, scopes, audiences, lifetime, whether it holds a refresh token). An
    account the password does not open is reported with an RV(accounts.error), not as a failure.
  - With O(check_active=true), asks the provider whether each account's refresh token is still active (RFC 7662
    introspection as the account's client), when the provider announces an introspection endpoint; otherwise
    RV(accounts.active) is null and RV(accounts.active_note) says why.
  - Files oidc-agent keeps in the directory that are not accounts (C(config), C(*.config), C(*.clientconfig*),
    C(*.stats), C(*.log), hidden files) are not listed.
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
      - The module changes nothing; it runs the same in check mode, introspection with O(check_active=true)
        included (introspection changes nothing at the provider).
  diff_mode:
    support: N/A
    details: The module changes nothing.
  platform:
    platforms: posix
options:
  name:
    description:
      - Only these accounts. An account named here that does not exist is returned with RV(accounts.exists=false).
      - When not given, every account in O(config_dir).
    type: list
    elements: str
    aliases: [names]
  check_active:
    description:
      - Introspect each decrypted account's refresh token at its provider. Needs a password source.
      - The provider options (O(issuer), O(client_id), O(client_secret), O(ca_path) and the rest), when given,
        override what every listed account stores; usually none is needed.
    type: bool
    default: false
notes:
  - Never returns a token, a client secret or a password.
requirements:
  - requests (for O(check_active))
  - PyNaCl (with a password source)
seealso:
  - module: oidc.tokens.oidc_account
  - module: oidc.tokens.oidc_token_exchange
'''

EXAMPLES = r'''
- name: Which accounts are on the host (oidc-add -l)
  oidc.tokens.oidc_account_info:
  register: listed

- name: Show the names
  ansible.builtin.debug:
    msg: "{{ listed.names }}"

- name: Details of two accounts, and whether their refresh tokens still work
  oidc.tokens.oidc_account_info:
    name: [job1, job2]
    check_active: true
    encryption_password: "{{ vault_account_password }}"
  register: jobs

- name: Fail early when a job's token was revoked
  ansible.builtin.assert:
    that: jobs.accounts.job1.active is not false
'''

RETURN = r'''
config_dir:
  description: The account directory that was listed.
  returned: always
  type: str
  sample: /home/alice/.config/oidc-agent
config_dir_mode:
  description: The directory's mode, or null when it does not exist.
  returned: always
  type: str
  sample: '0700'
names:
  description: The names of the accounts that exist, sorted.
  returned: always
  type: list
  elements: str
  sample: [job1, job2]
accounts:
  description: One entry per account, keyed by name.
  returned: always
  type: dict
  contains:
    name:
      description: The account name.
      type: str
      sample: job1
    path:
      description: The account file.
      type: str
      sample: /home/alice/.config/oidc-agent/job1
    exists:
      description: Whether the file exists.
      type: bool
      sample: true
    mode:
      description: The file's mode (the store writes C(0600)).
      type: str
      returned: when the file exists and is an account file
      sample: '0600'
    uid:
      description: The file owner's uid.
      type: int
      returned: when the file exists and is an account file
      sample: 1000
    size:
      description: The file's size in bytes.
      type: int
      returned: when the file exists and is an account file
      sample: 1024
    mtime:
      description: The file's modification time, epoch seconds.
      type: float
      returned: when the file exists and is an account file
      sample: 1766620800.5
    version:
      description: The oidc-agent version the file says wrote it (the store writes 4.2.6, oidc-agent its own).
      type: str
      returned: when the file exists and is an account file
      sample: 4.2.6
    decrypted:
      description: Whether the account was decrypted (a password source was given and opened it).
      type: bool
      sample: true
    error:
      description: Why the file could not be read or decrypted.
      type: str
      returned: when the file could not be read or decrypted
      sample: Wrong encryption password for account 'job1'
    issuer:
      description: The issuer URL.
      type: str
      returned: when decrypted
      sample: https://iam.example.org/
    client_id:
      description: The client.
      type: str
      returned: when decrypted
      sample: job-runner
    scope:
      description: The account's scopes.
      type: list
      elements: str
      returned: when decrypted
      sample: [openid, offline_access]
    audience:
      description: The account's audiences.
      type: list
      elements: str
      returned: when decrypted
      sample: []
    resource:
      description: The account's resources.
      type: list
      elements: str
      returned: when decrypted
      sample: []
    lifetime_end:
      description: Epoch seconds after which the account hands out no token, or null.
      type: int
      returned: when decrypted
      sample: 1767225600
    expired:
      description: Whether RV(accounts.lifetime_end) has passed.
      type: bool
      returned: when decrypted
      sample: false
    created_at:
      description: Epoch seconds when the collection made the account, or null (oidc-gen).
      type: int
      returned: when decrypted
      sample: 1766620800
    source:
      description: How the collection made the account (C(token_exchange), C(refresh_token)), or null.
      type: str
      returned: when decrypted
      sample: token_exchange
    has_refresh_token:
      description: Whether the account holds a refresh token.
      type: bool
      returned: when decrypted
      sample: true
    active:
      description: Whether the provider says the refresh token is active; null when it could not be asked.
      type: bool
      returned: when O(check_active=true) and the account was decrypted
      sample: true
    active_note:
      description: Why RV(accounts.active) is null or false without asking (no introspection endpoint, no refresh
        token, the request failed).
      type: str
      returned: when O(check_active=true) and the provider was not asked or did not answer
      sample: The provider https://iam.example.org announces no introspection endpoint.
'''

import os
import stat
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils._options import (
    PASSWORD_SOURCES, PROVIDER_ARGSPEC, STORE_ARGSPEC, account_store, argspec, encryption_password, oauth_client,
    require_libraries, run_module)
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError
from ansible_collections.oidc.tokens.plugins.module_utils._account_names import validate_name
from ansible_collections.oidc.tokens.plugins.module_utils._accounts import refresh_token_activity
from ansible_collections.oidc.tokens.plugins.module_utils._tokens import account_facts, is_expired


def describe(store, name, password, get, want_active, now):
    entry = {'name': name, 'path': store.path(name), 'exists': store.exists(name), 'decrypted': False}
    if not entry['exists']:
        return entry
    try:
        info = store.load_info(name)
    except OidcTokensError as exc:
        entry['error'] = str(exc)
        return entry
    entry.update((key, info[key]) for key in ('mode', 'uid', 'size', 'mtime', 'version'))
    if password is None:
        return entry
    try:
        account = store.load(name, password)
    except OidcTokensError as exc:
        entry['error'] = str(exc)
        return entry
    entry.update(account_facts(name, account, entry['path']))
    entry['decrypted'] = True
    entry['expired'] = is_expired(account, now)
    if want_active:
        entry.update(refresh_token_activity(lambda acc: oauth_client(get, acc), account))
    return entry


def run(module):
    params = module.params
    store = account_store(params.get)
    has_password = any(params.get(source) is not None for source in PASSWORD_SOURCES)
    if params['check_active'] and not has_password:
        module.fail_json(msg='check_active needs the accounts decrypted: give one of %s.'
                             % ', '.join(PASSWORD_SOURCES))
    password = encryption_password(params.get) if has_password else None
    if params['name'] is not None:
        names = [validate_name(name) for name in params['name']]
    else:
        names = store.list()
    try:
        dir_mode = '%04o' % stat.S_IMODE(os.stat(store.config_dir).st_mode)
    except FileNotFoundError:
        dir_mode = None
    now = time.time()
    accounts = {}
    for name in names:
        accounts[name] = describe(store, name, password, params.get, params['check_active'], now)
    return {'changed': False, 'config_dir': store.config_dir, 'config_dir_mode': dir_mode,
            'names': sorted(n for n, entry in accounts.items() if entry['exists']), 'accounts': accounts}


def main():
    module = AnsibleModule(
        argument_spec=argspec(
            PROVIDER_ARGSPEC, STORE_ARGSPEC,
            name=dict(type='list', elements='str', aliases=['names']),
            check_active=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    has_password = any(module.params.get(source) is not None for source in PASSWORD_SOURCES)
    if module.params['check_active'] or has_password:
        require_libraries(module, nacl=has_password)
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
