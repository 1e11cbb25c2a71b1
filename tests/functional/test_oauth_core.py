"""The OAuth core (plugins/module_utils/_oauth.py) against the real node-oidc-provider.

Faults come from a real proxy between client and provider (tests/support/fault_proxy.py).
"""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _oauth
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import (
    InsecureTransportError, IssuerMismatchError, OAuthClient, ProviderError, ResponseError, TOKEN_TYPE_REFRESH,
    TransportError)
from fault_proxy import FaultProxy

SCOPE = 'openid profile offline_access storage.read:/ compute.read'


@pytest.fixture(autouse=True)
def fresh_discovery_cache():
    # Each test starts like a new worker process would.
    _oauth._METADATA_CACHE.clear()
    yield
    _oauth._METADATA_CACHE.clear()


def make_client(provider, name='oidc-tokens-exchanger', **kwargs):
    client = provider.client(name)
    kwargs.setdefault('ca_path', provider.ca_path)
    kwargs.setdefault('retries', 2)
    kwargs.setdefault('backoff', 0.05)
    return OAuthClient(provider.issuer, client['client_id'], client['client_secret'], **kwargs)


def jwt_claims(token):
    payload = token.split('.')[1]
    return json.loads(base64.urlsafe_b64decode(payload + '=' * (-len(payload) % 4)))


def assert_no_secret(exc, *secrets):
    text = str(exc) + repr(exc.args)
    for secret in secrets:
        assert secret not in text


# -- discovery ----------------------------------------------------------------------------------

def test_discovery_accepts_issuer_with_or_without_trailing_slash(provider):
    bare = make_client(provider)
    assert bare.metadata['token_endpoint'].startswith(provider.issuer.rstrip('/'))
    _oauth._METADATA_CACHE.clear()
    client = provider.client('oidc-tokens-exchanger')
    slashed = OAuthClient(provider.issuer.rstrip('/') + '/', client['client_id'], client['client_secret'])
    assert slashed.metadata['issuer'].rstrip('/') == provider.issuer.rstrip('/')


def test_discovery_refuses_a_document_naming_another_issuer(provider):
    # The provider announces http://127.0.0.1:PORT; the user configured http://localhost:PORT.
    wrong = provider.issuer.replace('127.0.0.1', 'localhost')
    client = provider.client('oidc-tokens-exchanger')
    oauth = OAuthClient(wrong, client['client_id'], client['client_secret'])
    with pytest.raises(IssuerMismatchError) as info:
        oauth.metadata
    assert provider.issuer.rstrip('/') in str(info.value) and wrong in str(info.value)
    with pytest.raises(IssuerMismatchError):
        oauth.token_exchange(provider.user_access_token())


def test_discovery_falls_back_to_rfc8414_metadata(provider_factory):
    provider = provider_factory(discovery='oauth')
    oauth = make_client(provider)
    assert oauth.metadata['token_endpoint']
    token = oauth.token_exchange(provider.user_access_token(), scope=SCOPE)
    assert token.refresh_token


# -- token exchange -----------------------------------------------------------------------------

def test_exchange_basic_auth_returns_a_refresh_token_that_refreshes(provider):
    oauth = make_client(provider)
    assert oauth.auth_method == 'client_secret_basic'
    subject = provider.user_access_token()
    token = oauth.token_exchange(subject, scope=SCOPE.split())
    assert token.refresh_token and token.access_token
    assert token.expires_at and token.expires_at > time.time()
    assert 'offline_access' in token.scope.split()
    assert 'TokenResponse' in repr(token) and token.refresh_token not in repr(token)
    refreshed = oauth.refresh(token.refresh_token)
    assert refreshed.access_token and refreshed.access_token != token.access_token


def test_exchange_strict_rfc8693_shape_is_normalised(provider_factory):
    provider = provider_factory(exchange_shape='strict')
    oauth = make_client(provider)
    token = oauth.token_exchange(provider.user_access_token(), scope=SCOPE)
    assert token.issued_token_type == TOKEN_TYPE_REFRESH
    assert token.refresh_token and token.access_token is None
    assert oauth.refresh(token.refresh_token).access_token


