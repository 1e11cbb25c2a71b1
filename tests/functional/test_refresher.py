"""The on-host refresher (plugins/module_utils/_refresher.py) against the real test provider.

The refresher runs as a separate process, as the zip application oidc.tokens.oidc_refresher installs
(built from the checkout by the module's own code, tests/support/refresher_program.py). Access tokens
live a few seconds, so every test sees several of them come and go.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from ansible_collections.oidc.tokens.plugins.module_utils._errors import StorePermissionError
from ansible_collections.oidc.tokens.plugins.module_utils._private_files import write_secret_file
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient
import refresher_program
from fault_proxy import FaultProxy

PASSWORD = 'refresher test password'
SCOPE = 'openid offline_access compute.read'
AT_TTL = 4


class Job(object):
    """An exchanged account, its password file and refresher configuration in a temporary directory."""

    def __init__(self, provider, tmp_path, name='job1', lifetime=None, min_valid_period=1, **config):
        self.provider = provider
        self.name = name
        self.dir = tmp_path
        exchanger = provider.client('oidc-tokens-exchanger')
        client = OAuthClient(provider.issuer, exchanger['client_id'], exchanger['client_secret'])
        self.exchanger = client
        token = _tokens.exchange(client, provider.user_access_token(), scope=SCOPE)
        account = _tokens.build_account(name, provider.issuer, exchanger['client_id'], exchanger['client_secret'],
                                        token.refresh_token, token.scope, lifetime=lifetime)
        self.lifetime_end = account.meta['lifetime_end']
        self.store = AccountStore(config_dir=str(tmp_path / 'oidc-agent'))
        self.store.save(name, account, PASSWORD)
        self.first_refresh_token = token.refresh_token
        self.password_file = tmp_path / 'password'
        write_secret_file(str(self.password_file), PASSWORD + '\n')
        self.token_file = tmp_path / 'run' / ('bt_u%d' % os.geteuid())
        self.token_file.parent.mkdir(mode=0o700)
        self.state_dir = tmp_path / 'state'
        conf_dir = tmp_path / 'conf'
        conf_dir.mkdir(mode=0o700)
        self.config_path = conf_dir / ('%s.json' % name)
        data = {'version': 1, 'config_dir': self.store.config_dir, 'token_file': str(self.token_file),
                'min_valid_period': min_valid_period, 'password_file': str(self.password_file),
                'state_dir': str(self.state_dir), 'lifetime_end': self.lifetime_end, 'retry_min': 0.5,
                'retry_max': 2, 'provider': {'timeout': 5, 'retries': 0}}
        data.update(config)
        write_secret_file(str(self.config_path), json.dumps(data))
        resource_server = provider.client('plain-client')
        self.resource_server = OAuthClient(provider.issuer, resource_server['client_id'],
                                           resource_server['client_secret'])

    @property
    def log_file(self):
        return self.state_dir / ('%s.log' % self.name)

    def env(self):
        env = dict(os.environ)
        env.pop('OIDC_CONFIG_DIR', None)
        return env

    def argv(self, *args):
        return [sys.executable, refresher_program.path(), '--config', str(self.config_path)] + list(args) + [self.name]

    def run(self, *args, timeout=60):
        return subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def start(self, *args):
        return subprocess.Popen(self.argv('run', *args), env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def token(self):
        with open(self.token_file, encoding='utf-8') as handle:
            return handle.read().strip()

    def active(self, token):
        return self.resource_server.introspect(token)['active']

    def wait_for_token(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.token_file.exists():
                return self.token()
            time.sleep(0.1)
        raise AssertionError('no bearer-token file after %s s; log:\n%s' % (timeout, self.log_text()))

    def log_text(self):
        try:
            return self.log_file.read_text(encoding='utf-8')
        except OSError:
            return '(no log)'

    def refresh_token(self):
        return self.store.load(self.name, PASSWORD)['refresh_token']

    def rt_active(self, refresh_token):
        """The provider's word on a refresh token, asked by the client it belongs to."""
        return self.exchanger.introspect(refresh_token, 'refresh_token')['active']

    @property
    def state_file(self):
        return self.state_dir / ('%s.state.json' % self.name)

    def state(self):
        with open(self.state_file, encoding='utf-8') as handle:
            return json.load(handle)

    def vouch_for(self, content):
        """The worst case: the state file vouches for ``content`` as a token the refresher wrote, valid for an hour."""
        state = self.state()
        state.update(token_digest=hashlib.sha256(content.encode('utf-8')).hexdigest()[:16],
                     expires_at=int(time.time()) + 3600)
        write_secret_file(str(self.state_file), json.dumps(state))


