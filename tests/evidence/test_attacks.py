"""Attacks from the outside review, performed for real: each test does what a compromised managed host or a
hostile local user on a shared worker would do, against the real test provider, and checks that it fails.

1. A managed host returns facts (Ansible turns them into host variables) naming a server of its own as the
   issuer, a password command, weaker TLS and other paths: the controller's lookup must ignore all of them.
   An issuer or client named in a task that differs from the account's own is an error, in the lookup and
   in every module that sends the account's refresh token; a rogue listener must see no connection at all.
2. Another Unix user plants a file or a FIFO at the job's /tmp/bt_u<uid> before the job starts: the job must
   never read the planted token, nothing may hang, and teardown still revokes and removes everything else.
3. An account past its lifetime: a module or the lookup that meets it revokes its refresh token (checked by
   introspection at the provider) before it fails; revoking an account drops the lookup's cached tokens.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from evidence import (
    EXCHANGER, LEDGER, REPO_ROOT, Ansible, exchange_account, introspect, load_account, play, write_private_file)

SUITE = 'security'
PASSWORD = 'attack suite password 5e1f'


class RogueServer(threading.Thread):
    """A TCP listener on loopback standing for the attacker's server: it counts connections and keeps what
    was sent, and answers nothing useful."""

    def __init__(self):
        super(RogueServer, self).__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.url = 'http://127.0.0.1:%d' % self.sock.getsockname()[1]
        self.connections = 0
        self.received = b''
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(1)
            try:
                self.received += conn.recv(65536)
                conn.sendall(b'HTTP/1.1 500 no\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
            except OSError:
                pass
            conn.close()

    def stop(self):
        self.halt.set()
        self.join(5)
        self.sock.close()


@pytest.fixture
def rogue():
    server = RogueServer()
    server.start()
    yield server
    server.stop()


class Controller(object):
    """A controller user's world: an account exchanged at the real provider, its password file (0600), and
    the lookup's settings in the controller's environment (where an admin puts them)."""

    def __init__(self, provider, base, lifetime=None):
        self.provider = provider
        self.base = str(base)
        os.makedirs(self.base, exist_ok=True)
        self.config_dir = os.path.join(self.base, 'accounts')
        self.cache_dir = os.path.join(self.base, 'cache')
        self.password_file = write_private_file(os.path.join(self.base, 'password'), PASSWORD + '\n')
        self.refresh_token = exchange_account(provider, self.config_dir, 'job1', PASSWORD, lifetime=lifetime)
        self.ansible = Ansible(os.path.join(self.base, 'ansible'))
        self.env = {'OIDC_CONFIG_DIR': self.config_dir, 'OIDC_TOKENS_CACHE_DIR': self.cache_dir,
                    'OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE': self.password_file}

    def current_refresh_token(self):
        """The account's refresh token now (the provider rotates it at every refresh)."""
        return load_account(self.config_dir, 'job1', PASSWORD)['refresh_token']

    def rt_active(self, token=None):
        return introspect(self.provider, token or self.refresh_token)['active'] is True

    def store_args(self):
        return {'name': 'job1', 'config_dir': self.config_dir, 'encryption_password_file': self.password_file}


EVIL_MODULE = '''#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
module = AnsibleModule(argument_spec=dict(facts=dict(type='dict', required=True)))
module.exit_json(changed=False, ansible_facts=module.params['facts'])
'''


