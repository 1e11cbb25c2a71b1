"""Start and stop a real Keycloak for the tests, with the interface of tests/support/provider.py.

As a library (pytest fixtures, other helpers)::

    from keycloak import Keycloak
    with Keycloak(tls=True, at_ttl=10) as op:
        op.issuer, op.url, op.ca_path              # issuer and url: https://127.0.0.1:PORT/realms/oidc-tokens
        op.client('oidc-tokens-exchanger')        # {'client_id', 'client_secret', 'auth_method', 'grant_types'}
        op.user_access_token()                    # alice's access token (password grant of user-cli)
        op.counts()                               # successful exchanges, refreshes, revocations (Keycloak's events)
        op.request_counts()                       # requests and failures by kind, introspections too

From a shell script (the same commands and the same provider.json keys as provider.py)::

    python3 tests/support/keycloak.py start --state-dir DIR [--tls] [--at-ttl N] [--rt-ttl N] ...
    python3 tests/support/keycloak.py stop --state-dir DIR
    python3 tests/support/keycloak.py user-token --state-dir DIR [--user alice]
    python3 tests/support/keycloak.py counts --state-dir DIR   # requests and failures by kind, JSON
    python3 tests/support/keycloak.py prepare        # what scripts/setup runs once (see below)
    python3 tests/support/keycloak.py java-home      # the JDK this file runs Keycloak with

What runs: the Keycloak distribution that scripts/setup unpacks into tests/keycloak/.dist/keycloak-VERSION
(VERSION: tests/keycloak/VERSION), in ``start-dev`` mode, on 127.0.0.1 and free ports, with a JDK 21 or later
(KEYCLOAK_JAVA_HOME, else a JDK 25 or 21 under /usr/lib/jvm or in JAVA_HOME), heap capped.
Every instance gets its own home (a copy of the small parts of the distribution; lib/lib and bin/client, 185 MB,
linked) with its own database, and imports tests/keycloak/realm.json, lifetimes set from the arguments.

Speed: a plain first start of Keycloak spends ~30 s on Quarkus re-augmentation and ~15 s creating its database
schema and master realm. ``prepare`` (scripts/setup runs it; a start runs it under a lock when it is missing or
stale) does both once and keeps the result in tests/keycloak/.dist/prepared-VERSION: an augmented lib/quarkus and
an H2 database with the schema, the master realm and a test-only admin. A start copies it (~5 MB), imports the
test realm and is ready in ~15-25 s on two cores (JVM RSS ~350-450 MB).

Keycloak facts the tests rely on (26.x standard token exchange): the exchanging client must be in the subject
token's aud (user-cli's tokens name oidc-tokens-exchanger and oidc-tokens-exchanger-post); a refresh token comes
with requested_token_type=refresh_token and without offline_access (offline_access is refused); the refresh
token belongs to the user's SSO session, so the subject token must come from a normal session: the default
scope of user_tokens() here has no offline_access (a subject token from an offline session cannot give a
refresh token).

Standard library, requests and cryptography only.
"""

from __future__ import annotations

import argparse
import base64
import copy
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote_plus

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from provider import (  # noqa: E402  (tests/support on sys.path)
    _LIVE, GRANT_DEVICE_CODE, GRANT_TOKEN_EXCHANGE, ProviderError, LocalOpenIDServer, cli_counts, cli_user_token, load_config,
    make_tls_material, read_json, write_state, _is_ip)

REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
KEYCLOAK_DIR = os.path.join(REPO_ROOT, 'tests', 'keycloak')
DIST_ROOT = os.path.join(KEYCLOAK_DIR, '.dist')
VERSION_FILE = os.path.join(KEYCLOAK_DIR, 'VERSION')
DEFAULT_REALM_FILE = os.path.join(KEYCLOAK_DIR, 'realm.json')
NODE_CONFIG = os.path.join(REPO_ROOT, 'tests', 'provider', 'config.json')

REALM = 'oidc-tokens'
USER_CLIENT = 'user-cli'
# No offline_access: a subject token from an offline session cannot be exchanged for a refresh token.
DEFAULT_USER_SCOPE = 'openid profile storage.read:/ compute.read'

# Java: Keycloak 26.x supports 21 and 25 (25 from 26.6 on); 17 is deprecated and not used here.
MIN_JAVA = 21
PREFERRED_JAVA = (25, 21)

# Options Quarkus bakes into lib/quarkus (build options): prepare and every start must use the same ones, or the
# start re-augments (slow). db: a file H2 database, so that a prepared copy can be handed to each instance.
BUILD_OPTIONS = ('--db=dev-file',)
# Every start: C1 only (a shorter start on few cores; tests need no peak throughput), per-instance temp dir.
JAVA_OPTS_APPEND = '-XX:TieredStopAtLevel=1'
DEFAULT_HEAP = '-Xms64m -Xmx512m'
PREPARE_FORMAT = 2

# The master realm's test-only administrator, created by prepare (KC_BOOTSTRAP_ADMIN_*): events and admin calls.
ADMIN_USER = 'kc-test-admin'
ADMIN_PASSWORD = 'kc-test-admin-pw'

