"""Helpers of the evidence suites (tests/evidence): counting, running Ansible the way users do,
accounts, file fingerprints, modes, secret search, and the on-host refresher.

Nothing here is code under test: it drives the collection through ansible-playbook, its Python
API (_tokens, _account_store: what the modules call) and the refresher program, and checks what
they left behind.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from urllib.parse import quote, quote_plus

import yaml

import refresher_program

SUPPORT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(SUPPORT_DIR))
CALLBACK_DIR = os.path.join(SUPPORT_DIR, 'callback_plugins')
EXCHANGER = 'oidc-tokens-exchanger'
SCOPE = ['openid', 'offline_access', 'compute.read']


# -- the ledger: what each suite counted -----------------------------------------------------------

class Ledger(object):
    """Counts and rows per suite, printed at the end of the session and written as JSON."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = collections.defaultdict(collections.Counter)
        self.rows = collections.defaultdict(list)
        self.notes = collections.defaultdict(list)

    def add(self, suite, key, n=1):
        with self._lock:
            self.counts[suite][key] += n

    def get(self, suite, key):
        return self.counts[suite][key]

    def row(self, suite, **fields):
        with self._lock:
            self.rows[suite].append(fields)

    def note(self, suite, text):
        with self._lock:
            if text not in self.notes[suite]:
                self.notes[suite].append(text)

    def suites(self):
        return sorted(set(self.counts) | set(self.rows))

    def as_dict(self, suite):
        return {'counts': dict(self.counts[suite]), 'rows': list(self.rows[suite]), 'notes': list(self.notes[suite])}


LEDGER = Ledger()


# -- files -----------------------------------------------------------------------------------------

def sha(path):
    """sha256 of a file's bytes, or None when it does not exist."""
    try:
        with open(path, 'rb') as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except FileNotFoundError:
        return None


def snapshot(*roots):
    """{path: (kind, mode, uid, sha256)} of everything under roots (symbolic links not followed)."""
    found = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        entries = [root]
        for dirpath, dirnames, filenames in os.walk(root):
            entries.extend(os.path.join(dirpath, n) for n in dirnames + filenames)
        for path in entries:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                found[path] = ('file', stat.S_IMODE(st.st_mode), st.st_uid, sha(path))
            elif stat.S_ISDIR(st.st_mode):
                found[path] = ('dir', stat.S_IMODE(st.st_mode), st.st_uid, None)
            else:
                found[path] = ('other', stat.S_IMODE(st.st_mode), st.st_uid, os.readlink(path)
                               if stat.S_ISLNK(st.st_mode) else None)
    return found


def snapshot_diff(before, after):
    """Paths added, removed or changed between two snapshots."""
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return {'added': sorted(set(after) - set(before)), 'removed': sorted(set(before) - set(after)),
            'changed': changed}


def private_mode_violations(paths, uid=None):
    """Files not 0600 and directories not 0700, or not owned by uid, among paths (missing ones skipped)."""
    uid = os.geteuid() if uid is None else uid
    bad = []
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if mode != want or st.st_uid != uid or stat.S_ISLNK(st.st_mode):
            bad.append('%s: mode %04o uid %d (want %04o uid %d)' % (path, mode, st.st_uid, want, uid))
    return bad


def tree_mode_violations(root, uid=None, skip=()):
    """private_mode_violations for a directory and everything in it."""
    if not os.path.lexists(root):
        return []
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths.extend(os.path.join(dirpath, n) for n in dirnames + filenames)
    return private_mode_violations([p for p in paths if not any(s in p for s in skip)], uid)


# -- secrets ---------------------------------------------------------------------------------------

def _b64_middles(raw):
    """Base64 texts that appear whenever raw is base64-encoded as part of a longer value, at any alignment."""
    forms = set()
    for offset in range(3):
        encoded = base64.b64encode(b'\0' * offset + raw).decode('ascii').rstrip('=')
        start = 4 if offset else 0
        end = len(encoded) - 4 if len(encoded) - start > 8 else len(encoded)
        middle = encoded[start:end]
        if len(middle) >= 12:
            forms.add(middle)
            forms.add(middle.replace('+', '-').replace('/', '_'))
    return forms


