"""How modules and the lookup read the shared options (plugins/module_utils/_options.py)."""

from __future__ import annotations

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _options
from ansible_collections.oidc.tokens.plugins.module_utils._errors import AccountIdentityError, PasswordSourceError

ACCOUNT = {
    'issuer_url': 'https://account-issuer.example/',
    'client_id': 'account-client',
    'client_secret': 'account-secret',
    'cert_path': '/etc/account-ca.pem',
    'token_endpoint_auth_method': 'client_secret_post',
}


def getter(**values):
    defaults = {'validate_certs': True, 'timeout': 10, 'retries': 3, 'allow_insecure_http': False}
    defaults.update(values)
    return defaults.get


def test_argspec_merges_parts_and_own_options_without_touching_the_shared_ones():
    spec = _options.argspec(_options.PROVIDER_ARGSPEC, _options.STORE_ARGSPEC,
                            issuer=dict(_options.PROVIDER_ARGSPEC['issuer'], required=True), name=dict(type='str'))
    assert spec['issuer']['required'] is True and spec['issuer']['aliases'] == ['issuer_url']
    assert 'required' not in _options.PROVIDER_ARGSPEC['issuer']
    assert set(_options.STORE_ARGSPEC) <= set(spec) and 'name' in spec


def test_secret_options_are_no_log_and_password_source_names_are_not():
    spec = _options.argspec(_options.PROVIDER_ARGSPEC, _options.STORE_ARGSPEC)
    assert spec['client_secret']['no_log'] is True and spec['encryption_password']['no_log'] is True
    for name in ('encryption_password_file', 'encryption_password_env', 'encryption_password_command'):
        assert spec[name]['no_log'] is False


def test_client_falls_back_to_what_the_account_stores():
    client = _options.oauth_client(getter(), ACCOUNT)
    assert client.issuer == 'https://account-issuer.example' and client.client_id == 'account-client'
    assert client.ca_path == '/etc/account-ca.pem' and client.auth_method == 'client_secret_post'


def test_transport_options_override_the_account():
    client = _options.oauth_client(getter(issuer='https://account-issuer.example', client_id='account-client',
                                          ca_path='/ca.pem', auth_method='client_secret_basic', timeout=3), ACCOUNT)
    assert (client.issuer, client.client_id, client.ca_path, client.auth_method, client.timeout) == (
        'https://account-issuer.example', 'account-client', '/ca.pem', 'client_secret_basic', 3)


@pytest.mark.parametrize('option, value, stored', [
    ('issuer', 'https://attacker.example', 'https://account-issuer.example/'),
    ('issuer', 'https://account-issuer.example/other', 'https://account-issuer.example/'),
    ('client_id', 'other', 'account-client'),
])
def test_another_issuer_or_client_than_the_accounts_is_an_error(option, value, stored):
    """The account's refresh token is only ever sent to its own issuer, by its own client."""
    with pytest.raises(AccountIdentityError) as exc:
        _options.oauth_client(getter(**{option: value}), dict(ACCOUNT, name='job1'))
    message = str(exc.value)
    assert value in message and stored in message and 'job1' in message
    assert 'account-secret' not in message


def test_the_accounts_issuer_with_or_without_a_trailing_slash_is_the_same():
    client = _options.oauth_client(getter(issuer='https://account-issuer.example'), ACCOUNT)
    assert client.issuer == 'https://account-issuer.example'


def test_account_client_ignores_the_tasks_identity_but_keeps_transport_options():
    client = _options.account_client(getter(issuer='https://other.example', client_id='other',
                                            client_secret='other-secret', timeout=4, validate_certs=False), ACCOUNT)
    assert (client.issuer, client.client_id) == ('https://account-issuer.example', 'account-client')
    assert client.timeout == 4 and client.validate_certs is False


def test_password_comes_from_exactly_one_source(tmp_path, monkeypatch):
    secret_file = tmp_path / 'pw'
    secret_file.write_text('from-file\n')
    secret_file.chmod(0o600)
    monkeypatch.setenv('ACCOUNT_PW', 'from-env')
    assert _options.encryption_password(getter(encryption_password='direct')) == 'direct'
    assert _options.encryption_password(getter(encryption_password_file=str(secret_file))) == 'from-file'
    assert _options.encryption_password(getter(encryption_password_env='ACCOUNT_PW')) == 'from-env'
    with pytest.raises(PasswordSourceError):
        _options.encryption_password(getter())
    with pytest.raises(PasswordSourceError):
        _options.encryption_password(getter(encryption_password='a', encryption_password_env='ACCOUNT_PW'))


def test_store_directory_option(tmp_path):
    assert _options.account_store(getter(config_dir=str(tmp_path / 'x'))).config_dir == str(tmp_path / 'x')