STARTUP_TIMEOUT = 180.0
PREPARE_TIMEOUT = 420.0
STOP_TIMEOUT = 20.0

# Inherited variables that kc.sh or Keycloak would read as configuration.
_ENV_DROP_PREFIXES = ('KC_', 'QUARKUS_', 'JAVA_OPTS', 'KEYCLOAK_ADMIN')
_ENV_DROP = ('JAVA', 'JAVA_HOME', 'JAVA_ADD_OPENS', 'JAVA_LOCALE', 'JAVA_TOOL_OPTIONS', 'JDK_JAVA_OPTIONS',
             '_JAVA_OPTIONS', 'DEBUG', 'DEBUG_PORT', 'DEBUG_SUSPEND', 'PRINT_ENV')


class KeycloakError(ProviderError):
    """Keycloak is not installed, could not be started, or refused a test helper's request."""


# -- installation ------------------------------------------------------------------------------

def version():
    with open(VERSION_FILE, encoding='utf-8') as handle:
        return handle.read().strip()


def dist_dir():
    return os.path.join(DIST_ROOT, 'keycloak-' + version())


def prepared_dir():
    return os.path.join(DIST_ROOT, 'prepared-' + version())


def java_major(java_home):
    """The major version of the JDK/JRE in java_home (from its release file), or None."""
    try:
        with open(os.path.join(java_home, 'release'), encoding='utf-8', errors='replace') as handle:
            text = handle.read()
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="([0-9]+)(?:\.([0-9]+))?', text, re.M)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _usable_java(java_home):
    return bool(java_home) and os.access(os.path.join(java_home, 'bin', 'java'), os.X_OK)


def find_java_home():
    """The JDK to run Keycloak with: KEYCLOAK_JAVA_HOME, else a JDK 25 or 21 (then any newer one) under
    /usr/lib/jvm or in JAVA_HOME.
    Raises KeycloakError saying what to install when there is none."""
    wanted = os.environ.get('KEYCLOAK_JAVA_HOME')
    if wanted:
        if not _usable_java(wanted):
            raise KeycloakError('KEYCLOAK_JAVA_HOME=%s has no bin/java' % wanted)
        return wanted
    candidates = []
    roots = ['/usr/lib/jvm']
    for root in roots:
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue  # Debian's short aliases (java-1.17.0-openjdk-amd64, openjdk-17) point at the same JDK
            candidates.append(path)
    if os.environ.get('JAVA_HOME'):
        candidates.append(os.environ['JAVA_HOME'])
    found = {}
    for path in candidates:
        major = java_major(path)
        if major and major >= MIN_JAVA and _usable_java(path):
            found.setdefault(major, path)
    for major in PREFERRED_JAVA:
        if major in found:
            return found[major]
    if found:
        return found[max(found)]
    raise KeycloakError(
        'Keycloak %s needs Java %d or later (21 or 25), and there is none under /usr/lib/jvm nor in JAVA_HOME. '
        'Install a JDK 21 or 25 (e.g. the Debian package openjdk-21-jdk-headless where the distribution has it, '
        'or Eclipse Temurin 25 into /usr/lib/jvm/temurin-25-jdk-amd64), or point KEYCLOAK_JAVA_HOME at one.'
        % (version(), MIN_JAVA))


def check_installed():
    """Raise KeycloakError with the fix when the distribution is missing. Returns its directory."""
    dist = dist_dir()
    if not os.path.isfile(os.path.join(dist, 'bin', 'kc.sh')):
        raise KeycloakError('Keycloak %s is not installed: %s has no bin/kc.sh; run scripts/setup'
                            % (version(), os.path.relpath(dist, os.getcwd())))
    return dist


def _free_port(host='127.0.0.1'):
    with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _child_env(java_home, heap, tmpdir, extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in _ENV_DROP and not k.startswith(_ENV_DROP_PREFIXES)}
    env['JAVA_HOME'] = java_home
    env['JAVA'] = os.path.join(java_home, 'bin', 'java')
    env['JAVA_OPTS_KC_HEAP'] = heap
    env['JAVA_OPTS_APPEND'] = '%s -Djava.io.tmpdir=%s' % (JAVA_OPTS_APPEND, tmpdir)
    env.update(extra or {})
    return env


# Big read-only parts of the distribution that every home links to instead of copying.
_LINKED = ('lib/lib', 'bin/client')


def _make_home(home, source, dist):
    """A Keycloak home for one process: small parts copied from source (the distribution or the prepared home),
    the big read-only ones (_LINKED, 185 MB) linked to the distribution. ~5 ms, ~5 MB."""
    def ignore(directory, names):
        relative = os.path.relpath(directory, source)
        return [n for n in names if os.path.normpath(os.path.join(relative, n)) in _LINKED]

    shutil.copytree(source, home, symlinks=True, ignore=ignore)
    for relative in _LINKED:
        if os.path.exists(os.path.join(dist, relative)):
            os.symlink(os.path.join(dist, relative), os.path.join(home, relative))


