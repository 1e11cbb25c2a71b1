"""Start and stop the test OpenID provider (tests/provider/server.mjs, a real node-oidc-provider).

As a library (pytest fixtures, other helpers)::

    from provider import Provider
    with Provider(tls=True, access_token_format='jwt') as op:
        op.issuer, op.url, op.ca_path
        op.client('oidc-tokens-exchanger')    # {'client_id', 'client_secret', 'auth_method'}
        op.user_access_token()                # alice's access token (test-only password grant)
        op.stats(); op.reset_stats()

From a shell script::

    python3 tests/support/provider.py start --state-dir DIR [--tls] [--at-ttl N] ...
    python3 tests/support/provider.py stop --state-dir DIR
    python3 tests/support/provider.py user-token --state-dir DIR [--user alice]   # alice's access token
    python3 tests/support/provider.py counts --state-dir DIR   # requests and failures by kind, JSON

``start`` leaves the provider running in the background, writes DIR/provider.json
({issuer, url, port, ca_path, pid, clients, ...}) and prints the same JSON.

Standard library, requests and cryptography only. Needs ``node`` and
``npm ci --prefix tests/provider`` once.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
PROVIDER_DIR = os.path.join(REPO_ROOT, 'tests', 'provider')
SERVER_JS = os.path.join(PROVIDER_DIR, 'server.mjs')
DEFAULT_CONFIG = os.path.join(PROVIDER_DIR, 'config.json')

DEFAULT_USER_SCOPE = 'openid profile offline_access storage.read:/ compute.read'
USER_CLIENT = 'user-cli'

GRANT_TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
GRANT_DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code'
TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
TOKEN_TYPE_REFRESH = 'urn:ietf:params:oauth:token-type:refresh_token'
TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt'

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_LIVE = weakref.WeakSet()


class ProviderError(RuntimeError):
    """The test provider could not be started or used."""


def _stop_all_at_exit():
    for provider in list(_LIVE):
        try:
            provider.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_stop_all_at_exit)


def load_config(path=None):
    with open(path or DEFAULT_CONFIG, encoding='utf-8') as handle:
        return json.load(handle)


def _client_entry(client):
    return {
        'client_id': client['client_id'],
        'client_secret': client.get('client_secret'),
        'auth_method': client.get('token_endpoint_auth_method', 'client_secret_basic'),
        'grant_types': list(client.get('grant_types', [])),
    }


def check_installed():
    """Raise ProviderError with the fix when node or the provider's node_modules is missing."""
    if not os.path.isdir(os.path.join(PROVIDER_DIR, 'node_modules', 'oidc-provider')):
        raise ProviderError(
            'the test provider is not installed: %s has no node_modules/oidc-provider; '
            'run `npm ci --prefix tests/provider` from the repository root'
            % os.path.relpath(PROVIDER_DIR, os.getcwd()))
    # scripts/setup installs Node.js from npm into tests/provider/.node when the machine's is too old.
    local = os.path.join(PROVIDER_DIR, '.node', 'node_modules', '.bin', 'node')
    node = local if os.access(local, os.X_OK) else shutil.which('node')
    if not node:
        raise ProviderError('`node` (Node.js 20 or later) is not on PATH; the test provider needs it')
    return node


# -- TLS material ------------------------------------------------------------------------------