def test_facts_a_managed_host_returns_do_not_steer_the_lookup(provider_factory, tmp_path, rogue):
    provider = provider_factory()
    world = Controller(provider, tmp_path)
    library = tmp_path / 'library'
    library.mkdir()
    (library / 'evil_facts.py').write_text(EVIL_MODULE)
    marker = tmp_path / 'password-command-ran'
    attacker_dir = tmp_path / 'attacker'
    attacker_dir.mkdir()
    write_private_file(str(attacker_dir / 'password'), 'attacker password\n')
    facts = {
        'oidc_tokens_issuer': rogue.url, 'oidc_tokens_client_id': 'attacker', 'oidc_tokens_client_secret': 'x',
        'oidc_tokens_validate_certs': False, 'oidc_tokens_allow_insecure_http': True,
        'oidc_tokens_ca_path': str(attacker_dir / 'ca.pem'), 'oidc_tokens_config_dir': str(attacker_dir / 'accounts'),
        'oidc_tokens_cache_dir': str(attacker_dir / 'cache'),
        'oidc_tokens_encryption_password_command': 'touch %s' % marker,
        'oidc_tokens_encryption_password_file': str(attacker_dir / 'password'),
        'oidc_tokens_encryption_password_env': 'PATH',
    }
    inventory = world.ansible.write_private('inventory.ini', 'worker1 ansible_connection=local\n')
    lookup = "lookup('oidc.tokens.oidc_token', 'job1', min_valid_period=1)"
    tasks = [
        {'name': 'the compromised host returns facts', 'evil_facts': {'facts': facts}},
        {'name': 'the facts became host variables', 'ansible.builtin.assert': {'that': [
            'oidc_tokens_issuer == %r' % rogue.url, 'oidc_tokens_encryption_password_command is defined']}},
        {'name': 'the lookup for that host', 'ansible.builtin.uri': {
            'url': provider.issuer + '/me', 'headers': {'Authorization': 'Bearer {{ %s }}' % lookup}},
         'no_log': True, 'delegate_to': 'localhost'},
        {'name': 'the lookup naming another issuer in the task', 'ansible.builtin.set_fact': {
            'x': "{{ lookup('oidc.tokens.oidc_token', 'job1', issuer='%s', cache=false) }}" % rogue.url},
         'ignore_errors': True},
    ]
    run = world.ansible.playbook(play(tasks, hosts='worker1'), inventory=inventory,
                                 env=dict(world.env, ANSIBLE_LIBRARY=str(library)))
    LEDGER.add(SUITE, 'attacks: host facts aimed at the lookup', len(facts))
    assert run.task('the facts became host variables')['status'] == 'ok', run.stdout[-3000:]
    assert run.task('the lookup for that host')['status'] == 'ok', run.stdout[-4000:] + run.stderr[-2000:]
    mismatch = run.task('the lookup naming another issuer in the task')
    assert mismatch['status'] == 'ignored'
    message = mismatch.get('msg', '')
    assert rogue.url in message and provider.issuer.rstrip('/') in message, message
    assert rogue.connections == 0, rogue.received[:200]
    assert not marker.exists(), 'the password command a host set ran on the controller'
    assert not (attacker_dir / 'accounts').exists() and not (attacker_dir / 'cache').exists()
    assert world.rt_active(world.current_refresh_token())
    LEDGER.add(SUITE, 'attacks stopped: host facts aimed at the lookup', len(facts))


def test_facts_a_managed_host_returns_do_not_steer_the_role(provider_factory, tmp_path, rogue):
    """A worker that reports job_tokens_* facts (they would outrank the inventory) is refused before anything
    runs: its exchange would otherwise go to its own issuer, with a controller variable of its choosing."""
    provider = provider_factory()
    library = tmp_path / 'library'
    library.mkdir()
    (library / 'evil_facts.py').write_text(EVIL_MODULE)
    ansible = Ansible(str(tmp_path / 'ansible'))
    inventory = ansible.write_private('inventory.ini', 'worker1 ansible_connection=local\n')
    exchanger = provider.client(EXCHANGER)
    facts = {'job_tokens_issuer': rogue.url, 'job_tokens_subject_token_env': 'CONTROLLER_SECRET'}
    tasks = [
        {'name': 'the compromised host returns facts', 'evil_facts': {'facts': facts}},
        {'name': 'start', 'ansible.builtin.include_role': {'name': 'oidc.tokens.job_tokens', 'tasks_from': 'start'},
         'ignore_errors': True},
    ]
    variables = {'job_tokens_account': 'job1', 'job_tokens_user': 'nobody', 'job_tokens_issuer': provider.issuer,
                 'job_tokens_client_id': exchanger['client_id'], 'job_tokens_client_secret': exchanger['client_secret']}
    run = ansible.playbook(play(tasks, hosts='worker1', vars=variables), inventory=inventory,
                           env={'ANSIBLE_LIBRARY': str(library), 'CONTROLLER_SECRET': 'controller-secret-1b7c',
                                'OIDC_AT': provider.user_access_token()})
    failed = [r for r in run.results if r['status'] in ('failed', 'ignored')]
    assert failed and 'job_tokens_issuer' in failed[0].get('msg', '') and 'facts' in failed[0]['msg'], run.stdout[-3000:]
    assert 'controller-secret-1b7c' not in run.stdout + run.stderr
    assert rogue.connections == 0
    LEDGER.add(SUITE, 'attacks stopped: host facts aimed at the role', len(facts))