def _kill_group(pgid, proc=None, timeout=STOP_TIMEOUT):
    """SIGTERM the process group (kc.sh and its java), SIGKILL whatever is left after timeout."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _tail(path, limit=12000):
    try:
        with open(path, 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode('utf-8', 'replace')
    except OSError:
        return '(no log)'


def _prepared_stamp(java_home):
    return {'format': PREPARE_FORMAT, 'version': version(), 'java_home': java_home,
            'java_major': java_major(java_home), 'build_options': list(BUILD_OPTIONS),
            'admin': ADMIN_USER}


def prepare(java_home=None, timeout=PREPARE_TIMEOUT, log=None):
    """Make tests/keycloak/.dist/prepared-VERSION (augmented lib/quarkus, database with schema, master realm and
    the test admin) unless it is there for this version, JDK and build options. Returns (path, built)."""
    dist = check_installed()
    java_home = java_home or find_java_home()
    target = prepared_dir()
    stamp = _prepared_stamp(java_home)
    if read_json(os.path.join(target, 'prepared.json')) == stamp:
        return target, False
    os.makedirs(DIST_ROOT, exist_ok=True)
    with open(os.path.join(DIST_ROOT, '.prepare.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_json(os.path.join(target, 'prepared.json')) == stamp:
            return target, False
        if log:
            log('preparing Keycloak %s with %s (one start, a minute or two)' % (version(), java_home))
        staging = tempfile.mkdtemp(prefix='prepared-', dir=DIST_ROOT)
        os.chmod(staging, 0o755)
        try:
            _prepare_into(staging, dist, java_home, timeout)
            with open(os.path.join(staging, 'prepared.json'), 'w', encoding='utf-8') as handle:
                json.dump(stamp, handle, indent=2, sort_keys=True)
                handle.write('\n')
            old = target + '.old'
            shutil.rmtree(old, ignore_errors=True)
            if os.path.exists(target):
                os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target, True


def _prepare_into(staging, dist, java_home, timeout):
    home = os.path.join(staging, 'home')
    _make_home(home, dist, dist)
    tmpdir = os.path.join(staging, 'tmp')
    os.makedirs(tmpdir)
    log_path = os.path.join(staging, 'prepare.log')
    http_port = _free_port()
    env = _child_env(java_home, DEFAULT_HEAP, tmpdir, {
        'KC_BOOTSTRAP_ADMIN_USERNAME': ADMIN_USER, 'KC_BOOTSTRAP_ADMIN_PASSWORD': ADMIN_PASSWORD})
    cmd = [os.path.join(home, 'bin', 'kc.sh'), 'start-dev'] + list(BUILD_OPTIONS) + [
        '--http-host=127.0.0.1', '--http-port=%d' % http_port, '--https-port=%d' % _free_port(),
        '--log-console-color=false']
    with open(log_path, 'ab') as out:
        proc = subprocess.Popen(cmd, cwd=staging, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = 'http://127.0.0.1:%d/realms/master/.well-known/openid-configuration' % http_port
        _wait_http(url, None, proc, timeout, log_path, 'preparing Keycloak')
    finally:
        _kill_group(proc.pid, proc)
    if proc.returncode not in (0, 143, -signal.SIGTERM):
        raise KeycloakError('Keycloak did not stop cleanly while being prepared (status %s); its log:\n%s'
                            % (proc.returncode, _tail(log_path)))
    data = os.path.join(home, 'data')
    for name in os.listdir(data):
        if name != 'h2':
            shutil.rmtree(os.path.join(data, name), ignore_errors=True)
    for name in os.listdir(os.path.join(data, 'h2')):
        if not name.endswith('.mv.db'):
            os.remove(os.path.join(data, 'h2', name))
    shutil.rmtree(tmpdir, ignore_errors=True)


def _wait_http(url, verify, proc, timeout, log_path, what):
    """Poll url until it answers 200; raise KeycloakError with the log's tail on exit or timeout."""
    deadline = time.monotonic() + timeout
    session = requests.Session()
    session.trust_env = False
    try:
        while True:
            try:
                response = session.get(url, verify=verify if verify else True, timeout=5)
                if response.status_code == 200:
                    return response.json()
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass
            code = proc.poll()
            if code is not None:
                raise KeycloakError('Keycloak exited with status %s before it was ready (%s); the end of its log:\n%s'
                                    % (code, what, _tail(log_path)))
            if time.monotonic() > deadline:
                raise KeycloakError('Keycloak was not ready within %.0f s (%s); the end of its log:\n%s'
                                    % (timeout, what, _tail(log_path)))
            time.sleep(0.25)
    finally:
        session.close()


# -- the realm ---------------------------------------------------------------------------------

def load_realm(path=None):
    with open(path or DEFAULT_REALM_FILE, encoding='utf-8') as handle:
        return json.load(handle)


def _node_auth_methods():
    """Each client's auth method as tests/provider/config.json names it (Keycloak accepts both for every
    confidential client, the tests use one per client)."""
    try:
        config = load_config(NODE_CONFIG)
    except (OSError, ValueError):
        return {}
    return {c['client_id']: c.get('token_endpoint_auth_method', 'client_secret_basic')
            for c in config.get('clients', [])}


