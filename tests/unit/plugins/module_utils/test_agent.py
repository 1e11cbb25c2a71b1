# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the oidc-agent client (_agent.py) against a real UNIX socket server in the test.

The server only stands in for oidc-agent's framing (one JSON request, one JSON answer, then close) and
answers what oidc-agent 4.2.6 answers (src/defines/ipc_values.h, src/oidc-agent/oidcd/oidcd.c); the real
agent runs in tests/functional/test_agent_source.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _agent
from ansible_collections.oidc.tokens.plugins.module_utils._agent import AgentClient, AgentError
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError

TOKEN = 'eyJ.at-value-that-must-never-show'
ISSUER = 'https://op.example.org/'


class Server(object):
    """A UNIX socket server in a thread: records each request, answers with ``reply(request) -> bytes|None``
    (None: close without answering; ``chunks``: a list of bytes written with pauses)."""

    def __init__(self, path, reply):
        self.path = str(path)
        self.reply = reply
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn = self.sock.accept()[0]
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = conn.recv(65536)
                try:
                    self.requests.append(json.loads(data.decode('utf-8')))
                except ValueError:
                    self.requests.append(data)
                answer = self.reply(self.requests[-1])
                try:
                    self._answer(conn, answer)
                except OSError:
                    pass   # the client gave up (an oversized answer, a timeout): what it saw is the test

    def _answer(self, conn, answer):
        if answer is None:
            return
        if isinstance(answer, list):
            for piece in answer:
                conn.sendall(piece)
                time.sleep(0.05)
        elif answer == 'hang':
            self.stopped.wait(5)
        else:
            conn.sendall(answer)

    def stop(self):
        self.stopped.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(reply, name='agent.sock'):
        server = Server(tmp_path / name, reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def success(request):
    return json.dumps({'status': 'success', 'access_token': TOKEN, 'issuer': ISSUER,
                       'expires_at': 2000000000}).encode()


def failure(error, info=None):
    answer = {'status': 'failure', 'error': error}
    if info:
        answer['info'] = info
    return lambda request: json.dumps(answer).encode()


def test_access_token_request_and_answer(serve):
    server = serve(success)
    got = AgentClient(server.path).access_token('wlcg', 300, ['storage.read:/', 'openid'], ['https://se.example'])
    assert got == {'access_token': TOKEN, 'issuer': ISSUER, 'expires_at': 2000000000}
    assert server.requests == [{'request': 'access_token', 'account': 'wlcg', 'min_valid_period': 300,
                                'scope': 'storage.read:/ openid', 'audience': 'https://se.example',
                                'application_hint': 'oidc.tokens'}]


def test_force_asks_for_a_new_token_and_no_scope_sends_none(serve):
    server = serve(success)
    AgentClient(server.path).access_token('wlcg', 60, force=True)
    AgentClient(server.path).access_token('wlcg', None, scope=[], audience='')
    assert server.requests[0] == {'request': 'access_token', 'account': 'wlcg', 'min_valid_period': -1,
                                  'application_hint': 'oidc.tokens'}
    assert server.requests[1] == {'request': 'access_token', 'account': 'wlcg', 'min_valid_period': 0,
                                  'application_hint': 'oidc.tokens'}


def test_the_socket_comes_from_oidc_sock(serve, monkeypatch):
    server = serve(success)
    monkeypatch.setenv('OIDC_SOCK', server.path)
    assert AgentClient().access_token('wlcg')['access_token'] == TOKEN


def test_an_answer_in_pieces_is_put_together(serve):
    body = success(None)
    server = serve(lambda request: [body[:10], body[10:25], body[25:]])
    assert AgentClient(server.path).access_token('wlcg')['access_token'] == TOKEN


def test_expires_at_zero_is_unknown(serve):
    server = serve(lambda request: json.dumps({'status': 'success', 'access_token': TOKEN, 'issuer': ISSUER,
                                               'expires_at': 0}).encode())
    assert AgentClient(server.path).access_token('wlcg')['expires_at'] is None


def test_loaded_accounts(serve):
    server = serve(lambda request: b'{"status":"success","info":["wlcg","other"]}')
    assert AgentClient(server.path).loaded_accounts() == ['wlcg', 'other']
    assert server.requests == [{'request': 'loaded_accounts'}]


@pytest.mark.parametrize('error, reason, words', [
    ('Agent locked', 'locked', 'unlock it with oidc-add --unlock'),
    ('account not loaded', 'not_loaded', 'run oidc-add wlcg'),
    ('No account configured with that short name', 'no_account', 'oidc-add wlcg'),
])
def test_agent_states_say_what_to_run(serve, error, reason, words):
    server = serve(failure(error))
    with pytest.raises(AgentError) as caught:
        AgentClient(server.path).access_token('wlcg')
    assert caught.value.reason == reason
    assert words in str(caught.value)
    assert isinstance(caught.value, OidcTokensError)


def test_another_agent_error_is_passed_on_with_its_help(serve):
    server = serve(failure('invalid_grant: token revoked', 'Run oidc-gen wlcg --reauthenticate'))
    with pytest.raises(AgentError, match="could not give a token of account 'wlcg': invalid_grant: token revoked "
                                         r"\(Run oidc-gen wlcg --reauthenticate\)") as caught:
        AgentClient(server.path).access_token('wlcg')
    assert caught.value.reason == 'agent'


def test_oidc_sock_unset(monkeypatch):
    monkeypatch.delenv('OIDC_SOCK', raising=False)
    with pytest.raises(AgentError, match=r'OIDC_SOCK is not set.*eval "\$\(oidc-agent\)"') as caught:
        AgentClient()
    assert caught.value.reason == 'unset'
    with pytest.raises(AgentError):
        AgentClient(environ={'OIDC_SOCK': ''})


def test_no_socket_there(tmp_path):
    with pytest.raises(AgentError, match=r'No oidc-agent is running at .*does not exist.*eval "\$\(oidc-agent\)"') as caught:
        AgentClient(str(tmp_path / 'gone.sock')).access_token('wlcg')
    assert caught.value.reason == 'not_running'


def test_a_socket_nobody_listens_on(tmp_path):
    path = str(tmp_path / 'dead.sock')
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()   # the file stays, nobody listens: what an agent that was killed leaves
    with pytest.raises(AgentError, match='connection refused') as caught:
        AgentClient(path).access_token('wlcg')
    assert caught.value.reason == 'not_running'


def test_a_regular_file_is_not_a_socket(tmp_path):
    path = tmp_path / 'file'
    path.write_text('{"status":"success"}')
    with pytest.raises(AgentError, match='is not a socket') as caught:
        AgentClient(str(path)).access_token('wlcg')
    assert caught.value.reason == 'socket'


def test_a_symbolic_link_to_a_socket_is_refused(serve, tmp_path):
    server = serve(success)
    link = tmp_path / 'link.sock'
    os.symlink(server.path, str(link))
    with pytest.raises(AgentError, match='not a socket but a symbolic link'):
        AgentClient(str(link)).access_token('wlcg')
    assert server.requests == []


def test_another_users_socket_is_refused(serve):
    server = serve(success)
    if os.geteuid() != 0:
        pytest.skip('changing the socket owner needs root')
    os.chown(server.path, 65534, -1)
    with pytest.raises(AgentError, match='belongs to uid 65534, not to the running user') as caught:
        AgentClient(server.path).access_token('wlcg')
    assert caught.value.reason == 'socket'
    assert server.requests == []


def test_a_peer_of_another_user_is_refused(serve, monkeypatch):
    """SO_PEERCRED: the process behind the socket must run as the running user (here the running user is
    made to look like another uid after the socket's owner was checked)."""
    server = serve(success)
    real = os.geteuid()
    monkeypatch.setattr(_agent, 'check_socket', lambda path: None)
    monkeypatch.setattr(_agent.os, 'geteuid', lambda: real + 1)
    with pytest.raises(AgentError, match='runs as uid %d, not as the running user' % real):
        AgentClient(server.path).access_token('wlcg')


@pytest.mark.parametrize('answer', [b'<html>hello</html>', b'["status"]', b'{"no":"status"}'])
def test_an_answer_that_is_not_oidc_agents(serve, answer):
    server = serve(lambda request: answer)
    with pytest.raises(AgentError, match='not an oidc-agent answer') as caught:
        AgentClient(server.path).access_token('wlcg')
    assert caught.value.reason == 'protocol'


def test_closing_without_an_answer(serve):
    server = serve(lambda request: None)
    with pytest.raises(AgentError, match='not an oidc-agent answer'):
        AgentClient(server.path).access_token('wlcg')


def test_a_success_without_a_token(serve):
    server = serve(lambda request: b'{"status":"success"}')
    with pytest.raises(AgentError, match='without an access token'):
        AgentClient(server.path).access_token('wlcg')


def test_an_agent_that_does_not_answer_times_out(serve):
    server = serve(lambda request: 'hang')
    started = time.monotonic()
    with pytest.raises(AgentError, match='did not answer within 1 s') as caught:
        AgentClient(server.path, timeout=1).access_token('wlcg')
    assert time.monotonic() - started < 4
    assert caught.value.reason == 'timeout'


def test_an_oversized_answer_is_refused(serve):
    server = serve(lambda request: b'{"status":"success","access_token":"' + b'a' * (_agent.MAX_ANSWER_BYTES + 10))
    with pytest.raises(AgentError, match='larger than'):
        AgentClient(server.path).access_token('wlcg')


def test_no_error_message_holds_the_token(serve):
    server = serve(failure('refresh failed for ' + 'x', 'see log'))
    for reply in (failure('Agent locked'), failure('account not loaded'), lambda request: TOKEN.encode()):
        server.reply = reply
        with pytest.raises(AgentError) as caught:
            AgentClient(server.path).access_token('wlcg')
        assert TOKEN not in str(caught.value)


# -- concurrent use -------------------------------------------------------------------------------

AGENT_STAND_IN = textwrap.dedent('''
    import json, os, socket, sys
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sys.argv[1])
    server.listen(5)
    print('ready', flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(json.dumps({'status': 'success', 'info': sys.argv[2].split(',')}).encode())
''')


@pytest.fixture
def agent_process(tmp_path):
    """A stand-in agent in a process of its own, with its own environment (read by the check from /proc)."""
    started = []

    def start(config_dir, loaded, home=None):
        path = str(tmp_path / ('agent%d.sock' % len(started)))
        env = {'PATH': os.environ.get('PATH', ''), 'HOME': home or str(tmp_path / 'home')}
        if config_dir:
            env['OIDC_CONFIG_DIR'] = str(config_dir)
        proc = subprocess.Popen([sys.executable, '-c', AGENT_STAND_IN, path, ','.join(loaded)], env=env,
                                stdout=subprocess.PIPE)
        started.append(proc)
        assert proc.stdout.readline().strip() == b'ready'
        return path

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_concurrent_use_is_detected_for_the_same_file(agent_process, tmp_path):
    accounts = tmp_path / 'accounts'
    accounts.mkdir()
    path = agent_process(accounts, ['wlcg', 'other'])
    warning = _agent.concurrent_use_warning(str(accounts), 'wlcg', environ={'OIDC_SOCK': path})
    assert warning is not None
    assert "has account 'wlcg' loaded, the same account file as %s" % (accounts / 'wlcg') in warning
    assert 'oidc-add -r wlcg' in warning
    assert _agent.concurrent_use_warning(str(accounts), 'job1', environ={'OIDC_SOCK': path}) is None


def test_concurrent_use_follows_the_agents_home(agent_process, tmp_path):
    home = tmp_path / 'home'
    (home / '.config' / 'oidc-agent').mkdir(parents=True)
    path = agent_process(None, ['wlcg'], home=str(home))
    assert _agent.concurrent_use_warning(str(home / '.config' / 'oidc-agent'), 'wlcg', environ={'OIDC_SOCK': path})


def test_an_agent_of_another_directory_is_no_concurrent_use(agent_process, tmp_path):
    path = agent_process(tmp_path / 'theirs', ['wlcg'])
    assert _agent.concurrent_use_warning(str(tmp_path / 'ours'), 'wlcg', environ={'OIDC_SOCK': path}) is None


def test_no_agent_no_warning(tmp_path):
    assert _agent.concurrent_use_warning(str(tmp_path), 'wlcg', environ={}) is None
    assert _agent.concurrent_use_warning(str(tmp_path), 'wlcg', environ={'OIDC_SOCK': str(tmp_path / 'x')}) is None