def test_modules_send_an_accounts_refresh_token_only_to_its_own_issuer(provider_factory, tmp_path, rogue):
    provider = provider_factory()
    world = Controller(provider, tmp_path)
    store = world.store_args()
    other_client = dict(store, client_id='attacker')
    tasks = [
        {'name': 'token', 'oidc.tokens.oidc_token': dict(store, issuer=rogue.url, force=True)},
        {'name': 'token for another client', 'oidc.tokens.oidc_token': dict(other_client, force=True)},
        {'name': 'revoke', 'oidc.tokens.oidc_revoke': dict(store, issuer=rogue.url)},
        {'name': 'account absent', 'oidc.tokens.oidc_account': dict(store, issuer=rogue.url, state='absent')},
        {'name': 'account info', 'oidc.tokens.oidc_account_info': {
            'name': ['job1'], 'config_dir': world.config_dir, 'encryption_password_file': world.password_file,
            'issuer': rogue.url, 'check_active': True}, 'register': 'info'},
        {'name': 'account info says why it could not ask', 'ansible.builtin.assert': {'that': [
            "info.accounts.job1.active is none", "%r in info.accounts.job1.active_note" % rogue.url]}},
    ]
    for task in tasks[:4]:
        task['ignore_errors'] = True
    run = world.ansible.playbook(play(tasks), env=world.env)
    LEDGER.add(SUITE, 'attacks: another issuer or client for an account', 5)
    for name in ('token', 'revoke', 'account absent'):
        result = run.task(name)
        assert result['status'] == 'ignored', (name, result)
        assert rogue.url in result['msg'] and 'only ever sent to its own issuer' in result['msg']
    assert 'attacker' in run.task('token for another client')['msg']
    assert run.task('account info says why it could not ask')['status'] == 'ok', run.stdout[-3000:]
    assert rogue.connections == 0, rogue.received[:200]
    assert world.rt_active(world.current_refresh_token())
    LEDGER.add(SUITE, 'attacks stopped: another issuer or client for an account', 5)


def test_an_expired_account_is_revoked_at_the_provider(provider_factory, tmp_path):
    provider = provider_factory(at_ttl=30)
    module_world = Controller(provider, tmp_path / 'module', lifetime=2)
    # Long enough for the first play below to start on a loaded machine; the test waits out the rest.
    lookup_lifetime = 15
    lookup_world = Controller(provider, tmp_path / 'lookup', lifetime=lookup_lifetime)
    lookup_made = time.time()
    # The lookup's cache holds a token of the account before its lifetime ends.
    first = lookup_world.ansible.playbook(play([{'name': 'lookup', 'ansible.builtin.debug': {
        'msg': "{{ lookup('oidc.tokens.oidc_token', 'job1', min_valid_period=1, query='expires_at') }}"}}]),
        env=lookup_world.env)
    assert first.task('lookup')['status'] == 'ok', first.stdout[-3000:]
    assert os.listdir(lookup_world.cache_dir)
    module_rt, lookup_rt = module_world.current_refresh_token(), lookup_world.current_refresh_token()
    assert module_world.rt_active(module_rt) and lookup_world.rt_active(lookup_rt)
    time.sleep(max(0.0, lookup_made + lookup_lifetime + 0.5 - time.time()))    # both lifetimes are over
    run = module_world.ansible.playbook(play([{'name': 'token', 'oidc.tokens.oidc_token': module_world.store_args(),
                                               'ignore_errors': True, 'check_mode': True}]), env=module_world.env)
    assert 'In check mode its refresh token is not revoked' in run.task('token')['msg']
    assert module_world.rt_active(module_rt), 'check mode changed something at the provider'
    run = module_world.ansible.playbook(play([{'name': 'token', 'oidc.tokens.oidc_token': module_world.store_args(),
                                               'ignore_errors': True}]), env=module_world.env)
    result = run.task('token')
    assert result['status'] == 'ignored' and 'end of its lifetime' in result['msg']
    assert 'revoked at the provider' in result['msg'], result['msg']
    assert not module_world.rt_active(module_rt), 'the refresh token of an expired account is still active at the provider'
    assert not load_account(module_world.config_dir, 'job1', PASSWORD)['refresh_token']
    run = lookup_world.ansible.playbook(play([{'name': 'lookup', 'ansible.builtin.set_fact': {
        'x': "{{ lookup('oidc.tokens.oidc_token', 'job1', min_valid_period=1) }}"}, 'ignore_errors': True}]),
        env=lookup_world.env)
    assert run.task('lookup')['status'] == 'ignored'
    assert 'revoked at the provider' in run.task('lookup')['msg']
    assert not lookup_world.rt_active(lookup_rt)
    assert not [n for n in os.listdir(lookup_world.cache_dir) if n.endswith('.json')], 'a cached token outlived it'
    LEDGER.add(SUITE, 'attacks stopped: expired accounts revoked at the provider', 2)