def _client_entry(client, auth_methods):
    attributes = client.get('attributes') or {}
    grants = []
    if client.get('directAccessGrantsEnabled'):
        grants.append('password')
    if attributes.get('standard.token.exchange.enabled') == 'true':
        grants.append(GRANT_TOKEN_EXCHANGE)
    if attributes.get('oauth2.device.authorization.grant.enabled') == 'true':
        grants.append(GRANT_DEVICE_CODE)
    if attributes.get('use.refresh.tokens', 'true') == 'true':
        grants.append('refresh_token')
    return {
        'client_id': client['clientId'],
        'client_secret': client.get('secret'),
        'auth_method': auth_methods.get(client['clientId'], 'client_secret_basic'),
        'grant_types': grants,
    }


def _user_entry(user):
    password = next((c.get('value') for c in user.get('credentials', []) if c.get('type') == 'password'), None)
    return {'password': password, 'sub': user.get('id'), 'email': user.get('email'),
            'name': ' '.join(p for p in (user.get('firstName'), user.get('lastName')) if p)}


def _unverified_claims(token):
    """The payload of a JWT, unverified (to pick who may introspect it), or None."""
    try:
        payload = token.split('.')[1]
        return json.loads(base64.urlsafe_b64decode(payload + '=' * (-len(payload) % 4)))
    except (AttributeError, IndexError, ValueError):
        return None


def _basic(client):
    """HTTP Basic credentials of a client, form-urlencoded first (RFC 6749 2.3.1)."""
    return (quote_plus(client['client_id']), quote_plus(client['client_secret']))


# -- Keycloak ----------------------------------------------------------------------------------

