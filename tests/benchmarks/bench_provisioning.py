# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Provisioning N workers with the role job_tokens: the collection's playbooks job_start.yml and
job_teardown.yml at --forks 20, N local "workers" (inventory hosts with ansible_connection: local,
each with its own Unix job user, become via su): wall time, and requests per worker at the provider.

    sudo python3 tests/benchmarks/bench_provisioning.py [--workers 10,50,200] [--runs 5] [--forks 20]
                                                        [--budget-minutes 90] [--out FILE.json [--resume]]

The physical limit per worker is one token exchange (start) and one revocation (teardown); the
provider's own counters say how close the role gets. Each run also plays the floors, side by side: a
play that only runs oidc_token_exchange once per worker as the job user (start's floor) and one that
only runs oidc_revoke once per worker (teardown's floor); the figures give each playbook's wall time
as a multiple of its floor's in the same run, and the module runs per worker (tasks that ran a module
on the worker, counted from the task results; controller-only actions such as assert and set_fact
are not module runs). Each worker installs the refresher under its own
prefix, as separate hosts would. Needs root: it creates the job users oidcb<random>001... and removes them
at the end. Runs stop being added for a size once --budget-minutes is spent (never fewer than one);
the figures say how many runs each median is of. With --resume, the runs already in --out count
when they measured the same code (role, playbooks, modules, module_utils: a hash of their files) with
the same parameters, so the runs of a long benchmark can be collected over several sessions; each
run records its date and commit. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

# Actions that run on the controller only: they are not module runs on the worker.
CONTROLLER_ACTIONS = frozenset(('assert', 'debug', 'fail', 'include_role', 'include_tasks', 'meta', 'set_fact',
                                'validate_argument_spec'))


def module_runs(results):
    """The tasks that ran a module on a worker (not skipped, not a controller-only action): {task: runs}."""
    runs = {}
    for r in results:
        if r['status'] != 'skipped' and r.get('action', '').rsplit('.', 1)[-1] not in CONTROLLER_ACTIONS:
            runs[r['task']] = runs.get(r['task'], 0) + 1
    return runs


def floor_plays(args_become):
    """The floors: one exchange per worker as the job user (start), one revocation per worker (teardown)."""
    common = {'become': True, 'become_user': '{{ job_tokens_user }}',
              'vars': {'ansible_pipelining': args_become == 'sudo'}}
    exchange = dict(common, name='The floor of start: one exchange per worker, as the job user', **{
        'oidc.tokens.oidc_token_exchange': {
            'name': FLOOR_ACCOUNT, 'issuer': '{{ job_tokens_issuer }}', 'client_id': '{{ job_tokens_client_id }}',
            'client_secret': '{{ job_tokens_client_secret }}', 'subject_token': '{{ job_tokens_subject_token }}',
            'scope': '{{ job_tokens_scope }}', 'lifetime': '{{ job_tokens_lifetime }}',
            'encryption_password': "{{ lookup('ansible.builtin.env', 'EV_FLOOR_PASSWORD') }}"}})
    revoke = dict(common, name='The floor of teardown: one revocation per worker, as the job user', **{
        'oidc.tokens.oidc_revoke': {
            'name': FLOOR_ACCOUNT, 'encryption_password': "{{ lookup('ansible.builtin.env', 'EV_FLOOR_PASSWORD') }}"}})
    return [{'hosts': 'workers', 'gather_facts': False, 'tasks': [task]} for task in (exchange, revoke)]


FLOOR_ACCOUNT = 'bench-floor'

# Job users of this run only: oidcb<4 hex><3 digits> (runs on one machine at once must not share them).
USER_PREFIX = 'oidcb%s' % secrets.token_hex(2)


# What the figures measure: a run of other code is another measurement (--resume does not mix them).
MEASURED_CODE = ('roles/job_tokens', 'playbooks/job_start.yml', 'playbooks/job_teardown.yml',
                 'plugins/modules', 'plugins/module_utils')


def measured_code_hash():
    """sha256 over the paths and contents of the files the role runs (the work tree as it is)."""
    digest = hashlib.sha256()
    files = []
    for top in MEASURED_CODE:
        path = os.path.join(_common.REPO, top)
        if os.path.isfile(path):
            files.append(top)
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != '__pycache__')
            files.extend(os.path.relpath(os.path.join(folder, n), _common.REPO) for n in names if not n.endswith('.pyc'))
    for name in sorted(files):
        with open(os.path.join(_common.REPO, name), 'rb') as handle:
            digest.update(name.encode() + b'\0' + hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def resumable_runs(path, parameters, sizes):
    """The runs in ``path`` of the same code and parameters, per size (of ``sizes``); else {} and why."""
    try:
        with open(path, encoding='utf-8') as handle:
            old = json.load(handle)
    except (OSError, ValueError) as exc:
        return {}, 'no earlier figures to resume (%s)' % exc.__class__.__name__
    old_parameters = old.get('parameters', {})
    for key, value in parameters.items():
        if old_parameters.get(key) != value:
            return {}, 'earlier figures were measured with %s=%r, not %r' % (key, old_parameters.get(key), value)
    return dict((size, old.get('runs', {}).get(str(size), [])) for size in sizes), 'resuming earlier figures'


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
    """Whether one more run of ``size`` fits the budget, keeping time for one run of each later size
    (the later sizes that still lack runs)."""
    left = deadline.left()
    if left is None:
        return True
    per_worker = max(per_worker_seconds) if per_worker_seconds else 0
    return per_worker * (size + sum(later_sizes)) < left


def report(args, parameters, results, final=True):
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
            'floor_start_s': _common.summary([r['floor_start']['seconds'] for r in rows], 1, 1),
            'floor_teardown_s': _common.summary([r['floor_teardown']['seconds'] for r in rows], 1, 1),
            'start_floor_ratio': _common.summary([r['start']['seconds'] / r['floor_start']['seconds'] for r in rows], 1, 2),
            'teardown_floor_ratio': _common.summary(
                [r['teardown']['seconds'] / r['floor_teardown']['seconds'] for r in rows], 1, 2),
            'module_runs_per_worker_start': _common.summary(per_worker('start', 'module_runs'), 1, 2),
            'module_runs_per_worker_teardown': _common.summary(per_worker('teardown', 'module_runs'), 1, 2),
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
        _common.line('  its floor (one oidc_token_exchange per worker)', entry['floor_start_s'], 's')
        _common.line('  start / floor (goal: at most 3)', entry['start_floor_ratio'], 'x')
        _common.line('  module runs per worker at start', entry['module_runs_per_worker_start'], '')
        _common.line('teardown (job_teardown.yml)', entry['teardown_s'], 's')
        _common.line('  its floor (one oidc_revoke per worker)', entry['floor_teardown_s'], 's')
        _common.line('  teardown / floor (goal: at most 2)', entry['teardown_floor_ratio'], 'x')
        _common.line('  module runs per worker at teardown', entry['module_runs_per_worker_teardown'], '')
        _common.line('exchanges per worker (limit 1)', entry['exchanges_per_worker'], '')
        _common.line('refreshes per worker at start', entry['refreshes_per_worker_at_start'], '')
        _common.line('revocations per worker (limit 1)', entry['revocations_per_worker'], '')
        _common.line('token-endpoint requests per worker, start + teardown', entry['token_requests_per_worker'], '')
        _common.line('discovery requests per worker', entry['discovery_per_worker'], '')
    dates = sorted(r['measured_at'] for rows in results.values() for r in rows if r.get('measured_at'))
    data = {'figures': figures, 'runs': dict((str(k), v) for k, v in results.items()),
            'runs_measured': {'first': dates[0] if dates else None, 'last': dates[-1] if dates else None,
                              'commits': sorted(set(r['git_commit'] for rows in results.values() for r in rows
                                                    if r.get('git_commit')))},
            'parameters': dict(parameters, runs_wanted=args.runs, budget_minutes=args.budget_minutes)}
    _common.write(args.out, 'provisioning', data, quiet=not final)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--workers', default='10,50,200')
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--forks', type=int, default=20)
    parser.add_argument('--budget-minutes', type=float, default=90)
    parser.add_argument('--become-method', choices=('su', 'sudo'), default='su',
                        help='how the role becomes the job user (sudo, if installed, with pipelining; su never pipelines)')
    parser.add_argument('--out')
    parser.add_argument('--resume', action='store_true',
                        help='keep the runs in --out of the same code and parameters; add runs up to --runs')
    args = parser.parse_args()
    if os.geteuid() != 0:
        print('bench_provisioning: needs root (it creates job users)', file=sys.stderr)
        return 2
    sizes = [int(n) for n in args.workers.split(',') if n.strip()]
    # What makes runs comparable: the same code, forks, become method and provider settings.
    parameters = {'code_sha256': measured_code_hash(), 'forks': args.forks, 'become_method': args.become_method,
                  'pipelining': args.become_method == 'sudo', 'scheduler': 'cron (no systemd on this machine)',
                  'provider_at_ttl': 3600}
    results = {}
    if args.resume and args.out:
        results, why = resumable_runs(args.out, parameters, sizes)
        print('bench_provisioning: %s' % why, flush=True)
    machine = _common.machine()

    _common.collections_root()
    from provider import Provider
    from evidence import Ansible, EXCHANGER, stat_counts

    playbooks = os.path.join(_common.REPO, 'playbooks')
    work = tempfile.mkdtemp(prefix='bench-provisioning-')
    shared = tempfile.mkdtemp(prefix='oidc-bench-prov-')
    os.chmod(shared, 0o755)
    created = []
    per_worker_seconds = [(r['start']['seconds'] + r['teardown']['seconds']) / size
                          for size, rows in results.items() for r in rows]
    deadline = _common.Deadline(args.budget_minutes * 60)
    try:
        created = ensure_users(max(sizes))
        with Provider(workdir=os.path.join(work, 'provider'), at_ttl=3600) as op:
            ansible = Ansible(os.path.join(work, 'ansible'), env={'EV_SECRET': op.client(EXCHANGER)['client_secret'],
                                                                  'EV_FLOOR_PASSWORD': secrets.token_urlsafe(24)})
            floor_start, floor_teardown = (ansible.write_private('floor-%s.yml' % name, [play]) for name, play in
                                           zip(('start', 'teardown'), floor_plays(parameters['become_method'])))
            for size in sizes:
                hosts = dict(('w%03d' % i, {'job_tokens_user': '%s%03d' % (USER_PREFIX, i)})
                             for i in range(1, size + 1))
                inventory = ansible.write_private('inventory-%d.yml' % size, {'all': {'children': {'workers': {
                    'hosts': hosts,
                    'vars': {
                        'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3',
                        'ansible_become_method': parameters['become_method'],
                        'ansible_pipelining': parameters['pipelining'],
                        'job_tokens_account': 'bench',
                        'job_tokens_issuer': op.issuer, 'job_tokens_client_id': EXCHANGER,
                        'job_tokens_client_secret': "{{ lookup('ansible.builtin.env', 'EV_SECRET') }}",
                        'job_tokens_subject_token': "{{ lookup('ansible.builtin.env', 'EV_SUBJECT') }}",
                        'job_tokens_scope': ['openid', 'compute.read'], 'job_tokens_lifetime': 3600,
                        'job_tokens_min_valid_period': 60, 'job_tokens_start_timeout': 120,
                        'job_tokens_prefix': shared + '/prefix-{{ inventory_hostname }}',
                    }}}}})
                rows = list(results.get(size, []))
                for index in range(len(rows), args.runs):
                    lacking = [s for s in sizes if s > size and len(results.get(s, [])) < args.runs]
                    if index and not budget_allows(deadline, per_worker_seconds, size, lacking):
                        break
                    row = {'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                           'git_commit': machine.get('git_commit'), 'git_dirty': machine.get('git_dirty')}
                    # The user's access token of the moment, as at a real job's start (one token would
                    # expire during a long benchmark).
                    ansible.env['EV_SUBJECT'] = op.user_access_token(scope='openid compute.read')
                    for phase, playbook in (('start', os.path.join(playbooks, 'job_start.yml')),
                                            ('teardown', os.path.join(playbooks, 'job_teardown.yml')),
                                            ('floor_start', floor_start), ('floor_teardown', floor_teardown)):
                        if phase == 'floor_start':     # a fresh subject token for the floor's exchanges too
                            ansible.env['EV_SUBJECT'] = op.user_access_token(scope='openid compute.read')
                        before = stat_counts(op)
                        run = ansible.playbook(playbook, inventory=inventory, forks=args.forks, timeout=14400)
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
                            'module_runs': sum(module_runs(run.results).values()),
                            'module_run_tasks': module_runs(run.results),
                        }
                    rows.append(row)
                    results[size] = rows
                    report(args, parameters, results, final=False)
                    per_worker_seconds.append((row['start']['seconds'] + row['teardown']['seconds']) / size)
                    print('  %4d workers run %d: start %6.1f s (%d exchanges, %d refreshes; floor %.1f s), teardown %6.1f s '
                          '(%d revocations; floor %.1f s)' % (
                              size, index + 1, row['start']['seconds'], row['start']['exchanges'],
                              row['start']['refreshes'], row['floor_start']['seconds'], row['teardown']['seconds'],
                              row['teardown']['revocations'], row['floor_teardown']['seconds']), flush=True)
                results[size] = rows
    finally:
        remove_users(created)
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    report(args, parameters, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