def secret_forms(secret):
    """The ways a secret can show up in output: raw, URL-encoded, JSON-escaped, base64 (std/url-safe)."""
    forms = {secret, quote_plus(secret), quote(secret, safe=''), json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1].replace('/', '\\/'), repr(secret)[1:-1]}
    raw = secret.encode('utf-8')
    forms |= _b64_middles(raw)
    forms |= _b64_middles(quote_plus(secret).encode('utf-8'))
    return set(f for f in forms if len(f) >= 8)


class SecretScanner(object):
    """Searches files and texts for every form of a set of labelled secrets."""

    def __init__(self):
        self.secrets = {}          # value -> label

    def add(self, value, label):
        if isinstance(value, str) and len(value) >= 8 and value not in self.secrets:
            self.secrets[value] = label

    def _patterns(self):
        patterns = []
        for value, label in self.secrets.items():
            for form in secret_forms(value):
                patterns.append((form.encode('utf-8'), label, 'raw' if form == value else 'encoded'))
        return patterns

    def scan_bytes(self, data, where, patterns=None):
        hits = []
        for form, label, kind in (patterns if patterns is not None else self._patterns()):
            if form in data:
                hits.append({'where': where, 'secret': label, 'form': kind})
        return hits

    def scan_tree(self, roots, limit=64 * 1024 * 1024):
        """(hits, files scanned, bytes scanned) for every regular file under roots."""
        patterns = self._patterns()
        hits, files, size = [], 0, 0
        seen = set()
        for root in roots:
            if not os.path.lexists(root):
                continue
            walk = [(os.path.dirname(root), [], [os.path.basename(root)])] if os.path.isfile(root) else os.walk(root)
            for dirpath, _dirnames, filenames in walk:
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    real = os.path.realpath(path)
                    if real in seen or not os.path.isfile(path) or os.path.islink(path):
                        continue
                    seen.add(real)
                    try:
                        with open(path, 'rb') as handle:
                            data = handle.read(limit)
                    except OSError:
                        continue
                    files += 1
                    size += len(data)
                    hits.extend(self.scan_bytes(data, path, patterns))
        return hits, files, size


# -- Ansible, the way users run it -------------------------------------------------------------------

def collections_root():
    """The directory holding ansible_collections/oidc/tokens (made by tests/functional/conftest.py)."""
    import ansible_collections.oidc.tokens as collection
    path = list(collection.__path__)[0]
    return os.path.dirname(os.path.dirname(os.path.dirname(path)))


class Run(object):
    def __init__(self, rc, stdout, stderr, results, seconds, argv):
        self.rc, self.stdout, self.stderr, self.results, self.seconds, self.argv = (
            rc, stdout, stderr, results, seconds, argv)

    def task(self, name):
        found = [r for r in self.results if r['task'] == name]
        if not found:
            raise AssertionError('no result of task %r in %s\nstdout:\n%s\nstderr:\n%s'
                                 % (name, [r['task'] for r in self.results], self.stdout[-4000:], self.stderr[-4000:]))
        return found[-1]

    def __repr__(self):
        return 'Run(rc=%s, %.1fs, %d results)' % (self.rc, self.seconds, len(self.results))