class Keycloak(LocalOpenIDServer):
    """One Keycloak (start-dev) on 127.0.0.1, free ports unless ``port`` is given, realm oidc-tokens imported.

    at_ttl: access-token lifetime of the realm (the exchanged and refreshed tokens). user_at_ttl: of user-cli's
    tokens (the subject tokens; default at_ttl). rt_ttl: SSO Session Idle, which is what a Keycloak refresh
    token's exp and refresh_expires_in follow. sso_max: SSO Session Max (default max(36000, rt_ttl)): no refresh
    token of a session outlives it. issuer_host: the host in the issuer (Keycloak's --hostname), e.g. 'localhost'.
    workdir: where the home, logs, TLS material go (a temporary directory by default).
    access_token_format: only 'jwt' (Keycloak's access tokens are JWTs); exchange_shape 'common' and discovery
    'openid' only: the switches exist for parametrised tests.
    """

    kind = 'keycloak'

    # -- what the provider-parametrised tests ask of every provider (as tests/support/provider.py) ----------
    subject_scope = DEFAULT_USER_SCOPE
    exchange_scope = ['openid', 'storage.read:/', 'compute.read']
    wants_offline_access = False                       # Keycloak refuses offline_access in a standard exchange
    audience = 'plain-client'                          # a client the exchanging clients' tokens name in aud
    says_refresh_token_expiry = True                   # refresh_expires_in, and JWT refresh tokens with exp

    def __init__(self, tls=False, at_ttl=60, rt_ttl=1800, user_at_ttl=None, sso_max=None, issuer_host=None,
                 workdir=None, realm_file=None, port=0, host='127.0.0.1', startup_timeout=STARTUP_TIMEOUT,
                 heap=DEFAULT_HEAP, java_home=None, access_token_format='jwt', exchange_shape='common',
                 discovery='openid', issuer=None, config=None):
        if access_token_format != 'jwt':
            raise ValueError("Keycloak's access tokens are JWTs: access_token_format must be 'jwt'")
        if exchange_shape != 'common':
            raise ValueError("Keycloak answers exchanges in one shape: exchange_shape must be 'common'")
        if discovery != 'openid':
            raise ValueError("this helper serves Keycloak's OpenID discovery only: discovery must be 'openid'")
        if issuer is not None or config is not None:
            raise NotImplementedError('Keycloak takes its clients and users from tests/keycloak/realm.json '
                                      '(realm_file=) and names its issuer itself (issuer_host=)')
        self.tls = bool(tls)
        self.access_token_format = 'jwt'
        self.exchange_shape = 'common'
        self.discovery = 'openid'
        self.at_ttl = int(at_ttl)
        self.user_at_ttl = self.at_ttl if user_at_ttl is None else int(user_at_ttl)
        self.rt_ttl = int(rt_ttl)
        self.sso_max = max(36000, self.rt_ttl) if sso_max is None else int(sso_max)
        self.issuer_host = issuer_host
        self.realm_file = os.path.abspath(realm_file or DEFAULT_REALM_FILE)
        self.realm = load_realm(self.realm_file)
        self.config = {'users': {u['username']: _user_entry(u) for u in self.realm.get('users', [])},
                       'clients': self.realm.get('clients', [])}
        self._auth_methods = _node_auth_methods()
        self.port = int(port)
        self.host = host
        self.startup_timeout = startup_timeout
        self.heap = heap
        self.java_home = java_home
        self.workdir = workdir
        self._own_workdir = False
        self.process = None
        self.pid = None
        self.issuer = None
        self.url = None
        self.base_url = None
        self.ca_path = None
        self.http_port = None
        self.ready = None
        self.started_in = None
        self._detached = False
        self._session = None
        self._watchdog = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def home(self):
        return os.path.join(self.workdir, 'home') if self.workdir else None

    @property
    def log_path(self):
        return os.path.join(self.workdir, 'keycloak.log')

    # provider.py names its logs so; the same here for callers that print them
    stdout_path = log_path

    def realm_representation(self):
        """realm.json as this instance imports it: lifetimes from the arguments, _comment keys dropped."""
        realm = {k: v for k, v in copy.deepcopy(self.realm).items() if not k.startswith('_')}
        realm['accessTokenLifespan'] = self.at_ttl
        realm['ssoSessionIdleTimeout'] = self.rt_ttl
        realm['ssoSessionMaxLifespan'] = self.sso_max
        for client in realm.get('clients', []):
            if client['clientId'] == USER_CLIENT and self.user_at_ttl != self.at_ttl:
                client.setdefault('attributes', {})['access.token.lifespan'] = str(self.user_at_ttl)
        return realm

    def command(self, https_port, http_port):
        cmd = [os.path.join(self.home, 'bin', 'kc.sh'), 'start-dev'] + list(BUILD_OPTIONS) + [
            '--import-realm', '--http-host=%s' % self.host, '--http-port=%d' % http_port,
            '--https-port=%d' % https_port, '--log-console-color=false']
        if self.tls:
            cmd += ['--https-certificate-file=%s' % self._cert_path,
                    '--https-certificate-key-file=%s' % self._key_path]
        if self.issuer_host:
            scheme, port = ('https', https_port) if self.tls else ('http', http_port)
            host = '[%s]' % self.issuer_host if ':' in self.issuer_host else self.issuer_host
            cmd.append('--hostname=%s://%s:%d' % (scheme, host, port))
        return cmd

    def start(self, detach=False):
        """Start Keycloak and wait until the realm's discovery document answers. Returns self.

        detach=True: Keycloak runs on after this Python process (stop it with stop_pid() or
        ``keycloak.py stop``); otherwise a watchdog stops it when this process dies.
        """
        if self.running:
            return self
        dist = check_installed()
        self.java_home = self.java_home or find_java_home()
        prepared = prepare(self.java_home)[0]
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix='oidc-test-keycloak-')
            self._own_workdir = True
        os.makedirs(self.workdir, exist_ok=True)
        self._detached = bool(detach)
        began = time.monotonic()

        if self.tls:
            hostnames = ['localhost']
            addresses = ['127.0.0.1', '::1']
            for name in (self.issuer_host, self.host):
                if name:
                    (addresses if _is_ip(name) else hostnames).append(name)
            self.ca_path, self._cert_path, self._key_path = make_tls_material(self.workdir, hostnames, addresses)
        else:
            self.ca_path = None

        tmpdir = os.path.join(self.workdir, 'tmp')
        os.makedirs(tmpdir, exist_ok=True)
        realm = self.realm_representation()
        # Free ports are chosen here and bound by Keycloak later: another process may take one in between.
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            shutil.rmtree(self.home, ignore_errors=True)
            _make_home(self.home, os.path.join(prepared, 'home'), dist)
            import_dir = os.path.join(self.home, 'data', 'import')
            os.makedirs(import_dir, exist_ok=True)
            with open(os.path.join(import_dir, REALM + '-realm.json'), 'w', encoding='utf-8') as handle:
                json.dump(realm, handle)
            https_port = self.port or _free_port(self.host)
            http_port = _free_port(self.host)
            try:
                self._spawn(https_port, http_port, tmpdir)
                break
            except KeycloakError:
                log = _tail(self.log_path, 4000)
                if attempt + 1 < attempts and ('already in use' in log or 'already bound' in log):
                    continue
                raise
        self.started_in = time.monotonic() - began
        return self

    def _spawn(self, https_port, http_port, tmpdir):
        env = _child_env(self.java_home, self.heap, tmpdir)
        with open(self.log_path, 'ab') as out:
            self.process = subprocess.Popen(
                self.command(https_port, http_port), cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, close_fds=True, start_new_session=True)
        self.pid = self.process.pid
        if not self._detached:
            _LIVE.add(self)
            self._start_watchdog()
        scheme, port = ('https', https_port) if self.tls else ('http', http_port)
        self.base_url = '%s://%s:%d' % (scheme, '[%s]' % self.host if ':' in self.host else self.host, port)
        self.url = '%s/realms/%s' % (self.base_url, REALM)
        self.http_port = http_port
        try:
            document = _wait_http(self.discovery_url, self.ca_path, self.process, self.startup_timeout,
                                  self.log_path, 'starting on port %d' % port)
        except BaseException:
            self._stop_watchdog()
            self._kill()
            raise
        self.issuer = document['issuer']
        self.ready = {'issuer': self.issuer, 'url': self.url, 'port': port, 'http_port': http_port}

    def _start_watchdog(self):
        """A shell that stops Keycloak's process group when this Python process dies (its stdin pipe closes)."""
        script = ('read _ignored; kill -TERM -%d 2>/dev/null; sleep %d; kill -KILL -%d 2>/dev/null; exit 0'
                  % (self.pid, int(STOP_TIMEOUT), self.pid))
        self._watchdog = subprocess.Popen(['/bin/sh', '-c', script], stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                                          start_new_session=True)

    def _stop_watchdog(self):
        if self._watchdog is not None:
            try:
                self._watchdog.kill()
                self._watchdog.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if self._watchdog.stdin is not None:
                try:
                    self._watchdog.stdin.close()
                except OSError:
                    pass
            self._watchdog = None

    def log_text(self, limit=20000):
        return _tail(self.log_path, limit)

    def stop(self):
        """Stop Keycloak (SIGTERM to its process group, SIGKILL after a while) and drop its home."""
        _LIVE.discard(self)
        if self._session is not None:
            self._session.close()
            self._session = None
        self._stop_watchdog()
        if self.process is not None:
            self._kill()
            self.process = None
        if self.workdir and not self._detached:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
                self._own_workdir = False
            else:
                shutil.rmtree(os.path.join(self.workdir, 'home'), ignore_errors=True)
                shutil.rmtree(os.path.join(self.workdir, 'tmp'), ignore_errors=True)

    def _kill(self):
        proc = self.process
        if proc is None:
            return
        _kill_group(proc.pid, proc)

    def jvm_pid(self):
        """The pid of Keycloak's java process (kc.sh's child, or kc.sh itself after it exec'ed java)."""
        if not self.pid:
            return None
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % entry, encoding='utf-8') as handle:
                    fields = handle.read().rsplit(')', 1)[1].split()
                with open('/proc/%s/comm' % entry, encoding='utf-8') as handle:
                    comm = handle.read().strip()
            except OSError:
                continue
            if int(fields[2]) == self.pid and comm == 'java':  # fields[2]: the process group
                return int(entry)
        return None

    def jvm_rss(self):
        """Resident memory of Keycloak's JVM in bytes (Linux), or None."""
        pid = self.jvm_pid()
        try:
            with open('/proc/%d/status' % pid, encoding='utf-8') as handle:
                for line in handle:
                    if line.startswith('VmRSS:'):
                        return int(line.split()[1]) * 1024
        except (OSError, TypeError):
            return None
        return None

    # -- convenience for tests ------------------------------------------------------------------

    @property
    def token_endpoint(self):
        return self.url + '/protocol/openid-connect/token'

    @property
    def revocation_endpoint(self):
        return self.url + '/protocol/openid-connect/revoke'

    @property
    def introspection_endpoint(self):
        return self.url + '/protocol/openid-connect/token/introspect'

    @property
    def userinfo_endpoint(self):
        return self.url + '/protocol/openid-connect/userinfo'

    @property
    def jwks_uri(self):
        return self.url + '/protocol/openid-connect/certs'

    @property
    def discovery_url(self):
        return self.url + '/.well-known/openid-configuration'

    def client(self, name):
        """{'client_id', 'client_secret', 'auth_method', 'grant_types'} of a client in realm.json."""
        for client in self.realm.get('clients', []):
            if client['clientId'] == name:
                return _client_entry(client, self._auth_methods)
        raise KeyError('no client %r in %s' % (name, self.realm_file))

    def clients(self):
        return {c['clientId']: _client_entry(c, self._auth_methods) for c in self.realm.get('clients', [])}

    def user(self, username='alice'):
        return dict(self.config['users'][username])

    def user_tokens(self, username='alice', scope=DEFAULT_USER_SCOPE, password=None, resource=None):
        """The full token response of the password grant of user-cli (Keycloak's direct access grant)."""
        if resource:
            raise NotImplementedError('Keycloak does not take resource indicators (RFC 8707)')
        user = self.config['users'][username]
        client = self.client(USER_CLIENT)
        data = {'grant_type': 'password', 'username': username,
                'password': user['password'] if password is None else password}
        if scope:
            data['scope'] = scope if isinstance(scope, str) else ' '.join(scope)
        response = self.session.post(self.token_endpoint, data=data, auth=_basic(client), timeout=10)
        if response.status_code != 200:
            raise KeycloakError('password grant for %s failed: HTTP %s %s'
                                % (username, response.status_code, response.text[:500]))
        return response.json()

    def stats(self):
        raise NotImplementedError("Keycloak has no test-stats endpoint; counts() reads Keycloak's events instead")

    def reset_stats(self):
        raise NotImplementedError("Keycloak has no test-stats endpoint; compare two counts() instead")

    def introspect(self, token, client=None, token_type_hint=None):
        """Keycloak's own view of a token (RFC 7662), asked as ``client``.

        Keycloak 26 answers {"active": false} unless the asking client may see the token: an access token only
        to a client in its aud, a refresh token only to the client it was issued to (azp) and only with
        token_type_hint=refresh_token. client=None picks that client (and hint) from the token's unverified
        claims, so that introspect(token) answers as provider.py's does; plain-client for anything else.
        """
        if client is None:
            client, hint = self._introspecting_client(token)
            token_type_hint = token_type_hint or hint
        data = {'token': token}
        if token_type_hint:
            data['token_type_hint'] = token_type_hint
        response = self.session.post(self.introspection_endpoint, data=data, timeout=10,
                                     auth=_basic(self.client(client)))
        response.raise_for_status()
        return response.json()

    def _introspecting_client(self, token):
        claims = _unverified_claims(token) or {}
        known = {c['clientId'] for c in self.realm.get('clients', []) if c.get('secret')}
        if claims.get('typ') in ('Refresh', 'Offline') and claims.get('azp') in known:
            return claims['azp'], 'refresh_token'
        audiences = claims.get('aud')
        for audience in audiences if isinstance(audiences, list) else [audiences]:
            if audience in known:
                return audience, None
        return 'plain-client', None

    def refresh_with(self, refresh_token, client='oidc-tokens-exchanger'):
        """A plain refresh grant as ``client``; the JSON answer, or KeycloakError when refused."""
        response = self.session.post(self.token_endpoint, timeout=10, auth=_basic(self.client(client)),
                                     data={'grant_type': 'refresh_token', 'refresh_token': refresh_token})
        if response.status_code != 200:
            raise KeycloakError('refresh refused: HTTP %s %s' % (response.status_code, response.text[:300]))
        return response.json()

    # -- administration (the test-only admin of the master realm) -------------------------------

    def admin_token(self):
        response = self.session.post(
            self.base_url + '/realms/master/protocol/openid-connect/token', timeout=10,
            data={'grant_type': 'password', 'client_id': 'admin-cli', 'username': ADMIN_USER,
                  'password': ADMIN_PASSWORD})
        if response.status_code != 200:
            raise KeycloakError('admin login failed: HTTP %s %s' % (response.status_code, response.text[:300]))
        return response.json()['access_token']

    def admin(self, method, path, **kwargs):
        """A call to the admin REST API of the realm: admin('GET', '/events', params={...}) -> response."""
        headers = dict(kwargs.pop('headers', {}), Authorization='Bearer ' + self.admin_token())
        return self.session.request(method, '%s/admin/realms/%s%s' % (self.base_url, REALM, path),
                                    headers=headers, timeout=30, **kwargs)

    def events(self, *types):
        """Keycloak's stored events of the realm (newest first), of the given types (all when none)."""
        params = [('max', '100000')] + [('type', t) for t in types]
        response = self.admin('GET', '/events', params=params)
        response.raise_for_status()
        return response.json()

    def request_counts(self):
        """Requests by kind since the start, and how many failed, from Keycloak's events (X and X_ERROR): the
        shape of Provider.request_counts()."""
        kinds = {'TOKEN_EXCHANGE': 'exchange', 'REFRESH_TOKEN': 'refresh', 'REVOKE_GRANT': 'revocation',
                 'INTROSPECT_TOKEN': 'introspection'}
        result = {'requests': dict.fromkeys(kinds.values(), 0), 'failed': dict.fromkeys(kinds.values(), 0)}
        for event in self.events(*(list(kinds) + [kind + '_ERROR' for kind in kinds])):
            failed = event['type'].endswith('_ERROR')
            kind = kinds[event['type'][:-len('_ERROR')] if failed else event['type']]
            result['requests'][kind] += 1
            result['failed'][kind] += failed
        return result

    def logout_user(self, username='alice'):
        """End all of a user's sessions (every refresh token of them dies)."""
        response = self.admin('GET', '/users', params={'username': username, 'exact': 'true'})
        response.raise_for_status()
        user_id = response.json()[0]['id']
        self.admin('POST', '/users/%s/logout' % user_id).raise_for_status()

    def state(self):
        """What ``keycloak.py start`` writes to provider.json (the keys of provider.py, and Keycloak's own)."""
        return dict(self.profile(), **{
            'issuer': self.issuer,
            'url': self.url,
            'port': self.ready['port'] if self.ready else None,
            'ca_path': self.ca_path,
            'pid': self.pid,
            'tls': self.tls,
            'access_token_format': self.access_token_format,
            'exchange_shape': self.exchange_shape,
            'discovery': self.discovery,
            'at_ttl': self.at_ttl,
            'rt_ttl': self.rt_ttl,
            'user_at_ttl': self.user_at_ttl,
            'token_endpoint': self.token_endpoint if self.url else None,
            'log': self.log_path if self.workdir else None,
            'clients': self.clients(),
            'users': {name: dict(user) for name, user in self.config['users'].items()},
            'version': version(),
            'realm': REALM,
            'base_url': self.base_url,
            'http_port': self.http_port,
            'sso_max': self.sso_max,
            'java_home': self.java_home,
            'home': self.home,
        })


