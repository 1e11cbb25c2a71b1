"""Where do the secrets go? The collection's flows run at -vvvv with Ansible's log file on, and every
byte they leave behind is searched for every secret value used.

Flows (what the integration targets do, as users run them):

A. the modules and the lookup on localhost: oidc_token_exchange (also again, and in check/diff mode),
   oidc_token (no_log, as documented) and its token used against the provider's userinfo endpoint,
   the lookup in a uri task and with a query, oidc_account_info with check_active, oidc_account
   (create from a refresh token, again, check/diff, absent), three failing tasks (wrong password,
   garbage subject token, the lookup with a wrong password), oidc_revoke. Run twice: with the usual
   umask and with umask 000.
B. the role job_tokens through the collection's playbook job_run.yml (start, a job that uses its
   bearer-token file while the refresher rotates refresh tokens, teardown), for a real Unix job user
   (become via su), under umask 000. Needs root, useradd and su; skipped otherwise.

Secrets searched for: every token and secret that crossed a recording proxy between the collection
and the provider (subject tokens, refresh tokens, access tokens, client secrets), the account
passwords, the test user's password; in raw, URL-encoded, JSON-escaped and base64 forms (also inside
a Basic authorization header). Searched: stdout and stderr of every run, Ansible's log file, the
callback's results, the whole scratch tree (homes, Ansible's directories, account directories, the
lookup's cache), the job user's home, the bearer-token file, the job user's crontab and mail, the
refresher's log and state (also as they were while the job ran: a watcher copies them every 0.3 s),
and the systemd journal when there is one.

Hits allowed: the bearer-token file (access tokens only). Hits by design, counted apart: the lookup's
token cache (access tokens only, 0600 in a 0700 directory, documented) and the role's password file
(the account password only, 0600, documented). Everything else is a leak; there must be none.

File modes: after every run, everything the collection made (account directory and files, lock
files, the lookup's cache, the bearer-token file, the refresher's configuration, state and log) is
0700/0600 and owned by the user it belongs to, under umask 000 too.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

from evidence import (
    EXCHANGER, LEDGER, Ansible, SecretScanner, play, private_mode_violations, proxied_provider, tree_mode_violations)

SUITE = 'security'
PASSWORD = 'Sec-scan: account pw %+&/ 7c1e'
JOB_PASSWORD = 'Job-account pw 4b9d &%+/ 0a2'
WRONG_PASSWORD = 'wrong password 91f0e2'
# A job user of this run only (runs on one machine at once must not share it).
JOB_USER = 'oidcev%s' % secrets.token_hex(3)
ACCOUNT = 'job1'


SUBJECT_SCRIPT = '''#!%s
"""Print a fresh access token of the test user (the subject token), for a pipe lookup."""
import os, requests
r = requests.post(os.environ['EV_TOKEN_ENDPOINT'], auth=('user-cli', os.environ['EV_USERCLI_SECRET']),
                  data={'grant_type': 'password', 'username': 'alice', 'password': os.environ['EV_ALICE_PW'],
                        'scope': 'openid compute.read'}, timeout=10)
r.raise_for_status()
print(r.json()['access_token'])
'''


class World(object):
    def __init__(self, provider_factory, workdir):
        self.dir = str(workdir)
        # Exchanged access tokens live 12 s: the refresher (asked for 8 s of validity) rotates refresh tokens
        # several times while the job runs, and a token used in the task after the one that got it still
        # has 9 s (a busy CI took more than 3 s between two tasks). The user's own (subject) tokens live
        # 120 s, so a busy controller cannot let one expire between templating a task and the exchange.
        self.op, self.proxy = proxied_provider(provider_factory, record_secrets=True, at_ttl=12, user_at_ttl=120)
        self.issuer = self.proxy.url
        self.scanner = SecretScanner()
        self.observed = {}        # path -> set of contents seen while a flow ran
        self.extra_roots = []
        self.runs = []
        self.mode_checks = 0
        self.mode_violations = []
        # A fresh subject token each time a task templates it.
        self.subject_helper = os.path.join(self.dir, 'subject_token.py')
        with open(self.subject_helper, 'w', encoding='utf-8') as handle:
            handle.write(SUBJECT_SCRIPT % sys.executable)
        os.chmod(self.subject_helper, 0o700)
        self.subject_env = {'EV_USERCLI_SECRET': self.op.client('user-cli')['client_secret'],
                            'EV_ALICE_PW': self.op.user('alice')['password'],
                            'EV_TOKEN_ENDPOINT': self.op.token_endpoint}

    def label_all(self):
        """Every secret known so far, labelled."""
        for value, kind in list(self.proxy.secret_kinds.items()):
            self.scanner.add(value, kind)
        return self.scanner

    def add(self, value, kind):
        self.scanner.add(value, kind)

    def check_modes(self, what, paths=(), trees=(), uid=None):
        bad = list(private_mode_violations(paths, uid))
        for tree in trees:
            bad.extend(tree_mode_violations(tree, uid))
        self.mode_checks += 1
        self.mode_violations.extend('%s: %s' % (what, b) for b in bad)
        return bad

    def stop(self):
        self.proxy.stop()


@pytest.fixture(scope='module')
def world(provider_factory, tmp_path_factory):
    w = World(provider_factory, tmp_path_factory.mktemp('security'))
    for name in ('user-cli', EXCHANGER, 'plain-client'):
        w.add(w.op.client(name)['client_secret'], 'client_secret')
    for user in ('alice', 'bob'):
        w.add(w.op.user(user)['password'], 'password')
    w.add(PASSWORD, 'password')
    w.add(JOB_PASSWORD, 'password')
    w.add(WRONG_PASSWORD, 'password')
    yield w
    w.stop()


# -- flow A: modules and lookup ----------------------------------------------------------------------

ENV = "{{ lookup('ansible.builtin.env', '%s') }}"


def flow_a_tasks():
    store = {'config_dir': '{{ config_dir }}', 'encryption_password_env': 'EV_PW'}
    exchange = dict(store, name=ACCOUNT, issuer='{{ issuer }}', client_id=EXCHANGER, client_secret=ENV % 'EV_SECRET',
                    subject_token="{{ lookup('ansible.builtin.pipe', subject_helper) }}",
                    scope=['openid', 'compute.read'], lifetime=3600)
    # Access tokens live 12 s here (see World): a token used in the next task is asked with 9 s left, or a
    # busy controller lets it expire between the two tasks.
    lookup = ("lookup('oidc.tokens.oidc_token', '%s', config_dir=config_dir, encryption_password_env='EV_PW', "
              "min_valid_period=9" % ACCOUNT)
    account = dict(store, name='imported', issuer='{{ issuer }}', client_id='user-cli',
                   client_secret=ENV % 'EV_USERCLI_SECRET', refresh_token=ENV % 'EV_USER_RT',
                   scope=['openid', 'offline_access', 'compute.read'])
    return [
        {'name': 'exchange', 'oidc.tokens.oidc_token_exchange': exchange},
        {'name': 'exchange again (no change)', 'oidc.tokens.oidc_token_exchange': exchange},
        {'name': 'exchange in check and diff mode', 'oidc.tokens.oidc_token_exchange': dict(exchange, force=True),
         'check_mode': True, 'diff': True},
        {'name': 'token', 'oidc.tokens.oidc_token': dict(store, name=ACCOUNT, min_valid_period=9),
         'register': 'job1_token', 'no_log': True},
        {'name': 'use the token at the userinfo endpoint', 'ansible.builtin.uri': {
            'url': '{{ userinfo_url }}', 'headers': {'Authorization': 'Bearer {{ job1_token.access_token }}'},
            'return_content': False}, 'no_log': True},
        {'name': 'token in check and diff mode', 'oidc.tokens.oidc_token': dict(store, name=ACCOUNT),
         'check_mode': True, 'diff': True, 'no_log': True},
        {'name': 'the lookup in a uri task', 'ansible.builtin.uri': {
            'url': '{{ userinfo_url }}', 'headers': {'Authorization': 'Bearer {{ %s) }}' % lookup},
            'return_content': False}, 'no_log': True},
        {'name': 'the lookup with a query (no token)', 'ansible.builtin.debug': {
            'msg': "{{ %s, query='[issuer, expires_at, scope]') }}" % lookup}},
        {'name': 'account info with check_active', 'oidc.tokens.oidc_account_info': dict(
            store, name=[ACCOUNT], check_active=True), 'register': 'info'},
        {'name': 'show the account info', 'ansible.builtin.debug': {'var': 'info'}},
        {'name': 'account from a refresh token', 'oidc.tokens.oidc_account': account, 'diff': True},
        {'name': 'account again (no change)', 'oidc.tokens.oidc_account': account, 'diff': True},
        {'name': 'account in check mode', 'oidc.tokens.oidc_account': dict(account, scope=['openid', 'offline_access']),
         'check_mode': True, 'diff': True},
        {'name': 'failing: token with a wrong password', 'oidc.tokens.oidc_token': dict(
            store, name=ACCOUNT, encryption_password_env='EV_WRONG'), 'ignore_errors': True, 'no_log': True},
        {'name': 'failing: token with a wrong password, without no_log', 'oidc.tokens.oidc_token': dict(
            store, name=ACCOUNT, encryption_password_env='EV_WRONG'), 'ignore_errors': True},
        {'name': 'failing: exchange of a garbage subject token', 'oidc.tokens.oidc_token_exchange': dict(
            exchange, name='other', subject_token=ENV % 'EV_GARBAGE'), 'ignore_errors': True},
        {'name': 'failing: the lookup with a wrong password', 'ansible.builtin.set_fact': {
            'x': "{{ lookup('oidc.tokens.oidc_token', '%s', config_dir=config_dir, encryption_password_env='EV_WRONG') "
                 "| length }}" % ACCOUNT}, 'ignore_errors': True},
        {'name': 'revoke', 'oidc.tokens.oidc_revoke': dict(store, name=ACCOUNT), 'diff': True},
        {'name': 'remove the imported account', 'oidc.tokens.oidc_account': dict(
            store, name='imported', state='absent'), 'diff': True},
    ]


EXPECTED_FAILURES = {'failing: token with a wrong password', 'failing: token with a wrong password, without no_log',
                     'failing: exchange of a garbage subject token', 'failing: the lookup with a wrong password'}


def run_flow_a(world, tag, umask):
    base = os.path.join(world.dir, tag)
    ansible = Ansible(os.path.join(base, 'ansible'))
    config_dir = os.path.join(base, 'accounts')
    user = world.op.user_tokens(scope='openid offline_access compute.read')
    world.add(user['access_token'], 'access_token')
    world.add(user['refresh_token'], 'refresh_token')
    env = dict(world.subject_env, EV_PW=PASSWORD, EV_WRONG=WRONG_PASSWORD,
               EV_SECRET=world.op.client(EXCHANGER)['client_secret'], EV_GARBAGE='garbage-subject-token-5d1c0e77',
               EV_USER_RT=user['refresh_token'])
    world.add('garbage-subject-token-5d1c0e77', 'subject_token')
    log_path = os.path.join(base, 'ansible.log')
    run = ansible.playbook(play(flow_a_tasks()), verbosity=4, umask=umask, log_path=log_path, env=env,
                           extra_vars={'issuer': world.issuer, 'config_dir': config_dir,
                                       'userinfo_url': world.issuer + '/me', 'subject_helper': world.subject_helper})
    world.runs.append((tag, run))
    statuses = dict((r['task'], r['status']) for r in run.results)
    unexpected = [t for t, s in statuses.items() if s == 'failed' or (s == 'ignored' and t not in EXPECTED_FAILURES)]
    assert not unexpected, (unexpected, run.stdout[-5000:])
    missing = [t['name'] for t in flow_a_tasks() if t['name'] not in statuses]
    assert not missing, missing
    assert all(statuses[t] == 'ignored' for t in EXPECTED_FAILURES)
    assert run.rc == 0
    bad = world.check_modes(tag, trees=[config_dir, os.path.join(ansible.runtime, 'oidc-tokens')])
    assert not bad, bad
    return base, ansible, run


def test_flow_a_modules_and_lookup(world):
    for tag, umask in (('flow-a', None), ('flow-a-umask-000', 0o000)):
        base, ansible, run = run_flow_a(world, tag, umask)
        LEDGER.add(SUITE, 'playbook runs at -vvvv')
        LEDGER.add(SUITE, 'tasks run', len(run.results))
        world.extra_roots.append(base)
    LEDGER.add(SUITE, 'runs under umask 000', 1)


# -- flow B: the role, for a real job user ---------------------------------------------------------------

def can_make_users():
    return os.geteuid() == 0 and shutil.which('useradd') and shutil.which('userdel') and shutil.which('su')


class Watcher(threading.Thread):
    """Copies (in memory) every file under the given roots every 0.3 s while a flow runs, with its mode."""

    def __init__(self, world, roots, uid):
        super(Watcher, self).__init__(daemon=True)
        self.world, self.roots, self.uid = world, roots, uid
        self.halt = threading.Event()
        self.rounds = 0
        self.bad_modes = set()

    def run(self):
        while not self.halt.is_set():
            self.rounds += 1
            for root in self.roots:
                self.visit(root)
            self.halt.wait(0.3)

    def visit(self, root):
        if os.path.isfile(root):
            entries = [root]
        else:
            entries = []
            for dirpath, dirnames, filenames in os.walk(root):
                entries.extend(os.path.join(dirpath, n) for n in filenames)
        for path in entries:
            try:
                with open(path, 'rb') as handle:
                    data = handle.read(4 * 1024 * 1024)
                st = os.lstat(path)
            except OSError:
                continue
            self.world.observed.setdefault(path, set()).add(data)
            if self.private(path) and (stat.S_IMODE(st.st_mode) != 0o600 or st.st_uid != self.uid):
                self.bad_modes.add('%s: mode %04o uid %d' % (path, stat.S_IMODE(st.st_mode), st.st_uid))

    @staticmethod
    def private(path):
        """The files the collection makes for the job user (the account, its lock, the refresher's files)."""
        return ('/.config/oidc-agent/' in path or '/.config/oidc-tokens/' in path
                or '/.local/state/oidc-tokens/' in path or '/run/oidc-tokens/' in path
                or os.path.basename(path).startswith('bt_u'))

    def stop(self):
        self.halt.set()
        self.join(10)


@pytest.mark.skipif(not can_make_users(), reason='needs root, useradd, userdel and su (it creates a job user)')
def test_flow_b_job_tokens_role(world):
    created = False
    if subprocess.run(['getent', 'passwd', JOB_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(['useradd', '--create-home', '--shell', '/bin/bash', JOB_USER], check=True)
        created = True
    entry = pwd.getpwnam(JOB_USER)
    # Somewhere the job user can reach: the refresher's prefix.
    shared = tempfile.mkdtemp(prefix='oidc-evidence-security-')
    os.chmod(shared, 0o755)
    watcher = None
    try:
        base = os.path.join(world.dir, 'flow-b')
        ansible = Ansible(os.path.join(base, 'ansible'))
        helper = world.subject_helper
        env = dict(world.subject_env, EV_SECRET=world.op.client(EXCHANGER)['client_secret'], EV_JOB_PW=JOB_PASSWORD)
        uid = entry.pw_uid
        # No runtime directory on this machine: the role's private directory of the job user under /run.
        private_dir = '/run/oidc-tokens/%d' % uid
        token_file = os.path.join(private_dir, 'bt_u%d-%s' % (uid, ACCOUNT))
        inventory = ansible.write_private('inventory.yml', {'all': {'children': {'workers': {
            'hosts': {'worker1': {'job_tokens_user': JOB_USER}},
            'vars': {
                'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3',
                'ansible_become_method': 'su',
                'job_tokens_account': ACCOUNT, 'job_tokens_issuer': world.issuer,
                'job_tokens_client_id': EXCHANGER, 'job_tokens_client_secret': ENV % 'EV_SECRET',
                'job_tokens_subject_token': "{{ lookup('ansible.builtin.pipe', '%s') }}" % helper,
                'job_tokens_password': ENV % 'EV_JOB_PW',
                'job_tokens_scope': ['openid', 'compute.read'], 'job_tokens_lifetime': 3600,
                'job_tokens_min_valid_period': 8, 'job_tokens_start_timeout': 30,
                'job_tokens_prefix': os.path.join(shared, 'prefix'),
                'job_command': 'for i in 1 2 3 4 5 6 7 8; do test -s "$BEARER_TOKEN_FILE" || exit 9; sleep 1; done',
                'job_poll': 1,
            }}}}})
        roots = [entry.pw_dir, private_dir]
        watcher = Watcher(world, roots, uid)
        watcher.start()
        log_path = os.path.join(base, 'ansible.log')
        playbook = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                'playbooks', 'job_run.yml')
        run = ansible.playbook(playbook, inventory=inventory, verbosity=4, umask=0o000, log_path=log_path, env=env,
                               timeout=600)
        watcher.stop()
        world.runs.append(('flow-b', run))
        LEDGER.add(SUITE, 'playbook runs at -vvvv')
        LEDGER.add(SUITE, 'tasks run', len(run.results))
        LEDGER.add(SUITE, 'runs under umask 000', 1)
        LEDGER.add(SUITE, 'watcher copies of the job user\'s files', watcher.rounds)
        assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
        assert watcher.rounds > 5
        # While the job ran, the job user's account, refresher files and bearer-token file were private.
        world.mode_checks += watcher.rounds
        world.mode_violations.extend('flow-b (while running): %s' % b for b in sorted(watcher.bad_modes))
        assert not watcher.bad_modes, sorted(watcher.bad_modes)
        assert any(os.path.basename(p) == os.path.basename(token_file) for p in world.observed), \
            'the watcher never saw the bearer-token file'
        bad = world.check_modes('flow-b (after teardown)',
                                trees=[os.path.join(entry.pw_dir, '.config', 'oidc-agent'),
                                       os.path.join(entry.pw_dir, '.local', 'state', 'oidc-tokens')], uid=uid)
        assert not bad, bad
        world.extra_roots.extend([base, entry.pw_dir, shared])
        for path in ('/var/spool/cron/crontabs/%s' % JOB_USER, '/var/mail/%s' % JOB_USER,
                     '/var/spool/mail/%s' % JOB_USER, token_file, private_dir):
            if os.path.exists(path):
                world.extra_roots.append(path)
        # Scan now, while the job user and the shared directory still exist.
        scan_everything(world)
    finally:
        if watcher is not None:
            watcher.stop()
        shutil.rmtree(shared, ignore_errors=True)
        if created:
            subprocess.run(['crontab', '-r', '-u', JOB_USER], capture_output=True, check=False)
            subprocess.run(['userdel', '-r', JOB_USER], capture_output=True, check=False)


# -- the scan ------------------------------------------------------------------------------------------

def classify(path, hit):
    """'allowed', 'by design' or 'leak' for one hit."""
    name = os.path.basename(path)
    if name.startswith('bt_u') and hit['secret'] == 'access_token':
        return 'allowed'
    if '/oidc-tokens/' in path and name.endswith('.json') and hit['secret'] == 'access_token' and \
            '/run/oidc-tokens/' in path:
        return 'by design: the lookup\'s token cache'
    if name.endswith('.password') and hit['secret'] == 'password':
        return 'by design: the role\'s password file'
    return 'leak'


SCANNED = {'done': False}


def scan_everything(world):
    scanner = world.label_all()
    roots = [world.dir] + world.extra_roots
    hits, files, size = scanner.scan_tree(roots)
    patterns = scanner._patterns()
    observed_files = 0
    for path, contents in world.observed.items():
        for data in contents:
            observed_files += 1
            size += len(data)
            for hit in scanner.scan_bytes(data, path + ' (while running)', patterns):
                hit['path'] = path
                hits.append(hit)
    journal = ''
    if shutil.which('journalctl') and os.path.isdir('/run/systemd/system'):
        journal = subprocess.run(['journalctl', '--no-pager', '-q', '--since', '-2h'], capture_output=True,
                                 text=True, timeout=60, check=False).stdout
        hits.extend(scanner.scan_bytes(journal.encode(), 'systemd journal', patterns))
        LEDGER.add(SUITE, 'journal bytes scanned', len(journal))
    else:
        LEDGER.note(SUITE, 'no systemd journal on this machine (PID 1 is not systemd): the role ran the refresher '
                    'from cron and its own loop; its log file and state were scanned')
    for tag, run in world.runs:
        for stream, text in (('stdout', run.stdout), ('stderr', run.stderr)):
            hits.extend(scanner.scan_bytes(text.encode('utf-8', 'replace'), '%s %s' % (tag, stream), patterns))
            size += len(text)
    kinds = {}
    for value, label in scanner.secrets.items():
        kinds[label] = kinds.get(label, 0) + 1
    classified = {}
    for hit in hits:
        where = hit.get('path', hit['where'])
        verdict = classify(where, hit)
        classified.setdefault(verdict, []).append(hit)
    LEDGER.add(SUITE, 'secret values searched for', len(scanner.secrets))
    for label, count in sorted(kinds.items()):
        LEDGER.add(SUITE, 'secret values searched for: %s' % label, count)
    LEDGER.add(SUITE, 'files scanned', files)
    LEDGER.add(SUITE, 'file copies scanned while running', observed_files)
    LEDGER.add(SUITE, 'bytes scanned', size)
    LEDGER.add(SUITE, 'hits allowed (bearer-token file)', len(classified.get('allowed', [])))
    for verdict, found in sorted(classified.items()):
        if verdict.startswith('by design'):
            LEDGER.add(SUITE, 'hits %s' % verdict, len(found))
    leaks = classified.get('leak', [])
    LEDGER.add(SUITE, 'leaks', len(leaks))
    for hit in leaks[:50]:
        LEDGER.row(SUITE, leak=hit['where'], secret=hit['secret'], form=hit['form'])
    SCANNED['done'] = True
    SCANNED['leaks'] = leaks
    return leaks


def test_scan_finds_no_leak(world):
    if not SCANNED['done']:
        scan_everything(world)
    leaks = SCANNED['leaks']
    assert len(world.label_all().secrets) > 20
    assert not leaks, ['%(where)s: %(secret)s (%(form)s)' % h for h in leaks[:20]]


def test_modes_and_owners(world):
    LEDGER.add(SUITE, 'mode checks', world.mode_checks)
    LEDGER.add(SUITE, 'mode violations', len(world.mode_violations))
    assert world.mode_checks > 0
    assert not world.mode_violations, world.mode_violations[:20]


def test_the_scanner_finds_what_it_looks_for(world, tmp_path):
    """Control: planted secrets in every searched form are found (the scan is not blind)."""
    scanner = SecretScanner()
    secret = 's3cr3t:with %+&/ chars and more'
    scanner.add(secret, 'client_secret')
    import base64
    import json
    from urllib.parse import quote_plus
    plants = {
        'raw': secret, 'url': quote_plus(secret), 'json': json.dumps({'x': secret}),
        'basic': 'Authorization: Basic ' + base64.b64encode(('client:%s' % quote_plus(secret)).encode()).decode(),
        'b64-offset-1': base64.b64encode(b'x' + secret.encode()).decode(),
        'b64-offset-2': base64.b64encode(b'xy' + secret.encode()).decode(),
    }
    for name, text in plants.items():
        (tmp_path / name).write_text('before %s after' % text)
    hits, files, _size = scanner.scan_tree([str(tmp_path)])
    found = set(os.path.basename(h['where']) for h in hits)
    assert found == set(plants), set(plants) - found
    LEDGER.add(SUITE, 'control: planted secrets found', len(found))