class Ansible(object):
    """ansible-playbook with the collection on ANSIBLE_COLLECTIONS_PATH, HOME and Ansible's own
    directories inside ``workdir``, and results captured by the oidc_evidence_results callback.

    Extra vars go through a 0600 file (-e @file), never the command line.
    """

    def __init__(self, workdir, env=None):
        self.workdir = str(workdir)
        self.home = os.path.join(self.workdir, 'home')
        self.runtime = os.path.join(self.workdir, 'run')
        for path in (self.home, self.runtime):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self.env = dict(env or {})
        self.count = 0
        self.inventory = os.path.join(self.workdir, 'inventory.ini')
        if not os.path.exists(self.inventory):
            with open(self.inventory, 'w', encoding='utf-8') as handle:
                handle.write('localhost ansible_connection=local ansible_python_interpreter=%s\n' % sys.executable)

    def base_env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('ANSIBLE_', 'OIDC', 'XDG_', 'BEARER_TOKEN', 'REQUESTS_CA', 'CURL_CA'))}
        env.update({
            'HOME': self.home,
            'XDG_RUNTIME_DIR': self.runtime,
            'ANSIBLE_HOME': os.path.join(self.home, '.ansible'),
            'ANSIBLE_COLLECTIONS_PATH': collections_root(),
            'ANSIBLE_CALLBACK_PLUGINS': CALLBACK_DIR,
            'ANSIBLE_CALLBACKS_ENABLED': 'oidc_evidence_results',
            'ANSIBLE_PYTHON_INTERPRETER': sys.executable,
            'ANSIBLE_LOCALHOST_WARNING': 'False',
            'ANSIBLE_INVENTORY_UNPARSED_WARNING': 'False',
            'ANSIBLE_RETRY_FILES_ENABLED': 'False',
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_DEPRECATION_WARNINGS': 'False',
            'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '/usr/bin:/bin'),
        })
        env.update(self.env)
        return env

    def write_private(self, name, data):
        """A 0600 file in workdir (YAML for dicts)."""
        path = os.path.join(self.workdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    def playbook(self, playbook, extra_vars=None, env=None, verbosity=0, umask=None, timeout=600, inventory=None,
                 forks=None, log_path=None, args=()):
        """Run a playbook (YAML text, a list of plays, or a path). Returns a Run."""
        self.count += 1
        tag = 'run%03d' % self.count
        if not (isinstance(playbook, str) and os.path.isfile(playbook)):
            text = playbook if isinstance(playbook, str) else yaml.safe_dump(playbook, sort_keys=False)
            playbook = self.write_private('%s-playbook.yml' % tag, text)
        results = os.path.join(self.workdir, '%s-results.jsonl' % tag)
        argv = [os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), '-i', inventory or self.inventory,
                playbook]
        if extra_vars:
            argv += ['-e', '@' + self.write_private('%s-vars.yml' % tag, dict(extra_vars))]
        if forks:
            argv += ['--forks', str(forks)]
        if verbosity:
            argv.append('-' + 'v' * verbosity)
        argv += list(args)
        full_env = self.base_env()
        full_env['OIDC_EVIDENCE_RESULTS'] = results
        if log_path:
            full_env['ANSIBLE_LOG_PATH'] = log_path
        full_env.update(env or {})
        preexec = (lambda: os.umask(umask)) if umask is not None else None
        started = time.monotonic()
        proc = subprocess.run(argv, env=full_env, cwd=self.workdir, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, preexec_fn=preexec, check=False)
        seconds = time.monotonic() - started
        parsed = []
        if os.path.exists(results):
            with open(results, encoding='utf-8') as handle:
                parsed = [json.loads(line) for line in handle if line.strip()]
        run = Run(proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace'),
                  parsed, seconds, argv)
        with open(os.path.join(self.workdir, '%s-output.txt' % tag), 'w', encoding='utf-8') as handle:
            handle.write('$ %s\nrc=%s\n--- stdout\n%s\n--- stderr\n%s\n'
                         % (' '.join(argv), run.rc, run.stdout, run.stderr))
        return run


def play(tasks, hosts='localhost', gather_facts=False, vars=None, name='evidence'):
    """One play as a list for Ansible.playbook()."""
    body = {'name': name, 'hosts': hosts, 'gather_facts': gather_facts, 'tasks': tasks}
    if vars:
        body['vars'] = vars
    return [body]


# -- accounts ---------------------------------------------------------------------------------------