class Reader(threading.Thread):
    """A job: reads the bearer-token file every `period` seconds and has the provider introspect it."""

    def __init__(self, job, period=0.5):
        super(Reader, self).__init__(daemon=True)
        self.job, self.period = job, period
        self.calls = self.inactive = self.missing = 0
        self.tokens = set()
        self.modes = set()
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                st = os.stat(self.job.token_file)
                token = self.job.token()
            except FileNotFoundError:
                self.missing += 1
            else:
                self.modes.add((stat.S_IMODE(st.st_mode), st.st_uid))
                self.tokens.add(token)
                self.calls += 1
                if not self.job.active(token):
                    self.inactive += 1
            self.halt.wait(self.period)

    def stop(self):
        self.halt.set()
        self.join(10)


@pytest.fixture(scope='module')
def op(provider_factory):
    """A provider whose access tokens live AT_TTL seconds (opaque, so a resource server can introspect them)."""
    return provider_factory(at_ttl=AT_TTL)


@pytest.fixture(scope='module')
def op_long(provider_factory):
    """A provider whose access tokens outlive the short accounts that use it: the refresher refreshes once, at
    its first pass, so the refresh token read after that pass is the one it holds at the end of the lifetime."""
    return provider_factory(at_ttl=300)


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def alive(pid):
    """The process exists and is not a zombie (an orphan is reaped by whatever PID 1 is, sometimes late)."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as handle:
            return handle.read().rsplit(b')', 1)[-1].split()[0] != b'Z'
    except FileNotFoundError:
        return False


def stop(proc, timeout=15):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


# -- the loop -----------------------------------------------------------------------------------

def test_run_keeps_a_valid_token_in_the_file_over_several_lifetimes(op, tmp_path):
    job = Job(op, tmp_path)
    proc = job.start()
    try:
        job.wait_for_token()
        reader = Reader(job)
        reader.start()
        time.sleep(4 * AT_TTL)
        reader.stop()
        assert proc.poll() is None, proc.stderr.read()
    finally:
        code = stop(proc)
    stderr = proc.stderr.read()
    assert code == 0
    assert reader.missing == 0
    assert reader.calls >= 4 * AT_TTL, reader.calls
    assert reader.inactive == 0, job.log_text()
    assert len(reader.tokens) >= 4, 'the token was not refreshed: %d distinct' % len(reader.tokens)
    assert reader.modes == {(0o600, os.geteuid())}
    # Stopping the loop leaves the token for whoever still runs; nothing half-written is left around.
    assert job.token_file.exists()
    assert sorted(os.listdir(job.token_file.parent)) == [job.token_file.name]
    # The rotated refresh token was kept: the account still works.
    assert job.refresh_token() != job.first_refresh_token
    log = job.log_text()
    assert 'Refresh loop started' in log and 'Stopped by a signal' in log
    for secret in reader.tokens | {PASSWORD, job.refresh_token(), job.first_refresh_token}:
        assert secret not in log and secret not in stderr


def test_once_writes_the_file_and_check_and_status_report_it(op, tmp_path):
    job = Job(op, tmp_path, min_valid_period=2)
    before = job.run('check')
    assert before.returncode == 1 and 'not ready' in before.stderr
    done = job.run('once')
    assert done.returncode == 0, done.stderr
    assert job.active(job.token())
    assert stat.S_IMODE(os.stat(job.token_file).st_mode) == 0o600
    check = job.run('check')
    assert check.returncode == 0, check.stderr
    status = json.loads(job.run('status').stdout)
    assert status['token_present'] and status['valid_for'] >= 2 and status['pid'] is None
    assert job.token() not in json.dumps(status)
    # A token someone else put in the file is not vouched for.
    write_secret_file(str(job.token_file), 'not-a-token-of-ours')
    assert job.run('check').returncode == 1


def test_token_prints_a_valid_access_token_like_oidc_token(op, tmp_path):
    job = Job(op, tmp_path)
    printed = job.run('token')
    assert printed.returncode == 0, printed.stderr
    token = printed.stdout.strip()
    assert token and '\n' not in token and job.active(token)
    # More validity than the provider gives: a fresh token all the same, and a clear warning.
    longer = job.run('token', '--min-valid-period', '600')
    assert longer.returncode == 0
    assert longer.stdout.strip() != token and job.active(longer.stdout.strip())
    assert 'warning' in longer.stderr and 'min_valid_period (600 s)' in longer.stderr


def test_token_fails_clearly_without_an_account(op, tmp_path):
    job = Job(op, tmp_path)
    job.store.delete(job.name)
    printed = job.run('token')
    assert printed.returncode == 4
    assert printed.stdout == ''
    assert 'no access token for account' in printed.stderr and 'removed' in printed.stderr


def test_detach_runs_one_instance_and_stop_ends_it(op, tmp_path):
    job = Job(op, tmp_path)
    first = job.run('run', '--detach')
    assert first.returncode == 0 and first.stdout.startswith('started '), first.stderr
    pid = int(first.stdout.split()[1])
    try:
        again = job.run('run', '--detach')
        assert again.returncode == 0 and again.stdout.strip() == 'already running %d' % pid
        job.wait_for_token()
        assert json.loads(job.run('status').stdout)['pid'] == pid
        # start ran again with another configuration: the loop that read the old one is replaced.
        data = json.loads(job.config_path.read_text())
        data['min_valid_period'] = 2
        write_secret_file(str(job.config_path), json.dumps(data))
        replaced = job.run('run', '--detach')
        assert replaced.returncode == 0 and replaced.stdout.startswith('restarted '), replaced.stderr
        assert not alive(pid)
        pid = int(replaced.stdout.split()[1])
        assert job.run('run', '--detach').stdout.strip() == 'already running %d' % pid
    finally:
        stopped = job.run('stop')
    assert stopped.returncode == 0 and stopped.stdout.strip() == 'stopped %d' % pid
    assert not alive(pid)
    assert job.run('stop').stdout.strip() == 'not running'


# -- the end of an account ----------------------------------------------------------------------

def test_teardown_removes_the_account_and_the_loop_removes_the_file_and_stops(op, tmp_path):
    job = Job(op, tmp_path)
    proc = job.start()
    try:
        job.wait_for_token()
        outcome = _tokens.revoke_account(job.store, job.name, PASSWORD, lambda account: OAuthClient(
            op.issuer, account['client_id'], account['client_secret']))
        assert outcome['revoked'] and outcome['removed']
        assert proc.wait(3 * AT_TTL) == 4
    finally:
        if proc.poll() is None:
            stop(proc)
    assert not job.token_file.exists()
    assert 'Stopping: the account was removed' in job.log_text()
    # A watchdog starting it again (cron, systemd timer) finds the account over and does nothing.
    again = job.run('run')
    assert again.returncode == 0
    assert not job.token_file.exists()


def test_a_refused_refresh_token_removes_the_file_and_stops(op, tmp_path):
    job = Job(op, tmp_path)
    proc = job.start()
    try:
        job.wait_for_token()
        exchanger = op.client('oidc-tokens-exchanger')
        OAuthClient(op.issuer, exchanger['client_id'], exchanger['client_secret']).revoke(job.refresh_token())
        assert proc.wait(3 * AT_TTL) == 4
    finally:
        if proc.poll() is None:
            stop(proc)
    assert not job.token_file.exists()
    assert 'refused the refresh token' in job.log_text()


def test_the_end_of_the_lifetime_removes_the_file_and_stops(op, tmp_path):
    job = Job(op, tmp_path, lifetime=6)
    proc = job.start()
    try:
        job.wait_for_token()
        assert proc.wait(15) == 3
    finally:
        if proc.poll() is None:
            stop(proc)
    assert time.time() >= job.lifetime_end
    assert not job.token_file.exists()
    assert not job.store.exists(job.name)
    assert 'end of its lifetime' in job.log_text()
    assert json.loads(job.run('status').stdout)['status'] == 'expired'


def test_the_end_of_the_lifetime_revokes_the_refresh_token_and_removes_the_account(op_long, tmp_path):
    job = Job(op_long, tmp_path, lifetime=6, password_file_managed=True)
    proc = job.start()
    try:
        job.wait_for_token()
        refresh_token = job.refresh_token()     # the current one: no refresh happens before the end
        assert job.rt_active(refresh_token)
        # The loop sleeps until the end of the lifetime (not max_sleep, 300 s), then ends the account.
        assert proc.wait(job.lifetime_end - time.time() + 8) == 3
    finally:
        if proc.poll() is None:
            stop(proc)
    stderr = proc.stderr.read()
    assert time.time() >= job.lifetime_end
    assert not job.rt_active(refresh_token), 'the refresh token lives on at the provider'
    assert not os.path.exists(job.store.path(job.name))
    assert not job.password_file.exists()
    assert not job.token_file.exists()
    log = job.log_text()
    assert 'revoked the refresh token at the provider' in log and 'Removed the password file' in log
    for secret in (PASSWORD, refresh_token, job.first_refresh_token):
        assert secret not in log and secret not in stderr
    assert json.loads(job.run('status').stdout)['status'] == 'expired'
    # A watchdog starting it again finds the account over and does nothing.
    assert job.run('run').returncode == 0


def test_once_after_the_end_of_the_lifetime_revokes_the_refresh_token_and_removes_the_account(op_long, tmp_path):
    job = Job(op_long, tmp_path, lifetime=4, password_file_managed=True)
    first = job.run('once')
    assert first.returncode == 0, first.stderr
    refresh_token = job.refresh_token()
    assert job.rt_active(refresh_token) and job.token_file.exists()
    time.sleep(max(0.0, job.lifetime_end - time.time()) + 0.5)
    ended = job.run('once')
    assert ended.returncode == 3, ended.stderr
    assert not job.rt_active(refresh_token), 'the refresh token lives on at the provider'
    assert not os.path.exists(job.store.path(job.name))
    assert not job.password_file.exists()
    assert not job.token_file.exists()
    assert 'revoked the refresh token at the provider' in ended.stderr
    assert PASSWORD not in ended.stderr and refresh_token not in ended.stderr


def test_a_failed_revocation_at_the_end_keeps_the_account_until_the_provider_revokes(provider_factory, tmp_path):
    port = free_port()
    provider = provider_factory(issuer='http://127.0.0.1:%d' % port, at_ttl=300)
    with FaultProxy(provider.url, port=port) as proxy:
        job = Job(provider, tmp_path, lifetime=5)   # the user's own password file: not the refresher's to remove
        proc = job.start()
        try:
            job.wait_for_token()
            refresh_token = job.refresh_token()
            proxy.default = 'refuse'                # the provider is unreachable at the end of the lifetime
            time.sleep(max(0.0, job.lifetime_end - time.time()) + 4)
            assert proc.poll() is None, proc.stderr.read()
            # The refresh token was not revoked: the account stays, so that it can be; the token file went.
            assert job.store.exists(job.name) and job.refresh_token() == refresh_token
            assert not job.token_file.exists()
            assert 'Revocation failed (RevocationError)' in job.log_text()
            status = json.loads(job.run('status').stdout)
            assert status['status'] == 'retrying' and 'RevocationError' in status['last_error']
            once = job.run('once')
            assert once.returncode == 1 and 'was not revoked' in once.stderr
            assert job.store.exists(job.name)
            proxy.clear()                           # the provider is back: the loop revokes, then ends
            assert proc.wait(15) == 3
        finally:
            if proc.poll() is None:
                stop(proc)
        assert not job.rt_active(refresh_token)
    assert not os.path.exists(job.store.path(job.name))
    assert not job.token_file.exists()
    assert job.password_file.exists()
    log = job.log_text()
    assert 'revoked the refresh token at the provider' in log
    assert PASSWORD not in log and refresh_token not in log


# -- files that are not ours at the token, state and pid paths --------------------------------------

def test_a_fifo_at_the_token_path_blocks_no_command(op, tmp_path):
    job = Job(op, tmp_path)
    os.mkfifo(job.token_file, 0o600)
    where = '%s: it is a FIFO' % job.token_file
    check = job.run('check', timeout=15)      # an open() without O_NONBLOCK would hang here
    assert check.returncode == 1 and where in check.stderr, check.stderr
    once = job.run('once', timeout=15)
    assert once.returncode == 1 and where in once.stderr, once.stderr
    assert stat.S_ISFIFO(os.lstat(job.token_file).st_mode)
    status = json.loads(job.run('status', timeout=15).stdout)
    assert where in status['token_file_error'] and not status['token_present']
    assert 'FIFO' in status['last_error']
    printed = job.run('token', timeout=15)    # from the account, never from the FIFO
    assert printed.returncode == 0 and job.active(printed.stdout.strip())
    assert where in printed.stderr
    proc = job.start()
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.stderr.read()
        assert where in job.log_text() and 'next try in' in job.log_text()
        os.unlink(job.token_file)               # whoever planted it is gone: the loop writes the file
        assert job.active(job.wait_for_token())
    finally:
        assert stop(proc) == 0


def test_a_symbolic_link_at_the_token_path_is_refused(op, tmp_path):
    job = Job(op, tmp_path)
    assert job.run('once').returncode == 0
    planted = tmp_path / 'planted'
    write_secret_file(str(planted), 'planted-token\n')
    os.unlink(job.token_file)
    job.token_file.symlink_to(planted)
    job.vouch_for('planted-token')
    where = '%s: it is a symbolic link' % job.token_file
    check = job.run('check', timeout=15)
    assert check.returncode == 1 and where in check.stderr, check.stderr
    printed = job.run('token', timeout=15)
    assert printed.returncode == 0 and printed.stdout.strip() != 'planted-token' and where in printed.stderr
    assert job.active(printed.stdout.strip())
    once = job.run('once', timeout=15)
    assert once.returncode == 1 and where in once.stderr
    assert job.token_file.is_symlink() and planted.read_text() == 'planted-token\n'


def test_a_token_file_of_another_user_is_never_used(op, tmp_path):
    if os.geteuid() != 0:
        pytest.skip('planting a file of another user takes root (chown); the CI runs this as root')
    job = Job(op, tmp_path)
    assert job.run('once').returncode == 0
    os.unlink(job.token_file)
    job.token_file.write_text('planted-by-uid-65534\n')
    os.chmod(job.token_file, 0o644)
    os.chown(job.token_file, 65534, 65534)
    job.vouch_for('planted-by-uid-65534')      # even a content the state vouches for is not used
    where = '%s: it is a regular file owned by uid 65534' % job.token_file
    check = job.run('check', timeout=15)
    assert check.returncode == 1 and where in check.stderr, check.stderr
    printed = job.run('token', timeout=15)
    assert printed.returncode == 0 and 'planted' not in printed.stdout and where in printed.stderr
    assert job.active(printed.stdout.strip())
    once = job.run('once', timeout=15)
    assert once.returncode == 1 and where in once.stderr
    assert 'keeping the current access token' not in once.stderr
    status = json.loads(job.run('status', timeout=15).stdout)
    assert not status['token_present'] and status['valid_for'] is None and where in status['token_file_error']
    st = os.lstat(job.token_file)
    assert st.st_uid == 65534 and job.token_file.read_text() == 'planted-by-uid-65534\n'


def test_a_fifo_or_link_at_the_state_or_pid_file_blocks_nothing(op, tmp_path):
    job = Job(op, tmp_path)
    job.state_dir.mkdir(mode=0o700)
    state = job.state_file
    os.mkfifo(state, 0o600)
    for command in ('check', 'status', 'once'):
        done = job.run(command, timeout=15)
        assert done.returncode == 1 and '%s: it is a FIFO' % state in done.stderr, (command, done.stderr)
    os.unlink(state)
    pid = job.state_dir / ('%s.pid' % job.name)
    pid.symlink_to(tmp_path / 'elsewhere')
    for command in ('status', 'stop', 'run'):
        done = job.run(command, timeout=15)
        assert done.returncode == 1 and '%s: it is a symbolic link' % pid in done.stderr, (command, done.stderr)
    assert not (tmp_path / 'elsewhere').exists()


# -- outages ------------------------------------------------------------------------------------

def test_an_outage_keeps_the_token_while_valid_then_recovers(provider_factory, tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    provider = provider_factory(issuer='http://127.0.0.1:%d' % port, at_ttl=AT_TTL)
    with FaultProxy(provider.url, port=port) as proxy:
        job = Job(provider, tmp_path)
        proc = job.start()
        try:
            before = job.wait_for_token()
            assert job.run('check').returncode == 0
            proxy.default = 'refuse'                    # the provider is unreachable
            time.sleep(AT_TTL + 3)
            log = job.log_text()
            assert 'Refresh failed (TransportError)' in log
            assert 'keeping the current access token' in log
            assert 'its access token expired' in log    # once it expired, the file went
            assert not job.token_file.exists()
            proxy.clear()                               # the provider is back
            deadline = time.monotonic() + 15
            while not job.token_file.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            after = job.token()
            assert after != before and job.active(after)
            assert proc.poll() is None
        finally:
            stop(proc)


# -- configuration and the secret file ----------------------------------------------------------

def test_a_configuration_others_may_write_is_refused(op, tmp_path):
    job = Job(op, tmp_path)
    os.chmod(job.config_path, 0o620)
    refused = job.run('once')
    assert refused.returncode == 1
    assert 'writable by group or others' in refused.stderr
    assert not job.token_file.exists()


def test_a_password_command_works_as_well(op, tmp_path):
    job = Job(op, tmp_path)
    data = json.loads(job.config_path.read_text())
    data.pop('password_file')
    data['password_command'] = 'cat %s' % job.password_file
    write_secret_file(str(job.config_path), json.dumps(data))
    assert job.run('once').returncode == 0
    assert job.active(job.token())


def test_write_secret_file_is_atomic_and_private(tmp_path):
    path = tmp_path / 'bt_u0'
    old_umask = os.umask(0)
    try:
        write_secret_file(str(path), 'one')
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    seen = set()
    halt = threading.Event()

    def read():
        while not halt.is_set():
            seen.add(path.read_text())
    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        write_secret_file(str(path), 'token-%d' % i)
    halt.set()
    reader.join()
    assert seen <= {'one'} | {'token-%d' % i for i in range(300)}, 'a reader saw a partial file'
    assert os.listdir(tmp_path) == ['bt_u0']


def test_write_secret_file_leaves_links_and_other_users_files_alone(tmp_path):
    target = tmp_path / 'elsewhere'
    target.write_text('keep')
    link = tmp_path / 'bt_u0'
    link.symlink_to(target)
    with pytest.raises(StorePermissionError) as info:
        write_secret_file(str(link), 'tok-3f9a')
    assert 'not a regular file' in str(info.value) and 'tok-3f9a' not in str(info.value)
    assert target.read_text() == 'keep'
    if os.geteuid() == 0:
        other = tmp_path / 'bt_u1'
        other.write_text('theirs')
        os.chown(other, 65534, 65534)
        with pytest.raises(StorePermissionError) as info:
            write_secret_file(str(other), 'tok-3f9a')
        assert 'belongs to uid 65534' in str(info.value)
        assert other.read_text() == 'theirs'


# --- the job the tokens follow (_jobs.py) ------------------------------------------------------------------------

def _process_job(proc):
    from ansible_collections.oidc.tokens.plugins.module_utils import _jobs
    return _jobs.describe_job('pid', proc.pid)


def test_the_tokens_end_with_the_process_they_follow(op_long, tmp_path):
    """No Ansible run: the job's process exits, the refresher revokes, removes everything and stops."""
    work = subprocess.Popen(['sleep', '600'])
    job = Job(op_long, tmp_path, password_file_managed=True, job=_process_job(work), job_poll=1)
    proc = job.start()
    try:
        job.wait_for_token()
        refresh_token = job.refresh_token()
        assert job.rt_active(refresh_token)
        time.sleep(2.5)     # a few looks at a running job change nothing
        assert proc.poll() is None and job.token_file.exists()
        work.kill()
        work.wait()
        ended_at = time.monotonic()
        assert proc.wait(30) == 5, job.log_text()
        took = time.monotonic() - ended_at
    finally:
        for running in (work, proc):
            if running.poll() is None:
                stop(running)
    print('the refresh token was revoked %.1f s after the job ended (job_poll 1 s)' % took)
    assert took < 1 + 10, 'job_poll plus the revocation'
    assert not job.rt_active(refresh_token), 'the refresh token lives on at the provider'
    for path in (job.store.path(job.name), job.password_file, job.token_file, job.config_path):
        assert not os.path.exists(str(path)), '%s is left' % path
    log = job.log_text()
    assert 'process %d has exited' % work.pid in log and 'The tokens ended with the job: revoked' in log
    assert PASSWORD not in log and refresh_token not in log


