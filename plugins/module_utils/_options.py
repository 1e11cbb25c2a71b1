# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by the modules and the lookup, declared once.

The modules merge these argument specs into their own; the doc fragments
`oidc.tokens.provider` and `oidc.tokens.store` document the same names. Both kinds of plugin hand
this file a `get(name)` callable (`module.params.get` or the lookup's `get_option`), so options are
read one way everywhere.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

PROVIDER_ARGSPEC = dict(
    issuer=dict(type='str', aliases=['issuer_url']),
    client_id=dict(type='str'),
    client_secret=dict(type='str', no_log=True),
    auth_method=dict(type='str', choices=['client_secret_basic', 'client_secret_post']),
    ca_path=dict(type='path'),
    validate_certs=dict(type='bool', default=True),
    timeout=dict(type='int', default=10),
    retries=dict(type='int', default=3),
    allow_insecure_http=dict(type='bool', default=False),
)

STORE_ARGSPEC = dict(
    config_dir=dict(type='path'),
    encryption_password=dict(type='str', no_log=True),
    encryption_password_file=dict(type='path', no_log=False),
    encryption_password_env=dict(type='str', no_log=False),
    encryption_password_command=dict(type='str', no_log=False),
)

PASSWORD_SOURCES = ('encryption_password', 'encryption_password_file', 'encryption_password_env',
                    'encryption_password_command')


def argspec(*parts, **own):
    """One module's argument spec: the shared parts plus the module's own options."""
    spec = {}
    for part in parts:
        spec.update(part)
    spec.update(own)
    return spec


IDENTITY_OPTIONS = ('issuer', 'client_id', 'client_secret', 'auth_method')


def oauth_client(get, account=None):
    """An OAuthClient from the options, or for an existing account, from what the account stores.

    An account's issuer and client are authoritative: an ``issuer`` or ``client_id`` option that names
    another one is an error (AccountIdentityError), so that the account's refresh token is never sent
    anywhere but its own issuer, whatever a task (or a variable a managed host set) says.
    """
    from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient

    account = account or {}
    if account:
        check_account_identity(get, account)
    return OAuthClient(
        account.get('issuer_url') or account.get('issuer') or get('issuer'),
        account.get('client_id') or get('client_id'),
        get('client_secret') or account.get('client_secret') or None,
        auth_method=get('auth_method') or account.get('token_endpoint_auth_method') or None,
        ca_path=get('ca_path') or account.get('cert_path') or None,
        validate_certs=get('validate_certs'),
        timeout=get('timeout'),
        retries=get('retries'),
        allow_insecure_http=get('allow_insecure_http'),
    )


def check_account_identity(get, account):
    """Raise AccountIdentityError when the issuer or client_id option differs from what ``account`` stores."""
    from ansible_collections.oidc.tokens.plugins.module_utils._errors import AccountIdentityError
    from ansible_collections.oidc.tokens.plugins.module_utils._oauth import normalize_issuer

    stored_issuer, stored_client = account.get('issuer_url') or account.get('issuer'), account.get('client_id')
    issuer, client_id = get('issuer'), get('client_id')
    if issuer and stored_issuer and normalize_issuer(issuer) != normalize_issuer(stored_issuer):
        option, stored, asked = 'issuer', stored_issuer, issuer
    elif client_id and stored_client and client_id != stored_client:
        option, stored, asked = 'client_id', stored_client, client_id
    else:
        return
    raise AccountIdentityError(
        'Account %r was made with %s %s, but the task names %s %s. An account\'s refresh token is only ever sent '
        'to its own issuer, by its own client: leave %s unset for this account, or exchange a new account for the '
        'other one.' % (account.get('name') or '', option, stored, option, asked, option))


def account_client(get, account):
    """The client an account was made with, whatever the task's issuer and client options say.

    For revoking an account's own refresh token: only its own client may revoke it.
    """
    return oauth_client(lambda name: None if name in IDENTITY_OPTIONS else get(name), account)


def account_store(get):
    from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore

    return AccountStore(config_dir=get('config_dir'))


def encryption_password(get):
    """The account password from whichever single source the user configured."""
    from ansible_collections.oidc.tokens.plugins.module_utils._passwords import resolve_password

    return resolve_password(
        password=get('encryption_password'),
        password_file=get('encryption_password_file'),
        password_env=get('encryption_password_env'),
        password_command=get('encryption_password_command'),
    )


def require_libraries(module, nacl=True):
    """fail_json with Ansible's standard message when a needed library is missing on the host."""
    from ansible.module_utils.basic import missing_required_lib
    from ansible_collections.oidc.tokens.plugins.module_utils._imports import NACL, REQUESTS

    for library in (REQUESTS, NACL) if nacl else (REQUESTS,):
        if library.import_error() is not None:
            module.fail_json(msg=missing_required_lib(library.name), exception=library.error)


def run_module(module, action):
    """Run action() -> result dict; the collection's errors become a plain fail_json message."""
    from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError

    try:
        result = action()
    except OidcTokensError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop('warnings', []):
        module.warn(warning)
    module.exit_json(**result)