# -- command line ------------------------------------------------------------------------------

def _pid_is_our_keycloak(pid, home=None):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            cmdline = handle.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    if home:
        return home.encode() in cmdline
    return b'kc.sh' in cmdline or b'kc.home.dir' in cmdline


def stop_pid(pid, home=None, timeout=STOP_TIMEOUT):
    """Stop a detached Keycloak (its process group). Returns True if it was running."""
    if not pid or not _pid_is_our_keycloak(pid, home):
        return False
    _kill_group(pid, None, timeout)
    return True


def _cli_start(args):
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, exist_ok=True)
    state_file = os.path.join(state_dir, 'provider.json')
    old = read_json(state_file)
    if old and _pid_is_our_keycloak(old.get('pid') or 0, old.get('home')):
        print('a Keycloak is already running from %s (pid %s); stop it first' % (state_dir, old.get('pid')),
              file=sys.stderr)
        return 1
    instance = Keycloak(tls=args.tls, at_ttl=args.at_ttl, rt_ttl=args.rt_ttl, user_at_ttl=args.user_at_ttl,
                        sso_max=args.sso_max, issuer_host=args.issuer_host, port=args.port,
                        realm_file=args.realm, workdir=state_dir)
    try:
        instance.start(detach=True)
    except ProviderError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    state = instance.state()
    write_state(state_file, state)
    print(json.dumps(state, sort_keys=True))
    return 0