def test_exchange_with_client_secret_post(provider):
    oauth = make_client(provider, 'oidc-tokens-exchanger-post', auth_method='client_secret_post')
    token = oauth.token_exchange(provider.user_access_token(), scope=SCOPE)
    assert token.refresh_token
    basic = make_client(provider, 'oidc-tokens-exchanger-post', auth_method='client_secret_basic')
    with pytest.raises(ProviderError) as info:
        basic.token_exchange(provider.user_access_token(), scope=SCOPE)
    assert info.value.error == 'invalid_client'


def test_exchange_over_https_with_generated_ca(provider_factory):
    provider = provider_factory(tls=True)
    assert provider.issuer.startswith('https://')
    token = make_client(provider).token_exchange(provider.user_access_token(), scope=SCOPE)
    assert token.refresh_token
    _oauth._METADATA_CACHE.clear()
    unverified = make_client(provider, ca_path=None)
    with pytest.raises(TransportError) as info:
        unverified.metadata
    assert 'TLS verification' in str(info.value) and 'ca_path' in str(info.value)
    assert make_client(provider, ca_path=None, validate_certs=False).metadata['issuer']


def test_exchange_of_a_jwt_access_token(provider_factory):
    provider = provider_factory(access_token_format='jwt')
    subject = provider.user_access_token()
    assert jwt_claims(subject)['iss'].rstrip('/') == provider.issuer.rstrip('/')
    oauth = make_client(provider)
    token = oauth.token_exchange(subject, subject_token_type='jwt', scope=SCOPE)
    assert token.refresh_token
    assert jwt_claims(oauth.refresh(token.refresh_token).access_token)['sub'] == jwt_claims(subject)['sub']


def test_exchange_may_narrow_scope_and_add_offline_access(provider):
    oauth = make_client(provider)
    subject = provider.user_access_token(scope='openid storage.read:/ compute.read')
    token = oauth.token_exchange(subject, scope=['openid', 'compute.read', 'offline_access'])
    assert set(token.scope.split()) == {'openid', 'compute.read', 'offline_access'}


def test_exchange_up_scoping_is_refused(provider):
    oauth = make_client(provider)
    subject = provider.user_access_token(scope='openid compute.read')
    with pytest.raises(ProviderError) as info:
        oauth.token_exchange(subject, scope='openid compute.read compute.modify offline_access')
    assert info.value.error == 'invalid_scope'


@pytest.mark.parametrize('how', ['garbage', 'expired', 'revoked'])
def test_exchange_of_an_unusable_subject_token_is_invalid_request(provider_factory, provider, how):
    if how == 'expired':
        provider = provider_factory(at_ttl=1)
    oauth = make_client(provider)
    subject = 'not-a-token-at-all' if how == 'garbage' else provider.user_access_token()
    if how == 'expired':
        time.sleep(2.2)
    if how == 'revoked':
        user = provider.client('user-cli')
        OAuthClient(provider.issuer, user['client_id'], user['client_secret']).revoke(subject, 'access_token')
    with pytest.raises(ProviderError) as info:
        oauth.token_exchange(subject, scope=SCOPE)
    assert info.value.error == 'invalid_request'
    assert info.value.error_description
    assert 'invalid_request' in str(info.value) and info.value.error_description in str(info.value)
    assert_no_secret(info.value, subject, provider.client('oidc-tokens-exchanger')['client_secret'])


def test_exchange_by_a_client_without_the_grant_is_refused(provider):
    oauth = make_client(provider, 'plain-client')
    with pytest.raises(ProviderError) as info:
        oauth.token_exchange(provider.user_access_token(), scope=SCOPE)
    assert info.value.error == 'unauthorized_client'


