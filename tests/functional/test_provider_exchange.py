"""The test provider itself (tests/provider, a real node-oidc-provider), driven with plain requests.

These tests pin down the behaviour the collection's own tests rely on: RFC 8693 token exchange
rules, refresh-token rotation with reuse detection, RFC 7009 revocation, RFC 7662 introspection,
client authentication, JWT access tokens, TLS and the discovery switch. None of the collection's
code is used here.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from urllib.parse import quote_plus

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from provider import Provider, ProviderError, REPO_ROOT

GRANT_TE = 'urn:ietf:params:oauth:grant-type:token-exchange'
TT_ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
TT_REFRESH = 'urn:ietf:params:oauth:token-type:refresh_token'
TT_JWT = 'urn:ietf:params:oauth:token-type:jwt'
SCOPE = 'openid profile offline_access storage.read:/ compute.read'
EXCHANGER = 'oidc-tokens-exchanger'
POST_EXCHANGER = 'oidc-tokens-exchanger-post'


# -- helpers ------------------------------------------------------------------------------------

def basic_header(client_id, client_secret):
    """RFC 6749 §2.3.1: form-urlencode id and secret, then HTTP Basic."""
    raw = '%s:%s' % (quote_plus(client_id), quote_plus(client_secret))
    return 'Basic ' + base64.b64encode(raw.encode('utf-8')).decode('ascii')


def post(provider, endpoint, client_name, data, method=None):
    client = provider.client(client_name)
    method = method or client['auth_method']
    data = dict(data)
    headers = {'Accept': 'application/json'}
    if method == 'client_secret_basic':
        headers['Authorization'] = basic_header(client['client_id'], client['client_secret'])
    elif method == 'client_secret_post':
        data['client_id'] = client['client_id']
        data['client_secret'] = client['client_secret']
    else:  # pragma: no cover - misuse of the helper
        raise ValueError(method)
    return requests.post(endpoint, data=data, headers=headers, verify=provider.verify, timeout=10)


def token(provider, client_name, data, method=None):
    return post(provider, provider.token_endpoint, client_name, data, method)


def exchange(provider, subject, client_name=EXCHANGER, method=None, subject_token_type=TT_ACCESS,
             **extra):
    data = {'grant_type': GRANT_TE, 'subject_token': subject, 'subject_token_type': subject_token_type}
    data.update({k: v for k, v in extra.items() if v is not None})
    return token(provider, client_name, data, method)


def refresh(provider, refresh_token, client_name=EXCHANGER, **extra):
    data = {'grant_type': 'refresh_token', 'refresh_token': refresh_token}
    data.update(extra)
    return token(provider, client_name, data)


def introspect(provider, value, client_name=EXCHANGER, hint=None):
    data = {'token': value}
    if hint:
        data['token_type_hint'] = hint
    response = post(provider, provider.introspection_endpoint, client_name, data)
    assert response.status_code == 200, response.text
    return response.json()


def revoke(provider, value, client_name=EXCHANGER, hint=None):
    data = {'token': value}
    if hint:
        data['token_type_hint'] = hint
    response = post(provider, provider.revocation_endpoint, client_name, data)
    assert response.status_code == 200, response.text


def ok(response):
    assert response.status_code == 200, response.text
    assert response.headers['Content-Type'].startswith('application/json')
    return response.json()


def error(response, code, status=400):
    assert response.status_code == status, response.text
    body = response.json()
    assert body['error'] == code, body
    return body


def userinfo(provider, access_token):
    return requests.get(provider.url + '/me', headers={'Authorization': 'Bearer ' + access_token},
                        verify=provider.verify, timeout=10)


def b64d(part):
    return base64.urlsafe_b64decode(part + '=' * (-len(part) % 4))


def verify_jwt(provider, value):
    """Verify an RS256 JWT against the provider's published JWKS; returns (header, claims)."""
    head, body, sig = value.split('.')
    header = json.loads(b64d(head))
    jwks = requests.get(provider.jwks_uri, verify=provider.verify, timeout=10).json()
    (jwk,) = [k for k in jwks['keys'] if k['kid'] == header['kid']]
    public = rsa.RSAPublicNumbers(int.from_bytes(b64d(jwk['e']), 'big'),
                                  int.from_bytes(b64d(jwk['n']), 'big')).public_key()
    public.verify(b64d(sig), ('%s.%s' % (head, body)).encode('ascii'), padding.PKCS1v15(), hashes.SHA256())
    return header, json.loads(b64d(body))


