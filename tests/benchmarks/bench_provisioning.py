# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Provisioning N workers with the role job_tokens: the collection's playbooks job_start.yml and
job_teardown.yml at --forks 20, N local "workers" (inventory hosts with ansible_connection: local,
each with its own Unix job user, become via su): wall time, and requests per worker at the provider.

    sudo python3 tests/benchmarks/bench_provisioning.py [--workers 10,50,200] [--runs 5] [--forks 20]
                                                        [--budget-minutes 90] [--out FILE.json]

The physical limit per worker is one token exchange (start) and one revocation (teardown); the
provider's own counters say how close the role gets. Each worker installs the refresher under its own
prefix, as separate hosts would. Needs root: it creates the job users oidcb<random>001... and removes them
at the end. Runs stop being added for a size once --budget-minutes is spent (never fewer than one);
the figures say how many runs each median is of. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

# Job users of this run only: oidcb<4 hex><3 digits> (runs on one machine at once must not share them).
USER_PREFIX = 'oidcb%s' % secrets.token_hex(2)


def ensure_users(count):
    created = []
    for i in range(1, count + 1):
        name = '%s%03d' % (USER_PREFIX, i)
        if subprocess.run(['getent', 'passwd', name], capture_output=True, check=False).returncode != 0:
            subprocess.run(['useradd', '--create-home', '--shell', '/bin/bash', name], check=True,
                           capture_output=True)
            created.append(name)
    return created


def processes_of(uids):
    """Pids of the processes owned by these uids (the refreshers this benchmark's workers started)."""
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/status' % entry, encoding='ascii', errors='replace') as handle:
                for line in handle:
                    if line.startswith('Uid:'):
                        if int(line.split()[1]) in uids:
                            found.append(int(entry))
                        break
        except OSError:
            continue
    return found


