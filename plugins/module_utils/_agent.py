# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small client of a running oidc-agent, over its UNIX socket ($OIDC_SOCK).

What it speaks (oidc-agent 4.2.6, src/ipc/ and src/oidc-agent/oidcd/oidcd.c, checked against Debian's
binary; 5.x reads requests the same way):

- One request per connection: the client writes one JSON object, the agent writes one JSON object back
  and closes the connection. The agent reads a request with one ``read`` of what is pending
  (``FIONREAD``), so the request is sent with one ``sendall``. No length prefix, no newline.
- oidc-agent's own clients first exchange public keys and encrypt (libsodium ``crypto_box``); the agent
  (``server_ipc_read``) takes a message that is a JSON object as a plain request and answers in plain
  JSON. Encryption between processes of one user on one UNIX socket protects nothing the socket's
  permissions do not, so this client sends plain JSON and needs no cryptography library.
- ``{"request":"access_token","account":NAME,"min_valid_period":N[,"scope":"a b"][,"audience":"x y"]
  [,"application_hint":H]}`` (what ``oidc-token -t N -s ... --aud ...`` sends; ``min_valid_period`` -1
  forces a new token) answers ``{"status":"success","access_token":...,"issuer":...,"expires_at":N}``.
  ``expires_at`` is the expiry of the account's default token: for a down-scoped or audience-bound
  token (which the agent never keeps) it does not describe the token handed out.
- ``{"request":"loaded_accounts"}`` answers ``{"status":"success","info":[NAMES]}``.
- Errors: ``{"status":"failure","error":TEXT[,"info":HELP]}``. A locked agent (``oidc-add --lock``, ``-x``)
  answers every request but ``check`` and ``unlock`` with the error ``Agent locked``. An account that
  is not loaded is ``account not loaded`` (agent started with ``--no-autoload``, or its password prompt
  could not be shown) or ``No account configured with that short name`` (no account file of that name in
  the agent's configuration directory).

The socket must be a socket owned by the running user, and the process at the other end (SO_PEERCRED)
must run as the running user: a token is never asked of, nor handed to, someone else's process.
Nothing is written to any file. Messages never contain a token.

Why not oidc-agent's Python library (liboidcagent 0.6.0 on PyPI): it needs PyNaCl for the encrypted
exchange, takes the socket only from $OIDC_SOCK, waits without a timeout, reads an answer until a short
``recv``, checks neither the socket's owner nor the peer, and when the local agent fails or does not know
the account it asks a remote agent over TCP at $OIDC_REMOTE_SOCK.

Standard library only. Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import struct
import time

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError

SOCKET_ENV = 'OIDC_SOCK'
DEFAULT_TIMEOUT = 30.0
MAX_ANSWER_BYTES = 1024 * 1024
APPLICATION_HINT = 'oidc.tokens'
FORCE_NEW_TOKEN = -1   # oidc-agent's FORCE_NEW_TOKEN (src/defines/agent_values.h)

ERROR_LOCKED = 'Agent locked'
ERROR_NOT_LOADED = 'account not loaded'
ERROR_NO_ACCOUNT = 'No account configured with that short name'


class AgentError(OidcTokensError):
    """oidc-agent cannot give what was asked. ``reason``: 'unset' (no $OIDC_SOCK), 'not_running',
    'socket' (not a socket of the running user), 'timeout', 'locked', 'not_loaded', 'no_account',
    'protocol' (an answer that is not oidc-agent's) or 'agent' (another error the agent reported)."""

    def __init__(self, message, reason):
        super(AgentError, self).__init__(message)
        self.reason = reason


def socket_path(path=None, environ=None):
    """The agent's socket: ``path`` when given, else $OIDC_SOCK; AgentError('unset') when neither."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(SOCKET_ENV)
    if not path:
        raise AgentError('OIDC_SOCK is not set: no oidc-agent is known to this process. Start one and load the '
                         'account where Ansible runs (eval "$(oidc-agent)", then oidc-add ACCOUNT), or name its '
                         'socket in agent_socket.', 'unset')
    return os.path.abspath(os.path.expanduser(str(path)))


def check_socket(path):
    """Refuse a path that is not a UNIX socket of the running user (a symbolic link is refused too)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise AgentError('No oidc-agent is running at %s: the socket does not exist. Start one with '
                         'eval "$(oidc-agent)" and load the account with oidc-add ACCOUNT.' % path, 'not_running')
    except OSError as exc:
        raise AgentError('Cannot use the oidc-agent socket %s: %s.' % (path, exc.strerror or exc), 'socket')
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentError('%s is not a socket%s; it is not an oidc-agent. Check OIDC_SOCK (or agent_socket).'
                         % (path, ' but a symbolic link' if stat.S_ISLNK(st.st_mode) else ''), 'socket')
    if st.st_uid != os.geteuid():
        raise AgentError('The oidc-agent socket %s belongs to uid %d, not to the running user (uid %d); a token is '
                         'only asked of the running user\'s own agent.' % (path, st.st_uid, os.geteuid()), 'socket')


def _peer(sock):
    """(pid, uid) of the process at the other end of a connected UNIX socket (SO_PEERCRED), or (None, None)
    where the system does not say."""
    option = getattr(socket, 'SO_PEERCRED', None)
    if option is None:
        return None, None
    try:
        pid, uid, _gid = struct.unpack('3i', sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize('3i')))
    except OSError:
        return None, None
    return pid, uid


