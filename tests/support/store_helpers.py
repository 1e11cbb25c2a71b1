# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the account store's functional tests (tests/functional/test_store_*.py).

- ``OidcAgent``: Debian's oidc-agent (oidc-agent-cli) in a private HOME, OIDC_CONFIG_DIR and
  socket directory; passwords only through the environment (``--pw-env``) or a file, never argv.
- ``collection_pythonpath()``: the sys.path entry that makes ``ansible_collections.oidc.tokens``
  importable, for subprocesses.
- ``introspect()``, ``refresh_raw()``: direct calls to the test provider (checks, not code under test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from urllib.parse import quote_plus

OIDC_AGENT_BINARIES = ('oidc-agent', 'oidc-gen', 'oidc-add', 'oidc-token')
PW_ENV = 'OIDC_ENCRYPTION_PW'


def oidc_agent_missing():
    """None if oidc-agent's tools are installed, else why not (for pytest.skip)."""
    missing = [b for b in OIDC_AGENT_BINARIES if not shutil.which(b)]
    if missing:
        return ('oidc-agent is not installed (%s missing): apt-get install -y oidc-agent-cli'
                % ', '.join(missing))
    return None


def oidc_agent_version():
    out = subprocess.run(['oidc-agent', '--version'], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=10, check=False).stdout
    return out.decode('utf-8', 'replace').strip()


def collection_pythonpath():
    """The directory holding ``ansible_collections`` for the collection being tested."""
    from ansible_collections.oidc.tokens.plugins.module_utils import _account_store
    path = _account_store.__file__
    marker = os.sep + 'ansible_collections' + os.sep
    return path[:path.rindex(marker)]


def subprocess_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith('OIDC')}
    pythonpath = collection_pythonpath()
    env['PYTHONPATH'] = pythonpath + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH')
                                      else '')
    env.update(extra)
    return env


class OidcAgent(object):
    """A private oidc-agent: its own HOME, config dir and socket; killed by ``stop()``.

    ``run(args, password=...)`` runs an oidc-agent tool with this agent's environment; a password
    goes into $OIDC_ENCRYPTION_PW (use ``--pw-env`` in args), never onto the command line.
    """

    def __init__(self, workdir, autoload=False):
        self.workdir = str(workdir)
        self.autoload = autoload
        self.home = os.path.join(self.workdir, 'home')
        self.config_dir = os.path.join(self.workdir, 'oidc-config')
        self.socket_dir = os.path.join(self.workdir, 'sock-XXXXXX')
        os.makedirs(self.home, exist_ok=True)
        self.socket = None
        self.pid = None

    def base_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith('OIDC')}
        env.update({'HOME': self.home, 'OIDC_CONFIG_DIR': self.config_dir,
                    'TMPDIR': self.workdir})
        if self.socket:
            env['OIDC_SOCK'] = self.socket
            env['OIDCD_PID'] = str(self.pid)
        return env

    def start(self):
        os.makedirs(self.config_dir, mode=0o700, exist_ok=True)
        proc = subprocess.run(['oidc-agent', '--json'] + ([] if self.autoload else ['--no-autoload']) +
                              ['--socket-path=' + os.path.join(self.socket_dir, 'oidc-agent.sock')],
                              env=self.base_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError('oidc-agent did not start: %s'
                               % proc.stderr.decode('utf-8', 'replace'))
        info = json.loads(proc.stdout.decode())
        self.socket = info['socket']
        self.pid = int(info['dpid'])
        # The agent prints its socket before its daemon has bound it.
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def run_with_tty(self, args, answers, timeout=30):
        """Run an oidc-agent tool on a terminal of its own and answer its prompts (lines ending with ':') with
        ``answers`` in turn: ``oidc-add --lock`` / ``--unlock`` read their password only from a terminal in 4.2.6.
        Returns (exit status, what it printed)."""
        import pty
        import re
        import select
        pid, fd = pty.fork()
        if pid == 0:   # the child: exec at once, nothing else
            try:
                os.execvpe(args[0], list(args), self.base_env())
            finally:
                os._exit(127)
        out, answers = b'', list(answers)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready = select.select([fd], [], [], 0.2)[0]
                if not ready:
                    continue
                try:
                    chunk = os.read(fd, 4096)
                except OSError:   # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if answers and re.sub(rb'\x1b\[[0-9;]*m', b'', out).rstrip().endswith(b':'):
                    os.write(fd, answers.pop(0).encode() + b'\n')
                    out += b'\n'
        finally:
            os.close(fd)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
        return os.waitstatus_to_exitcode(status), re.sub(rb'\x1b\[[0-9;]*m', b'', out).decode('utf-8', 'replace')

    def run(self, args, password=None, env=None, timeout=60, check=True):
        full_env = self.base_env()
        if password is not None:
            full_env[PW_ENV] = password
        if env:
            full_env.update(env)
        proc = subprocess.run(list(args), env=full_env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              check=False)
        proc.out = proc.stdout.decode('utf-8', 'replace')
        proc.err = proc.stderr.decode('utf-8', 'replace')
        if check and proc.returncode != 0:
            raise AssertionError('%s failed with status %d\nstdout: %s\nstderr: %s'
                                 % (' '.join(args[:2]), proc.returncode, proc.out, proc.err))
        return proc

    def stop(self):
        if self.pid is None:
            return
        try:
            self.run(['oidc-agent', '-k'], check=False, timeout=20)
        finally:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(self.pid):
                time.sleep(0.05)
            if _alive(self.pid):
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.pid = None
            self.socket = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
        return state != 'Z'
    except (OSError, IndexError):
        return False


def _client_auth(client, data):
    """requests kwargs for the client's registered method (RFC 6749 2.3.1 encoding for Basic)."""
    if client.get('auth_method') == 'client_secret_post':
        data = dict(data, client_id=client['client_id'], client_secret=client['client_secret'])
        return {'data': data}
    return {'data': data, 'auth': (quote_plus(client['client_id']),
                                   quote_plus(client['client_secret']))}


def introspect(provider, client, token):
    """The provider's RFC 7662 answer for ``token``, asked as ``client`` (a config.json entry)."""
    response = provider.session.post(provider.introspection_endpoint, timeout=10,
                                     **_client_auth(client, {'token': token}))
    response.raise_for_status()
    return response.json()


def refresh_raw(provider, client, refresh_token):
    """A plain refresh_token grant: (HTTP status, JSON body). A check, not the code under test."""
    response = provider.session.post(provider.token_endpoint, timeout=10, **_client_auth(
        client, {'grant_type': 'refresh_token', 'refresh_token': refresh_token}))
    try:
        body = response.json()
    except ValueError:
        body = {'raw': response.text[:300]}
    return response.status_code, body
