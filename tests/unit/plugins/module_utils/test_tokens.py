# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the shared token layer (_tokens.py) with a fake OAuth client: what it asks a provider for,
and how it reads the provider differences it must absorb (Keycloak, INDIGO IAM, node-oidc-provider).

The real providers run in tests/functional and the integration targets; here each answer is scripted.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import (
    TOKEN_TYPE_JWT, TOKEN_TYPE_REFRESH, ProviderError, TokenResponse)

KEYCLOAK_REFUSES_OFFLINE = ProviderError('refused', error='invalid_request',
                                         error_description='Scope offline_access not allowed for token exchange',
                                         status=400)


class FakeClient(object):
    """Records every call; answers from a script (a TokenResponse or an exception per call)."""

    issuer = 'https://op.example.org/realms/hpc'
    client_id = 'job-runner'

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def _answer(self, name, kwargs):
        self.calls.append((name, kwargs))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def token_exchange(self, subject_token, **kwargs):
        return self._answer('exchange', kwargs)

    def refresh(self, refresh_token, **kwargs):
        return self._answer('refresh', kwargs)


def rt_answer(**extra):
    return TokenResponse.from_json(dict({'access_token': 'at-1', 'refresh_token': 'rt-1', 'expires_in': 300,
                                         'scope': 'openid compute.read'}, **extra))


def test_auto_asks_with_offline_access_and_again_without_when_it_is_refused():
    client = FakeClient(KEYCLOAK_REFUSES_OFFLINE, rt_answer())
    token = _tokens.exchange(client, 'subject', scope=['openid', 'compute.read'])
    asked = [c[1]['scope'] for c in client.calls]
    assert asked == [['openid', 'compute.read', 'offline_access'], ['openid', 'compute.read']]
    assert token.refresh_token == 'rt-1' and token.offline_access_requested is False


def test_auto_keeps_offline_access_where_the_provider_needs_it():
    client = FakeClient(rt_answer())
    token = _tokens.exchange(client, 'subject', scope=['openid'])
    assert client.calls[0][1]['scope'] == ['openid', 'offline_access'] and token.offline_access_requested is True


def test_another_refusal_is_not_asked_again():
    refusal = ProviderError('refused', error='invalid_scope', error_description='requested scope exceeds: x')
    client = FakeClient(refusal)
    with pytest.raises(ProviderError):
        _tokens.exchange(client, 'subject', scope=['x'])
    assert len(client.calls) == 1


@pytest.mark.parametrize('mode, expected', [('never', ['openid']), ('always', ['openid', 'offline_access'])])
def test_never_and_always_ask_once(mode, expected):
    client = FakeClient(KEYCLOAK_REFUSES_OFFLINE if mode == 'always' else rt_answer())
    if mode == 'always':
        with pytest.raises(ProviderError, match='remove it from the scope'):
            _tokens.exchange(client, 'subject', scope=['openid'], offline_access=mode)
    else:
        _tokens.exchange(client, 'subject', scope=['openid'], offline_access=mode)
    assert [c[1]['scope'] for c in client.calls] == [expected]


def test_no_refresh_token_without_offline_access_says_how_to_get_one():
    answer = TokenResponse.from_json({'access_token': 'at', 'issued_token_type': TOKEN_TYPE_JWT, 'expires_in': 60})
    with pytest.raises(_tokens.NoRefreshTokenError, match='only with offline_access'):
        _tokens.exchange(FakeClient(answer), 'subject', scope=['openid'], offline_access='never')


def test_indigo_iam_answer_shape_is_accepted():
    """issued_token_type ...:jwt, the refresh token in refresh_token (INDIGO IAM)."""
    answer = TokenResponse.from_json({'access_token': 'at', 'refresh_token': 'rt', 'issued_token_type': TOKEN_TYPE_JWT,
                                      'expires_in': 3600, 'scope': 'openid offline_access', 'token_type': 'Bearer'})
    token = _tokens.exchange(FakeClient(answer), 'subject', scope=['openid'])
    assert token.refresh_token == 'rt' and token.access_token == 'at'


@pytest.mark.parametrize('description, hint', [
    ('Client is not within the token audience', 'audience mapper'),
    ('Audience not found', 'must be a client the provider knows'),
    ('requested_token_type unsupported', 'Allow refresh token in Standard Token Exchange'),
    ('Refresh token not valid as requested_token_type because creating a new session is needed',
     'interactive login'),
    ('Standard token exchange is not enabled for the requested client', 'standard.token.exchange.enabled=true'),
])
def test_keycloak_refusals_say_what_the_admin_must_configure(description, hint):
    error = {'Client is not within the token audience': 'access_denied', 'Audience not found': 'invalid_client'}.get(
        description, 'invalid_request')
    client = FakeClient(ProviderError('The provider refused the token exchange: %s (%s)' % (error, description),
                                      error=error, error_description=description, status=400))
    with pytest.raises(ProviderError) as info:
        _tokens.exchange(client, 'subject', scope=['openid'], audience=['storage'], offline_access='never')
    assert hint in str(info.value) and description in str(info.value)
    assert info.value.error == error


# -- the refresh token's own lifetime --------------------------------------------------------------------

def jwt(claims):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b'=').decode()
    return '%s.%s.%s' % (part({'alg': 'HS512', 'typ': 'Refresh'}), part(claims), 'c2ln')


def test_refresh_token_expiry_from_refresh_expires_in():
    token = TokenResponse.from_json({'access_token': 'a', 'refresh_token': 'r', 'refresh_expires_in': 1800},
                                    received_at=1000)
    assert token.refresh_token_expires_at == 2800