def remove_users(names):
    import pwd
    import signal
    uids = set()
    for name in names:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    for pid in processes_of(uids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in names:
        subprocess.run(['crontab', '-r', '-u', name], capture_output=True, check=False)
        subprocess.run(['userdel', '-r', name], capture_output=True, check=False)


def budget_allows(deadline, per_worker_seconds, size, later_sizes):
    """Whether one more run of ``size`` fits the budget, keeping time for one run of each later size."""
    left = deadline.left()
    if left is None:
        return True
    per_worker = max(per_worker_seconds) if per_worker_seconds else 0
    return per_worker * (size + sum(later_sizes)) < left


def report(args, results, final=True):
    """Figures of the runs so far; printed at the end, written (also after every run) with --out."""
    figures = {}
    if final:
        print('provisioning with job_tokens, forks %d' % args.forks)
    for size, rows in results.items():
        def per_worker(phase, key, rows=rows, size=size):
            return [r[phase][key] / size for r in rows]
        entry = {
            'start_s': _common.summary([r['start']['seconds'] for r in rows], 1, 1),
            'teardown_s': _common.summary([r['teardown']['seconds'] for r in rows], 1, 1),
            'start_per_worker_s': _common.summary([r['start']['seconds'] / size for r in rows], 1, 3),
            'exchanges_per_worker': _common.summary(per_worker('start', 'exchange' + 's'), 1, 2),
            'refreshes_per_worker_at_start': _common.summary(per_worker('start', 'refreshes'), 1, 2),
            'revocations_per_worker': _common.summary(per_worker('teardown', 'revocations'), 1, 2),
            'token_requests_per_worker': _common.summary(
                [(r['start']['token_requests'] + r['teardown']['token_requests']) / size for r in rows], 1, 2),
            'discovery_per_worker': _common.summary(
                [(r['start']['discovery'] + r['teardown']['discovery']) / size for r in rows], 1, 2),
        }
        figures[str(size)] = entry
        if not final:
            continue
        print('  %d workers (%d runs)' % (size, len(rows)))
        _common.line('start (job_start.yml)', entry['start_s'], 's')
        _common.line('teardown (job_teardown.yml)', entry['teardown_s'], 's')
        _common.line('exchanges per worker (limit 1)', entry['exchanges_per_worker'], '')
        _common.line('refreshes per worker at start', entry['refreshes_per_worker_at_start'], '')
        _common.line('revocations per worker (limit 1)', entry['revocations_per_worker'], '')
        _common.line('token-endpoint requests per worker, start + teardown', entry['token_requests_per_worker'], '')
        _common.line('discovery requests per worker', entry['discovery_per_worker'], '')
    data = {'figures': figures, 'runs': dict((str(k), v) for k, v in results.items()),
            'parameters': {'forks': args.forks, 'runs_wanted': args.runs,
                           'scheduler': 'cron (no systemd on this machine)', 'provider_at_ttl': 3600,
                           'budget_minutes': args.budget_minutes}}
    _common.write(args.out, 'provisioning', data, quiet=not final)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--workers', default='10,50,200')
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--forks', type=int, default=20)
    parser.add_argument('--budget-minutes', type=float, default=90)
    parser.add_argument('--out')
    args = parser.parse_args()
    if os.geteuid() != 0:
        print('bench_provisioning: needs root (it creates job users)', file=sys.stderr)
        return 2
    sizes = [int(n) for n in args.workers.split(',') if n.strip()]

    _common.collections_root()
    from provider import Provider
    from evidence import Ansible, EXCHANGER, stat_counts

    playbooks = os.path.join(_common.REPO, 'playbooks')
    work = tempfile.mkdtemp(prefix='bench-provisioning-')
    shared = tempfile.mkdtemp(prefix='oidc-bench-prov-')
    os.chmod(shared, 0o755)
    created = []
    results = {}
    per_worker_seconds = []
    deadline = _common.Deadline(args.budget_minutes * 60)
    try:
        created = ensure_users(max(sizes))
        with Provider(workdir=os.path.join(work, 'provider'), at_ttl=3600) as op:
            subject = op.user_access_token(scope='openid compute.read')
            ansible = Ansible(os.path.join(work, 'ansible'), env={
                'EV_SECRET': op.client(EXCHANGER)['client_secret'], 'EV_SUBJECT': subject})
            for size in sizes:
                hosts = dict(('w%03d' % i, {'job_tokens_user': '%s%03d' % (USER_PREFIX, i)})
                             for i in range(1, size + 1))
                inventory = ansible.write_private('inventory-%d.yml' % size, {'all': {'children': {'workers': {
                    'hosts': hosts,
                    'vars': {
                        'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3',
                        'ansible_become_method': 'su', 'job_tokens_account': 'bench',
                        'job_tokens_issuer': op.issuer, 'job_tokens_client_id': EXCHANGER,
                        'job_tokens_client_secret': "{{ lookup('ansible.builtin.env', 'EV_SECRET') }}",
                        'job_tokens_subject_token': "{{ lookup('ansible.builtin.env', 'EV_SUBJECT') }}",
                        'job_tokens_scope': ['openid', 'compute.read'], 'job_tokens_lifetime': 3600,
                        'job_tokens_min_valid_period': 60, 'job_tokens_start_timeout': 120,
                        'job_tokens_prefix': shared + '/prefix-{{ inventory_hostname }}',
                    }}}}})
                rows = []
                for index in range(args.runs):
                    if index and not budget_allows(deadline, per_worker_seconds, size,
                                                   [s for s in sizes if s > size]):
                        break
                    row = {}
                    for phase, playbook in (('start', 'job_start.yml'), ('teardown', 'job_teardown.yml')):
                        before = stat_counts(op)
                        run = ansible.playbook(os.path.join(playbooks, playbook), inventory=inventory,
                                               forks=args.forks, timeout=14400)
                        after = stat_counts(op)
                        if run.rc != 0:
                            raise RuntimeError('%s of %d workers failed (rc %s):\n%s' % (
                                phase, size, run.rc, run.stdout[-4000:]))
                        row[phase] = {
                            'seconds': run.seconds,
                            'exchanges': after['exchange'] - before['exchange'],
                            'refreshes': after['refresh'] - before['refresh'],
                            'revocations': after['revocation'] - before['revocation'],
                            'discovery': after['discovery'] - before['discovery'],
                            # The subject token comes from the environment: every token request is the role's.
                            'token_requests': after['all_token_requests'] - before['all_token_requests'],
                        }
                    rows.append(row)
                    results[size] = rows
                    report(args, results, final=False)
                    per_worker_seconds.append((row['start']['seconds'] + row['teardown']['seconds']) / size)
                    print('  %4d workers run %d: start %6.1f s (%d exchanges, %d refreshes), teardown %6.1f s '
                          '(%d revocations)' % (size, index + 1, row['start']['seconds'], row['start']['exchanges'],
                                                row['start']['refreshes'], row['teardown']['seconds'],
                                                row['teardown']['revocations']), flush=True)
                results[size] = rows
    finally:
        remove_users(created)
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    report(args, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
