# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A play over many inventory hosts (ansible_connection: local, the no-op module ansible.builtin.ping)
with and without the lookup oidc.tokens.oidc_token in the task's arguments: the overhead per host,
the requests the provider saw and the Argon2id derivations made.

    python3 tests/benchmarks/bench_play_hosts.py [--hosts 1000] [--forks 20] [--runs 5] [--out FILE.json]

Runs alternate (with, without, with, ...). Every run with the lookup starts with an empty token cache,
the way a fresh controller would: the figures include filling it. Derivations are counted by a
sitecustomize hook on PYTHONPATH that wraps PyNaCl's argon2id.kdf in every process Ansible forks
(tests/benchmarks/_common.py); requests by the provider's own counters. A script that prints
figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

PASSWORD = 'bench-play-hosts password'


def data(args, runs, figures, ratios):
    return {'figures': figures, 'ratios': ratios, 'runs': runs,
            'parameters': {'hosts': args.hosts, 'forks': args.forks, 'runs_wanted': args.runs,
                           'module': 'ansible.builtin.ping', 'provider_at_ttl': 3600,
                           'cache': 'empty at the start of every run'}}


def report(args, runs, final=True):
    """Figures of the runs so far; printed at the end, written (also after every run) with --out."""
    with_s = [r['seconds'] for r in runs['with']]
    without_s = [r['seconds'] for r in runs['without']]
    per_host = [(w - n) / args.hosts for w, n in zip(with_s, without_s)]
    figures = {
        'play_with_lookup_s': _common.summary(with_s, 1, 1),
        'play_without_lookup_s': _common.summary(without_s, 1, 1),
        'overhead_per_host_ms': _common.summary(per_host, 1000, 2),
        'provider_token_requests_per_run': _common.summary([r['token_requests'] for r in runs['with']], 1, 0),
        'provider_refreshes_per_run': _common.summary([r['refreshes'] for r in runs['with']], 1, 0),
        'provider_discovery_requests_per_run': _common.summary([r['discovery_requests'] for r in runs['with']], 1, 0),
        'argon2id_derivations_per_run': _common.summary([r['argon2id_derivations'] for r in runs['with']], 1, 0),
        'argon2id_derivations_without_lookup': _common.summary(
            [r['argon2id_derivations'] for r in runs['without']], 1, 0),
    }
    ratios = {'with_vs_without': _common.ratio(figures['play_with_lookup_s']['median'],
                                               figures['play_without_lookup_s']['median'], 3)}
    if not final:
        _common.write(args.out, 'play_hosts', data(args, runs, figures, ratios), quiet=True)
        return
    print('a play over %d local hosts, forks %d, ansible.builtin.ping, %d runs each' % (args.hosts, args.forks,
                                                                                        args.runs))
    _common.line('play with the lookup', figures['play_with_lookup_s'], 's')
    _common.line('play without the lookup', figures['play_without_lookup_s'], 's')
    _common.line('overhead per host', figures['overhead_per_host_ms'], 'ms')
    _common.line('provider token requests per run (with the lookup)', figures['provider_token_requests_per_run'], '')
    _common.line('provider discovery requests per run', figures['provider_discovery_requests_per_run'], '')
    _common.line('Argon2id derivations per run (with the lookup)', figures['argon2id_derivations_per_run'], '')
    print('  ratio with/without %s' % ratios['with_vs_without'])
    _common.write(args.out, 'play_hosts', data(args, runs, figures, ratios))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--hosts', type=int, default=1000)
    parser.add_argument('--forks', type=int, default=20)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--out')
    args = parser.parse_args()

    _common.collections_root()
    from provider import Provider
    from evidence import Ansible, exchange_account, stat_counts

    work = tempfile.mkdtemp(prefix='bench-play-hosts-')
    runs = {'with': [], 'without': []}
    try:
        with Provider(workdir=os.path.join(work, 'provider'), at_ttl=3600) as op:
            config_dir = os.path.join(work, 'accounts')
            exchange_account(op, config_dir, 'bench', PASSWORD, keep_access_token=True)
            hook = _common.kdf_hook_dir(work)
            counter = os.path.join(work, 'kdf-count')
            ansible = Ansible(os.path.join(work, 'ansible'), env={
                'EV_PW': PASSWORD, 'PYTHONPATH': hook, 'OIDC_EVIDENCE_KDF_COUNT': counter})
            inventory = ansible.write_private('inventory.yml', {'all': {
                'hosts': dict(('h%04d' % i, None) for i in range(1, args.hosts + 1)),
                'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}})
            lookup = ("lookup('oidc.tokens.oidc_token', 'bench', config_dir='%s', encryption_password_env='EV_PW')"
                      % config_dir)
            plays = {
                'with': [{'name': 'with', 'hosts': 'all', 'gather_facts': False, 'tasks': [
                    {'name': 'ping', 'ansible.builtin.ping': {
                        'data': "{{ 'pong' if (%s) | length > 0 else 'none' }}" % lookup}}]}],
                'without': [{'name': 'without', 'hosts': 'all', 'gather_facts': False, 'tasks': [
                    {'name': 'ping', 'ansible.builtin.ping': {'data': 'pong'}}]}],
            }
            for index in range(args.runs):
                for variant in ('with', 'without'):
                    cache = os.path.join(ansible.runtime, 'oidc-tokens')
                    shutil.rmtree(cache, ignore_errors=True)
                    if os.path.exists(counter):
                        os.unlink(counter)
                    before = stat_counts(op)
                    run = ansible.playbook(plays[variant], inventory=inventory, forks=args.forks, timeout=7200)
                    after = stat_counts(op)
                    ok = sum(1 for r in run.results if r['status'] == 'ok')
                    if run.rc != 0 or ok != args.hosts:
                        raise RuntimeError('run failed (rc %s, %d ok): %s' % (run.rc, ok, run.stdout[-3000:]))
                    runs[variant].append({
                        'seconds': run.seconds,
                        'token_requests': after['all_token_requests'] - before['all_token_requests'],
                        'refreshes': after['refresh'] - before['refresh'],
                        'discovery_requests': after['discovery'] - before['discovery'],
                        'argon2id_derivations': _common.kdf_count(counter),
                    })
                    if variant == 'without':
                        report(args, runs, final=False)
                    print('  run %d %-8s %7.1f s  %d derivations, %d token requests' % (
                        index + 1, variant, run.seconds, runs[variant][-1]['argon2id_derivations'],
                        runs[variant][-1]['token_requests']), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report(args, runs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