def oauth_client(provider, client=EXCHANGER, issuer=None, **kwargs):
    from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient
    entry = provider.client(client)
    kwargs.setdefault('ca_path', provider.ca_path)
    return OAuthClient(issuer or provider.issuer, entry['client_id'], entry['client_secret'], **kwargs)


def exchange_account(provider, config_dir, name, password, keep_access_token=False, lifetime=None, scope=None,
                     subject_token=None):
    """Exchange alice's access token into account ``name`` (what oidc_token_exchange does). Returns the RT."""
    from ansible_collections.oidc.tokens.plugins.module_utils import _tokens
    from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
    entry = provider.client(EXCHANGER)
    client = oauth_client(provider, retries=0)
    token = _tokens.exchange(client, subject_token or provider.user_access_token(), scope=scope or SCOPE)
    account = _tokens.build_account(name, provider.issuer, entry['client_id'], entry['client_secret'],
                                    token.refresh_token, token.scope, lifetime=lifetime, ca_path=provider.ca_path)
    if keep_access_token and token.access_token:
        account.meta.update({'access_token': token.access_token, 'access_token_expires_at': token.expires_at,
                             'access_token_scope': token.scope})
    AccountStore(config_dir=str(config_dir)).save(name, account, password)
    return token.refresh_token


def load_account(config_dir, name, password):
    from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
    return AccountStore(config_dir=str(config_dir)).load(name, password)


def introspect(provider, token, client='plain-client'):
    """The provider's own view of a token (asked directly, never through a fault proxy)."""
    from store_helpers import introspect as raw
    return raw(provider, provider.client(client), token)


def rt_active(provider, token):
    return bool(token) and introspect(provider, token)['active'] is True


def stat_counts(provider):
    """Token-endpoint requests by grant type, and revocations, from the provider's own counters."""
    stats = provider.stats()
    token = stats['token']
    return {
        'refresh': token.get('refresh_token', {}).get('requests', 0),
        'refresh_ok': token.get('refresh_token', {}).get('succeeded', 0),
        'refresh_failed': token.get('refresh_token', {}).get('failed', 0),
        'exchange': token.get('urn:ietf:params:oauth:grant-type:token-exchange', {}).get('requests', 0),
        'exchange_ok': token.get('urn:ietf:params:oauth:grant-type:token-exchange', {}).get('succeeded', 0),
        'revocation': stats['revocation']['requests'],
        'discovery': stats['discovery']['requests'],
        'all_token_requests': sum(v.get('requests', 0) for v in token.values()),
    }


def proxied_provider(provider_factory, record_secrets=False, **switches):
    """A provider whose issuer is a fault proxy's address: (provider, proxy). The proxy listens first
    (on a port of its own choosing), so no other process can take the port in between."""
    from urllib.parse import urlsplit
    from fault_proxy import FaultProxy
    proxy = FaultProxy('http://127.0.0.1:9', record_secrets=record_secrets).start()
    try:
        provider = provider_factory(issuer=proxy.url, **switches)
    except BaseException:
        proxy.stop()
        raise
    proxy.upstream_port = urlsplit(provider.url).port
    return provider, proxy


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# -- the on-host refresher ---------------------------------------------------------------------------

def write_private_file(path, text):
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as handle:
        handle.write(text)
    return str(path)


