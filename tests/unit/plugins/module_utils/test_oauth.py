"""Unit tests of the OAuth core's pure logic: no network. Behaviour against a real provider is in
tests/functional/test_oauth_core.py."""

from __future__ import annotations

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._oauth import (
    DiscoveryError, InsecureTransportError, OAuthClient, OAuthError, TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID,
    TOKEN_TYPE_JWT, TOKEN_TYPE_REFRESH, TokenResponse, _body_hint, _space_list, check_url_transport,
    normalize_issuer, resolve_token_type)


@pytest.mark.parametrize('given, expected', [
    ('https://iam.example.org/', 'https://iam.example.org'),
    ('https://iam.example.org', 'https://iam.example.org'),
    ('  https://kc.example.org/realms/x/ ', 'https://kc.example.org/realms/x'),
])
def test_issuer_is_normalised(given, expected):
    assert normalize_issuer(given) == expected


@pytest.mark.parametrize('bad', ['', None, 'iam.example.org', 'ftp://iam.example.org', 'https://x/?a=b'])
def test_bad_issuer_is_refused(bad):
    with pytest.raises(DiscoveryError):
        normalize_issuer(bad)


def test_rfc8414_url_puts_well_known_before_the_issuer_path():
    client = OAuthClient('https://kc.example.org/realms/hpc/', 'id', 'secret')
    assert client._discovery_urls() == [
        'https://kc.example.org/realms/hpc/.well-known/openid-configuration',
        'https://kc.example.org/.well-known/oauth-authorization-server/realms/hpc',
    ]


@pytest.mark.parametrize('url', ['http://127.0.0.1:8080/x', 'http://localhost/', 'http://[::1]:9/',
                                 'http://127.9.9.9/', 'https://iam.example.org/'])
def test_transport_allowed(url):
    check_url_transport(url)


@pytest.mark.parametrize('url', ['http://iam.example.org/', 'http://10.0.0.1/', 'file:///etc/passwd'])
def test_transport_refused(url):
    with pytest.raises(InsecureTransportError):
        check_url_transport(url)


def test_insecure_http_can_be_allowed_explicitly():
    check_url_transport('http://iam.example.org/', allow_insecure_http=True)


@pytest.mark.parametrize('short, urn', [('access_token', TOKEN_TYPE_ACCESS), ('refresh_token', TOKEN_TYPE_REFRESH),
                                        ('id_token', TOKEN_TYPE_ID), ('jwt', TOKEN_TYPE_JWT),
                                        (TOKEN_TYPE_ACCESS, TOKEN_TYPE_ACCESS)])
def test_token_type_short_names(short, urn):
    assert resolve_token_type(short) == urn


@pytest.mark.parametrize('value, expected', [(['openid', ' compute.read '], 'openid compute.read'),
                                             ('openid  compute.read', 'openid compute.read'),
                                             ([], None), (None, None), ('', None)])
def test_scope_lists(value, expected):
    assert _space_list(value) == expected


def test_common_exchange_response():
    token = TokenResponse.from_json({'access_token': 'AT', 'refresh_token': 'RT', 'expires_in': 60,
                                     'issued_token_type': TOKEN_TYPE_ACCESS}, received_at=1000)
    assert (token.access_token, token.refresh_token, token.expires_at) == ('AT', 'RT', 1060)


def test_strict_exchange_response_moves_the_refresh_token():
    token = TokenResponse.from_json({'access_token': 'RT', 'issued_token_type': TOKEN_TYPE_REFRESH,
                                     'token_type': 'N_A', 'expires_in': 3600})
    assert token.refresh_token == 'RT' and token.access_token is None and token.expires_at is None


def test_token_repr_hides_tokens():
    token = TokenResponse.from_json({'access_token': 'SECRET-AT', 'refresh_token': 'SECRET-RT'})
    assert 'SECRET' not in repr(token)


def test_non_numeric_expires_in_is_a_clear_error():
    with pytest.raises(OAuthError):
        TokenResponse.from_json({'access_token': 'x', 'expires_in': 'soon'})


def test_unknown_auth_method_is_refused():
    with pytest.raises(OAuthError) as info:
        OAuthClient('https://iam.example.org', 'id', 'secret', auth_method='private_key_jwt')
    assert 'client_secret_basic' in str(info.value)


def test_basic_auth_form_encodes_id_and_secret():
    client = OAuthClient('https://iam.example.org', 'my client', 'p:ss w%rd+', auth_method='client_secret_basic')
    form, headers = [], {}
    client._client_auth(form, headers)
    assert form == []
    import base64
    assert base64.b64decode(headers['Authorization'].split()[1]) == b'my+client:p%3Ass+w%25rd%2B'


def test_client_repr_hides_the_secret():
    assert 'hunter2' not in repr(OAuthClient('https://iam.example.org', 'id', 'hunter2'))


@pytest.mark.parametrize('body, hint', [
    (b'<html><head><title>502 Bad Gateway</title></head></html>', "titled '502 Bad Gateway'"),
    (b'<html><body>x</body></html>', 'an HTML page'),
    (b'', 'an empty body'),
    (b'plain text', ''),
])
def test_body_hint_names_html_pages(body, hint):
    assert hint in _body_hint(body)
