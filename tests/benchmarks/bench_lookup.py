# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print what one evaluation of the lookup oidc.tokens.oidc_token costs: a cache hit, and the misses
(key derivation only, key derivation plus refresh), beside ansible.builtin.env. A script that prints
figures, not a test.

    python3 tests/benchmarks/bench_lookup.py [--rounds N]

Starts the test provider (tests/support/provider.py, HTTP on loopback), exchanges alice's token into
an account in a temporary directory and times ``LookupModule.run`` in this process and in forked
children, the way Ansible runs a lookup: once per host in a worker process forked from the
controller (so ansible-core is already imported there, the lookup plugin itself is not: the cache
is filled in a child too, and a "fresh fork" case loads the plugin, its files and its option
definitions the way a worker does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def report(label, values):
    print('%-40s median %7.2f ms  min %7.2f ms  max %7.2f ms  (n=%d)' % (
        label, statistics.median(values) * 1000, min(values) * 1000, max(values) * 1000, len(values)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--rounds', type=int, default=20, help='evaluations per case')
    args = parser.parse_args()

    root = _common.collections_root()
    from ansible.plugins.loader import init_plugin_loader, lookup_loader
    init_plugin_loader([root])
    from provider import Provider

    work = tempfile.mkdtemp(prefix='bench-lookup-')
    try:
        with Provider(workdir=os.path.join(work, 'provider'), at_ttl=3600) as op:
            config_dir = os.path.join(work, 'accounts')

            def make_account():
                """In a child, so that this process (the workers' parent) imports none of the collection's files."""
                from ansible_collections.oidc.tokens.plugins.module_utils import _account_store, _oauth, _tokens
                exchanger = op.client('oidc-tokens-exchanger')
                client = _oauth.OAuthClient(op.issuer, exchanger['client_id'], exchanger['client_secret'])
                token = _tokens.exchange(client, op.user_access_token(), scope=['openid', 'offline_access', 'compute.read'])
                account = _tokens.build_account('bench', client.issuer, client.client_id, exchanger['client_secret'],
                                                token.refresh_token, token.scope)
                account.meta.update({'access_token': token.access_token, 'access_token_expires_at': token.expires_at})
                _account_store.AccountStore(config_dir).save('bench', account, 'bench password')

            _common.in_fork(make_account)

            common = {'config_dir': config_dir, 'cache_dir': os.path.join(work, 'cache'),
                      'encryption_password': 'bench password', 'min_valid_period': 60}

            def run(**kwargs):
                lookup = lookup_loader.get('oidc.tokens.oidc_token')
                start = time.perf_counter()
                lookup.run(['bench'], variables={}, **dict(common, **kwargs))
                return time.perf_counter() - start

            def in_worker(name, terms, clock=time.perf_counter, **kwargs):
                """One lookup (loading the plugin, its files, its options, then run) in a fresh fork; ``clock``'s seconds."""
                def child():
                    start = clock()
                    lookup_loader.get(name).run(terms, variables={}, **kwargs)
                    return clock() - start
                return _common.in_fork(child)

            def first_in_worker(clock=time.perf_counter, **kwargs):
                return in_worker('oidc.tokens.oidc_token', ['bench'], clock, **dict(common, **kwargs))

            lookup_loader.get('ansible.builtin.indexed_items').run([[1]], variables={})   # the lookup base, as a worker has it
            first_in_worker()   # fill the cache (in a child: this process has not loaded the plugin)
            print('lookup oidc.tokens.oidc_token, %d rounds, Python %s' % (args.rounds, sys.version.split()[0]))
            rounds = range(args.rounds)
            for clock, unit in ((time.perf_counter, 'wall'), (time.process_time, 'CPU')):
                env = [in_worker('ansible.builtin.env', ['HOME'], clock) for _i in rounds]
                hit = [first_in_worker(clock) for _i in rounds]
                report('ansible.builtin.env, fresh fork, %s' % unit, env)
                report('cache hit, fresh fork, %s' % unit, hit)
                print('%-40s %.2f' % ('ratio of the medians, hit / env', statistics.median(hit) / statistics.median(env)))
            run()
            report('cache hit, in one process', [run() for _i in rounds])
            report('miss: derivation, token kept in account', [first_in_worker(cache=False) for _i in rounds])
            before = op.stats()['token'].get('refresh_token', {}).get('requests', 0)
            report('miss: derivation and refresh', [first_in_worker(cache=False, scope=['openid']) for _i in rounds])
            after = op.stats()['token'].get('refresh_token', {}).get('requests', 0)
            print('refreshes the provider saw in the last case: %d' % (after - before))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