def make_tls_material(directory, hostnames=('localhost',), addresses=('127.0.0.1', '::1')):
    """Write a throw-away CA (ca.pem) and a server certificate signed by it into directory.

    Returns (ca_path, cert_path, key_path). The server certificate names every hostname and IP
    address given (DNS and IP subjectAltNames) and is valid from an hour ago for two days.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'oidc.tokens test CA')])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for name in hostnames:
        if name and x509.DNSName(name) not in names:
            names.append(x509.DNSName(name))
    for address in addresses:
        entry = x509.IPAddress(ipaddress.ip_address(address))
        if entry not in names:
            names.append(entry)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'oidc.tokens test provider')]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_path = os.path.join(directory, 'ca.pem')
    cert_path = os.path.join(directory, 'server.pem')
    key_path = os.path.join(directory, 'server-key.pem')
    with open(ca_path, 'wb') as handle:
        handle.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(cert_path, 'wb') as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'wb') as handle:
        handle.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def _is_ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# -- the provider ------------------------------------------------------------------------------

class LocalOpenIDServer:
    """What every test OpenID provider of this directory offers the tests (Provider here, Keycloak in
    keycloak.py): an HTTP session that trusts the server's CA, discovery, a user's access token."""

    _session = None
    process = None
    subject_scope = DEFAULT_USER_SCOPE

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<%s %s issuer=%s pid=%s>' % (type(self).__name__, self.url, self.issuer, self.pid)

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    @property
    def verify(self):
        """The value for requests' ``verify=``."""
        return self.ca_path if self.ca_path else True

    @property
    def session(self):
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False
            self._session.verify = self.verify
        return self._session

    def metadata(self):
        response = self.session.get(self.discovery_url, timeout=10)
        response.raise_for_status()
        return response.json()

    def profile(self):
        """What tests parametrised by provider ask of this one (part of provider.json, for shell and Ansible)."""
        return {'kind': self.kind, 'subject_scope': self.subject_scope, 'exchange_scope': list(self.exchange_scope),
                'wants_offline_access': self.wants_offline_access, 'audience': self.audience,
                'says_refresh_token_expiry': self.says_refresh_token_expiry}

    @classmethod
    def from_state(cls, state):
        """The server that ``start --state-dir`` left running, from its provider.json: the HTTP helpers work,
        starting and stopping do not (that is the command line's ``stop``)."""
        instance = cls(tls=state.get('tls', False))
        for key in ('issuer', 'url', 'ca_path', 'pid', 'base_url'):
            if key in state:
                setattr(instance, key, state[key])
        return instance

    def counts(self):
        """Successful requests by kind since the start: {'exchange', 'refresh', 'revocation'}."""
        counts = self.request_counts()
        return {kind: counts['requests'][kind] - counts['failed'][kind] for kind in ('exchange', 'refresh', 'revocation')}

    def user_access_token(self, username='alice', scope=None, with_refresh=False):
        """A user's access token (str), or with_refresh=True the whole token response (dict)."""
        tokens = self.user_tokens(username, self.subject_scope if scope is None else scope)
        return tokens if with_refresh else tokens['access_token']


