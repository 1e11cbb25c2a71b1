"""A real Keycloak (tests/support/keycloak.py, standard token exchange) met with the collection's own OAuth client.

One Keycloak for the module (HTTPS with a CA made here). What is pinned is what a user of the collection meets:
discovery and the issuer as Keycloak names it, a refresh token from an exchange without offline_access, the
refusal of offline_access, rotation and reuse detection, revocation, and the refusals of a client outside the
subject token's audience and of an unknown audience. The raw answers (status, error, error_description, the
fields of an exchange) are checked too: the collection's handling of Keycloak is built on them.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote_plus

import pytest
import requests

from ansible_collections.oidc.tokens.plugins.module_utils import _oauth
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient, ProviderError
from keycloak import Keycloak

EXCHANGER = 'oidc-tokens-exchanger'
POST_EXCHANGER = 'oidc-tokens-exchanger-post'
OUTSIDER = 'oidc-tokens-outsider'        # may exchange, but is in no subject token's aud
SCOPE = ['openid', 'storage.read:/', 'compute.read']
AT_TTL = 30
RT_TTL = 900                              # SSO Session Idle: what a Keycloak refresh token lives
GRANT_TE = 'urn:ietf:params:oauth:grant-type:token-exchange'
TT_ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
TT_REFRESH = 'urn:ietf:params:oauth:token-type:refresh_token'


@pytest.fixture(scope='module')
def keycloak(tmp_path_factory):
    instance = Keycloak(tls=True, at_ttl=AT_TTL, rt_ttl=RT_TTL, workdir=str(tmp_path_factory.mktemp('keycloak')))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(autouse=True)
def fresh_discovery_cache():
    _oauth._METADATA_CACHE.clear()
    yield
    _oauth._METADATA_CACHE.clear()


def oauth(keycloak, name=EXCHANGER, **kwargs):
    entry = keycloak.client(name)
    return OAuthClient(keycloak.issuer, entry['client_id'], entry['client_secret'], auth_method=entry['auth_method'],
                       ca_path=keycloak.ca_path, retries=0, **kwargs)


def claims(token):
    payload = token.split('.')[1]
    return json.loads(base64.urlsafe_b64decode(payload + '=' * (-len(payload) % 4)))


def raw_exchange(keycloak, subject, name=EXCHANGER, **extra):
    """The exchange as plain HTTP (RFC 6749 form-urlencoded Basic credentials): Keycloak's answer as sent."""
    entry = keycloak.client(name)
    form = dict({'grant_type': GRANT_TE, 'subject_token': subject, 'subject_token_type': TT_ACCESS,
                 'requested_token_type': TT_REFRESH}, **extra)
    return requests.post(keycloak.token_endpoint, data=form, verify=keycloak.ca_path, timeout=10,
                         auth=(quote_plus(entry['client_id']), quote_plus(entry['client_secret'])))


def refused(excinfo):
    exc = excinfo.value
    return exc.status, exc.error, exc.error_description


# -- discovery -----------------------------------------------------------------------------------

def test_discovery_and_issuer_as_keycloak_names_it(keycloak):
    client = oauth(keycloak)
    issuer = 'https://127.0.0.1:%d/realms/oidc-tokens' % keycloak.ready['port']
    assert keycloak.issuer == issuer and client.metadata['issuer'] == issuer
    assert client.endpoint('token_endpoint') == issuer + '/protocol/openid-connect/token'
    assert client.endpoint('revocation_endpoint') == issuer + '/protocol/openid-connect/revoke'
    assert client.endpoint('introspection_endpoint') == issuer + '/protocol/openid-connect/token/introspect'
    assert GRANT_TE in client.metadata['grant_types_supported']
    assert {'client_secret_basic', 'client_secret_post'} <= set(client.metadata['token_endpoint_auth_methods_supported'])
    assert {'compute.read', 'storage.read:/', 'offline_access'} <= set(client.metadata['scopes_supported'])


def test_the_users_access_token_names_the_exchanging_clients(keycloak):
    token = keycloak.user_access_token()
    verified = oauth(keycloak).verify_jwt(token, audience=EXCHANGER)
    assert {EXCHANGER, POST_EXCHANGER} <= set(verified['aud'])
    assert verified['azp'] == 'user-cli' and verified['sub'] == keycloak.user('alice')['sub']
    assert verified['exp'] - verified['iat'] == AT_TTL
    assert claims(keycloak.user_access_token('bob'))['sub'] == keycloak.user('bob')['sub']


# -- exchange ------------------------------------------------------------------------------------

