"""Unit tests of the OAuth core's pure logic: no network. Behaviour against a real provider is in
tests/functional/test_oauth_core.py."""

from __future__ import annotations

import base64
import json
import traceback

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _oauth
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import (
    DiscoveryError, InsecureTransportError, OAuthClient, OAuthError, ProviderError, ResponseError, TOKEN_TYPE_ACCESS, TOKEN_TYPE_ID,
    TOKEN_TYPE_JWT, TOKEN_TYPE_REFRESH, TokenResponse, _body_hint,
    check_url_transport, normalize_issuer, resolve_token_type)


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
    client._client_auth(form, headers, 'client_secret_basic')
    assert form == []
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


# -- JSON nested too deeply (JWTs: test_jwt.py) -----------------------------------------------------

ISSUER = 'https://iam.example.org'
CLIENT_SECRET = 'hunter2-client-secret'
REFRESH_TOKEN = 'SECRET-RT-value'
DEEP_ARRAY = b'[' * 100000 + b']' * 100000                      # beyond what json.loads can recurse into
DEEP_INSIDE_OBJECT = b'{"access_token": "AT", "active": true, "x": ' + b'[' * 100 + b']' * 100 + b'}'   # parses, but too deep


class FakeResponse(object):
    """What OAuthClient._send reads of a requests response."""

    def __init__(self, body, status=200, headers=None):
        self.body = body
        self.status_code = status
        self.headers = headers or {'Content-Type': 'application/json'}

    def iter_content(self, size):
        for start in range(0, len(self.body), size):
            yield self.body[start:start + size]

    def close(self):
        pass


def fake_provider(monkeypatch, answers):
    """An OAuthClient whose session answers from answers ({url: body}); no network, fresh discovery cache."""
    monkeypatch.setattr(_oauth, '_METADATA_CACHE', {})
    client = OAuthClient(ISSUER, 'client', CLIENT_SECRET, retries=0)
    discovery = json.dumps({'issuer': ISSUER, 'token_endpoint': ISSUER + '/token',
                            'introspection_endpoint': ISSUER + '/introspect',
                            'token_endpoint_auth_methods_supported': ['client_secret_post']}).encode()
    answers = dict({ISSUER + '/.well-known/openid-configuration': discovery}, **answers)

    def request(method, url, **kwargs):
        return FakeResponse(answers[url]) if url in answers else FakeResponse(b'{}', status=404)
    monkeypatch.setattr(client._session, 'request', request)
    return client


def full_traceback(exc):
    return ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize('body', [DEEP_ARRAY, DEEP_INSIDE_OBJECT], ids=['recursion-limit', 'depth-cap'])
@pytest.mark.parametrize('endpoint, call', [
    ('/token', lambda client: client.refresh(REFRESH_TOKEN)),
    ('/introspect', lambda client: client.introspect(REFRESH_TOKEN)),
], ids=['token', 'introspection'])
def test_deeply_nested_http_answer_is_a_clear_response_error(monkeypatch, endpoint, call, body):
    client = fake_provider(monkeypatch, {ISSUER + endpoint: body})
    with pytest.raises(ResponseError) as info:
        call(client)
    message = str(info.value)
    assert 'nested too deeply' in message and ISSUER + endpoint in message
    assert CLIENT_SECRET not in message and REFRESH_TOKEN not in message
    assert 'RecursionError' not in full_traceback(info.value)


@pytest.mark.parametrize('body', [
    DEEP_ARRAY,
    b'{"issuer": "%s", "token_endpoint": "%s/token", "x": %s}' % (ISSUER.encode(), ISSUER.encode(), b'[' * 100 + b']' * 100),
], ids=['recursion-limit', 'depth-cap'])
def test_deeply_nested_discovery_answer_is_a_clear_error(monkeypatch, body):
    client = fake_provider(monkeypatch, {ISSUER + '/.well-known/openid-configuration': body})
    with pytest.raises(DiscoveryError) as info:
        client.metadata
    assert 'nested too deeply' in str(info.value) and CLIENT_SECRET not in str(info.value)
    assert 'RecursionError' not in full_traceback(info.value)


def test_shallow_http_answer_still_parses(monkeypatch):
    body = json.dumps({'access_token': 'AT', 'expires_in': 60, 'x': [[[{'y': [1]}]]]}).encode()
    client = fake_provider(monkeypatch, {ISSUER + '/token': body})
    assert client.refresh(REFRESH_TOKEN).access_token == 'AT'


# -- what providers answer differently -------------------------------------------------------------------