def _join(value):
    """A list of strings (or a space-separated string) as oidc-agent's space-separated string, or None."""
    if not value:
        return None
    if isinstance(value, str):
        value = value.split()
    text = ' '.join(str(v) for v in value if v)
    return text or None


class AgentClient(object):
    """Requests to one oidc-agent. ``path``: its socket (None: $OIDC_SOCK); ``timeout``: seconds for the
    whole request (the agent may refresh at the provider first)."""

    def __init__(self, path=None, timeout=DEFAULT_TIMEOUT, environ=None):
        self.path = socket_path(path, environ)
        self.timeout = float(timeout)
        self.peer_pid = None

    def request(self, payload):
        """Send one request (a dict), return the agent's answer (a dict with ``status``)."""
        check_socket(self.path)
        deadline = time.monotonic() + self.timeout
        data = json.dumps(payload, separators=(',', ':')).encode('utf-8')
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    raise AgentError('No oidc-agent is running at %s: connection refused. Start one with '
                                     'eval "$(oidc-agent)" and load the account with oidc-add ACCOUNT.' % self.path,
                                     'not_running')
                raise AgentError('Cannot connect to oidc-agent at %s: %s.' % (self.path, exc.strerror or exc),
                                 'not_running')
            pid, uid = _peer(sock)
            if uid is not None and uid != os.geteuid():
                raise AgentError('The process behind the oidc-agent socket %s runs as uid %d, not as the running user '
                                 '(uid %d); no token is asked of it.' % (self.path, uid, os.geteuid()), 'socket')
            self.peer_pid = pid
            answer = self._exchange(sock, data, deadline)
        finally:
            sock.close()
        try:
            parsed = json.loads(answer.decode('utf-8'))
        except (UnicodeError, ValueError):
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get('status'), str):
            raise AgentError('The answer at %s is not an oidc-agent answer (%d bytes that are not its JSON).'
                             % (self.path, len(answer)), 'protocol')
        return parsed

    def _exchange(self, sock, data, deadline):
        try:
            sock.sendall(data)
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise AgentError('The answer at %s is larger than %d bytes; it is not oidc-agent\'s.'
                                     % (self.path, MAX_ANSWER_BYTES), 'protocol')
                # The agent closes the connection after its answer; a complete JSON object is enough.
                try:
                    json.loads(b''.join(chunks).decode('utf-8'))
                    break
                except (UnicodeError, ValueError):
                    continue
        except socket.timeout:
            raise AgentError('oidc-agent at %s did not answer within %d s (it may be waiting for the provider, or for '
                             'a prompt it shows: a password, a confirmation, a new login).' % (self.path, self.timeout),
                             'timeout')
        except OSError as exc:
            raise AgentError('The connection to oidc-agent at %s failed: %s.' % (self.path, exc.strerror or exc),
                             'not_running')
        return b''.join(chunks)

    # -- requests ------------------------------------------------------------------------------------

    def access_token(self, account, min_valid_period=0, scope=None, audience=None, force=False,
                     application_hint=APPLICATION_HINT):
        """A token of a loaded account: {'access_token', 'issuer', 'expires_at'} (see the module's notes on
        ``expires_at``), as ``oidc-token -t min_valid_period -s scope --aud audience account`` gets it."""
        payload = {'request': 'access_token', 'account': str(account),
                   'min_valid_period': FORCE_NEW_TOKEN if force else max(0, int(min_valid_period or 0))}
        scope, audience = _join(scope), _join(audience)
        if scope:
            payload['scope'] = scope
        if audience:
            payload['audience'] = audience
        if application_hint:
            payload['application_hint'] = application_hint
        answer = self.request(payload)
        if answer.get('status') != 'success':
            raise self._failure(answer, account)
        token = answer.get('access_token')
        if not isinstance(token, str) or not token:
            raise AgentError('oidc-agent at %s answered without an access token for account %r.'
                             % (self.path, account), 'protocol')
        expires_at = answer.get('expires_at')
        if isinstance(expires_at, bool) or not isinstance(expires_at, int) or expires_at <= 0:
            expires_at = None
        issuer = answer.get('issuer')
        return {'access_token': token, 'issuer': issuer if isinstance(issuer, str) else None,
                'expires_at': expires_at}

    def loaded_accounts(self):
        """The names of the accounts the agent has loaded."""
        answer = self.request({'request': 'loaded_accounts'})
        if answer.get('status') != 'success':
            raise self._failure(answer, None)
        names = answer.get('info')
        if not isinstance(names, list):
            raise AgentError('oidc-agent at %s answered loaded_accounts without a list.' % self.path, 'protocol')
        return [n for n in names if isinstance(n, str)]

    def _failure(self, answer, account):
        error = answer.get('error')
        error = error if isinstance(error, str) else 'no error given'
        shown = repr(account) if account is not None else 'the account'
        if error == ERROR_LOCKED:
            return AgentError('oidc-agent at %s is locked: unlock it with oidc-add --unlock (oidc-add -X), then retry.'
                              % self.path, 'locked')
        if error == ERROR_NOT_LOADED:
            return AgentError('oidc-agent at %s has not loaded account %s: run oidc-add %s (where it can ask for the '
                              'password), then retry.' % (self.path, shown, account or 'ACCOUNT'), 'not_loaded')
        if error == ERROR_NO_ACCOUNT:
            return AgentError('oidc-agent at %s knows no account %s: no account of that name is loaded or in its '
                              'configuration directory. Create it with oidc-gen %s, or load it with oidc-add %s.'
                              % (self.path, shown, account or 'ACCOUNT', account or 'ACCOUNT'), 'no_account')
        info = answer.get('info')
        extra = (' (%s)' % info[:300]) if isinstance(info, str) and info else ''
        return AgentError('oidc-agent at %s could not give a token of account %s: %s%s'
                          % (self.path, shown, error[:300], extra), 'agent')