def test_a_pid_taken_by_another_process_is_not_the_job(op, tmp_path):
    """The job's process ended and its pid now names another process: the job has ended all the same."""
    work = subprocess.Popen(['sleep', '600'])
    described = _process_job(work)
    stop(work)
    time.sleep(0.1)     # start times count clock ticks (10 ms): a real reuse of a pid comes much later
    other = subprocess.Popen(['sleep', '600'])
    try:
        described['id'] = str(other.pid)     # as if the kernel had given the pid to the new process
        job = Job(op, tmp_path, password_file_managed=True, job=described)
        refresh_token = job.refresh_token()
        done = job.run('once')
        assert done.returncode == 5, done.stderr
        assert 'now belongs to another process' in done.stderr
        assert not job.rt_active(refresh_token)
        assert not os.path.exists(job.store.path(job.name)) and not job.token_file.exists()
    finally:
        stop(other)


def test_a_job_that_cannot_be_looked_up_keeps_its_token_fresh(op, tmp_path):
    """systemctl cannot answer here (PID 1 is not systemd): that is not the end of the job, only a warning."""
    job = Job(op, tmp_path, job={'kind': 'systemd', 'id': 'compute-job.service'}, job_poll=1)
    proc = job.start()
    try:
        first = job.wait_for_token()
        time.sleep(AT_TTL * 2 + 1)      # the token is refreshed across lifetimes meanwhile
        assert proc.poll() is None, job.log_text()
        assert job.token() != first and job.active(job.token())
        assert os.path.exists(job.store.path(job.name))
    finally:
        stop(proc)
    log = job.log_text()
    assert log.count('Cannot tell whether the systemd job compute-job.service still runs') == 1, log