def token_stats(provider, grant_type):
    return provider.stats()['token'].get(grant_type, {'requests': 0, 'succeeded': 0, 'failed': 0, 'errors': {}})


def scopes(value):
    return set(value.split())


# -- discovery, client authentication -------------------------------------------------------------

def test_discovery_announces_the_endpoints_and_grants(provider):
    meta = requests.get(provider.url + '/.well-known/openid-configuration', timeout=10).json()
    assert meta['issuer'] == provider.issuer
    assert provider.issuer.startswith('http://127.0.0.1:')
    for name in ('token_endpoint', 'revocation_endpoint', 'introspection_endpoint', 'jwks_uri'):
        assert meta[name].startswith(provider.issuer + '/'), name
    assert {GRANT_TE, 'refresh_token', 'password'} <= set(meta['grant_types_supported'])
    assert {'storage.read:/', 'compute.modify', 'offline_access'} <= set(meta['scopes_supported'])
    assert {'client_secret_basic', 'client_secret_post'} <= set(meta['token_endpoint_auth_methods_supported'])
    # RFC 8414 metadata is only served with --discovery oauth.
    assert requests.get(provider.url + '/.well-known/oauth-authorization-server', timeout=10).status_code == 404


def test_basic_auth_needs_form_urlencoded_credentials(provider):
    client = provider.client(EXCHANGER)
    assert any(c in client['client_secret'] for c in ':%+&/ ')
    url = provider.introspection_endpoint
    good = requests.post(url, data={'token': 'x'}, timeout=10,
                         headers={'Authorization': basic_header(client['client_id'], client['client_secret'])})
    assert good.status_code == 200 and good.json() == {'active': False}
    raw = base64.b64encode(('%s:%s' % (client['client_id'], client['client_secret'])).encode()).decode()
    bad = requests.post(url, data={'token': 'x'}, headers={'Authorization': 'Basic ' + raw}, timeout=10)
    assert bad.status_code in (400, 401) and bad.json()['error'] in ('invalid_request', 'invalid_client')
    wrong = requests.post(url, data={'token': 'x'}, timeout=10,
                          headers={'Authorization': basic_header(client['client_id'], 'nope')})
    error(wrong, 'invalid_client', 401)


def test_client_secret_post_client_accepts_post_and_refuses_basic(provider):
    subject = provider.user_access_token()
    body = ok(exchange(provider, subject, POST_EXCHANGER, requested_token_type=TT_REFRESH, scope=SCOPE))
    assert body['refresh_token']
    ok(refresh(provider, body['refresh_token'], POST_EXCHANGER))
    error(exchange(provider, subject, POST_EXCHANGER, method='client_secret_basic', scope=SCOPE),
          'invalid_client', 401)
    # and the basic-only client refuses client_secret_post
    error(exchange(provider, subject, EXCHANGER, method='client_secret_post', scope=SCOPE), 'invalid_client', 401)


def test_password_grant_is_for_the_user_client_only(provider):
    tokens = provider.user_access_token(with_refresh=True)
    assert tokens['refresh_token'] and scopes(tokens['scope']) == scopes(SCOPE)
    assert userinfo(provider, tokens['access_token']).json()['sub'] == provider.user('alice')['sub']
    no_offline = provider.user_tokens('bob', scope='openid compute.read')
    assert 'refresh_token' not in no_offline
    alice = provider.user('alice')
    wrong = token(provider, 'user-cli', {'grant_type': 'password', 'username': 'alice',
                                         'password': alice['password'] + 'x', 'scope': 'openid'})
    error(wrong, 'invalid_grant')
    with pytest.raises(ProviderError):
        provider.user_tokens('alice', password='wrong')
    by_exchanger = token(provider, EXCHANGER, {'grant_type': 'password', 'username': 'alice',
                                               'password': alice['password']})
    error(by_exchanger, 'unauthorized_client')


# -- token exchange -------------------------------------------------------------------------------