def _cli_stop(args):
    state_dir = os.path.abspath(args.state_dir)
    state_file = os.path.join(state_dir, 'provider.json')
    state = read_json(state_file)
    if state is None:
        print('no provider.json in %s: nothing to stop' % args.state_dir, file=sys.stderr)
        return 0
    was_running = stop_pid(state.get('pid') or 0, state.get('home'))
    os.remove(state_file)
    if state.get('home') and os.path.dirname(state['home']) == state_dir:
        shutil.rmtree(state['home'], ignore_errors=True)
        shutil.rmtree(os.path.join(state_dir, 'tmp'), ignore_errors=True)
    print('stopped Keycloak pid %s' % state.get('pid') if was_running
          else 'Keycloak pid %s was not running' % state.get('pid'))
    return 0


def _cli_prepare(args):
    if args.check:
        try:
            stamp = _prepared_stamp(find_java_home())
        except KeycloakError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        current = read_json(os.path.join(prepared_dir(), 'prepared.json')) == stamp
        print('prepared' if current else 'not prepared (or stale)')
        return 0 if current else 1
    try:
        path, built = prepare(log=None if args.quiet else (lambda m: print('keycloak: ' + m, file=sys.stderr)))
    except ProviderError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if not args.quiet:
        print('%s %s' % ('prepared' if built else 'already prepared:', path))
    return 0