class RefresherJob(object):
    """An account, its password file and the refresher's configuration in a private directory;
    the refresher runs as its own process, as the role runs it."""

    def __init__(self, workdir, config_dir, name, password, min_valid_period=1, marks=None, **config):
        self.marks = marks      # a file for step marks (tests/support/marked_refresher.py), or None
        self.dir = str(workdir)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.name = name
        self.config_dir = str(config_dir)
        self.password_file = write_private_file(os.path.join(self.dir, 'password'), password + '\n')
        run_dir = os.path.join(self.dir, 'run')
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.token_file = os.path.join(run_dir, 'bt_u%d' % os.geteuid())
        self.state_dir = os.path.join(self.dir, 'state')
        conf_dir = os.path.join(self.dir, 'conf')
        os.makedirs(conf_dir, mode=0o700, exist_ok=True)
        self.config_path = os.path.join(conf_dir, '%s.json' % name)
        data = {'version': 1, 'config_dir': self.config_dir, 'token_file': self.token_file,
                'min_valid_period': min_valid_period, 'password_file': self.password_file,
                'state_dir': self.state_dir, 'retry_min': 0.5, 'retry_max': 2,
                'provider': {'timeout': 5, 'retries': 1}}
        data.update(config)
        write_private_file(self.config_path, json.dumps(data))

    @property
    def log_file(self):
        return os.path.join(self.state_dir, '%s.log' % self.name)

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(('OIDC', 'BEARER_TOKEN'))}
        env['OIDC_TOKENS_LIB'] = collections_root()
        if self.marks:
            env['OIDC_EVIDENCE_MARKS'] = self.marks
        return env

    def argv(self, *args):
        refresher = refresher_program.path()
        program = [refresher] if not self.marks else [os.path.join(SUPPORT_DIR, 'marked_refresher.py'), refresher]
        return [sys.executable] + program + ['--config', self.config_path] + list(args) + [self.name]

    def run(self, *args, timeout=120):
        return subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    def start(self, *args):
        return subprocess.Popen(self.argv('run', *args), env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def token(self):
        try:
            with open(self.token_file, encoding='utf-8') as handle:
                return handle.read().strip() or None
        except FileNotFoundError:
            return None

    def log_text(self):
        try:
            with open(self.log_file, encoding='utf-8') as handle:
                return handle.read()
        except OSError:
            return ''

    def wait_for_token(self, timeout=30, proc=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            token = self.token()
            if token:
                return token
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError('no bearer-token file after %s s; log:\n%s' % (timeout, self.log_text()))


def stop_process(proc, timeout=15):
    """SIGTERM, then SIGKILL: the exit status (processes this suite started only)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


# -- the environment a figure was measured in ---------------------------------------------------------

def machine_info():
    import platform
    info = {
        'date_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'python': platform.python_version(),
        'machine': platform.machine(),
        'kernel': platform.release(),
        'cpus': os.cpu_count(),
    }
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('model name'):
                    info['cpu_model'] = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open('/proc/meminfo', encoding='utf-8') as handle:
            info['mem_total_mib'] = int(handle.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        info['load_avg_1m'] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        with open('/etc/os-release', encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('PRETTY_NAME='):
                    info['os'] = line.split('=', 1)[1].strip().strip('"')
    except OSError:
        pass
    versions = {}
    for module in ('ansible', 'requests', 'nacl', 'cryptography'):
        try:
            mod = __import__(module)
            versions[module] = getattr(mod, '__version__', None)
            if module == 'ansible':
                from ansible.release import __version__ as ansible_version
                versions['ansible-core'] = ansible_version
                versions.pop('ansible', None)
        except Exception:  # noqa: BLE001 - a missing library is just not listed
            pass
    try:
        with open(os.path.join(REPO_ROOT, 'tests', 'provider', 'node_modules', 'oidc-provider', 'package.json'),
                  encoding='utf-8') as handle:
            versions['oidc-provider'] = json.load(handle)['version']
    except (OSError, ValueError, KeyError):
        pass
    for name, argv in (('node', ['node', '--version']), ('oidc-agent', ['oidc-agent', '--version'])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            versions[name] = (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    try:
        out = subprocess.run(['git', '-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                             timeout=10, check=False)
        info['git_commit'] = out.stdout.strip()
        # Changes to tracked files only: a run from a clone with a linked .venv is still that commit.
        dirty = subprocess.run(['git', '-C', REPO_ROOT, 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=10, check=False)
        info['git_dirty'] = bool(dirty.stdout.strip())
    except OSError:
        pass
    info['versions'] = versions
    return info