def scripted_provider(monkeypatch, responses, auth_methods=('client_secret_basic', 'client_secret_post'),
                      auth_method=None):
    """An OAuthClient whose token and revocation endpoints answer from ``responses`` (FakeResponses, in order);
    records (url, Authorization header, form) of every request to them."""
    monkeypatch.setattr(_oauth, '_METADATA_CACHE', {})
    client = OAuthClient(ISSUER, 'client', CLIENT_SECRET, retries=0, auth_method=auth_method)
    discovery = FakeResponse(json.dumps({
        'issuer': ISSUER + '/', 'token_endpoint': ISSUER + '/token', 'revocation_endpoint': ISSUER + '/revoke',
        'token_endpoint_auth_methods_supported': list(auth_methods)}).encode())
    seen = []

    def request(method, url, data=None, headers=None, **kwargs):
        if url.endswith('/.well-known/openid-configuration'):
            return discovery
        seen.append((url, (headers or {}).get('Authorization'), dict(data or [])))
        return responses.pop(0)
    monkeypatch.setattr(client._session, 'request', request)
    return client, seen


@pytest.mark.parametrize('body, content_type', [
    (b'OK', 'text/plain'), (b'', 'application/json'), (b'{}', 'application/json'), (b'revoked', None)])
def test_revocation_succeeds_on_any_2xx_that_is_not_a_page(monkeypatch, body, content_type):
    """RFC 7009: the client ignores the body of a successful revocation (a provider answered 200 text/plain OK)."""
    headers = {'Content-Type': content_type} if content_type else {}
    client, seen = scripted_provider(monkeypatch, [FakeResponse(body, 200, headers)])
    client.revoke(REFRESH_TOKEN)
    assert len(seen) == 1


def test_revocation_answered_by_a_login_page_is_an_error(monkeypatch):
    client, _seen = scripted_provider(monkeypatch, [FakeResponse(b'<html><title>Sign in</title></html>', 200,
                                                                 {'Content-Type': 'text/html'})])
    with pytest.raises(ResponseError, match='text/html instead of a JSON object'):
        client.revoke(REFRESH_TOKEN)


INVALID_CLIENT = FakeResponse(json.dumps({'error': 'invalid_client', 'error_description': 'bad auth'}).encode(), 401)


def test_invalid_client_tries_the_other_method_once_and_keeps_it(monkeypatch):
    ok = FakeResponse(json.dumps({'access_token': 'a', 'refresh_token': 'r'}).encode())
    client, seen = scripted_provider(monkeypatch, [INVALID_CLIENT, ok, ok])
    assert client.refresh(REFRESH_TOKEN).refresh_token == 'r'
    assert seen[0][1].startswith('Basic ') and 'client_secret' not in seen[0][2]
    assert seen[1][1] is None and seen[1][2]['client_secret'] == CLIENT_SECRET
    assert client.auth_method == 'client_secret_post'
    client.refresh(REFRESH_TOKEN)
    assert len(seen) == 3 and seen[2][1] is None


def test_invalid_client_with_both_methods_is_the_providers_error(monkeypatch):
    client, seen = scripted_provider(monkeypatch, [INVALID_CLIENT, INVALID_CLIENT])
    with pytest.raises(ProviderError, match='invalid_client'):
        client.refresh(REFRESH_TOKEN)
    assert len(seen) == 2


KEYCLOAK_WRONG_CLIENT = FakeResponse(json.dumps({'error': 'unauthorized_client', 'error_description':
                                                 'Invalid client or Invalid client credentials'}).encode(), 401)


def test_keycloaks_401_unauthorized_client_is_a_client_authentication_failure(monkeypatch):
    ok = FakeResponse(json.dumps({'access_token': 'a', 'refresh_token': 'r'}).encode())
    client, seen = scripted_provider(monkeypatch, [KEYCLOAK_WRONG_CLIENT, ok])
    assert client.refresh(REFRESH_TOKEN).refresh_token == 'r'
    assert len(seen) == 2 and client.auth_method == 'client_secret_post'
    client, seen = scripted_provider(monkeypatch, [KEYCLOAK_WRONG_CLIENT, KEYCLOAK_WRONG_CLIENT])
    with pytest.raises(ProviderError, match='unauthorized_client .*the client was not authenticated; check client_id'):
        client.refresh(REFRESH_TOKEN)


def test_unauthorized_client_for_a_grant_is_not_retried(monkeypatch):
    """A 400 unauthorized_client is RFC 6749's "not allowed this grant": the client did authenticate."""
    refused = FakeResponse(json.dumps({'error': 'unauthorized_client'}).encode(), 400)
    client, seen = scripted_provider(monkeypatch, [refused])
    with pytest.raises(ProviderError) as info:
        client.refresh(REFRESH_TOKEN)
    assert len(seen) == 1 and 'not authenticated' not in str(info.value)