def test_revoking_an_account_drops_the_lookups_cached_tokens(provider_factory, tmp_path):
    provider = provider_factory(at_ttl=30)
    world = Controller(provider, tmp_path)
    run = world.ansible.playbook(play([
        {'name': 'lookup', 'ansible.builtin.debug': {
            'msg': "{{ lookup('oidc.tokens.oidc_token', 'job1', min_valid_period=1, query='expires_at') }}"}},
        {'name': 'cached', 'ansible.builtin.find': {'paths': world.cache_dir, 'patterns': '*.json'},
         'register': 'cached'},
        {'name': 'one token is cached', 'ansible.builtin.assert': {'that': 'cached.matched == 1'}},
    ]), env=world.env)
    assert run.rc == 0, run.stdout[-3000:]
    rt = world.current_refresh_token()
    run = world.ansible.playbook(play([{'name': 'revoke', 'oidc.tokens.oidc_revoke': world.store_args()}]),
                                 env=world.env)
    assert run.rc == 0, run.stdout[-3000:]
    assert not [n for n in os.listdir(world.cache_dir) if n.endswith('.json')]
    assert not world.rt_active(rt)
    LEDGER.add(SUITE, 'cached tokens dropped at revocation', 1)


# -- a second Unix user on a shared worker ------------------------------------------------------------

def can_make_users():
    return os.geteuid() == 0 and all(shutil.which(c) for c in ('useradd', 'userdel', 'su'))


class Worker(object):
    """A job user on this machine as a worker (connection local, become su), the role's inventory."""

    def __init__(self, provider, base):
        self.provider = provider
        self.base = str(base)
        self.user = 'oidcat%s' % secrets.token_hex(3)
        subprocess.run(['useradd', '--create-home', '--shell', '/bin/bash', self.user], check=True)
        self.entry = pwd.getpwnam(self.user)
        self.tmp_file = '/tmp/bt_u%d' % self.entry.pw_uid
        self.prefix = os.path.join(self.base, 'prefix')
        os.makedirs(self.prefix)
        os.chmod(self.base, 0o755)
        self.run_dir = os.path.join(self.base, 'run')
        self.token_file_note = os.path.join(self.base, 'token-file-path')
        self.ansible = Ansible(os.path.join(self.base, 'ansible'))
        exchanger = provider.client(EXCHANGER)
        self.inventory = self.ansible.write_private('inventory.yml', {'all': {'hosts': {'worker1': {
            'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3',
            'ansible_become_method': 'su', 'job_tokens_user': self.user, 'job_tokens_account': 'job1',
            'job_tokens_issuer': provider.issuer, 'job_tokens_client_id': exchanger['client_id'],
            'job_tokens_client_secret': exchanger['client_secret'], 'job_tokens_lifetime': 600,
            'job_tokens_min_valid_period': 1, 'job_tokens_start_timeout': 15, 'job_tokens_prefix': self.prefix,
            'job_tokens_run_dir': self.run_dir, 'job_tokens_install_dependencies': False,
            'job_tokens_scheduler': 'none'}}}})

    def role(self, entry, **extra):
        tasks = [{'name': entry,
                  'ansible.builtin.include_role': {'name': 'oidc.tokens.job_tokens', 'tasks_from': entry}}]
        if entry == 'start':
            tasks.append({'name': 'where the token is', 'ansible.builtin.copy': {
                'content': '{{ job_tokens_bearer_token_file }}', 'dest': self.token_file_note, 'mode': '0600'},
                'delegate_to': 'localhost'})
        extra.setdefault('job_tokens_subject_token', self.provider.user_access_token())
        return self.ansible.playbook(play(tasks, hosts='worker1', vars=extra), inventory=self.inventory, timeout=300)

    def account_rt(self):
        return load_account(os.path.join(self.entry.pw_dir, '.config', 'oidc-agent'), 'job1', self.password())

    def password(self):
        with open(os.path.join(self.run_dir, str(self.entry.pw_uid), 'job1.password'), encoding='utf-8') as handle:
            return handle.read().strip()

    def leftovers(self):
        return [p for p in (os.path.join(self.entry.pw_dir, '.config', 'oidc-agent', 'job1'),
                            os.path.join(self.run_dir, str(self.entry.pw_uid), 'job1.password'))
                if os.path.exists(p)]

    def remove(self):
        subprocess.run(['pkill', '-u', self.user], capture_output=True, check=False)
        subprocess.run(['userdel', '-r', self.user], capture_output=True, check=False)