def _cli_java_home(args):
    try:
        print(find_java_home())
    except KeycloakError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description='Start or stop a test Keycloak.')
    sub = parser.add_subparsers(dest='command', required=True)
    start = sub.add_parser('start', help='start in the background and write STATE_DIR/provider.json')
    start.add_argument('--state-dir', required=True)
    start.add_argument('--tls', action='store_true', help='HTTPS with a CA generated into STATE_DIR')
    start.add_argument('--at-ttl', type=int, default=60, help='access-token lifetime of the realm (s)')
    start.add_argument('--rt-ttl', type=int, default=1800, help='SSO Session Idle: the refresh tokens\' lifetime (s)')
    start.add_argument('--user-at-ttl', type=int, help="lifetime of the user's own access tokens (default: --at-ttl)")
    start.add_argument('--sso-max', type=int, help='SSO Session Max (s; default max(36000, --rt-ttl))')
    start.add_argument('--issuer-host', help="the host in the issuer (Keycloak's --hostname)")
    start.add_argument('--port', type=int, default=0)
    start.add_argument('--realm', help='realm file (default tests/keycloak/realm.json)')
    stop = sub.add_parser('stop', help='stop the Keycloak started from STATE_DIR')
    stop.add_argument('--state-dir', required=True)
    user_token = sub.add_parser('user-token', help="print a user's access token (to stdout, for $(...))")
    user_token.add_argument('--state-dir', required=True)
    user_token.add_argument('--user', default='alice')
    user_token.add_argument('--scope', default=DEFAULT_USER_SCOPE)
    counts = sub.add_parser('counts', help='print requests (and failures) by kind since the start, as JSON')
    counts.add_argument('--state-dir', required=True)
    prep = sub.add_parser('prepare', help='augment and make the database template once (scripts/setup runs it)')
    prep.add_argument('--quiet', action='store_true', help='print nothing unless it fails')
    prep.add_argument('--check', action='store_true', help='only tell (exit 0) whether it is prepared')
    sub.add_parser('java-home', help='print the JDK Keycloak runs with, or say what to install')
    args = parser.parse_args(argv)
    if args.command == 'start':
        return _cli_start(args)
    if args.command == 'user-token':
        return cli_user_token(Keycloak, args)
    if args.command == 'counts':
        return cli_counts(Keycloak, args)
    if args.command == 'prepare':
        return _cli_prepare(args)
    if args.command == 'java-home':
        return _cli_java_home(args)
    return _cli_stop(args)


if __name__ == '__main__':
    sys.exit(main())