def test_exchange_gives_a_refresh_token_that_rotates_with_reuse_detection(provider):
    subject = provider.user_access_token()
    body = ok(exchange(provider, subject, requested_token_type=TT_REFRESH, scope=SCOPE))
    assert body['issued_token_type'] == TT_ACCESS and body['token_type'] == 'Bearer'
    assert body['expires_in'] == 60 and body['refresh_token'] and body['access_token']
    assert scopes(body['scope']) == scopes(SCOPE)
    # The exchanged access token belongs to the exchanging client and the same user.
    at_info = introspect(provider, body['access_token'])
    assert at_info['active'] and at_info['client_id'] == EXCHANGER
    assert at_info['sub'] == provider.user('alice')['sub']
    assert userinfo(provider, body['access_token']).json()['name'] == provider.user('alice')['name']

    provider.reset_stats()
    first = body['refresh_token']
    second = ok(refresh(provider, first))
    assert second['refresh_token'] != first and second['access_token']
    assert token_stats(provider, 'refresh_token') == {'requests': 1, 'succeeded': 1, 'failed': 0, 'errors': {}}

    # Replaying the spent refresh token: invalid_grant, and the whole grant is revoked.
    error(refresh(provider, first), 'invalid_grant')
    error(refresh(provider, second['refresh_token']), 'invalid_grant')
    assert introspect(provider, second['access_token'])['active'] is False
    assert introspect(provider, second['refresh_token'])['active'] is False
    stats = token_stats(provider, 'refresh_token')
    assert stats['requests'] == 3 and stats['succeeded'] == 1 and stats['errors'] == {'invalid_grant': 2}


def test_exchange_without_scope_keeps_the_subject_scope(provider):
    subject = provider.user_access_token(scope='openid compute.read')
    with_rt = ok(exchange(provider, subject, requested_token_type=TT_REFRESH))
    assert scopes(with_rt['scope']) == {'openid', 'compute.read', 'offline_access'}
    assert with_rt['refresh_token']
    only_at = ok(exchange(provider, subject, requested_token_type=TT_ACCESS))
    assert scopes(only_at['scope']) == {'openid', 'compute.read'}
    assert 'refresh_token' not in only_at and only_at['issued_token_type'] == TT_ACCESS


def test_exchange_may_narrow_scope_and_add_offline_access(provider):
    subject = provider.user_access_token(scope='openid storage.read:/ compute.read')
    narrowed = ok(exchange(provider, subject, requested_token_type=TT_ACCESS, scope='compute.read'))
    assert narrowed['scope'] == 'compute.read' and 'refresh_token' not in narrowed
    assert introspect(provider, narrowed['access_token'])['scope'] == 'compute.read'
    # offline_access in scope asks for a refresh token even with the access-token type
    offline = ok(exchange(provider, subject, requested_token_type=TT_ACCESS,
                          scope='openid compute.read offline_access'))
    assert scopes(offline['scope']) == {'openid', 'compute.read', 'offline_access'}
    assert offline['refresh_token']
    assert introspect(provider, offline['refresh_token'])['scope'].split().count('offline_access') == 1


def test_exchange_up_scoping_is_invalid_scope(provider):
    subject = provider.user_access_token(scope='openid compute.read')
    body = error(exchange(provider, subject, requested_token_type=TT_REFRESH,
                          scope='openid compute.read compute.modify'), 'invalid_scope')
    assert 'compute.modify' in body['error_description']
    error(exchange(provider, subject, scope='profile offline_access'), 'invalid_scope')


def test_exchange_needs_the_grant_type_registered_for_the_client(provider):
    subject = provider.user_access_token()
    error(exchange(provider, subject, 'plain-client', requested_token_type=TT_REFRESH), 'unauthorized_client')
    error(exchange(provider, subject, 'user-cli', requested_token_type=TT_REFRESH), 'unauthorized_client')