def test_exchange_without_offline_access_gives_a_refresh_token(keycloak):
    token = oauth(keycloak).token_exchange(keycloak.user_access_token(), requested_token_type='refresh_token',
                                           scope=SCOPE)
    assert token.refresh_token and token.access_token
    assert token.issued_token_type == TT_REFRESH and token.token_type == 'Bearer'
    assert set(SCOPE) <= set(token.scope.split()) and 'offline_access' not in token.scope.split()

    answer = raw_exchange(keycloak, keycloak.user_access_token(), scope=' '.join(SCOPE))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {'access_token', 'expires_in', 'refresh_expires_in', 'refresh_token', 'token_type',
                         'id_token', 'not-before-policy', 'session_state', 'scope', 'issued_token_type'}
    assert body['issued_token_type'] == TT_REFRESH and body['expires_in'] == AT_TTL
    # The refresh token is a JWT (HS512, Keycloak's own key): exp is readable, and follows SSO Session Idle.
    # Keycloak counts the idle time from the session's last refresh, in whole seconds, so a second boundary
    # crossed between the two can take one second off.
    assert RT_TTL - 2 <= body['refresh_expires_in'] <= RT_TTL
    rt = claims(body['refresh_token'])
    assert rt['typ'] == 'Refresh' and rt['azp'] == EXCHANGER and RT_TTL - 2 <= rt['exp'] - rt['iat'] <= RT_TTL
    assert rt['sid'] == body['session_state'] == claims(body['access_token'])['sid']


def test_both_client_authentication_methods(keycloak):
    """client_secret_post for one client, form-urlencoded Basic with a secret full of specials for the other;
    Keycloak's client-secret authenticator takes either from any confidential client."""
    subject = keycloak.user_access_token()
    assert oauth(keycloak, POST_EXCHANGER).token_exchange(subject, scope=SCOPE).refresh_token
    assert oauth(keycloak, EXCHANGER).token_exchange(subject, scope=SCOPE).refresh_token
    entry = keycloak.client(EXCHANGER)
    swapped = OAuthClient(keycloak.issuer, entry['client_id'], entry['client_secret'], auth_method='client_secret_post',
                          ca_path=keycloak.ca_path, retries=0)
    assert swapped.token_exchange(subject, scope=SCOPE).refresh_token


def test_exchange_with_offline_access_is_refused(keycloak):
    with pytest.raises(ProviderError) as excinfo:
        oauth(keycloak).token_exchange(keycloak.user_access_token(), requested_token_type='refresh_token',
                                       scope=SCOPE + ['offline_access'])
    assert refused(excinfo) == (400, 'invalid_request', 'Scope offline_access not allowed for token exchange')


def test_a_subject_token_of_an_offline_session_gives_no_refresh_token(keycloak):
    """The user's own login asked offline_access: its access token cannot be exchanged for a refresh token."""
    subject = keycloak.user_access_token(scope='openid offline_access compute.read')
    with pytest.raises(ProviderError) as excinfo:
        oauth(keycloak).token_exchange(subject, scope=SCOPE)
    assert refused(excinfo) == (400, 'invalid_request', 'Refresh token not valid as requested_token_type because '
                                                        'creating a new session is needed')


def test_a_client_outside_the_subject_tokens_audience_is_refused(keycloak):
    with pytest.raises(ProviderError) as excinfo:
        oauth(keycloak, OUTSIDER).token_exchange(keycloak.user_access_token(), scope=SCOPE)
    assert refused(excinfo) == (403, 'access_denied', 'Client is not within the token audience')


def test_audiences(keycloak):
    """An existing client the exchanger's scopes give is kept in aud; an unknown one is refused as invalid_client
    (not a client-authentication failure)."""
    client = oauth(keycloak)
    subject = keycloak.user_access_token()
    token = client.token_exchange(subject, scope=SCOPE, audience='plain-client')
    assert claims(token.access_token)['aud'] == 'plain-client'
    with pytest.raises(ProviderError) as excinfo:
        client.token_exchange(subject, scope=SCOPE, audience='nonexistent')
    assert refused(excinfo) == (400, 'invalid_client', 'Audience not found')


# -- refresh, rotation, revocation -----------------------------------------------------------------

def test_refresh_rotates_and_a_reused_refresh_token_ends_the_chain(keycloak):
    client = oauth(keycloak)
    first = client.token_exchange(keycloak.user_access_token(), scope=SCOPE).refresh_token
    second = client.refresh(first)
    assert second.access_token and second.refresh_token and second.refresh_token != first
    assert set(SCOPE) <= set(second.scope.split())
    with pytest.raises(ProviderError) as excinfo:
        client.refresh(first)
    assert refused(excinfo) == (400, 'invalid_grant', 'Maximum allowed refresh token reuse exceeded')
    # Reuse detection detaches the client session: the rotated token dies with it.
    with pytest.raises(ProviderError) as excinfo:
        client.refresh(second.refresh_token)
    assert refused(excinfo) == (400, 'invalid_grant', "Session doesn't have required client")


