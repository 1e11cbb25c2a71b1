#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_device_login
short_description: Log a user in with the device flow and keep the refresh token as an encrypted account
version_added: 0.1.0
description:
  - Logs the user in with the OAuth 2.0 Device Authorization Grant (RFC 8628), as C(oidc-gen -w device) does, and
    stores the refresh token, encrypted, as an oidc-agent account file on the host, made and stored the way
    M(oidc.tokens.oidc_token_exchange) makes one. M(oidc.tokens.oidc_token), the lookup, the on-host refresher,
    C(oidc-add) and C(oidc-token) then hand out access tokens from it.
  - While the task runs, the controller shows the verification URI, the user code and the complete verification URI
    (the one with the code in it), without C(-v). The user opens it in any browser, on any machine, and logs in;
    meanwhile the host polls the provider at the interval the provider asks for, 5 seconds more after each
    C(slow_down), and gives up when the user code expires (the provider's C(expires_in)) or after O(login_timeout).
  - The task has two parts, run by the module's action plugin on the controller. The module starts the device
    authorization on the host and returns the codes to the controller; the controller shows them; the module then
    polls on the host and writes the account there. The host makes every request to the provider, as for the other
    modules of the collection; the device code, a secret, only travels between the host and the controller inside
    Ansible's module runs, and is never shown.
  - When an account of that name exists and is usable (it decrypts, holds a refresh token, its lifetime has not
    ended, and it belongs to the same issuer and client), nobody is asked to log in and the task reports no change,
    unless O(force) is set. A replaced account's old refresh token is revoked.
  - No token is ever returned or shown. Revoke the account with M(oidc.tokens.oidc_revoke) when the job is done.
author:
  - oidc.tokens maintainers (@oidc-tokens)
extends_documentation_fragment:
  - oidc.tokens.provider
  - oidc.tokens.connection
  - oidc.tokens.store
  - oidc.tokens.attributes
  - oidc.tokens.attributes.actiongroup_oidc
attributes:
  action:
    description: Runs partly on the controller through the module's action plugin.
    support: full
    details:
      - The action plugin shows the user code and the verification URIs on the controller between the module's two
        runs on the host.
  async:
    description: Whether the task can run asynchronously.
    support: none
    details:
      - The codes must be shown while the task waits for the user, so the task cannot run in the background.
  check_mode:
    support: full
    details:
      - In check mode no request is made and nothing is written; the task says whether a login would start. An
        existing account is decrypted to tell whether it is still usable, so the password is needed as usual.
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
      - The OpenID provider's issuer URL, as its discovery document announces it. The provider must announce a
        C(device_authorization_endpoint).
    type: str
    required: true
    aliases: [issuer_url]
  client_id:
    description:
      - The client that is allowed the device code grant (C(urn:ietf:params:oauth:grant-type:device_code)) and
        refresh tokens. A public client (no O(client_secret)) is usual for the device flow; a confidential one
        works as well.
    type: str
    required: true
  scope:
    description:
      - The scopes to ask the user for. C(offline_access) is always added, as most providers issue a refresh token
        (one that outlives the user's session) only with it. When not set, C(openid) and C(offline_access).
    type: list
    elements: str
  lifetime:
    description:
      - Seconds after which the account hands out no more access tokens (oidc-agent's C(-t)), as for
        M(oidc.tokens.oidc_token_exchange). Revoke it at teardown all the same.
    type: int
  login_timeout:
    description:
      - The longest time in seconds to wait for the user, from the start of the login. The wait ends at the latest
        when the user code expires (the provider's C(expires_in), often 5 to 30 minutes).
      - The task fails when nobody approved the login by then, and nothing is written.
    type: int
  force:
    description:
      - Log in and replace the account even if a usable one exists (the old refresh token is revoked).
    type: bool
    default: false
  device_code:
    description:
      - Internal, set by the module's action plugin for its second run on the host, with O(device_interval) and
        O(device_deadline); do not set it in a task. The device code of the device authorization to poll.
    type: str
  device_interval:
    description:
      - Internal, see O(device_code). The polling interval in seconds the provider asked for.
    type: int
  device_deadline:
    description:
      - Internal, see O(device_code). Epoch seconds, on the host's clock, after which no poll is made.
    type: int
notes:
  - The provider's admin must allow the client the device code grant and refresh tokens (and, for many providers,
    the C(offline_access) scope). See the collection's guide.
  - The user code and the verification URIs are shown even when the task has C(no_log), since the user needs them
    to log in; they are no secret (the device code is, and is never shown). They are not in the task's result.
  - The task waits for the user for up to the user code's lifetime; keep it out of unattended runs, or use
    O(login_timeout).
requirements:
  - requests
  - PyNaCl
seealso:
  - module: oidc.tokens.oidc_token_exchange
  - module: oidc.tokens.oidc_token
  - module: oidc.tokens.oidc_revoke
  - name: RFC 8628, OAuth 2.0 Device Authorization Grant
    description: The device flow.
    link: https://www.rfc-editor.org/rfc/rfc8628
'''

EXAMPLES = r'''
- name: Log the user in on the controller (the play shows where and with which code)
  oidc.tokens.oidc_device_login:
    name: job1
    issuer: https://iam.example.org/
    client_id: device-login-cli
    scope: [openid, profile, storage.read:/, compute.read]
    lifetime: 604800
    login_timeout: 300
    encryption_password: "{{ vault_account_password }}"
  delegate_to: localhost
  run_once: true    # one login, whatever the number of hosts in the play

- name: A fresh access token from the account, for the job
  oidc.tokens.oidc_token:
    name: job1
    encryption_password: "{{ vault_account_password }}"
  delegate_to: localhost
  run_once: true
  register: job1_token
  no_log: true
'''

RETURN = r'''
account:
  description: The account's non-secret facts (before the login when none was needed, planned in check mode).
  returned: always
  type: dict
  contains:
    name: {description: The account name., type: str, sample: job1}
    path: {description: The account file., type: str, sample: /home/alice/.config/oidc-agent/job1}
    issuer: {description: The issuer URL., type: str, sample: https://iam.example.org/}
    client_id: {description: The client., type: str, sample: device-login-cli}
    scope: {description: The scopes the refresh token covers., type: list, elements: str, sample: [openid, offline_access]}
    audience: {description: Always empty for a device login., type: list, elements: str, sample: []}
    resource: {description: Always empty for a device login., type: list, elements: str, sample: []}
    lifetime_end: {description: 'Epoch seconds after which the account hands out no token, or null.', type: int, sample: 1767225600}
    created_at: {description: Epoch seconds of the login., type: int, sample: 1766620800}
    source: {description: How the account was made., type: str, sample: device_flow}
    has_refresh_token: {description: Whether the account holds a refresh token., type: bool, sample: true}
    offline_access: {description: Whether offline_access was asked for (always for a device login)., type: bool, sample: true}
    refresh_token_expires_at:
      description: Epoch seconds when the refresh token dies as far as the provider says, or null when it does not say.
      type: int
      sample: 1766656800
logged_in:
  description: Whether the user logged in (in check mode, whether a login would start).
  returned: always
  type: bool
  sample: true
verification_uri:
  description: Where the user was sent to log in (without the user code).
  returned: when a login took place
  type: str
  sample: https://iam.example.org/device
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils._options import (
    PROVIDER_ARGSPEC, STORE_ARGSPEC, account_store, argspec, encryption_password, oauth_client, require_libraries,
    run_module)
from ansible_collections.oidc.tokens.plugins.module_utils._accounts import finish_device_login, start_device_login

DEVICE_OPTIONS = ('device_code', 'device_interval', 'device_deadline')


def run(module):
    params = module.params
    store = account_store(params.get)
    client = oauth_client(params.get)
    if params['device_code']:
        return finish_device_login(store, params['name'], encryption_password(params.get), client, params.get)
    # As for oidc_token_exchange: a check run that would create the account needs no password. A real run resolves
    # it before the user is asked to log in, so that a missing password fails before, not after, the login.
    needs_password = store.exists(params['name']) or not module.check_mode
    password = encryption_password(params.get) if needs_password else None
    return start_device_login(store, params['name'], password, client, params.get, module.check_mode)


def main():
    module = AnsibleModule(
        argument_spec=argspec(
            PROVIDER_ARGSPEC, STORE_ARGSPEC,
            name=dict(type='str', required=True),
            issuer=dict(PROVIDER_ARGSPEC['issuer'], required=True),
            client_id=dict(type='str', required=True),
            scope=dict(type='list', elements='str'),
            lifetime=dict(type='int'),
            login_timeout=dict(type='int'),
            force=dict(type='bool', default=False),
            device_code=dict(type='str', no_log=True),
            device_interval=dict(type='int'),
            device_deadline=dict(type='int'),
        ),
        required_together=[DEVICE_OPTIONS],
        supports_check_mode=True,
    )
    if module.params['login_timeout'] is not None and module.params['login_timeout'] < 1:
        module.fail_json(msg='login_timeout must be a positive number of seconds.')
    require_libraries(module)
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