class Provider(LocalOpenIDServer):
    """One test provider process on 127.0.0.1 (a free port unless ``port`` is given).

    issuer_host: the host put in the issuer (default 127.0.0.1), e.g. 'localhost' to make an issuer
    that differs from the URL the tests reach. issuer: a complete issuer URL instead (e.g. a proxy's
    address). workdir: where logs, TLS material and state go (a temporary directory by default).
    """

    def __init__(self, tls=False, access_token_format='opaque', at_ttl=60, rt_ttl=3600, user_at_ttl=None,
                 exchange_shape='common', discovery='openid', issuer_host=None, workdir=None,
                 issuer=None, config=None, port=0, host='127.0.0.1',
                 startup_timeout=STARTUP_TIMEOUT, trusted_ci_issuers=None, ci_audience=None, ci_scope=None,
                 ci_jti_max_uses=0, device_code_ttl=600, device_interval=5, device_slow_down=0):
        if access_token_format not in ('opaque', 'jwt'):
            raise ValueError('access_token_format must be opaque or jwt')
        if exchange_shape not in ('common', 'strict', 'indigo'):
            raise ValueError('exchange_shape must be common, strict or indigo')
        if discovery not in ('openid', 'oauth'):
            raise ValueError('discovery must be openid or oauth')
        if issuer and issuer_host:
            raise ValueError('give issuer or issuer_host, not both')
        self.tls = bool(tls)
        self.access_token_format = access_token_format
        self.at_ttl = int(at_ttl)
        self.rt_ttl = int(rt_ttl)
        # Access tokens of the user's own login (the subject tokens): as at_ttl unless given.
        self.user_at_ttl = self.at_ttl if user_at_ttl is None else int(user_at_ttl)
        self.exchange_shape = exchange_shape
        self.discovery = discovery
        self.issuer_host = issuer_host
        self.requested_issuer = issuer
        self.config_path = os.path.abspath(config or DEFAULT_CONFIG)
        self.config = load_config(self.config_path)
        self.port = int(port)
        self.host = host
        self.startup_timeout = startup_timeout
        # CI issuers whose JWTs the exchange accepts as subject tokens: {issuer: jwks_path} (ci_issuer.py).
        self.trusted_ci_issuers = dict(trusted_ci_issuers or {})
        if self.trusted_ci_issuers and not ci_audience:
            raise ValueError('trusted_ci_issuers needs ci_audience')
        self.ci_audience = ci_audience
        self.ci_scope = ci_scope
        self.ci_jti_max_uses = int(ci_jti_max_uses)
        # The device flow (RFC 8628): the device code's lifetime, the polling interval the provider announces, and
        # how many of each device code's first polls are answered slow_down whatever their timing.
        self.device_code_ttl = int(device_code_ttl)
        self.device_interval = int(device_interval)
        self.device_slow_down = int(device_slow_down)
        self.workdir = workdir
        self._own_workdir = False
        self.process = None
        self.pid = None
        self.issuer = None
        self.url = None
        self.ca_path = None
        self.ready = None
        self._detached = False
        self._session = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def stdout_path(self):
        return os.path.join(self.workdir, 'provider.stdout')

    @property
    def log_path(self):
        return os.path.join(self.workdir, 'provider.log')

    def command(self, node='node'):
        cmd = [node, SERVER_JS, '--port', str(self.port), '--host', self.host,
               '--access-token-format', self.access_token_format,
               '--at-ttl', str(self.at_ttl), '--rt-ttl', str(self.rt_ttl), '--user-at-ttl', str(self.user_at_ttl),
               '--exchange-shape', self.exchange_shape, '--discovery', self.discovery,
               '--device-code-ttl', str(self.device_code_ttl), '--device-interval', str(self.device_interval),
               '--device-slow-down', str(self.device_slow_down),
               '--config', self.config_path]
        if self.requested_issuer:
            cmd += ['--issuer', self.requested_issuer]
        elif self.issuer_host:
            cmd += ['--issuer-host', self.issuer_host]
        if self.tls:
            cmd += ['--tls-cert', self._cert_path, '--tls-key', self._key_path]
        for ci_issuer, jwks_path in self.trusted_ci_issuers.items():
            cmd += ['--trusted-ci-issuer', '%s=%s' % (ci_issuer, jwks_path)]
        if self.trusted_ci_issuers:
            cmd += ['--ci-audience', self.ci_audience, '--ci-jti-max-uses', str(self.ci_jti_max_uses)]
            if self.ci_scope:
                cmd += ['--ci-scope', self.ci_scope if isinstance(self.ci_scope, str) else ' '.join(self.ci_scope)]
        if not self._detached:
            cmd.append('--exit-on-stdin-close')
        return cmd

    def start(self, detach=False):
        """Start the provider and wait for its READY line. Returns self.

        detach=True: the provider runs in its own session and outlives this Python process
        (stop it with stop_pid() / ``provider.py stop``); otherwise it dies with this process.
        """
        if self.running:
            return self
        node = check_installed()
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix='oidc-test-provider-')
            self._own_workdir = True
        os.makedirs(self.workdir, exist_ok=True)
        self._detached = bool(detach)

        if self.tls:
            hostnames = ['localhost']
            addresses = ['127.0.0.1', '::1']
            extra = [self.issuer_host, self.host]
            if self.requested_issuer:
                from urllib.parse import urlsplit
                extra.append(urlsplit(self.requested_issuer).hostname)
            for name in extra:
                if not name:
                    continue
                (addresses if _is_ip(name) else hostnames).append(name)
            self.ca_path, self._cert_path, self._key_path = make_tls_material(
                self.workdir, hostnames, addresses)
        else:
            self.ca_path = None

        stdout = open(self.stdout_path, 'wb')
        stderr = open(self.log_path, 'ab')
        try:
            self.process = subprocess.Popen(
                self.command(node), cwd=PROVIDER_DIR,
                stdin=subprocess.DEVNULL if detach else subprocess.PIPE,
                stdout=stdout, stderr=stderr, close_fds=True,
                start_new_session=bool(detach))
        finally:
            stdout.close()
            stderr.close()
        self.pid = self.process.pid
        if not detach:
            _LIVE.add(self)

        try:
            self.ready = self._wait_ready()
        except BaseException:
            self._kill()
            raise
        self.issuer = self.ready['issuer']
        self.url = self.ready['url']
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with open(self.stdout_path, 'rb') as handle:
                    for line in handle.read().decode('utf-8', 'replace').splitlines():
                        if line.startswith('READY '):
                            return json.loads(line[len('READY '):])
            except FileNotFoundError:
                pass
            code = self.process.poll()
            if code is not None:
                raise ProviderError('the test provider exited with status %s before it was ready; its log:\n%s'
                                    % (code, self.log_text()))
            if time.monotonic() > deadline:
                raise ProviderError('the test provider was not ready within %.0f s; its log:\n%s'
                                    % (self.startup_timeout, self.log_text()))
            time.sleep(0.03)

    def log_text(self, limit=20000):
        try:
            with open(self.log_path, 'rb') as handle:
                data = handle.read()
        except OSError:
            return '(no log)'
        return data[-limit:].decode('utf-8', 'replace')

    def stop(self):
        """Stop the provider (SIGTERM, then SIGKILL after a few seconds)."""
        _LIVE.discard(self)
        if self._session is not None:
            self._session.close()
            self._session = None
        if self.process is not None:
            self._kill()
            self.process = None
        if self._own_workdir and self.workdir and not self._detached:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._own_workdir = False

    def _kill(self):
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        except ProcessLookupError:
            pass
        finally:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

    # -- convenience for tests ------------------------------------------------------------------

    @property
    def token_endpoint(self):
        return self.url + '/token'

    @property
    def revocation_endpoint(self):
        return self.url + '/token/revocation'

    @property
    def introspection_endpoint(self):
        return self.url + '/token/introspection'

    @property
    def userinfo_endpoint(self):
        return self.url + '/me'

    @property
    def jwks_uri(self):
        return self.url + '/jwks'

    @property
    def discovery_url(self):
        suffix = 'oauth-authorization-server' if self.discovery == 'oauth' else 'openid-configuration'
        return '%s/.well-known/%s' % (self.url, suffix)

    def client(self, name):
        """{'client_id', 'client_secret', 'auth_method', 'grant_types'} of a client in config.json."""
        for client in self.config.get('clients', []):
            if client['client_id'] == name:
                return _client_entry(client)
        raise KeyError('no client %r in %s' % (name, self.config_path))

    def clients(self):
        return {c['client_id']: _client_entry(c) for c in self.config.get('clients', [])}

    def user(self, username='alice'):
        return dict(self.config['users'][username])

    def user_tokens(self, username='alice', scope=DEFAULT_USER_SCOPE, password=None, resource=None):
        """The full token response of the test-only password grant (user-cli client)."""
        user = self.config['users'][username]
        client = self.client(USER_CLIENT)
        data = {'grant_type': 'password', 'username': username,
                'password': user['password'] if password is None else password}
        if scope:
            data['scope'] = scope if isinstance(scope, str) else ' '.join(scope)
        if resource:
            data['resource'] = resource
        response = self.session.post(self.token_endpoint, data=data,
                                     auth=(client['client_id'], client['client_secret']), timeout=10)
        if response.status_code != 200:
            raise ProviderError('password grant for %s failed: HTTP %s %s'
                                % (username, response.status_code, response.text[:500]))
        return response.json()

    def stats(self):
        response = self.session.get(self.url + '/_test/stats', timeout=10)
        response.raise_for_status()
        return response.json()

    # -- what the provider-parametrised tests ask of every provider (tests/support/keycloak.py has the same) --

    kind = 'node-oidc-provider'
    exchange_scope = ['openid', 'storage.read:/', 'compute.read']
    wants_offline_access = True                        # the exchange needs offline_access for a refresh token
    audience = 'https://storage.example.org'           # an audience an exchange may ask for
    says_refresh_token_expiry = False                  # opaque refresh tokens, no refresh_expires_in

    def request_counts(self):
        """Requests by kind since the start, and how many of them failed (what ``counts`` prints):
        {'requests': {'exchange', 'refresh', 'revocation', 'introspection'}, 'failed': {the same}}."""
        stats = self.stats()
        kinds = {'exchange': stats['token'].get(GRANT_TOKEN_EXCHANGE, {}),
                 'refresh': stats['token'].get('refresh_token', {}),
                 'revocation': stats['revocation'], 'introspection': stats['introspection']}
        return {'requests': {kind: entry.get('requests', 0) for kind, entry in kinds.items()},
                'failed': {kind: entry.get('failed', 0) for kind, entry in kinds.items()}}

    def introspect(self, token, client='plain-client'):
        """The provider's own view of a token (RFC 7662), asked as ``client``."""
        entry = self.client(client)
        response = self.session.post(self.introspection_endpoint, data={'token': token}, timeout=10,
                                     auth=_basic(entry))
        response.raise_for_status()
        return response.json()

    def refresh_with(self, refresh_token, client='oidc-tokens-exchanger'):
        """A plain refresh grant as ``client``; the JSON answer, or ProviderError when refused."""
        entry = self.client(client)
        response = self.session.post(self.token_endpoint, timeout=10, auth=_basic(entry),
                                     data={'grant_type': 'refresh_token', 'refresh_token': refresh_token})
        if response.status_code != 200:
            raise ProviderError('refresh refused: HTTP %s %s' % (response.status_code, response.text[:300]))
        return response.json()

    def device_codes(self):
        """The device codes issued since the start (or the last reset_stats), by user code: {'device_code',
        'client_id', 'issued_at', 'expires_in', 'interval' (as it is now, slow_downs included), 'polls': [{'at',
        'since_last_ms', 'answer' ('authorization_pending', 'slow_down', 'tokens', ...), 'forced'}]}; times in
        milliseconds since the epoch."""
        return self.stats()['device']

    def reset_stats(self):
        response = self.session.post(self.url + '/_test/reset-stats', timeout=10)
        response.raise_for_status()
        return response.json()

    def state(self):
        """What ``provider.py start`` writes to provider.json."""
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
            'device_code_ttl': self.device_code_ttl,
            'device_interval': self.device_interval,
            'token_endpoint': self.token_endpoint if self.url else None,
            'log': self.log_path if self.workdir else None,
            'clients': self.clients(),
            'users': {name: dict(user) for name, user in self.config.get('users', {}).items()},
        })