# -- concurrent use ----------------------------------------------------------------------------------

def _agent_config_dir(pid):
    """The account directory of the oidc-agent process ``pid`` (from its environment, as oidc-agent
    resolves it), or None when that cannot be read."""
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            raw = f.read(1024 * 1024)
    except OSError:
        return None
    env = {}
    for item in raw.split(b'\0'):
        key, sep, value = item.partition(b'=')
        if sep:
            env[key.decode('utf-8', 'replace')] = value.decode('utf-8', 'replace')
    if env.get('OIDC_CONFIG_DIR'):
        return os.path.realpath(os.path.expanduser(env['OIDC_CONFIG_DIR']))
    home = env.get('HOME')
    if not home:
        return None
    primary = os.path.join(home, '.config', 'oidc-agent')
    legacy = os.path.join(home, '.oidc-agent')
    if not os.path.isdir(primary) and os.path.isdir(legacy):
        return os.path.realpath(legacy)
    return os.path.realpath(primary)


def concurrent_use_warning(config_dir, name, environ=None, timeout=2.0):
    """A warning when the oidc-agent at $OIDC_SOCK has account ``name`` of ``config_dir`` loaded, else None.

    oidc-agent keeps the loaded account's refresh token in memory and does not take the store's lock:
    when one side rotates the refresh token, the other later sends the spent one, and a provider with
    refresh-token reuse detection then revokes the whole grant. Never raises; no agent, a foreign socket,
    a locked or slow agent (``timeout`` seconds at most) mean no warning.
    """
    environ = os.environ if environ is None else environ
    if not config_dir or not environ.get(SOCKET_ENV):
        return None
    try:
        client = AgentClient(None, timeout=timeout, environ=environ)
        loaded = client.loaded_accounts()
    except OidcTokensError:
        return None
    if name not in loaded:
        return None
    ours = os.path.realpath(str(config_dir))
    theirs = _agent_config_dir(client.peer_pid) if client.peer_pid else None
    if theirs is not None and theirs != ours:
        return None
    where = 'the same account file' if theirs is not None else 'an account of that name (its directory unknown)'
    return ('oidc-agent at %s has account %r loaded, %s as %s: it keeps its own copy of the refresh token and does '
            'not take this collection\'s lock, so after one of them rotates the refresh token the other replays a '
            'spent one, which a provider with reuse detection punishes by revoking the grant. Unload it from the '
            'agent (oidc-add -r %s) while the collection uses it, or let the agent alone use it (source=agent).'
            % (client.path, name, where, os.path.join(ours, name), name))