def plant(path, kind):
    """What the other user (nobody) leaves at the path: a readable file with a token of theirs, or a FIFO."""
    if kind == 'fifo':
        os.mkfifo(path, 0o666)
    else:
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write('planted-token-of-another-user\n')
        os.chmod(path, 0o644)
    os.chown(path, 65534, 65534)


@pytest.mark.skipif(not can_make_users(), reason='needs root, useradd, userdel and su (it creates a job user)')
@pytest.mark.parametrize('kind', ['file', 'fifo'])
def test_a_planted_bearer_token_file_is_never_used_and_blocks_nothing(provider_factory, tmp_path, kind):
    provider = provider_factory(at_ttl=30, user_at_ttl=300)
    worker = Worker(provider, tempfile.mkdtemp(prefix='oidc-evidence-attacks-'))
    try:
        plant(worker.tmp_file, kind)
        # By default the token goes to the job user's private directory: the planted path is not even looked at.
        run = worker.role('start')
        assert run.rc == 0, run.stdout[-5000:] + run.stderr[-3000:]
        with open(worker.token_file_note, encoding='utf-8') as handle:
            token_file = handle.read()
        assert token_file == os.path.join(worker.run_dir, str(worker.entry.pw_uid), 'bt_u%d-job1' % worker.entry.pw_uid)
        with open(token_file, encoding='utf-8') as handle:
            assert 'planted' not in handle.read()
        rt = worker.account_rt()['refresh_token']
        run = worker.role('teardown')
        assert run.rc == 0, run.stdout[-5000:]
        assert not introspect(provider, rt)['active'] and not worker.leftovers()

        # Asked for /tmp/bt_u<uid>: start fails with a clear error within its timeout, nothing hangs, and
        # teardown revokes and removes everything else, then reports the file it could not remove.
        started = time.monotonic()
        run = worker.role('start', job_tokens_token_file_in_tmp=True)
        assert run.rc != 0 and time.monotonic() - started < 240
        assert worker.tmp_file in run.stdout, run.stdout[-5000:]
        assert 'uid 65534' in run.stdout or 'not a regular file' in run.stdout, run.stdout[-5000:]
        rt = worker.account_rt()['refresh_token']
        run = worker.role('teardown', job_tokens_token_file_in_tmp=True)
        assert run.rc != 0
        assert 'could not remove %s' % worker.tmp_file in run.stdout, run.stdout[-5000:]
        assert not introspect(provider, rt)['active'], 'teardown did not revoke after meeting the planted file'
        assert not worker.leftovers(), worker.leftovers()
        LEDGER.add(SUITE, 'attacks stopped: planted bearer-token %s' % kind, 2)
    finally:
        if os.path.lexists(worker.tmp_file):
            os.unlink(worker.tmp_file)
        worker.remove()
        shutil.rmtree(worker.base, ignore_errors=True)


def test_the_attack_suite_is_wired_into_the_evidence_run():
    """scripts/evidence --ci runs this file (a suite nobody runs proves nothing)."""
    with open(os.path.join(REPO_ROOT, 'scripts', 'evidence'), encoding='utf-8') as handle:
        assert 'tests/evidence/test_attacks.py' in handle.read()
