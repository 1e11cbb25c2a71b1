# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-call time of getting an access token: Debian's ``oidc-token NAME`` (oidc-agent with the account
loaded) in a shell loop, against the collection's lookup, all against the same local provider.

    python3 tests/benchmarks/bench_token_calls.py [--runs 5] [--calls 200] [--out FILE.json]

Measured (each a median over --runs runs):
- oidc-token NAME in a bash loop of --calls calls: the loop's wall time / calls;
- the lookup once a worker process has loaded it: one more evaluation (a cache hit), --calls times;
- lookup('oidc.tokens.oidc_token', NAME) in a play, --play-calls evaluations in one task's loop, minus
  the same loop without the lookup: what one evaluation adds inside a play (cache hit);
- the lookup's first evaluation in a fresh worker process (what each host of a play costs): from the
  token cache, and without the cache (one Argon2id derivation, the token kept in the account);
- ``ansible localhost -m debug -a 'msg={{ lookup(...) }}'`` in a bash loop: per call, Ansible's start
  included (what a shell script calling Ansible per token would pay).

Both sides use the provider's user-cli client (oidc-agent 4.2.6 does not form-encode client secrets
with special characters in Basic auth), each its own refresh token from the provider's password grant.
A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

PASSWORD = 'bench-token-calls password'
SCOPE = 'openid profile offline_access'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--calls', type=int, default=200)
    parser.add_argument('--play-calls', type=int, default=1000, help='lookup evaluations in one task loop')
    parser.add_argument('--adhoc-calls', type=int, default=5)
    parser.add_argument('--out')
    args = parser.parse_args()

    root = _common.collections_root()
    # Ansible's collection loader first: the lookup plugin and module_utils are then one package.
    from ansible.plugins.loader import init_plugin_loader, lookup_loader
    init_plugin_loader([root])
    from provider import Provider
    from store_helpers import OidcAgent, oidc_agent_missing, oidc_agent_version
    from evidence import Ansible
    from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore

    missing = oidc_agent_missing()
    work = tempfile.mkdtemp(prefix='bench-token-calls-')
    figures, notes = {}, []
    try:
        with Provider(workdir=os.path.join(work, 'provider'), at_ttl=3600) as op:
            client = op.client('user-cli')

            def account(rt):
                return {'issuer_url': op.issuer, 'client_id': client['client_id'],
                        'client_secret': client['client_secret'], 'refresh_token': rt, 'scope': SCOPE}

            # -- oidc-agent --------------------------------------------------------------------------
            agent_runs = []
            agent_version = None
            if missing:
                notes.append('oidc-agent not measured: %s' % missing)
            else:
                agent_version = oidc_agent_version()
                agent = OidcAgent(os.path.join(work, 'agent')).start()
                try:
                    AccountStore(agent.config_dir).save('bench', account(op.user_tokens(scope=SCOPE)['refresh_token']),
                                                        PASSWORD)
                    agent.run(['oidc-add', '--pw-env', 'bench'], password=PASSWORD)
                    assert agent.run(['oidc-token', 'bench']).out.strip()
                    before = op.stats()['token'].get('refresh_token', {}).get('requests', 0)
                    loop = 'for i in $(seq %d); do oidc-token bench >/dev/null || exit 1; done' % args.calls
                    for _run in range(args.runs):
                        start = time.perf_counter()
                        done = agent.run(['bash', '-c', loop], timeout=600)
                        assert done.returncode == 0
                        agent_runs.append((time.perf_counter() - start) / args.calls)
                    after = op.stats()['token'].get('refresh_token', {}).get('requests', 0)
                    figures['oidc_token_provider_refreshes'] = after - before
                finally:
                    agent.stop()
            figures['oidc_token_per_call_ms'] = _common.summary(agent_runs, 1000, 2)

            # -- the lookup ----------------------------------------------------------------------------
            config_dir = os.path.join(work, 'accounts')
            AccountStore(config_dir).save('bench', account(op.user_tokens(scope=SCOPE)['refresh_token']), PASSWORD)
            ansible = Ansible(os.path.join(work, 'ansible'), env={'EV_PW': PASSWORD})
            expr = ("lookup('oidc.tokens.oidc_token', 'bench', config_dir='%s', encryption_password_env='EV_PW')"
                    % config_dir)

            def play_loop(with_lookup):
                value = '{{ (%s) | length }}' % expr if with_lookup else "{{ 'x' | length }}"
                return [{'name': 'loop', 'hosts': 'localhost', 'gather_facts': False, 'tasks': [
                    {'name': 'evaluate', 'ansible.builtin.set_fact': {'got': value},
                     'loop': '{{ range(%d) | list }}' % args.play_calls}]}]

            ansible.playbook(play_loop(True))        # fill the token cache once
            with_lookup, without = [], []
            for _run in range(args.runs):
                for target, flag in ((with_lookup, True), (without, False)):
                    run = ansible.playbook(play_loop(flag))
                    assert run.rc == 0, run.stdout[-2000:]
                    target.append(run.seconds)
            per_call = [(w - n) / args.play_calls for w, n in zip(with_lookup, without)]
            figures['lookup_in_play_per_call_ms'] = _common.summary(per_call, 1000, 2)
            figures['play_with_lookup_s'] = _common.summary(with_lookup, 1, 2)
            figures['play_without_lookup_s'] = _common.summary(without, 1, 2)

            # The first evaluation in a fresh worker process, forked from a parent that has imported what
            # ansible-playbook's controller has (the lookup base class, the templar) but not this plugin:
            # what each host of a play pays. From the token cache, and without it (one derivation).
            import importlib
            importlib.import_module('ansible.plugins.lookup')
            importlib.import_module('ansible.template')
            os.environ['EV_PW'] = PASSWORD
            common = {'config_dir': config_dir, 'encryption_password_env': 'EV_PW',
                      'cache_dir': os.path.join(ansible.runtime, 'oidc-tokens')}

            def first_call(**options):
                def child():
                    start = time.perf_counter()
                    lookup_loader.get('oidc.tokens.oidc_token').run(['bench'], variables={}, **dict(common, **options))
                    return time.perf_counter() - start
                return _common.in_fork(child)

            hits, misses = [], []
            for _run in range(args.runs):
                hits.append(first_call())
                misses.append(first_call(cache=False))
            figures['lookup_fresh_worker_cache_hit_ms'] = _common.summary(hits, 1000, 2)
            figures['lookup_fresh_worker_no_cache_ms'] = _common.summary(misses, 1000, 2)

            # Once a worker has loaded the plugin: one more evaluation (a cache hit).
            plugin = lookup_loader.get('oidc.tokens.oidc_token')
            plugin.run(['bench'], variables={}, **common)
            in_process = []
            for _run in range(args.runs):
                start = time.perf_counter()
                for _i in range(args.calls):
                    plugin.run(['bench'], variables={}, **common)
                in_process.append((time.perf_counter() - start) / args.calls)
            figures['lookup_loaded_per_call_ms'] = _common.summary(in_process, 1000, 3)

            # Ansible per token, in a shell loop (its start included).
            adhoc = []
            ansible_bin = os.path.join(os.path.dirname(sys.executable), 'ansible')
            env = ansible.base_env()
            for _run in range(args.runs):
                start = time.perf_counter()
                for _i in range(args.adhoc_calls):
                    done = subprocess.run([ansible_bin, 'localhost', '-i', ansible.inventory, '-m', 'ansible.builtin.debug',
                                           '-a', 'msg={{ (%s) | length }}' % expr], env=env, capture_output=True,
                                          timeout=300, check=False)
                    assert done.returncode == 0, done.stdout[-2000:]
                adhoc.append((time.perf_counter() - start) / args.adhoc_calls)
            figures['ansible_adhoc_lookup_per_call_ms'] = _common.summary(adhoc, 1000, 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    agent_ms = figures['oidc_token_per_call_ms']['median']
    ratios = {
        'lookup_loaded_vs_oidc_token': _common.ratio(figures['lookup_loaded_per_call_ms']['median'], agent_ms, 2),
        'lookup_in_play_vs_oidc_token': _common.ratio(figures['lookup_in_play_per_call_ms']['median'], agent_ms, 2),
        'lookup_fresh_worker_hit_vs_oidc_token': _common.ratio(figures['lookup_fresh_worker_cache_hit_ms']['median'],
                                                               agent_ms, 2),
        'lookup_no_cache_vs_oidc_token': _common.ratio(figures['lookup_fresh_worker_no_cache_ms']['median'], agent_ms, 1),
        'ansible_adhoc_vs_oidc_token': _common.ratio(figures['ansible_adhoc_lookup_per_call_ms']['median'], agent_ms, 0),
    }
    print('access token per call, %d runs; oidc-agent: %s' % (args.runs, agent_version or 'not installed'))
    _common.line('oidc-token NAME in a bash loop (%d calls)' % args.calls, figures['oidc_token_per_call_ms'], 'ms')
    _common.line('lookup, loaded in the process, per call (cache hit)', figures['lookup_loaded_per_call_ms'], 'ms')
    _common.line('lookup in a play, per evaluation (%d in a loop)' % args.play_calls,
                 figures['lookup_in_play_per_call_ms'], 'ms')
    _common.line('lookup, first call in a fresh worker, cache hit', figures['lookup_fresh_worker_cache_hit_ms'], 'ms')
    _common.line('lookup, first call in a fresh worker, no cache', figures['lookup_fresh_worker_no_cache_ms'], 'ms')
    _common.line('ansible localhost -m debug with the lookup, per call', figures['ansible_adhoc_lookup_per_call_ms'],
                 'ms')
    for key, value in ratios.items():
        print('  ratio %-52s %s' % (key, value))
    _common.write(args.out, 'token_calls', {'figures': figures, 'ratios': ratios, 'notes': notes,
                                            'parameters': {'calls': args.calls, 'runs': args.runs,
                                                           'play_calls': args.play_calls,
                                                           'adhoc_calls': args.adhoc_calls, 'client': 'user-cli',
                                                           'provider_at_ttl': 3600}})
    return 0


if __name__ == '__main__':
    sys.exit(main())
