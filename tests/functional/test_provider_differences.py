"""Where providers differ from the one we wrote, met over real HTTP: the real node-oidc-provider, with a
real proxy in front of it answering what Keycloak, INDIGO IAM and others answer where they differ
(a recorded answer, sent back over TCP; everything else reaches the provider).

Keycloak itself runs in test_keycloak_provider.py and the integration targets; these cases cover the
answers any provider may give, so that the collection absorbs them on every provider.
"""

from __future__ import annotations

import json

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import TOKEN_TYPE_JWT, OAuthClient
from evidence import proxied_provider

PASSWORD = 'provider differences password'
SCOPE = ['openid', 'compute.read']
EXCHANGER = 'oidc-tokens-exchanger'


def client_of(provider, name=EXCHANGER, **kwargs):
    entry = provider.client(name)
    return OAuthClient(provider.issuer, entry['client_id'], entry['client_secret'], retries=0, **kwargs)


@pytest.fixture(scope='module')
def world(provider_factory):
    provider, proxy = proxied_provider(provider_factory)
    yield provider, proxy
    proxy.stop()


def keep(provider, tmp_path, token, client):
    store = AccountStore(config_dir=str(tmp_path / 'accounts'))
    account = _tokens.build_account('job1', client.announced_issuer, client.client_id,
                                    provider.client(EXCHANGER)['client_secret'], token.refresh_token, token.scope,
                                    auth_method=client.auth_method)
    store.save('job1', account, PASSWORD)
    return store


def test_indigo_iam_needs_offline_access_and_answers_jwt(provider_factory):
    """INDIGO IAM: a refresh token only with offline_access, issued_token_type ...:jwt."""
    provider = provider_factory(exchange_shape='indigo')
    with pytest.raises(_tokens.NoRefreshTokenError, match='only with offline_access'):
        _tokens.exchange(client_of(provider), provider.user_access_token(), scope=SCOPE, offline_access='never')
    token = _tokens.exchange(client_of(provider), provider.user_access_token(), scope=SCOPE)
    assert token.issued_token_type == TOKEN_TYPE_JWT and token.refresh_token and token.offline_access_requested
    assert client_of(provider).refresh(token.refresh_token).access_token


def test_a_provider_refusing_offline_access_is_asked_again_without(world):
    """Keycloak's standard exchange refuses offline_access; 'auto' asks again without it, and gets the RT."""
    provider, proxy = world
    proxy.push_response(400, json.dumps({'error': 'invalid_request', 'error_description':
                                         'Scope offline_access not allowed for token exchange'}).encode(),
                        match='POST /token ')
    before = proxy.forwarded
    token = _tokens.exchange(client_of(provider), provider.user_access_token(), scope=SCOPE)
    assert token.refresh_token and token.offline_access_requested is False
    assert proxy.forwarded - before >= 1 and proxy.pending() == 0


@pytest.mark.parametrize('status, body, content_type', [(200, b'OK', 'text/plain'), (204, b'', 'text/plain'),
                                                        (200, b'{"revoked": true}', 'application/json')])
def test_revocation_answered_with_any_body_is_success(world, tmp_path, status, body, content_type):
    """RFC 7009: the client ignores the body; a provider answered 200 text/plain "OK" and the account was kept."""
    provider, proxy = world
    client = client_of(provider)
    token = _tokens.exchange(client, provider.user_access_token(), scope=SCOPE)
    store = keep(provider, tmp_path, token, client)
    proxy.push_response(status, body, content_type, match='POST /token/revocation')
    outcome = _tokens.revoke_account(store, 'job1', PASSWORD, lambda account: client_of(provider))
    assert outcome['revoked'] and outcome['removed'] and not store.exists('job1')
    assert proxy.pending() == 0


def test_a_dead_refresh_token_refused_as_invalid_request_gets_the_guidance(world, tmp_path):
    provider, proxy = world
    client = client_of(provider)
    token = _tokens.exchange(client, provider.user_access_token(), scope=SCOPE)
    store = keep(provider, tmp_path, token, client)
    proxy.push_response(400, json.dumps({'error': 'invalid_request', 'error_description': 'Token is not active'})
                        .encode(), match='POST /token ')
    with pytest.raises(_tokens.RefreshTokenRejectedError, match='exchange a fresh subject token'):
        _tokens.access_token(store, 'job1', PASSWORD, lambda account: client_of(provider), force=True)


def test_a_client_registered_for_client_secret_post_is_found_out_and_kept(provider):
    """The provider offers both methods but the client may use one: invalid_client, then the other, once."""
    client = client_of(provider, 'oidc-tokens-exchanger-post')
    token = _tokens.exchange(client, provider.user_access_token(), scope=SCOPE)
    assert token.refresh_token and client.auth_method == 'client_secret_post'
    account = _tokens.build_account('post', client.announced_issuer, client.client_id, 'x', token.refresh_token,
                                    token.scope, auth_method=client.auth_method)
    assert account['token_endpoint_auth_method'] == 'client_secret_post'


def test_the_account_names_the_issuer_as_the_provider_does(provider, tmp_path):
    client = client_of(provider)
    token = _tokens.exchange(client, provider.user_access_token(), scope=SCOPE)
    store = keep(provider, tmp_path, token, client)
    account = store.load('job1', PASSWORD)
    # The file keeps oidc-agent's form (oidc-agent 4 appends the discovery path to issuer_url as it is).
    assert account['issuer_url'] == provider.metadata()['issuer'].rstrip('/') + '/'
    facts = _tokens.account_facts('job1', account, store.path('job1'))
    assert facts['issuer'] == provider.metadata()['issuer']


def test_refresh_asks_for_the_accounts_scope(provider, tmp_path):
    """As oidc-agent does: the account's own scope goes with every refresh, so the provider narrows the token to it."""
    client = client_of(provider)
    token = _tokens.exchange(client, provider.user_access_token(), scope=SCOPE + ['storage.read:/'])
    store = keep(provider, tmp_path, token, client)
    account = store.load('job1', PASSWORD)
    account['scope'] = 'openid offline_access compute.read'
    store.save('job1', account, PASSWORD, overwrite=True)
    result = _tokens.access_token(store, 'job1', PASSWORD, lambda acc: client_of(provider), force=True)
    assert 'storage.read:/' not in result['scope'] and 'compute.read' in result['scope']
