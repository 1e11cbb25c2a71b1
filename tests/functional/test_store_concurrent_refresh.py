# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two processes refresh the same account at once, against a provider that rotates refresh
tokens and revokes the whole grant when a spent one is replayed (node-oidc-provider's
``rotateRefreshToken`` + reuse detection).

With ``AccountStore.update`` both processes get a valid access token (checked by introspection
at the provider), no refresh token is ever sent twice, the rotated RT is on disk before the
access token is handed out, and the grant stays alive: a further refresh with the RT on disk
works. A control shows that the provider really does kill the grant on a replay, so the test
would catch a store that let one happen.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient, ProviderError

PASSWORD = 'concurrency-password'
EXCHANGER = 'oidc-tokens-exchanger'
ROUNDS = 4


def oauth_client(account_or_provider, client=None):
    if client is not None:
        return OAuthClient(account_or_provider.issuer, client['client_id'], client['client_secret'],
                           allow_insecure_http=True, timeout=10)
    account = account_or_provider
    return OAuthClient(account['issuer_url'], account['client_id'], account['client_secret'],
                       allow_insecure_http=True, timeout=10)


def refresh_callback(mode):
    """What a refresher does under the lock. mode 'always': refresh every time; 'reuse': hand out
    the access token a concurrent process just stored if it is still fresh, else refresh."""

    def fn(account):
        meta = account.meta
        if (mode == 'reuse' and meta.get('access_token')
                and meta.get('access_token_expires_at', 0) > time.time() + 20):
            return None, {'access_token': meta['access_token'], 'refreshed': False,
                          'rt_used': None, 'rt_new': account['refresh_token']}
        rt_used = account['refresh_token']
        token = oauth_client(account).refresh(rt_used)
        assert token.refresh_token and token.refresh_token != rt_used, 'provider did not rotate'
        account['refresh_token'] = token.refresh_token
        meta['access_token'] = token.access_token
        meta['access_token_expires_at'] = token.expires_at
        meta['refreshed_at'] = int(time.time())
        return account, {'access_token': token.access_token, 'refreshed': True,
                         'rt_used': rt_used, 'rt_new': token.refresh_token}

    return fn


def _locked_refresher(config_dir, name, mode, barrier, results):
    try:
        store = AccountStore(config_dir)
        barrier.wait(30)
        t_start = time.time()
        result = store.update(name, PASSWORD, refresh_callback(mode))
        result['t_start'], result['t_leave'] = t_start, time.time()
        # The RT that goes with the AT we got is on disk already (or a later one).
        result['rt_on_disk_after'] = store.load(name, PASSWORD)['refresh_token']
        results.put(('ok', result))
    except BaseException as e:
        results.put(('error', '%s: %s' % (type(e).__name__, e)))


def _run_pair(target, args):
    ctx = multiprocessing.get_context('fork')
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=args + (barrier, results)) for _proc in range(2)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _proc in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return out


def new_account(provider, store, name):
    """A refresh token obtained the way the collection does it: token exchange (RFC 8693)."""
    client = provider.client(EXCHANGER)
    token = oauth_client(provider, client).token_exchange(
        provider.user_access_token('alice'), scope='openid offline_access')
    assert token.refresh_token
    store.save(name, {'issuer_url': provider.issuer, 'client_id': client['client_id'],
                      'client_secret': client['client_secret'],
                      'refresh_token': token.refresh_token, 'scope': 'openid offline_access',
                      'oidc_tokens': {'source': 'token_exchange'}}, PASSWORD)
    return client


def active(provider, client, token):
    return oauth_client(provider, client).introspect(token)['active']


def refresh_stats(provider):
    return provider.stats()['token'].get('refresh_token', {'succeeded': 0, 'failed': 0})


@pytest.mark.parametrize('mode', ['always', 'reuse'])
def test_two_processes_refresh_at_once_and_the_grant_stays_alive(provider, tmp_path, mode):
    store = AccountStore(str(tmp_path / 'oidc-agent'))
    for round_ in range(ROUNDS):
        name = 'job-%d' % round_
        client = new_account(provider, store, name)
        rt0 = store.load(name, PASSWORD)['refresh_token']
        provider.reset_stats()

        out = _run_pair(_locked_refresher, (store.config_dir, name, mode))
        assert [item[0] for item in out] == ['ok', 'ok'], out
        results = [item[1] for item in out]
        # They really ran at once: both had started before either had finished.
        assert max(r['t_start'] for r in results) < min(r['t_leave'] for r in results)

        # Both processes got a valid access token.
        for r in results:
            assert active(provider, client, r['access_token']) is True
            # Nothing was handed out before its RT was on disk (or a later one, by the other).
            assert r['rt_on_disk_after'] in {x['rt_new'] for x in results}

        # No refresh token was ever sent twice, and none failed at the provider.
        used = [r['rt_used'] for r in results if r['refreshed']]
        assert len(used) == len(set(used))
        stats = refresh_stats(provider)
        assert stats['failed'] == 0, stats
        if mode == 'always':
            assert sorted(used) == sorted([rt0, next(r['rt_new'] for r in results
                                                     if r['rt_used'] == rt0)])
            assert stats['succeeded'] == 2
        else:
            # The second process reused the first one's fresh access token: one refresh in all.
            assert stats['succeeded'] == 1 and used == [rt0]
            assert results[0]['access_token'] == results[1]['access_token']

        # The grant is alive: the RT on disk refreshes, through the same locked sequence.
        final = store.update(name, PASSWORD, refresh_callback('always'))
        assert active(provider, client, final['access_token']) is True
        assert active(provider, client, store.load(name, PASSWORD)['refresh_token']) is True
        assert refresh_stats(provider)['failed'] == 0


def test_control_a_replayed_refresh_token_kills_the_grant(provider, tmp_path):
    """What the lock prevents: spending one RT twice makes the provider revoke the whole grant."""
    store = AccountStore(str(tmp_path / 'oidc-agent'))
    client = new_account(provider, store, 'replayed')
    account = store.load('replayed', PASSWORD)
    oauth = oauth_client(account)
    first = oauth.refresh(account['refresh_token'])
    assert active(provider, client, first.access_token) is True
    with pytest.raises(ProviderError, match='invalid_grant'):
        oauth.refresh(account['refresh_token'])   # a second process without the lock
    # Reuse detection revoked the grant: even the first refresh's fresh tokens are dead now.
    assert active(provider, client, first.refresh_token) is False
    assert active(provider, client, first.access_token) is False