def test_exchange_refuses_garbage_and_wrong_token_types(provider):
    for garbage in ('not-a-token-at-all', 'a.b.c', 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.'):
        body = error(exchange(provider, garbage, scope=SCOPE), 'invalid_request')
        assert body['error_description']
    subject = provider.user_access_token()
    body = error(exchange(provider, subject, subject_token_type=TT_REFRESH), 'invalid_request')
    assert 'subject_token_type' in body['error_description']
    error(exchange(provider, subject, subject_token_type=TT_JWT), 'invalid_request')  # opaque, not a JWT
    error(exchange(provider, subject, requested_token_type='urn:example:nope'), 'invalid_request')
    missing = token(provider, EXCHANGER, {'grant_type': GRANT_TE, 'subject_token_type': TT_ACCESS})
    assert 'subject_token' in error(missing, 'invalid_request')['error_description']
    # a refresh token is not an access token
    rt = provider.user_access_token(with_refresh=True)['refresh_token']
    error(exchange(provider, rt), 'invalid_request')


def test_exchange_with_an_actor_token_records_act(provider):
    subject = provider.user_access_token()
    actor = provider.user_access_token('bob', scope='openid')
    error(exchange(provider, subject, actor_token=actor), 'invalid_request')  # actor_token_type missing
    error(exchange(provider, subject, actor_token='garbage', actor_token_type=TT_ACCESS), 'invalid_request')
    body = ok(exchange(provider, subject, actor_token=actor, actor_token_type=TT_ACCESS, scope='openid'))
    info = introspect(provider, body['access_token'])
    assert info['sub'] == provider.user('alice')['sub']
    assert info['act'] == {'sub': provider.user('bob')['sub'], 'client_id': 'user-cli'}


def test_exchange_of_a_revoked_subject_token_is_invalid_request(provider):
    subject = provider.user_access_token()
    assert introspect(provider, subject, 'user-cli')['active'] is True
    revoke(provider, subject, 'user-cli', 'access_token')
    assert introspect(provider, subject, 'user-cli')['active'] is False
    body = error(exchange(provider, subject, requested_token_type=TT_REFRESH), 'invalid_request')
    assert 'revoked' in body['error_description']
    # revoking the user's refresh token revokes the grant and with it the access token
    tokens = provider.user_access_token(with_refresh=True)
    revoke(provider, tokens['refresh_token'], 'user-cli')
    error(exchange(provider, tokens['access_token'], requested_token_type=TT_REFRESH), 'invalid_request')


def test_exchange_of_an_expired_subject_token_is_invalid_request(provider_factory):
    short = provider_factory(at_ttl=1)
    subject = short.user_access_token()
    time.sleep(2.1)
    body = error(exchange(short, subject, requested_token_type=TT_REFRESH), 'invalid_request')
    assert 'expired' in body['error_description']


def test_exchange_records_audience_and_resource_and_refresh_keeps_working(provider):
    subject = provider.user_access_token()
    body = ok(exchange(provider, subject, requested_token_type=TT_REFRESH, scope=SCOPE,
                       resource='https://storage.example.org/', audience=['compute-ce', 'other']))
    assert introspect(provider, body['access_token'])['aud'] == 'https://storage.example.org/'
    refreshed = ok(refresh(provider, body['refresh_token']))
    assert introspect(provider, refreshed['access_token'])['aud'] == 'https://storage.example.org/'
    chosen = ok(refresh(provider, refreshed['refresh_token'], resource='compute-ce'))
    assert introspect(provider, chosen['access_token'])['aud'] == 'compute-ce'
    # a resource never granted cannot be asked for later
    error(refresh(provider, chosen['refresh_token'], resource='https://elsewhere.example/'), 'invalid_target')
    error(exchange(provider, subject, resource='not a uri'), 'invalid_target')


def test_refresh_down_scoping_works_and_up_scoping_is_refused(provider):
    subject = provider.user_access_token()
    rt = ok(exchange(provider, subject, requested_token_type=TT_REFRESH, scope='openid compute.read'))['refresh_token']
    narrowed = ok(refresh(provider, rt, scope='compute.read'))
    assert narrowed['scope'] == 'compute.read'
    assert introspect(provider, narrowed['access_token'])['scope'] == 'compute.read'
    # the rotated refresh token keeps the full scope
    kept = introspect(provider, narrowed['refresh_token'])['scope']
    assert scopes(kept) == {'openid', 'compute.read', 'offline_access'}
    body = error(refresh(provider, narrowed['refresh_token'], scope='openid compute.modify'), 'invalid_scope')
    assert body['scope'] == 'compute.modify'
    ok(refresh(provider, narrowed['refresh_token']))  # the refusal did not spend it


def test_introspection_and_revocation_of_the_refresh_token(provider):
    body = ok(exchange(provider, provider.user_access_token(), requested_token_type=TT_REFRESH, scope=SCOPE))
    rt = body['refresh_token']
    provider.reset_stats()
    info = introspect(provider, rt, hint='refresh_token')
    assert info['active'] is True and info['client_id'] == EXCHANGER
    assert info['iss'] == provider.issuer and info['sub'] == provider.user('alice')['sub']
    assert 'offline_access' in info['scope'].split()
    revoke(provider, rt, hint='refresh_token')
    assert introspect(provider, rt, hint='refresh_token') == {'active': False}
    assert introspect(provider, body['access_token'])['active'] is False  # same grant
    error(refresh(provider, rt), 'invalid_grant')
    revoke(provider, rt)  # RFC 7009 §2.2: an unknown token is fine
    stats = provider.stats()
    assert stats['revocation'] == {'requests': 2, 'succeeded': 2, 'failed': 0}
    assert stats['introspection']['requests'] == 3 and stats['introspection']['active'] == 1


def test_stats_count_and_reset(provider):
    provider.reset_stats()
    assert provider.stats()['token'] == {}
    error(exchange(provider, 'garbage'), 'invalid_request')
    ok(exchange(provider, provider.user_access_token()))
    stats = provider.stats()
    assert stats['token'][GRANT_TE] == {'requests': 2, 'succeeded': 1, 'failed': 1, 'errors': {'invalid_request': 1}}
    assert stats['token']['password']['succeeded'] == 1
    assert provider.reset_stats()['token'] == {}
    assert requests.get(provider.url + '/_test/reset-stats', timeout=10).status_code == 405


# -- switches -------------------------------------------------------------------------------------

def test_strict_shape_returns_the_refresh_token_as_the_issued_token(provider_factory):
    strict = provider_factory(exchange_shape='strict')
    subject = strict.user_access_token()
    body = ok(exchange(strict, subject, requested_token_type=TT_REFRESH, scope=SCOPE))
    assert set(body) == {'access_token', 'issued_token_type', 'token_type', 'scope'}
    assert body['issued_token_type'] == TT_REFRESH and body['token_type'] == 'N_A'
    assert introspect(strict, body['access_token'], hint='refresh_token')['active'] is True
    refreshed = ok(refresh(strict, body['access_token']))
    assert refreshed['refresh_token'] and refreshed['access_token']
    # offline_access in scope also asks for the refresh token
    offline = ok(exchange(strict, subject, requested_token_type=TT_ACCESS, scope='openid offline_access'))
    assert offline['issued_token_type'] == TT_REFRESH
    # an access token alone keeps the common shape
    only_at = ok(exchange(strict, subject, requested_token_type=TT_ACCESS, scope='openid compute.read'))
    assert only_at['issued_token_type'] == TT_ACCESS and only_at['token_type'] == 'Bearer'
    assert 'refresh_token' not in only_at


def test_jwt_access_tokens_verify_and_can_be_exchanged(provider_factory):
    jwt_op = provider_factory(access_token_format='jwt')
    subject = jwt_op.user_access_token()
    header, claims = verify_jwt(jwt_op, subject)
    assert header['typ'] == 'at+jwt' and header['alg'] == 'RS256'
    assert claims['iss'] == jwt_op.issuer and claims['sub'] == jwt_op.user('alice')['sub']
    assert claims['exp'] > time.time() and scopes(claims['scope']) == scopes(SCOPE)
    assert claims['client_id'] == 'user-cli' and claims['aud']

    body = ok(exchange(jwt_op, subject, subject_token_type=TT_JWT, requested_token_type=TT_REFRESH,
                       scope='openid storage.read:/'))
    _header, exchanged = verify_jwt(jwt_op, body['access_token'])
    assert exchanged['client_id'] == EXCHANGER and exchanged['sub'] == claims['sub']
    assert scopes(exchanged['scope']) == {'openid', 'storage.read:/', 'offline_access'}
    refreshed = ok(refresh(jwt_op, body['refresh_token']))
    _header, again = verify_jwt(jwt_op, refreshed['access_token'])
    assert again['sub'] == claims['sub'] and again['aud'] == exchanged['aud']
    # the access-token type works for JWT access tokens too
    ok(exchange(jwt_op, subject, requested_token_type=TT_ACCESS, scope='openid'))

    # a tampered JWT is refused
    head, payload, sig = subject.split('.')
    forged = dict(claims, scope=claims['scope'] + ' compute.modify')
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip('=')
    body = error(exchange(jwt_op, '.'.join([head, forged_payload, sig]), subject_token_type=TT_JWT),
                 'invalid_request')
    assert 'signature' in body['error_description']
    # a JWT whose grant was revoked is refused (revoking the user's refresh token revokes the grant)
    tokens = jwt_op.user_access_token(with_refresh=True)
    revoke(jwt_op, tokens['refresh_token'], 'user-cli')
    body = error(exchange(jwt_op, tokens['access_token'], subject_token_type=TT_JWT), 'invalid_request')
    assert 'revoked' in body['error_description']


def test_https_with_the_generated_ca(provider_factory):
    secure = provider_factory(tls=True)
    assert secure.issuer.startswith('https://127.0.0.1:') and secure.url.startswith('https://')
    assert os.path.isfile(secure.ca_path)
    meta = requests.get(secure.url + '/.well-known/openid-configuration', verify=secure.ca_path, timeout=10).json()
    assert meta['issuer'] == secure.issuer and meta['token_endpoint'].startswith('https://')
    localhost = secure.url.replace('127.0.0.1', 'localhost')
    assert requests.get(localhost + '/jwks', verify=secure.ca_path, timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(secure.url + '/.well-known/openid-configuration', timeout=10)
    body = ok(exchange(secure, secure.user_access_token(), requested_token_type=TT_REFRESH, scope=SCOPE))
    ok(refresh(secure, body['refresh_token']))


def test_oauth_discovery_serves_only_rfc8414(provider_factory):
    oauth = provider_factory(discovery='oauth')
    missing = requests.get(oauth.url + '/.well-known/openid-configuration', timeout=10)
    assert missing.status_code == 404
    meta = requests.get(oauth.url + '/.well-known/oauth-authorization-server', timeout=10)
    assert meta.status_code == 200 and meta.json()['issuer'] == oauth.issuer
    assert meta.json()['token_endpoint'] == oauth.token_endpoint
    assert oauth.metadata()['issuer'] == oauth.issuer
    ok(exchange(oauth, oauth.user_access_token(), requested_token_type=TT_REFRESH))


def test_issuer_host_differs_from_the_url_reached(provider_factory):
    other = provider_factory(issuer_host='localhost')
    assert other.url.startswith('http://127.0.0.1:') and other.issuer == other.url.replace('127.0.0.1', 'localhost')
    meta = requests.get(other.url + '/.well-known/openid-configuration', timeout=10).json()
    assert meta['issuer'] == other.issuer


# -- the launcher ----------------------------------------------------------------------------------

def _alive(pid):
    """True while pid is a running (not zombie) process (Linux /proc)."""
    try:
        with open('/proc/%d/stat' % pid, encoding='ascii', errors='replace') as handle:
            state = handle.read().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != 'Z'


def _wait_gone(pid, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return not _alive(pid)


def test_command_line_start_and_stop(tmp_path):
    script = os.path.join(REPO_ROOT, 'tests', 'support', 'provider.py')
    state_dir = tmp_path / 'state'
    started = subprocess.run([sys.executable, script, 'start', '--state-dir', str(state_dir), '--tls',
                              '--at-ttl', '30', '--exchange-shape', 'strict'],
                             capture_output=True, text=True, timeout=30, check=True)
    state = json.loads(started.stdout)
    try:
        # the launcher has exited; the provider runs on
        assert _alive(state['pid'])
        assert state == json.loads((state_dir / 'provider.json').read_text())
        assert state['issuer'].startswith('https://127.0.0.1:') and os.path.isfile(state['ca_path'])
        assert state['clients'][EXCHANGER]['client_secret'] == 's3cr3t:with %+&/ chars'
        meta = requests.get(state['url'] + '/.well-known/openid-configuration', verify=state['ca_path'], timeout=10)
        assert meta.json()['issuer'] == state['issuer']
        again = subprocess.run([sys.executable, script, 'start', '--state-dir', str(state_dir)],
                               capture_output=True, text=True, timeout=30, check=False)
        assert again.returncode == 1 and 'already running' in again.stderr
    finally:
        stopped = subprocess.run([sys.executable, script, 'stop', '--state-dir', str(state_dir)],
                                 capture_output=True, text=True, timeout=30, check=False)
    assert stopped.returncode == 0 and 'stopped' in stopped.stdout
    assert not (state_dir / 'provider.json').exists()
    assert _wait_gone(state['pid'])


def test_the_provider_dies_with_the_python_process():
    code = textwrap.dedent('''
        import os, sys
        sys.path.insert(0, %r)
        from provider import Provider
        p = Provider().start()
        print(p.pid, flush=True)
        os.kill(os.getpid(), 9)  # no atexit, no cleanup: only the stdin pipe tells the child
    ''' % os.path.join(REPO_ROOT, 'tests', 'support'))
    child = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=30, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert _wait_gone(int(child.stdout.strip()))


def test_a_failed_start_shows_the_provider_log(tmp_path):
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ProviderError) as info:
            Provider(port=port, workdir=str(tmp_path)).start()
    assert 'exited with status 2' in str(info.value)
    assert 'cannot listen on 127.0.0.1:%d' % port in str(info.value)


def test_missing_node_modules_gives_the_fix(monkeypatch):
    import provider as launcher
    monkeypatch.setattr(launcher, 'PROVIDER_DIR', str(REPO_ROOT) + '/nowhere')
    with pytest.raises(ProviderError) as info:
        Provider().start()
    assert 'npm ci --prefix tests/provider' in str(info.value)