def test_wrong_client_secret_is_invalid_client_and_not_echoed(provider):
    client = provider.client('oidc-tokens-exchanger')
    oauth = OAuthClient(provider.issuer, client['client_id'], 'wrong-secret-value-123')
    subject = provider.user_access_token()
    with pytest.raises(ProviderError) as info:
        oauth.token_exchange(subject, scope=SCOPE)
    assert info.value.error == 'invalid_client' and info.value.status == 401
    assert_no_secret(info.value, 'wrong-secret-value-123', subject)


def test_exchange_passes_audience_and_resource(provider):
    oauth = make_client(provider)
    token = oauth.token_exchange(provider.user_access_token(), scope=SCOPE,
                                 audience=['https://storage.example'], requested_token_type='refresh_token')
    assert token.refresh_token


# -- refresh, rotation, revocation, introspection -----------------------------------------------

def test_refresh_rotates_and_the_spent_token_is_refused(provider):
    oauth = make_client(provider)
    first = oauth.token_exchange(provider.user_access_token(), scope=SCOPE).refresh_token
    second = oauth.refresh(first)
    assert second.refresh_token and second.refresh_token != first
    with pytest.raises(ProviderError) as info:
        oauth.refresh(first)
    assert info.value.error == 'invalid_grant'
    assert_no_secret(info.value, first, second.refresh_token)
    # Reuse detection: replaying a spent RT revoked the whole grant, the new RT too.
    with pytest.raises(ProviderError):
        oauth.refresh(second.refresh_token)


def test_refresh_down_scopes_and_refuses_up_scoping(provider):
    oauth = make_client(provider)
    rt = oauth.token_exchange(provider.user_access_token(scope='openid offline_access compute.read'),
                              scope='openid offline_access compute.read').refresh_token
    narrowed = oauth.refresh(rt, scope=['openid', 'compute.read'])
    assert set(narrowed.scope.split()) <= {'openid', 'compute.read'}
    with pytest.raises(ProviderError) as info:
        oauth.refresh(narrowed.refresh_token, scope='openid compute.modify')
    assert info.value.error == 'invalid_scope'


def test_revocation_kills_the_refresh_token(provider):
    oauth = make_client(provider)
    rt = oauth.token_exchange(provider.user_access_token(), scope=SCOPE).refresh_token
    info = oauth.introspect(rt, 'refresh_token')
    assert info['active'] is True and info['client_id'] == oauth.client_id
    oauth.revoke(rt)
    assert oauth.introspect(rt, 'refresh_token')['active'] is False
    with pytest.raises(ProviderError) as refused:
        oauth.refresh(rt)
    assert refused.value.error == 'invalid_grant'
    oauth.revoke(rt)  # revoking twice is fine (RFC 7009 §2.2)


# -- transport rules and faults -----------------------------------------------------------------

def test_plain_http_to_a_remote_host_is_refused_before_any_request():
    with pytest.raises(InsecureTransportError) as info:
        OAuthClient('http://iam.example.org/', 'id', 'secret')
    assert 'https' in str(info.value)
    assert OAuthClient('http://iam.example.org/', 'id', 'secret', allow_insecure_http=True).issuer


@pytest.fixture
def proxied(provider_factory):
    """A provider whose issuer is a fault proxy's address, and that proxy."""
    port = free_port()
    provider = provider_factory(issuer='http://127.0.0.1:%d' % port)
    proxy = FaultProxy(provider.url, port=port).start()
    yield provider, proxy
    proxy.stop()


def test_discovery_is_fetched_once_per_process(proxied):
    provider, proxy = proxied
    make_client(provider).metadata
    make_client(provider).metadata
    assert proxy.requests == 1


def test_html_answer_is_a_clear_error_naming_the_status(proxied):
    provider, proxy = proxied
    oauth = make_client(provider)
    oauth.metadata
    proxy.push('html')
    with pytest.raises(ResponseError) as info:
        oauth.token_exchange(provider.user_access_token(), scope=SCOPE)
    assert 'HTTP 200' in str(info.value) and 'text/html' in str(info.value)
    assert 'Sign in to the network' in str(info.value)


