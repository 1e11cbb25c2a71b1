# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A play over many inventory hosts (ansible_connection: local, one task of ansible.builtin.debug or
ansible.builtin.ping) four ways, side by side in one run: with no lookup (the floor), with
lookup('ansible.builtin.env', ...), with the cheapest lookup a collection can have (bench.trivial.constant,
made for the run: what any collection's lookup pays per worker before its own code runs) and with
lookup('oidc.tokens.oidc_token', ...). Prints the per-host overhead of each lookup over the floor, the
ratio ours / env, the refreshes and other requests the provider saw and the Argon2id derivations made.

    python3 tests/benchmarks/bench_play_hosts.py [--hosts 500] [--forks 20] [--runs 3]
                                                 [--module ansible.builtin.debug] [--out FILE.json]

Each overhead is given twice: in wall time, and in CPU time (user and system, of ansible-playbook and
every worker it forked, from getrusage of this process's children): the wall time follows the load of
anything else on the machine, the CPU time hardly.

The plays alternate within every run, in a rotating order (floor, env, collection, ours; env,
collection, ours, floor; ...), so that a drift of the machine's load falls on all alike; each lookup's overhead is taken
against the floor of the same run. Every run with our lookup starts from an account freshly exchanged
without a kept access token and from an empty token cache, the way a fresh controller would: the
figures include filling the cache, and the provider must see exactly one refresh per run (the test
provider's access tokens live an hour, longer than a run). Derivations are counted by a sitecustomize
hook on PYTHONPATH that wraps PyNaCl's argon2id.kdf in every process Ansible forks
(tests/benchmarks/_common.py); requests by the provider's own counters. A script that prints
figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

PASSWORD = 'bench-play-hosts password'
VARIANTS = ('floor', 'env', 'collection', 'ours')
# The cheapest lookup a collection can have (it returns its terms): what any collection's lookup pays per
# worker before its own code runs, beside the builtin env lookup.
TRIVIAL_LOOKUP = '''# -*- coding: utf-8 -*-
from __future__ import annotations

DOCUMENTATION = """
name: constant
short_description: Return the terms (a benchmark's cheapest collection lookup)
description: Returns its terms.
options:
  _terms:
    description: What to return.
    required: true
"""

from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return list(terms)
'''


def trivial_collection(root):
    """ansible_collections/bench/trivial under ``root`` with the lookup bench.trivial.constant."""
    base = os.path.join(root, 'ansible_collections', 'bench', 'trivial')
    os.makedirs(os.path.join(base, 'plugins', 'lookup'))
    os.makedirs(os.path.join(base, 'meta'))
    with open(os.path.join(base, 'meta', 'runtime.yml'), 'w', encoding='utf-8') as handle:
        handle.write('requires_ansible: ">=2.16.0"\n')
    with open(os.path.join(base, 'plugins', 'lookup', 'constant.py'), 'w', encoding='utf-8') as handle:
        handle.write(TRIVIAL_LOOKUP)
    return root


def data(args, runs, figures, ratios):
    return {'figures': figures, 'ratios': ratios, 'runs': runs,
            'parameters': {'hosts': args.hosts, 'forks': args.forks, 'runs_wanted': args.runs,
                           'module': args.module, 'provider_at_ttl': 3600,
                           'variants': {'floor': 'no lookup', 'env': "lookup('ansible.builtin.env', 'HOME')",
                                        'collection': "lookup('bench.trivial.constant', 'HOME'), a collection's "
                                                      "lookup that only returns its terms",
                                        'ours': "lookup('oidc.tokens.oidc_token', 'bench', ...)"},
                           'cache': 'empty at the start of every run',
                           'bytecode': 'written and read, as on a user controller (PYTHONDONTWRITEBYTECODE unset)',
                           'account': 'freshly exchanged before every run, no kept access token'}}


def per_host(args, runs, variant, measure='seconds'):
    return [(r[measure] - f[measure]) / args.hosts for r, f in zip(runs[variant], runs['floor'])]


def ratios_per_run(ours, env):
    return [o / e for o, e in zip(ours, env) if e > 0]


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report(args, runs, final=True):
    """Figures of the runs so far; printed at the end, written (also after every run) with --out."""
    seconds = dict((v, [r['seconds'] for r in runs[v]]) for v in VARIANTS)
    ours, env = per_host(args, runs, 'ours'), per_host(args, runs, 'env')
    ours_cpu, env_cpu = per_host(args, runs, 'ours', 'cpu_seconds'), per_host(args, runs, 'env', 'cpu_seconds')
    trivial, trivial_cpu = per_host(args, runs, 'collection'), per_host(args, runs, 'collection', 'cpu_seconds')
    figures = {
        # The names of the earlier two-way benchmark are kept: "with" is our lookup, "without" the floor.
        'play_with_lookup_s': _common.summary(seconds['ours'], 1, 1),
        'play_without_lookup_s': _common.summary(seconds['floor'], 1, 1),
        'play_env_lookup_s': _common.summary(seconds['env'], 1, 1),
        'play_trivial_collection_lookup_s': _common.summary(seconds['collection'], 1, 1),
        'trivial_collection_overhead_per_host_ms': _common.summary(trivial, 1000, 2),
        'trivial_collection_cpu_overhead_per_host_ms': _common.summary(trivial_cpu, 1000, 2),
        'overhead_per_host_ms': _common.summary(ours, 1000, 2),
        'env_overhead_per_host_ms': _common.summary(env, 1000, 2),
        'overhead_ratio_ours_vs_env_per_run': _common.summary(ratios_per_run(ours, env), 1, 2),
        'play_cpu_s': dict((v, _common.summary([r['cpu_seconds'] for r in runs[v]], 1, 1)) for v in VARIANTS),
        'cpu_overhead_per_host_ms': _common.summary(ours_cpu, 1000, 2),
        'env_cpu_overhead_per_host_ms': _common.summary(env_cpu, 1000, 2),
        'cpu_overhead_ratio_ours_vs_env_per_run': _common.summary(ratios_per_run(ours_cpu, env_cpu), 1, 2),
        'provider_token_requests_per_run': _common.summary([r['token_requests'] for r in runs['ours']], 1, 0),
        'provider_refreshes_per_run': _common.summary([r['refreshes'] for r in runs['ours']], 1, 0),
        'provider_discovery_requests_per_run': _common.summary([r['discovery_requests'] for r in runs['ours']], 1, 0),
        'argon2id_derivations_per_run': _common.summary([r['argon2id_derivations'] for r in runs['ours']], 1, 0),
        'argon2id_derivations_without_lookup': _common.summary(
            [r['argon2id_derivations'] for r in runs['floor'] + runs['env']], 1, 0),
    }
    ratios = {'with_vs_without': _common.ratio(figures['play_with_lookup_s']['median'],
                                               figures['play_without_lookup_s']['median'], 3),
              'overhead_ours_vs_env': _common.ratio(figures['overhead_per_host_ms']['median'],
                                                    figures['env_overhead_per_host_ms']['median'], 2),
              'cpu_overhead_ours_vs_env': _common.ratio(figures['cpu_overhead_per_host_ms']['median'],
                                                        figures['env_cpu_overhead_per_host_ms']['median'], 2)}
    if not final:
        _common.write(args.out, 'play_hosts', data(args, runs, figures, ratios), quiet=True)
        return
    print('a play over %d local hosts, forks %d, %s, %d runs of each' % (args.hosts, args.forks, args.module,
                                                                         len(runs['ours'])))
    _common.line('play without a lookup (floor)', figures['play_without_lookup_s'], 's')
    _common.line("play with lookup('ansible.builtin.env')", figures['play_env_lookup_s'], 's')
    _common.line("play with lookup('bench.trivial.constant')", figures['play_trivial_collection_lookup_s'], 's')
    _common.line("play with lookup('oidc.tokens.oidc_token')", figures['play_with_lookup_s'], 's')
    _common.line('per-host overhead over the floor, the trivial collection lookup',
                 figures['trivial_collection_overhead_per_host_ms'], 'ms')
    _common.line('per-host CPU overhead, the trivial collection lookup',
                 figures['trivial_collection_cpu_overhead_per_host_ms'], 'ms')
    _common.line('per-host overhead over the floor, ansible.builtin.env', figures['env_overhead_per_host_ms'], 'ms')
    _common.line('per-host overhead over the floor, oidc.tokens.oidc_token', figures['overhead_per_host_ms'], 'ms')
    _common.line('ratio ours / env of the per-host overheads, per run',
                 figures['overhead_ratio_ours_vs_env_per_run'], '')
    print('  ratio ours / env of the median per-host overheads  %s' % ratios['overhead_ours_vs_env'])
    for variant, label in (('floor', 'floor'), ('env', 'ansible.builtin.env'), ('collection', 'bench.trivial.constant'),
                           ('ours', 'oidc.tokens.oidc_token')):
        _common.line('CPU time of the play, %s' % label, figures['play_cpu_s'][variant], 's')
    _common.line('per-host CPU overhead, ansible.builtin.env', figures['env_cpu_overhead_per_host_ms'],
                 'ms')
    _common.line('per-host CPU overhead, oidc.tokens.oidc_token', figures['cpu_overhead_per_host_ms'],
                 'ms')
    _common.line('ratio ours / env of the per-host CPU overheads, per run',
                 figures['cpu_overhead_ratio_ours_vs_env_per_run'], '')
    print('  ratio ours / env of the median per-host CPU overheads  %s' % ratios['cpu_overhead_ours_vs_env'])
    _common.line('provider refreshes per run (oidc_token)', figures['provider_refreshes_per_run'], '')
    _common.line('provider token requests per run (oidc_token)', figures['provider_token_requests_per_run'], '')
    _common.line('provider discovery requests per run (oidc_token)', figures['provider_discovery_requests_per_run'],
                 '')
    _common.line('Argon2id derivations per run (oidc_token)', figures['argon2id_derivations_per_run'], '')
    _common.line('Argon2id derivations per run (floor and env)', figures['argon2id_derivations_without_lookup'], '')
    _common.write(args.out, 'play_hosts', data(args, runs, figures, ratios))


def task(module, expression):
    """One task whose argument templates ``expression`` (the same template for every variant)."""
    value = "{{ 'pong' if (%s) | length > 0 else 'none' }}" % expression
    return {'name': 'task', module: {'data': value} if module.endswith('ping') else {'msg': value}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--hosts', type=int, default=500)
    parser.add_argument('--forks', type=int, default=20)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--module', default='ansible.builtin.debug', choices=('ansible.builtin.debug',
                                                                              'ansible.builtin.ping'))
    parser.add_argument('--out')
    args = parser.parse_args()

    # Python writes and reads bytecode (__pycache__) for the plugin files, as on a user's controller; an
    # environment with PYTHONDONTWRITEBYTECODE (this machine's) makes every worker compile them from source.
    os.environ.pop('PYTHONDONTWRITEBYTECODE', None)
    collections = _common.collections_root()
    from provider import Provider
    from evidence import Ansible, exchange_account, stat_counts

    work = tempfile.mkdtemp(prefix='bench-play-hosts-')
    runs = dict((v, []) for v in VARIANTS)
    try:
        with Provider(workdir=os.path.join(work, 'provider'), at_ttl=3600) as op:
            config_dir = os.path.join(work, 'accounts')
            hook = _common.kdf_hook_dir(work)
            counter = os.path.join(work, 'kdf-count')
            trivial_root = trivial_collection(os.path.join(work, 'collections'))
            ansible = Ansible(os.path.join(work, 'ansible'), env={
                'EV_PW': PASSWORD, 'PYTHONPATH': hook, 'OIDC_EVIDENCE_KDF_COUNT': counter,
                'ANSIBLE_COLLECTIONS_PATH': collections + os.pathsep + trivial_root})
            inventory = ansible.write_private('inventory.yml', {'all': {
                'hosts': dict(('h%04d' % i, None) for i in range(1, args.hosts + 1)),
                'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}})
            expressions = {
                'floor': "'HOME'",
                'env': "lookup('ansible.builtin.env', 'HOME')",
                'collection': "lookup('bench.trivial.constant', 'HOME')",
                'ours': ("lookup('oidc.tokens.oidc_token', 'bench', config_dir='%s', encryption_password_env='EV_PW')"
                         % config_dir),
            }
            plays = dict((v, [{'name': v, 'hosts': 'all', 'gather_facts': False,
                               'tasks': [task(args.module, expressions[v])]}]) for v in VARIANTS)
            for index in range(args.runs):
                shift = index % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    shutil.rmtree(os.path.join(ansible.runtime, 'oidc-tokens'), ignore_errors=True)
                    if variant == 'ours':
                        exchange_account(op, config_dir, 'bench', PASSWORD, keep_access_token=False)
                    if os.path.exists(counter):
                        os.unlink(counter)
                    before, cpu_before = stat_counts(op), children_cpu_seconds()
                    run = ansible.playbook(plays[variant], inventory=inventory, forks=args.forks, timeout=7200)
                    after, cpu = stat_counts(op), children_cpu_seconds() - cpu_before
                    ok = sum(1 for r in run.results if r['status'] == 'ok')
                    if run.rc != 0 or ok != args.hosts:
                        raise RuntimeError('run failed (rc %s, %d ok): %s' % (run.rc, ok, run.stdout[-3000:]))
                    runs[variant].append({
                        'seconds': run.seconds,
                        'cpu_seconds': cpu,
                        'token_requests': after['all_token_requests'] - before['all_token_requests'],
                        'refreshes': after['refresh'] - before['refresh'],
                        'discovery_requests': after['discovery'] - before['discovery'],
                        'argon2id_derivations': _common.kdf_count(counter),
                    })
                    print('  run %d %-6s %7.1f s (CPU %6.1f s)  %d derivations, %d refreshes, %d token requests' % (
                        index + 1, variant, run.seconds, cpu, runs[variant][-1]['argon2id_derivations'],
                        runs[variant][-1]['refreshes'], runs[variant][-1]['token_requests']), flush=True)
                report(args, runs, final=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report(args, runs)
    return 0


if __name__ == '__main__':
    sys.exit(main())