def test_revoke_then_introspect_inactive(keycloak):
    client = oauth(keycloak)
    rt = client.token_exchange(keycloak.user_access_token(), scope=SCOPE).refresh_token
    # Keycloak shows a refresh token only to the client it was issued to, and only with the hint.
    assert client.introspect(rt, token_type_hint='refresh_token')['active'] is True
    assert client.introspect(rt)['active'] is False
    assert oauth(keycloak, 'plain-client').introspect(rt, token_type_hint='refresh_token')['active'] is False

    entry = keycloak.client(EXCHANGER)
    revoke = requests.post(client.endpoint('revocation_endpoint'), verify=keycloak.ca_path, timeout=10,
                           data={'token': rt, 'token_type_hint': 'refresh_token'},
                           auth=(quote_plus(entry['client_id']), quote_plus(entry['client_secret'])))
    assert (revoke.status_code, revoke.content, revoke.headers.get('Content-Type')) == (200, b'', None)
    assert client.introspect(rt, token_type_hint='refresh_token')['active'] is False
    assert keycloak.introspect(rt)['active'] is False
    with pytest.raises(ProviderError) as excinfo:
        client.refresh(rt)
    assert refused(excinfo) == (400, 'invalid_grant', "Session doesn't have required client")

    # Revoking it again: HTTP 200, but with an OAuth error in a JSON body.
    again = requests.post(client.endpoint('revocation_endpoint'), verify=keycloak.ca_path, timeout=10,
                          data={'token': rt, 'token_type_hint': 'refresh_token'},
                          auth=(quote_plus(entry['client_id']), quote_plus(entry['client_secret'])))
    assert again.status_code == 200
    assert again.json() == {'error': 'invalid_token', 'error_description': 'Invalid token'}


def test_the_collections_revoke(keycloak):
    client = oauth(keycloak)
    rt = client.token_exchange(keycloak.user_access_token(), scope=SCOPE).refresh_token
    assert client.revoke(rt) is None
    assert keycloak.introspect(rt)['active'] is False
    counts = keycloak.counts()
    assert counts['revocation'] >= 1 and counts['exchange'] >= 1


def test_state_has_the_keys_of_the_node_provider(keycloak):
    state = keycloak.state()
    assert {'issuer', 'url', 'port', 'ca_path', 'pid', 'clients', 'users', 'token_endpoint', 'at_ttl',
            'rt_ttl', 'user_at_ttl', 'tls', 'log'} <= set(state)
    assert state['issuer'] == keycloak.issuer and state['clients'][EXCHANGER]['auth_method'] == 'client_secret_basic'
    assert state['clients'][POST_EXCHANGER]['auth_method'] == 'client_secret_post'
    assert keycloak.started_in < 180


# -- what the collection makes of Keycloak's answers ---------------------------------------------------------

def test_offline_access_auto_gets_a_refresh_token_from_keycloak(keycloak):
    from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
    token = _tokens.exchange(oauth(keycloak), keycloak.user_access_token(), scope=SCOPE)
    assert token.refresh_token and token.offline_access_requested is False
    # Keycloak says how long the refresh token lives (SSO Session Idle here), and so does its JWT.
    assert abs(token.refresh_token_expires_at - (token.received_at + RT_TTL)) <= 5


def test_a_refresh_token_shorter_than_the_lifetime_is_warned_about_or_refused(keycloak, tmp_path):
    """Keycloak binds the exchanged refresh token to the SSO session; a 7-day job needs the admin to know."""
    from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
    client = oauth(keycloak)
    token = _tokens.exchange(client, keycloak.user_access_token(), scope=SCOPE)
    account = _tokens.build_account('job1', client.announced_issuer, client.client_id, 'x', token.refresh_token,
                                    token.scope, lifetime=7 * 86400)
    account.meta['refresh_token_expires_at'] = token.refresh_token_expires_at
    message = _tokens.short_refresh_token('job1', account)
    assert message and 'SSO Session Max' in message and 'before its lifetime ends' in message
    account = _tokens.build_account('job1', client.announced_issuer, client.client_id, 'x', token.refresh_token,
                                    token.scope, lifetime=RT_TTL // 2)
    account.meta['refresh_token_expires_at'] = token.refresh_token_expires_at
    assert _tokens.short_refresh_token('job1', account) is None


def test_keycloaks_refusals_say_what_the_admin_must_configure(keycloak):
    from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
    with pytest.raises(ProviderError) as info:
        _tokens.exchange(oauth(keycloak, OUTSIDER), keycloak.user_access_token(), scope=SCOPE)
    assert 'audience mapper' in str(info.value) and OUTSIDER in str(info.value)
    with pytest.raises(ProviderError) as info:
        _tokens.exchange(oauth(keycloak), keycloak.user_access_token(), scope=SCOPE, audience=['no-such-client'])
    assert 'must be a client the provider knows' in str(info.value) and 'no-such-client' in str(info.value)


def test_refresh_tokens_of_one_login_share_a_session_and_a_replaced_one_is_not_revoked(keycloak):
    """Keycloak: every refresh token a client gets by exchange from one login session shares one client session,
    and revoking one ends them all. A replaced token of the same session is therefore left to die with it."""
    from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
    client = oauth(keycloak)
    subject = keycloak.user_access_token()
    first = _tokens.exchange(client, subject, scope=SCOPE)
    second = _tokens.exchange(client, subject, scope=SCOPE)
    other_login = _tokens.exchange(client, keycloak.user_access_token(), scope=SCOPE)
    assert _tokens.same_session(first.refresh_token, second.refresh_token)
    assert not _tokens.same_session(first.refresh_token, other_login.refresh_token)
    client.revoke(first.refresh_token)
    with pytest.raises(ProviderError, match='invalid_grant'):
        client.refresh(second.refresh_token)
    assert client.refresh(other_login.refresh_token).access_token