def test_5xx_is_retried_then_succeeds(proxied):
    provider, proxy = proxied
    oauth = make_client(provider, retries=2)
    rt = oauth.token_exchange(provider.user_access_token(), scope=SCOPE).refresh_token
    proxy.push('status:503', 2)
    before = proxy.requests
    assert oauth.refresh(rt).access_token
    assert proxy.requests - before == 3


def test_persistent_5xx_gives_up_after_the_retries(proxied):
    provider, proxy = proxied
    oauth = make_client(provider, retries=2)
    oauth.metadata
    proxy.push('status:502', 5)
    before = proxy.requests
    with pytest.raises(ResponseError) as info:
        oauth.introspect('whatever')
    assert 'HTTP 502' in str(info.value)
    assert proxy.requests - before == 3


def test_a_500_on_refresh_is_not_replayed(proxied):
    # The provider may have rotated the RT before failing: replaying could revoke the grant.
    provider, proxy = proxied
    oauth = make_client(provider, retries=3)
    rt = oauth.token_exchange(provider.user_access_token(), scope=SCOPE).refresh_token
    proxy.push('status:500')
    before = proxy.requests
    with pytest.raises(ResponseError):
        oauth.refresh(rt)
    assert proxy.requests - before == 1


def test_4xx_is_never_retried(proxied):
    provider, proxy = proxied
    oauth = make_client(provider, retries=3)
    oauth.metadata
    before = proxy.requests
    with pytest.raises(ProviderError) as info:
        oauth.refresh('no-such-refresh-token')
    assert info.value.error == 'invalid_grant'
    assert proxy.requests - before == 1


def test_reset_after_the_provider_acted_is_not_replayed_for_refresh(proxied):
    provider, proxy = proxied
    oauth = make_client(provider, retries=3)
    rt = oauth.token_exchange(provider.user_access_token(), scope=SCOPE).refresh_token
    proxy.push('reset_after')
    before = proxy.forwarded
    with pytest.raises(TransportError) as info:
        oauth.refresh(rt)
    assert 'not repeated' in str(info.value)
    assert proxy.forwarded - before == 1


def test_reset_is_retried_for_idempotent_requests(proxied):
    provider, proxy = proxied
    oauth = make_client(provider, retries=2)
    rt = oauth.token_exchange(provider.user_access_token(), scope=SCOPE).refresh_token
    proxy.push('reset_after')
    assert oauth.introspect(rt)['active'] is True


def test_truncated_answer_is_a_transport_error(proxied):
    provider, proxy = proxied
    oauth = make_client(provider, retries=0)
    oauth.metadata
    proxy.push('truncate')
    with pytest.raises((TransportError, ResponseError)):
        oauth.introspect('whatever')


def test_timeout_is_a_transport_error(proxied):
    provider, proxy = proxied
    oauth = make_client(provider, retries=0, timeout=1)
    oauth.metadata
    proxy.push('stall:3')
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        oauth.introspect('whatever')
    assert time.monotonic() - started < 2.9
    assert 'timed out' in str(info.value).lower()


def test_huge_answer_is_refused(proxied):
    provider, proxy = proxied
    oauth = make_client(provider)
    oauth.metadata
    proxy.push('huge')
    with pytest.raises(ResponseError) as info:
        oauth.introspect('whatever')
    assert 'larger than' in str(info.value)


def test_redirect_is_not_followed(proxied):
    provider, proxy = proxied
    oauth = make_client(provider)
    oauth.metadata
    proxy.push('redirect:https://evil.example/token')
    subject = provider.user_access_token()
    with pytest.raises(ResponseError) as info:
        oauth.token_exchange(subject, scope=SCOPE)
    assert 'redirect' in str(info.value) and 'HTTP 302' in str(info.value)


def test_connection_refused_is_retried_then_reported():
    port = free_port()
    oauth = OAuthClient('http://127.0.0.1:%d' % port, 'id', 'secret', retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        oauth.metadata
    assert '3 attempt(s)' in str(info.value)
    assert time.monotonic() - started < 5


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