def test_a_chosen_auth_method_is_never_second_guessed(monkeypatch):
    client, seen = scripted_provider(monkeypatch, [INVALID_CLIENT], auth_method='client_secret_basic')
    with pytest.raises(ProviderError, match='invalid_client'):
        client.refresh(REFRESH_TOKEN)
    assert len(seen) == 1


def test_the_issuer_as_the_provider_names_it(monkeypatch):
    client, _seen = scripted_provider(monkeypatch, [])
    assert client.announced_issuer == ISSUER + '/' and client.issuer == ISSUER.rstrip('/')


# -- the device flow (RFC 8628): the answer's shape and the polling deadline; the protocol itself runs against the
# test provider in tests/functional/test_device_flow.py --------------------------------------------------------

DEVICE_ANSWER = {'device_code': 'dc-secret', 'user_code': 'ABCD-EFGH', 'verification_uri': 'https://op.example/device',
                 'verification_uri_complete': 'https://op.example/device?user_code=ABCD-EFGH', 'expires_in': 600}


def test_device_authorization_defaults_to_a_five_second_interval_and_hides_the_device_code():
    answer = _oauth.DeviceAuthorization.from_json(DEVICE_ANSWER, ISSUER, received_at=1000)
    assert (answer.interval, answer.expires_at, answer.user_code) == (5, 1600, 'ABCD-EFGH')
    assert 'dc-secret' not in repr(answer) and 'ABCD-EFGH' in repr(answer)
    assert _oauth.DeviceAuthorization.from_json(dict(DEVICE_ANSWER, interval=0), ISSUER).interval == 1
    assert _oauth.DeviceAuthorization.from_json(dict(DEVICE_ANSWER, interval='7'), ISSUER).interval == 7
    without = dict(DEVICE_ANSWER)
    del without['verification_uri_complete']
    assert _oauth.DeviceAuthorization.from_json(without, ISSUER).verification_uri_complete is None


@pytest.mark.parametrize('change, words', [
    ({'device_code': None}, 'no device_code'),
    ({'user_code': ''}, 'no user_code'),
    ({'expires_in': 0}, 'no positive expires_in'),
    ({'expires_in': None}, 'no positive expires_in'),
    ({'interval': 'soon'}, 'non-numeric interval'),
    ({'verification_uri': 'javascript:alert(1)'}, 'not http(s)'),
    ({'verification_uri_complete': 'file:///etc/passwd'}, 'not http(s)'),
])
def test_unusable_device_authorization_answers_are_clear_errors(change, words):
    with pytest.raises(ResponseError) as info:
        _oauth.DeviceAuthorization.from_json(dict(DEVICE_ANSWER, **change), ISSUER)
    assert words in str(info.value) and 'dc-secret' not in str(info.value)


def test_polling_stops_before_a_poll_that_would_end_after_the_deadline():
    client = OAuthClient(ISSUER, 'device-client')
    slept = []
    with pytest.raises(_oauth.DeviceFlowError) as info:
        client.poll_device_token('dc-secret', 5, deadline=1004, sleep=slept.append, clock=lambda: 1000.0)
    assert info.value.reason == 'timeout' and slept == [] and 'dc-secret' not in str(info.value)
    assert 'Nobody approved the device login' in str(info.value)


def test_an_approved_login_that_keycloak_refuses_for_a_consent_not_yet_saved_says_to_log_in_again(monkeypatch):
    """Keycloak 26 marks the device code approved before it commits the user's consent; for a client with "Consent
    required" on, a poll in between gets invalid_scope and the device code is spent."""
    refused = FakeResponse(json.dumps({'error': 'invalid_scope', 'error_description':
                                       'Client no longer has requested consent from user'}).encode(), 400)
    client, seen = scripted_provider(monkeypatch, [refused])
    with pytest.raises(_oauth.DeviceFlowError) as info:
        client.poll_device_token('dc-secret', 1, deadline=2000, sleep=lambda seconds: None, clock=lambda: 1000.0)
    assert info.value.reason == 'consent_race' and len(seen) == 1
    assert 'Client no longer has requested consent from user' in str(info.value)
    assert 'start the login again' in str(info.value) and 'dc-secret' not in str(info.value)


def test_other_refusals_of_a_device_poll_are_the_provider_s_error(monkeypatch):
    refused = FakeResponse(json.dumps({'error': 'invalid_scope', 'error_description': 'unknown scope'}).encode(), 400)
    client, _seen = scripted_provider(monkeypatch, [refused])
    with pytest.raises(ProviderError) as info:
        client.poll_device_token('dc-secret', 1, deadline=2000, sleep=lambda seconds: None, clock=lambda: 1000.0)
    assert info.value.error == 'invalid_scope' and 'unknown scope' in str(info.value)
    assert 'login again' not in str(info.value)