def test_refresh_token_expiry_from_a_jwt_refresh_token():
    token = TokenResponse.from_json({'access_token': 'a', 'refresh_token': jwt({'exp': 5000})}, received_at=1000)
    assert token.refresh_token_expires_at == 5000


def test_zero_refresh_expires_in_means_no_expiry():
    token = TokenResponse.from_json({'access_token': 'a', 'refresh_token': 'r', 'refresh_expires_in': 0})
    assert token.refresh_token_expires_at is None


def test_refresh_token_issued_in_access_token_keeps_its_expires_in():
    token = TokenResponse.from_json({'access_token': 'r', 'issued_token_type': TOKEN_TYPE_REFRESH,
                                     'expires_in': 600, 'token_type': 'N_A'}, received_at=1000)
    assert token.refresh_token == 'r' and token.access_token is None
    assert token.expires_in is None and token.refresh_token_expires_at == 1600


def account(**meta):
    acc = _tokens.build_account('job1', 'https://op.example.org/realms/hpc', 'job-runner', 'secret', 'rt-0',
                                ['openid', 'offline_access', 'compute.read'], audience=['storage'], now=1000)
    acc.meta.update(meta)
    return acc


def test_short_refresh_token_warns_with_both_times_and_what_to_change():
    message = _tokens.short_refresh_token('job1', account(refresh_token_expires_at=1000 + 36000,
                                                          lifetime_end=1000 + 604800))
    assert '1970-01-01T10:16:40Z' in message and '1970-01-08T00:16:40Z' in message
    assert 'SSO Session Max' in message
    assert _tokens.short_refresh_token('job1', account(refresh_token_expires_at=2000000, lifetime_end=1000)) is None
    assert _tokens.short_refresh_token('job1', account()) is None


def test_the_issuer_is_kept_as_the_provider_names_it():
    assert _tokens.account_issuer(account()) == 'https://op.example.org/realms/hpc'
    assert _tokens.account_issuer(_tokens.build_account('a', 'https://iam.example.org/', 'c', 's', 'r', [])) == \
        'https://iam.example.org/'
    # An account oidc-agent made has only its issuer_url.
    assert _tokens.account_issuer(_tokens.Account(issuer_url='https://iam.example.org/')) == 'https://iam.example.org/'


# -- refresh ---------------------------------------------------------------------------------------------

class MemoryStore(object):
    """Just enough of AccountStore for access_token(): one account, update() applies what fn returns."""

    config_dir = '/nonexistent/oidc-tokens-unit'

    def __init__(self, acc):
        self.account = acc

    def update(self, name, password, fn):
        updated, result = fn(self.account.copy())
        if updated is not None:
            self.account = updated
        return result


def test_refresh_sends_the_accounts_scope_and_audience():
    client = FakeClient(rt_answer(refresh_token='rt-2', refresh_expires_in=1800))
    store = MemoryStore(account())
    result = _tokens.access_token(store, 'job1', 'pw', lambda acc: client, now=time.time())
    kwargs = client.calls[0][1]
    assert kwargs['scope'] == ['openid', 'offline_access', 'compute.read'] and kwargs['audience'] == ['storage']
    assert store.account['refresh_token'] == 'rt-2'
    assert result['refresh_token_expires_at'] is not None
    assert store.account.meta['refresh_token_expires_at'] == result['refresh_token_expires_at']


def test_a_down_scoped_refresh_keeps_offline_access():
    client = FakeClient(rt_answer())
    _tokens.access_token(MemoryStore(account()), 'job1', 'pw', lambda acc: client, scope=['compute.read'],
                         now=time.time())
    assert client.calls[0][1]['scope'] == ['compute.read', 'offline_access']


def test_a_scope_the_provider_did_not_grant_is_an_error_after_the_rotated_token_is_written():
    """Keycloak answers a refresh that asks for more than the grant holds with a token without it, not an error."""
    client = FakeClient(rt_answer(refresh_token='rt-2', scope='openid email profile'))
    store = MemoryStore(account())
    with pytest.raises(_tokens.ScopeNotGrantedError, match="did not grant compute.modify for account 'job1'"):
        _tokens.access_token(store, 'job1', 'pw', lambda acc: client, scope=['openid', 'compute.modify'],
                             now=time.time())
    assert store.account['refresh_token'] == 'rt-2'


def test_an_answer_without_scope_or_without_offline_access_is_not_refused():
    for answer in (rt_answer(scope=None), rt_answer(scope='compute.read')):
        client = FakeClient(answer)
        result = _tokens.access_token(MemoryStore(account()), 'job1', 'pw', lambda acc: client,
                                      scope=['compute.read'], now=time.time())
        assert result['access_token'] == 'at-1'


@pytest.mark.parametrize('error', ['invalid_grant', 'invalid_request'])
def test_a_dead_refresh_token_gets_the_same_guidance_whatever_the_error_code(error):
    client = FakeClient(ProviderError('refused', error=error, error_description='Token is not active'))
    with pytest.raises(_tokens.RefreshTokenRejectedError, match='exchange a fresh subject token'):
        _tokens.access_token(MemoryStore(account()), 'job1', 'pw', lambda acc: client, now=time.time())


def test_account_facts_report_the_refresh_tokens_expiry_and_offline_access():
    facts = _tokens.account_facts('job1', account(refresh_token_expires_at=4242, offline_access=False), '/x/job1')
    assert facts['refresh_token_expires_at'] == 4242 and facts['offline_access'] is False