# -- command line ------------------------------------------------------------------------------

def _basic(client):
    """HTTP Basic credentials of a client, form-urlencoded first (RFC 6749 2.3.1)."""
    from urllib.parse import quote_plus
    return (quote_plus(client['client_id']), quote_plus(client['client_secret']))


def _pid_is_our_provider(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            return b'server.mjs' in handle.read()
    except OSError:
        # No /proc (not Linux): fall back to "the process exists".
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def stop_pid(pid, timeout=STOP_TIMEOUT):
    """SIGTERM a detached provider, SIGKILL it if it lingers. Returns True if it was running."""
    if not pid or not _pid_is_our_provider(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_is_our_provider(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _cli_start(args):
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, exist_ok=True)
    state_file = os.path.join(state_dir, 'provider.json')
    old = read_json(state_file)
    if old and _pid_is_our_provider(old.get('pid') or 0):
        print('a provider is already running from %s (pid %s); stop it first'
              % (state_dir, old.get('pid')), file=sys.stderr)
        return 1
    provider = Provider(
        tls=args.tls, access_token_format=args.access_token_format, at_ttl=args.at_ttl,
        rt_ttl=args.rt_ttl, user_at_ttl=args.user_at_ttl, exchange_shape=args.exchange_shape, discovery=args.discovery,
        issuer_host=args.issuer_host, issuer=args.issuer, config=args.config, port=args.port,
        device_code_ttl=args.device_code_ttl, device_interval=args.device_interval, device_slow_down=args.device_slow_down,
        workdir=state_dir)
    try:
        provider.start(detach=True)
    except ProviderError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    state = provider.state()
    write_state(state_file, state)
    print(json.dumps(state, sort_keys=True))
    return 0


def _cli_stop(args):
    state_file = os.path.join(os.path.abspath(args.state_dir), 'provider.json')
    state = read_json(state_file)
    if state is None:
        print('no provider.json in %s: nothing to stop' % args.state_dir, file=sys.stderr)
        return 0
    was_running = stop_pid(state.get('pid') or 0)
    os.remove(state_file)
    print('stopped provider pid %s' % state.get('pid') if was_running
          else 'provider pid %s was not running' % state.get('pid'))
    return 0


def read_json(path):
    """The JSON value in path, or None when the file is missing, unreadable or not JSON (provider.json,
    keycloak.py's preparation stamp)."""
    try:
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_state(state_file, state):
    """Write provider.json whole or not at all: the helpers' other commands may read it at any time."""
    tmp = state_file + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
        handle.write('\n')
    os.replace(tmp, state_file)


def _server_of(server_class, state_dir):
    state = read_json(os.path.join(os.path.abspath(state_dir), 'provider.json'))
    if state is None:
        raise ProviderError('no readable provider.json in %s: start the provider first' % state_dir)
    return server_class.from_state(state)


def cli_user_token(server_class, args):
    """Print a user's access token from the server of STATE_DIR (its password grant, client user-cli)."""
    try:
        print(_server_of(server_class, args.state_dir).user_access_token(args.user, args.scope))
    except (OSError, ProviderError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def cli_counts(server_class, args):
    """Print the request_counts() of the server of STATE_DIR as JSON."""
    try:
        print(json.dumps(_server_of(server_class, args.state_dir).request_counts(), sort_keys=True))
    except (OSError, ProviderError, requests.RequestException) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description='Start or stop the test OpenID provider.')
    sub = parser.add_subparsers(dest='command', required=True)
    start = sub.add_parser('start', help='start in the background and write STATE_DIR/provider.json')
    start.add_argument('--state-dir', required=True)
    start.add_argument('--tls', action='store_true', help='HTTPS with a CA generated into STATE_DIR')
    start.add_argument('--access-token-format', choices=('opaque', 'jwt'), default='opaque')
    start.add_argument('--at-ttl', type=int, default=60)
    start.add_argument('--rt-ttl', type=int, default=3600)
    start.add_argument('--user-at-ttl', type=int, help="lifetime of the user's own access tokens (default: --at-ttl)")
    start.add_argument('--exchange-shape', choices=('common', 'strict', 'indigo'), default='common')
    start.add_argument('--discovery', choices=('openid', 'oauth'), default='openid')
    start.add_argument('--issuer-host')
    start.add_argument('--issuer', help='complete issuer URL (e.g. a proxy in front of the provider)')
    start.add_argument('--port', type=int, default=0)
    start.add_argument('--config', help='users and clients (default tests/provider/config.json)')
    start.add_argument('--device-code-ttl', type=int, default=600, help='seconds a device code (and its user code) lives')
    start.add_argument('--device-interval', type=int, default=5, help='the polling interval the device flow announces')
    start.add_argument('--device-slow-down', type=int, default=0,
                       help='answer the first N polls of every device code with slow_down')
    stop = sub.add_parser('stop', help='stop the provider started from STATE_DIR')
    stop.add_argument('--state-dir', required=True)
    user_token = sub.add_parser('user-token', help="print a user's access token (to stdout, for $(...))")
    user_token.add_argument('--state-dir', required=True)
    user_token.add_argument('--user', default='alice')
    user_token.add_argument('--scope', default=DEFAULT_USER_SCOPE)
    counts = sub.add_parser('counts', help='print requests (and failures) by kind since the start, as JSON')
    counts.add_argument('--state-dir', required=True)
    args = parser.parse_args(argv)
    if args.command == 'start':
        return _cli_start(args)
    if args.command == 'user-token':
        return cli_user_token(Provider, args)
    if args.command == 'counts':
        return cli_counts(Provider, args)
    return _cli_stop(args)


if __name__ == '__main__':
    sys.exit(main())
