# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""oidc-tokens-refresher: keep a job's access token fresh in its WLCG bearer-token file.

The program the module oidc.tokens.oidc_refresher installs on a worker (as the __main__ of a zip
application that holds it and, verbatim, the module_utils it imports) and runs as the job user. It
hands out access tokens of an account that oidc.tokens.oidc_token_exchange made, with the
collection's own token layer, and keeps an access token with at least min_valid_period seconds left
in the bearer-token file ($XDG_RUNTIME_DIR/bt_u<uid>-NAME, /tmp/bt_u<uid> or a file the user named),
written atomically, 0600.

    oidc-tokens-refresher run NAME [--detach]    the refresh loop (systemd service, cron watchdog)
    oidc-tokens-refresher once NAME              one pass: make sure the file holds a valid token
    oidc-tokens-refresher token NAME [-t N]      print an access token with N seconds left (like oidc-token)
    oidc-tokens-refresher check NAME [--wait S]  exit 0 when the file holds a token with min_valid_period left
    oidc-tokens-refresher status NAME            what the refresher knows, as JSON (never a token)
    oidc-tokens-refresher stop NAME              stop the running loop of NAME
    oidc-tokens-refresher teardown NAME          stop, revoke the refresh token, remove the account and files

The configuration of account NAME (never a secret: it names a password file or command, not the
password) is ~/.config/oidc-tokens/refresher/NAME.json of the running user (``--config`` overrides).
Logs go to the configured log file (default ~/.local/state/oidc-tokens/NAME.log) and to stderr;
they never contain a token or a password.

The bearer-token file, the state file and the pid file are only ever read when they are regular
files of the running user, opened without following a symbolic link or blocking on a FIFO: a file
someone else planted at one of those paths is refused (and reported), never used or handed out.

At the end of the account's lifetime (``lifetime_end`` of the configuration or of the account)
``run`` and ``once`` end the account for good: they revoke its refresh token at the provider, then
delete the account file, the password file when the role wrote it (``password_file_managed``) and
the bearer-token file, and exit with 3. Should the revocation fail (provider unreachable), the
bearer-token file goes but the account and its password are kept, since a refresh token that lives
on must stay revocable: ``run`` tries again with its backoff until the provider revokes it, ``once``
exits with 1.

Exit status: 0 success (``run``: stopped by a signal, or another instance runs); 1 failure;
2 usage; 3 the account's lifetime ended (and it was revoked and removed), 4 the account was removed
or revoked, or the provider refused its refresh token (for 3 and 4 the bearer-token file is removed
and ``run`` stops).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import logging.handlers
import os
import pwd
import random
import select
import signal
import stat
import subprocess
import sys
import time
import traceback

from ansible_collections.oidc.tokens.plugins.module_utils import (
    _account_names, _account_store, _jobs, _options, _passwords, _private_files, _tokens)
from ansible_collections.oidc.tokens.plugins.module_utils._errors import (
    AccountNotFoundError, OidcTokensError, PasswordSourceError, WrongPasswordError)

PROG = 'oidc-tokens-refresher'
CONFIG_VERSION = 1

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_EXPIRED = 3
EXIT_GONE = 4
EXIT_JOB_ENDED = 5

# The line above the refresher's entry in the job user's crontab (the module adds it, the refresher removes it
# when its job ended).
CRON_MARKER = '#Ansible: oidc.tokens refresher of account %s'

DEFAULTS = {
    'min_valid_period': 60,
    'refresh_margin': None,      # seconds refreshed ahead of min_valid_period; None: from min_valid_period
    'max_sleep': 300,
    'retry_min': 1,
    'retry_max': 60,
    'lifetime_end': None,
    'job': None,                 # the job followed (_jobs.describe_job), or None: the tokens last the account's lifetime
    'job_poll': 30,              # seconds between two looks at the job
    'provider': {},
}


log = logging.getLogger(PROG)


class ConfigError(Exception):
    """The refresher's own configuration is missing or unusable."""


# --- configuration -----------------------------------------------------------------------------

def home_dir():
    """The running user's home from the password database (cron and systemd set $HOME, su may not)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return os.path.expanduser('~')


def default_config_path(name):
    return os.path.join(home_dir(), '.config', 'oidc-tokens', 'refresher', '%s.json' % name)


def _check_private(path, what):
    """Refuse a file or directory that another user could have written (it may name a command)."""
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        raise ConfigError('%s %s belongs to uid %d, not to the running user (uid %d).'
                          % (what, path, st.st_uid, os.geteuid()))
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigError('%s %s is writable by group or others (mode %04o); it must not be.'
                          % (what, path, stat.S_IMODE(st.st_mode)))


def read_config(path):
    """The JSON object in the configuration file ``path`` (a private file of the running user), or None."""
    try:
        _check_private(path, 'The configuration')
        _check_private(os.path.dirname(os.path.abspath(path)), 'The configuration directory')
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError('Cannot read the refresher configuration %s: %s' % (path, exc))


def load_config(name, path=None):
    _account_names.validate_name(name)
    path = path or default_config_path(name)
    data = read_config(path)
    if data is None:
        raise ConfigError('No refresher configuration for account %r: %s does not exist (the module '
                          'oidc.tokens.oidc_refresher writes it).' % (name, path))
    return make_config(name, path, data)


def token_file_holders(directory, token_file, name):
    """The accounts other than ``name`` whose refresher configuration in ``directory`` names ``token_file``.

    A configuration whose account is gone (its tokens ended) holds the file no more.
    """
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    holders = []
    for entry in entries:
        if not entry.endswith('.json') or entry == '%s.json' % name:
            continue
        try:
            data = read_config(os.path.join(directory, entry))
        except ConfigError:
            continue
        other = entry[:-len('.json')]
        if isinstance(data, dict) and data.get('token_file') == token_file and \
                os.path.exists(os.path.join(data.get('config_dir') or '', other)):
            holders.append(other)
    return holders


def make_config(name, path, data):
    """The refresher's configuration from the file's ``data``: defaults filled in, values checked."""
    if not isinstance(data, dict):
        raise ConfigError('The refresher configuration %s is not a JSON object.' % path)
    config = dict(DEFAULTS)
    config.update(data)
    config['name'] = name
    config['path'] = path
    config['digest'] = config_digest(data)
    if config.get('version', CONFIG_VERSION) != CONFIG_VERSION:
        raise ConfigError('The refresher configuration %s has version %r; this refresher reads version %d.'
                          % (path, config.get('version'), CONFIG_VERSION))
    if not config.get('token_file'):
        raise ConfigError('The refresher configuration %s names no token_file.' % path)
    sources = [k for k in ('password_file', 'password_command') if config.get(k)]
    if len(sources) != 1:
        raise ConfigError('The refresher configuration %s must name exactly one of password_file and '
                          'password_command (it names %s).' % (path, ', '.join(sources) or 'none'))
    state_dir = config.get('state_dir') or os.path.join(home_dir(), '.local', 'state', 'oidc-tokens')
    config['state_dir'] = state_dir
    config['log_file'] = config.get('log_file') or os.path.join(state_dir, '%s.log' % name)
    job = config.get('job')
    if job is not None and (not isinstance(job, dict) or job.get('kind') not in _jobs.JOB_KINDS or not job.get('id')):
        raise ConfigError('job in %s must be an object with a kind (%s) and an id.' % (path, ', '.join(_jobs.JOB_KINDS)))
    for key in ('min_valid_period', 'max_sleep', 'retry_min', 'retry_max', 'job_poll'):
        try:
            config[key] = float(config[key])
        except (TypeError, ValueError):
            raise ConfigError('%s in %s must be a number.' % (key, path))
        if config[key] < 0:
            raise ConfigError('%s in %s must not be negative.' % (key, path))
    if config['refresh_margin'] is None:
        # Refresh a little before min_valid_period is reached: time for the refresh itself and for
        # readers that picked up the old token just before it was replaced.
        config['refresh_margin'] = max(1.0, min(60.0, config['min_valid_period'] * 0.25))
    config['refresh_margin'] = float(config['refresh_margin'])
    config['max_sleep'] = max(1.0, config['max_sleep'])
    config['retry_min'] = max(0.1, config['retry_min'])
    config['retry_max'] = max(config['retry_min'], config['retry_max'])
    config['job_poll'] = max(1.0, config['job_poll'])
    return config


def config_digest(data):
    """What tells two configurations apart (a loop started with another one is replaced)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode('utf-8')).hexdigest()[:16]


def state_path(config, suffix):
    return os.path.join(config['state_dir'], '%s.%s' % (config['name'], suffix))


def ensure_dir(path):
    os.makedirs(path, mode=0o700, exist_ok=True)


def say(text):
    """A line on stdout, flushed (the detaching parent leaves with os._exit, which flushes nothing)."""
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


# --- logging -----------------------------------------------------------------------------------

class _UTCFormatter(logging.Formatter):
    converter = time.gmtime


def setup_logging(config, to_stderr=True, verbose=False):
    log.handlers[:] = []
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    fmt = _UTCFormatter('%(asctime)sZ ' + PROG + '[%(process)d] ' + config['name'] + ': %(levelname)s %(message)s',
                        '%Y-%m-%dT%H:%M:%S')
    try:
        ensure_dir(os.path.dirname(config['log_file']))
        handler = logging.handlers.RotatingFileHandler(config['log_file'], maxBytes=1024 * 1024, backupCount=1)
        handler.setFormatter(fmt)
        log.addHandler(handler)
    except OSError as exc:
        sys.stderr.write('%s: cannot write the log file %s: %s\n' % (PROG, config['log_file'], exc))
    if to_stderr:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PROG + ': ' + config['name'] + ': %(message)s'))
        log.addHandler(handler)


# --- the bearer-token file ---------------------------------------------------------------------

def token_digest(token):
    """A short digest that tells tokens apart in the state file; it reveals nothing of the token."""
    return hashlib.sha256(token.encode('utf-8')).hexdigest()[:16]


class UnsafeFileError(OidcTokensError):
    """A file the refresher reads is not a regular file of the running user, or cannot be opened."""


_KINDS = ((stat.S_ISREG, 'a regular file'), (stat.S_ISLNK, 'a symbolic link'), (stat.S_ISDIR, 'a directory'),
          (stat.S_ISFIFO, 'a FIFO'), (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a character device'),
          (stat.S_ISBLK, 'a block device'))


def _not_ours(st):
    kind = next((name for test, name in _KINDS if test(st.st_mode)), 'not a file')
    return 'it is %s owned by uid %d, not a regular file of the running user (uid %d)' % (kind, st.st_uid, os.geteuid())


def _refused(path, st):
    return UnsafeFileError('Refusing to use %s: %s.' % (path, _not_ours(st)))


def open_own(path, flags=os.O_RDONLY):
    """Open a file of ours safely: the fd of ``path``, a regular file of the running user.

    Opened without following a symbolic link, blocking on a FIFO or taking a terminal; then fstat
    must show a regular file owned by the running user. Anything else (a file another user planted,
    a FIFO, a link, a directory) raises UnsafeFileError naming the path, what it is and its owner.
    FileNotFoundError when there is nothing at ``path``.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, 0o600)
    except FileNotFoundError:
        raise
    except OSError as exc:      # ELOOP: a symbolic link; ENXIO: a socket; EACCES ...
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None and not (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()):
            raise _refused(path, st)
        raise UnsafeFileError('Cannot open %s: %s' % (path, exc.strerror or exc))
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()):
            raise _refused(path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own(path, limit=1024 * 1024):
    """The first ``limit`` bytes of a file of ours (see open_own), or None when there is none."""
    try:
        fd = open_own(path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, 'rb') as handle:
        return handle.read(limit)


def read_token_file(path):
    """The token in the file (whitespace stripped, as WLCG readers do), or None; UnsafeFileError if not ours."""
    data = read_own(path)
    return (data.decode('utf-8', 'replace').strip() or None) if data is not None else None


def write_token_file(path, token):
    _private_files.write_secret_file(path, token + '\n')


def remove_own_file(path, what, why, links=False):
    """Unlink ``path`` when it is a regular file (or, with ``links``, a symbolic link) of the running user."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if st.st_uid != os.geteuid() or not (stat.S_ISREG(st.st_mode) or (links and stat.S_ISLNK(st.st_mode))):
        log.warning('Not removing %s %s: %s.', what, path, _not_ours(st))
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning('Cannot remove %s %s: %s', what, path, exc.strerror or exc)
        return False
    log.info('Removed %s %s (%s).', what, path, why)
    return True


def remove_token_file(config, why):
    return remove_own_file(config['token_file'], 'the bearer-token file', why, links=True)


def read_state(config):
    """The state file's content ({} when there is none or it is damaged); UnsafeFileError if not ours."""
    data = read_own(state_path(config, 'state.json'))
    try:
        state = json.loads(data) if data is not None else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def write_state(config, **values):
    state = read_state(config)
    state.update(values)
    state['updated_at'] = int(time.time())
    ensure_dir(config['state_dir'])
    _private_files.write_secret_file(state_path(config, 'state.json'),
                                     json.dumps(state, sort_keys=True, indent=1) + '\n')


def token_file_status(config, now=None):
    """(valid_for_seconds or None, token or None): what the bearer-token file holds, as far as we wrote it.

    UnsafeFileError when the file (or the state file) is not a regular file of the running user.
    """
    now = time.time() if now is None else now
    token = read_token_file(config['token_file'])
    if token is None:
        return None, None
    state = read_state(config)
    if state.get('token_digest') != token_digest(token) or not state.get('expires_at'):
        return None, token
    return state['expires_at'] - now, token


def token_file_report(config):
    """token_file_status as (valid_for, token, None), or (None, None, why) when the file is not ours."""
    try:
        return token_file_status(config) + (None,)
    except UnsafeFileError as exc:
        return None, None, str(exc)


# --- one pass ----------------------------------------------------------------------------------

class Refresher(object):
    def __init__(self, config, password=None):
        self.config = config
        self.name = config['name']
        self.store = _account_store.AccountStore(config_dir=config.get('config_dir'))
        self._password = password
        self._warned = set()
        self._job_state = None

    def password(self):
        if self._password is None:
            self._password = _passwords.resolve_password(
                password_file=self.config.get('password_file'), password_command=self.config.get('password_command'))
        return self._password

    def forget_password(self):
        self._password = None

    def password_or_none(self):
        """The password when its source gives one, else None (the caller reports what is wrong)."""
        try:
            return self.password()
        except OidcTokensError:
            return None

    def client_for(self, account):
        provider = dict(self.config.get('provider') or {})
        provider.setdefault('validate_certs', True)
        provider.setdefault('timeout', 10)
        provider.setdefault('retries', 3)
        provider.setdefault('allow_insecure_http', False)
        return _options.oauth_client(provider.get, account)

    def job_ended(self):
        """What ended the job the configuration follows, or None while it runs, or cannot be asked, or there is none.

        A batch system that cannot be asked (its controller down) does not end the job: its tokens stay fresh
        until it answers, or until the account's lifetime ends.
        """
        job = self.config.get('job')
        if not job:
            return None
        state, detail = _jobs.job_state(job)
        if state != self._job_state:
            if state == 'unknown':
                log.warning('Cannot tell whether the %s still runs (%s); its access token is kept fresh meanwhile.',
                            _jobs.job_label(job), detail)
            else:
                log.info('The %s: %s.', _jobs.job_label(job), detail)
            self._job_state = state
        return detail if state == 'ended' else None

    def gone(self):
        return AccountNotFoundError('No account %r in %s: it was removed (teardown).'
                                    % (self.name, self.store.config_dir))

    def access_token(self, min_valid_period):
        if not self.store.exists(self.name):
            raise self.gone()
        return _tokens.access_token(self.store, self.name, self.password(), self.client_for,
                                    min_valid_period=min_valid_period)

    def wanted(self, extra=0.0):
        """The validity asked of a token: min_valid_period plus the refresh margin (plus extra), whole seconds."""
        return int(self.config['min_valid_period'] + self.config['refresh_margin'] + extra + 0.999)

    def ensure(self, min_valid=None):
        """Make the bearer-token file hold a token valid for at least min_valid seconds; returns expires_at.

        The account's kept token is used while it is good enough; otherwise _tokens refreshes (under
        the account's lock, the rotated refresh token written first).
        """
        config = self.config
        lifetime_end = config.get('lifetime_end')
        try:
            if lifetime_end and time.time() >= lifetime_end:
                raise _tokens.AccountExpiredError('Account %r reached the end of its lifetime.' % self.name)
            # Before any refresh: a bearer-token file that is not ours (planted, a FIFO) stops the pass here.
            current = read_token_file(config['token_file'])
            result = self.access_token(self.wanted() if min_valid is None else min_valid)
        except _tokens.AccountExpiredError:
            self.end_of_lifetime()
            raise
        for warning in result.get('warnings') or []:
            if warning not in self._warned:
                self._warned.add(warning)
                log.warning('%s', warning)
        token, expires_at = result['access_token'], result.get('expires_at')
        if current != token:
            write_token_file(config['token_file'], token)
            log.info('%s %s with an access token %s, valid for %s.',
                     'Wrote' if current is None else 'Updated', config['token_file'],
                     'just refreshed' if result.get('refreshed') else 'kept in the account',
                     '%d s' % (expires_at - time.time()) if expires_at else 'a time the provider did not say')
        state = {'token_file': config['token_file'], 'token_digest': token_digest(token), 'expires_at': expires_at,
                 'refresh_token_expires_at': result.get('refresh_token_expires_at'), 'last_error': None,
                 'status': 'ok'}
        if result.get('refreshed'):
            state['refreshed_at'] = int(time.time())
        write_state(config, **state)
        return expires_at

    def end_of_lifetime(self):
        """The account's lifetime ended: revoke its refresh token at the provider, then remove it all.

        The bearer-token file goes first. Then, under the account's lock, the refresh token is revoked
        and the account file deleted (_tokens.revoke_account), then the password file if the role wrote
        it. Returns when all that is done (the caller stops with EXIT_EXPIRED). Raises
        AccountNotFoundError when the account is gone already (teardown: EXIT_GONE), and RevocationError
        or another OidcTokensError when the revocation failed: the account and its password are kept
        (an unrevoked refresh token must stay revocable) and the caller tries again later.
        """
        config = self.config
        remove_token_file(config, 'the account reached the end of its lifetime')
        if not self.store.exists(self.name):     # before the password: teardown may have removed its file too
            raise self.gone()
        outcome = _tokens.revoke_account(self.store, self.name, self.password(), self.client_for, remove=True)
        if not outcome['existed']:
            raise self.gone()
        log.info('End of the lifetime: %s; removed the account file %s.', 'revoked the refresh token at the provider'
                 if outcome['revoked'] else 'the account held no refresh token', self.store.path(self.name))
        if config.get('password_file_managed') and config.get('password_file'):
            remove_own_file(config['password_file'], 'the password file', 'the account was removed')
        self.forget_password()

    def next_wakeup(self, expires_at, now=None):
        """(seconds to sleep, min_valid for the next pass).

        The next pass is due when the token has min_valid_period + refresh_margin (+ up to 20 %
        jitter, so that many refreshers do not hit the provider at once) left; it then asks for a
        little more than is left, which refreshes. Bounded by max_sleep and the account's lifetime.
        """
        config = self.config
        now = time.time() if now is None else now
        if expires_at is None:
            delay, min_valid = min(config['max_sleep'], 60.0), None
        else:
            lead = config['min_valid_period'] + config['refresh_margin'] * (1 + random.random() * 0.2)
            delay, min_valid = expires_at - now - lead, int(lead + 1.999)
            if delay > config['max_sleep']:
                delay, min_valid = config['max_sleep'], None
        if config.get('job') and delay > config['job_poll']:
            delay, min_valid = config['job_poll'], None     # look at the job again before the token is due
        lifetime_end = config.get('lifetime_end')
        if lifetime_end:
            delay = min(delay, lifetime_end - now)     # wake up at the end of the lifetime to end the account
        return max(0.5, delay), min_valid


def final_error(exc):
    """The exit status when exc means the account is over, else None."""
    if isinstance(exc, _tokens.AccountExpiredError):
        return EXIT_EXPIRED
    if isinstance(exc, (_tokens.RefreshTokenRejectedError, AccountNotFoundError)):
        return EXIT_GONE
    return None


def stop_for_good(config, exc, code):
    """The account ended: remove the bearer-token file, mark the account done, say why."""
    what = {EXIT_EXPIRED: 'the account reached the end of its lifetime',
            EXIT_GONE: 'the account was removed or revoked, or its refresh token was refused',
            EXIT_JOB_ENDED: 'the job ended'}[code]
    log.warning('Stopping: %s: %s', what, exc)
    remove_token_file(config, what)
    try:
        write_state(config, status={EXIT_EXPIRED: 'expired', EXIT_JOB_ENDED: 'job-ended'}.get(code, 'gone'),
                    last_error=str(exc),
                    token_digest=None, expires_at=None)
        with open(state_path(config, 'done'), 'w', encoding='utf-8') as handle:
            handle.write('%s\n' % what)
    except (OSError, OidcTokensError) as err:
        log.error('Cannot record the end of the account in %s: %s', config['state_dir'], err)
    return code


def without_cron_entry(lines, marker):
    """The crontab ``lines`` without the entry under ``marker`` (the marker line and the job line after it)."""
    kept, skip = [], False
    for line in lines:
        if skip:
            skip = False
            continue
        if line == marker:
            skip = True
            continue
        kept.append(line)
    return kept


def remove_own_cron_entry(name):
    """Remove the entry of account ``name`` from the running user's crontab: True when there was one."""
    try:
        listing = subprocess.run(['crontab', '-l'], capture_output=True, text=True, check=False, timeout=60)
        lines = listing.stdout.splitlines() if listing.returncode == 0 else []
        kept = without_cron_entry(lines, CRON_MARKER % name)
        if kept == lines:
            return False
        done = subprocess.run(['crontab', '-'], input=''.join(line + '\n' for line in kept), capture_output=True,
                              text=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error('Cannot remove the crontab entry of %s: %s', name, exc)
        return False
    if done.returncode != 0:
        log.error('Cannot remove the crontab entry of %s: %s', name, done.stderr.strip())
        return False
    return True


def end_with_job(config, refresher, why):
    """The followed job ended: revoke the refresh token and remove the account and the files, as teardown does.

    Returns True when that is done, False when the revocation failed: the account and its password are
    then kept (a refresh token that lives on must stay revocable), and the caller tries again. Under
    cron the refresher also removes its crontab entry and its configuration; under systemd root's units
    would start it again, so the configuration stays with the end mark, which makes ``run`` exit at once.
    """
    log.warning('Ending the tokens of account %s: %s.', config['name'], why)
    systemd = config.get('scheduler') == 'systemd'
    outcome = teardown(config, password=refresher.password_or_none(), stop=False, keep_config=systemd)
    for warning in outcome['warnings']:
        log.warning('%s', warning)
    if outcome['error']:
        log.error('The revocation failed (%s); the account is kept and the end is tried again.', outcome['error'])
        return False
    if config.get('scheduler') == 'cron':
        remove_own_cron_entry(config['name'])
    if systemd:
        stop_for_good(config, why, EXIT_JOB_ENDED)
    log.info('The tokens ended with the job: %s the refresh token; removed %s.',
             'revoked' if outcome['revoked'] else 'there was no', ', '.join(outcome['removed']) or 'nothing')
    return True


def is_done(config, store):
    """True when an earlier run stopped for good and the account was not made again since."""
    try:
        done = os.stat(state_path(config, 'done')).st_mtime
    except FileNotFoundError:
        return False
    try:
        return os.stat(store.path(config['name'])).st_mtime <= done
    except FileNotFoundError:
        return True


# --- commands ----------------------------------------------------------------------------------

class _Flag(object):
    stop = False


def _on_signal(signum, frame):
    _Flag.stop = True


def _sleep(seconds):
    deadline = time.monotonic() + seconds
    while not _Flag.stop:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.25))


def _take_lock(config):
    """The single-instance lock of NAME (flock on STATE_DIR/NAME.pid): the fd, or None when another process holds it."""
    ensure_dir(config['state_dir'])
    path = state_path(config, 'pid')
    fd = open_own(path, os.O_RDWR | os.O_CREAT)
    try:
        locked = _private_files.try_flock(fd)
    except OSError:
        os.close(fd)
        raise
    if not locked:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, ('%d\n' % os.getpid()).encode('ascii'))
    return fd


def running_pid(config):
    """The pid of the running loop of NAME, or None."""
    path = state_path(config, 'pid')
    try:
        fd = open_own(path)
    except OSError:     # none; a pid file that is not ours raises UnsafeFileError
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            data = os.read(fd, 32).decode('ascii', 'replace').strip()
            return int(data) if data.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _detach():
    """Double fork into a new session. In the parent: wait for the loop's report, print it, exit.

    Returns the write end of a pipe on which the daemon reports 'started PID' or 'running PID'.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        os.waitpid(pid, 0)
        readable = select.select([read_end], [], [], 30)[0]
        report = os.read(read_end, 200).decode('ascii', 'replace').strip() if readable else ''
        os.close(read_end)
        if report.startswith(('started ', 'restarted ')):
            say(report)
            os._exit(EXIT_OK)
        if report.startswith('running '):
            say('already running %s' % report.split()[1])
            os._exit(EXIT_OK)
        sys.stderr.write('%s: the refresh loop did not start%s; see its log.\n'
                         % (PROG, (': ' + report) if report else ''))
        os._exit(EXIT_FAILED)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir('/')
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return write_end


def cmd_run(config, args):
    report_fd = None
    if args.detach:
        report_fd = _detach()
    setup_logging(config, to_stderr=not args.detach, verbose=args.verbose)

    def report(text):
        if report_fd is not None:
            try:
                os.write(report_fd, text.encode('ascii'))
                os.close(report_fd)
            except OSError:
                pass

    restarted = False
    try:
        if running_pid(config) is not None and read_state(config).get('config_digest') not in (None, config['digest']):
            # The configuration changed since the running loop read it (start ran again): replace that loop.
            pid, what = stop_running(config, 15)
            log.info('The configuration changed: %s the loop that ran with the old one (pid %s).', what, pid)
            restarted = True
        lock_fd = _take_lock(config)
    except (OSError, OidcTokensError) as exc:
        log.error('Cannot take the lock %s: %s', state_path(config, 'pid'), exc)
        report('failed lock')
        return EXIT_FAILED
    if lock_fd is None:
        report('running %s' % (running_pid(config) or '?'))
        log.debug('Another refresh loop of this account is running; nothing to do.')
        return EXIT_OK
    refresher = Refresher(config)
    if is_done(config, refresher.store):
        report('failed done')
        log.debug('The account ended earlier (see the .done file); not starting.')
        return EXIT_OK
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info('Refresh loop started (pid %d): bearer-token file %s, min_valid_period %d s.',
             os.getpid(), config['token_file'], config['min_valid_period'])
    write_state(config, config_digest=config['digest'], pid=os.getpid())
    report('%s %d' % ('restarted' if restarted else 'started', os.getpid()))
    delay = config['retry_min']
    code = EXIT_OK
    min_valid = None
    while not _Flag.stop:
        try:
            ended = refresher.job_ended()
            if ended is not None:
                if end_with_job(config, refresher, ended):
                    code = EXIT_JOB_ENDED
                    break
                wait, delay = delay * (1 + random.random() * 0.25), min(delay * 2, config['retry_max'])
                _sleep(wait)
                continue
            expires_at = refresher.ensure(min_valid)
            delay = config['retry_min']
            wait, min_valid = refresher.next_wakeup(expires_at)
            log.debug('Next pass in %.1f s.', wait)
        except OidcTokensError as exc:
            final = final_error(exc)
            if final is not None:
                code = stop_for_good(config, exc, final)
                break
            wait = _transient_failure(config, refresher, exc, delay)
            delay = min(delay * 2, config['retry_max'])
            min_valid = None
        except Exception as exc:  # a bug or an unexpected OS error: log it fully, keep trying
            log.error('Unexpected error: %s\n%s', exc, traceback.format_exc())
            wait = _transient_failure(config, refresher, exc, delay)
            delay = min(delay * 2, config['retry_max'])
            min_valid = None
        _sleep(wait)
    else:
        log.info('Stopped by a signal; the bearer-token file is left as it is.')
    os.close(lock_fd)
    return code


def _transient_failure(config, refresher, exc, delay):
    """Log a failed pass; keep the current token while it is valid, remove it once it expired. Returns the wait."""
    if isinstance(exc, (PasswordSourceError, WrongPasswordError)):
        refresher.forget_password()   # read it again next time: the file may have been fixed
    valid_for, _token, _unsafe = token_file_report(config)    # a file not ours: exc says so, or will next time
    if valid_for is not None and valid_for > 0:
        keep = 'keeping the current access token, valid for %d s more' % int(valid_for)
    else:
        keep = 'there is no valid access token to keep'
        if valid_for is not None:
            remove_token_file(config, 'its access token expired')
    wait = delay * (1 + random.random() * 0.25)
    log.error('%s failed (%s): %s; %s; next try in %.0f s.',
              'Revocation' if isinstance(exc, _tokens.RevocationError) else 'Refresh', type(exc).__name__, exc, keep,
              wait)
    try:
        write_state(config, last_error='%s: %s' % (type(exc).__name__, exc), status='retrying')
    except (OSError, OidcTokensError):
        pass
    return wait


def cmd_once(config, args):
    setup_logging(config, verbose=args.verbose)
    refresher = Refresher(config)
    ended = refresher.job_ended()
    if ended is not None:
        return EXIT_JOB_ENDED if end_with_job(config, refresher, ended) else EXIT_FAILED
    try:
        expires_at = refresher.ensure()
    except OidcTokensError as exc:
        final = final_error(exc)
        if final is not None:
            return stop_for_good(config, exc, final)
        _transient_failure(config, refresher, exc, 0)
        return EXIT_FAILED
    if expires_at:
        log.debug('The bearer-token file holds a token valid for %d s.', expires_at - time.time())
    return EXIT_OK


def cmd_token(config, args):
    """Print an access token with at least --min-valid-period seconds left (the bearer file's, if good enough)."""
    setup_logging(config, to_stderr=False, verbose=args.verbose)
    wanted = config['min_valid_period'] if args.min_valid_period is None else args.min_valid_period
    valid_for, token, unsafe = token_file_report(config)
    if unsafe:      # never hand out what someone else put there: ask the account
        sys.stderr.write('%s: warning: %s\n' % (PROG, unsafe))
    if valid_for is not None and valid_for >= wanted:
        sys.stdout.write(token + '\n')
        return EXIT_OK
    try:
        result = Refresher(config).access_token(int(wanted))
    except OidcTokensError as exc:
        sys.stderr.write('%s: no access token for account %r: %s\n' % (PROG, config['name'], exc))
        final = final_error(exc)
        return final if final is not None else EXIT_FAILED
    for warning in result.get('warnings') or []:
        sys.stderr.write('%s: warning: %s\n' % (PROG, warning))
    sys.stdout.write(result['access_token'] + '\n')
    return EXIT_OK


def readiness(config, wanted):
    """(True, 'ok: ...') when the bearer-token file holds a token of ours valid for ``wanted`` s, else (False, why)."""
    valid_for, token, unsafe = token_file_report(config)
    if valid_for is not None and valid_for >= wanted:
        return True, 'ok: %s holds an access token valid for %d s' % (config['token_file'], int(valid_for))
    state = read_state(config)
    if unsafe:
        why = unsafe
    elif token is None:
        why = 'there is no token in %s' % config['token_file']
    elif valid_for is None:
        why = '%s holds a token this refresher did not write' % config['token_file']
    else:
        why = 'the token in %s is valid for %d s only' % (config['token_file'], max(0, valid_for))
    if state.get('last_error'):
        why += '; last error: %s' % state['last_error']
    return False, '%s: not ready: %s (wanted %d s)' % (config['name'], why, wanted)


def wait_ready(config, wanted, timeout):
    """readiness(), asked every 0.2 s until it is ready or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        ready, text = readiness(config, wanted)
        if ready or time.monotonic() >= deadline:
            return ready, text
        time.sleep(0.2)


def cmd_check(config, args):
    wanted = config['min_valid_period'] if args.min_valid_period is None else args.min_valid_period
    ready, text = wait_ready(config, wanted, args.wait)
    if ready:
        say(text)
        return EXIT_OK
    sys.stderr.write('%s: %s\n' % (PROG, text))
    return EXIT_FAILED


def status(config):
    """What the refresher of ``config`` knows, never a token: whether its loop runs, the token file, the state."""
    state = read_state(config)
    valid_for, token, unsafe = token_file_report(config)
    out = {
        'name': config['name'],
        'config': config['path'],
        'token_file': config['token_file'],
        'token_file_error': unsafe,
        'token_present': token is not None,
        'valid_for': None if valid_for is None else int(valid_for),
        'pid': running_pid(config),
        'status': state.get('status'),
        'expires_at': state.get('expires_at'),
        'refreshed_at': state.get('refreshed_at'),
        'refresh_token_expires_at': state.get('refresh_token_expires_at'),
        'last_error': state.get('last_error'),
        'log_file': config['log_file'],
        'lifetime_end': config.get('lifetime_end'),
        'job': config.get('job'),
    }
    if config.get('job'):
        out['job_state'], out['job_detail'] = _jobs.job_state(config['job'])
    return out


def cmd_status(config, args):
    say(json.dumps(status(config), indent=1, sort_keys=True))
    return EXIT_OK


def _alive(pid):
    """True while process pid exists and is not a zombie."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as handle:
            return handle.read().rsplit(b')', 1)[-1].split()[0] != b'Z'
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not os.path.isdir('/proc/self')


def stop_running(config, timeout):
    """Stop the running loop of NAME: (pid or None, 'stopped'|'killed'|'not running'|'unknown pid')."""
    pid = running_pid(config)
    if pid is None:
        return None, 'not running'
    if pid <= 0:
        return None, 'unknown pid'
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while running_pid(config) is not None or _alive(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.2)
            return pid, 'killed'
        time.sleep(0.1)
    return pid, 'stopped'


def cmd_stop(config, args):
    pid, what = stop_running(config, args.timeout)
    if what == 'unknown pid':
        sys.stderr.write('%s: the loop of %r holds its lock but its pid is unknown.\n' % (PROG, config['name']))
        return EXIT_FAILED
    say(what if pid is None else '%s %d' % (what, pid))
    return EXIT_OK


def _remove_or_report(path, what, why, left_behind, links=False):
    """remove_own_file, adding ``path`` to ``left_behind`` when something is there that is not ours to remove."""
    removed = remove_own_file(path, what, why, links=links)
    if not removed and os.path.lexists(path):
        left_behind.append(path)
    return removed


def teardown(config, force=False, keep_logs=True, password=None, stop=True, keep_config=False):
    """End the job's tokens, as the job user: stop the loop, revoke and delete the account, remove the files.

    ``stop=False``: the loop itself calls this (its job ended). ``keep_config``: the configuration stays.

    The bearer-token file always goes. The account, the password file the role wrote and the
    configuration go once the refresh token was revoked (or there was none, or ``force``); when the
    revocation fails they are kept so that teardown can run again, and 'error' says why. Returns
    {'stopped', 'existed', 'revoked', 'removed' (paths), 'left_behind' (paths another user's file
    holds), 'warnings', 'error'}.
    """
    outcome = {'existed': False, 'revoked': False, 'removed': [], 'left_behind': [], 'warnings': [], 'error': None}
    pid, outcome['stopped'] = stop_running(config, 15) if stop else (os.getpid(), 'running')
    refresher = Refresher(config, password)
    store, name = refresher.store, config['name']
    if store.exists(name):
        outcome['existed'] = True
        try:
            done = _tokens.revoke_account(store, name, refresher.password(), refresher.client_for, force=force)
        except OidcTokensError as exc:
            if not force or isinstance(exc, _tokens.RevocationError):
                outcome['error'] = str(exc)
            else:   # the password is gone or wrong: removed unrevoked, as asked
                outcome['warnings'].append('Account %r could not be read (%s); it was removed without revoking its '
                                           'refresh token because force is set.' % (name, exc))
                store.delete(name)
                outcome['removed'].append(store.path(name))
        else:
            outcome['revoked'] = done['revoked']
            outcome['warnings'].extend(done['warnings'])
            outcome['removed'].append(store.path(name))
    paths = [(config['token_file'], 'the bearer-token file', True)]
    if outcome['error'] is None:
        if config.get('password_file_managed') and config.get('password_file'):
            paths.append((config['password_file'], 'the password file', False))
        if not keep_config:
            paths.append((config['path'], 'the refresher configuration', False))
    suffixes = ('pid', 'state.json', 'done') + (() if keep_logs else ('log', 'log.1'))
    paths.extend((state_path(config, suffix), 'the refresher state', False) for suffix in suffixes)
    for path, what, links in paths:
        if _remove_or_report(path, what, 'teardown', outcome['left_behind'], links=links):
            outcome['removed'].append(path)
    return outcome


def cmd_teardown(config, args):
    setup_logging(config, verbose=args.verbose)
    outcome = teardown(config, force=args.force, keep_logs=not args.remove_logs)
    say(json.dumps(outcome, indent=1, sort_keys=True))
    return EXIT_FAILED if outcome['error'] or outcome['left_behind'] else EXIT_OK


COMMANDS = {'run': cmd_run, 'once': cmd_once, 'token': cmd_token, 'check': cmd_check, 'status': cmd_status,
            'stop': cmd_stop, 'teardown': cmd_teardown}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=PROG, description='Keep a job\'s OIDC access token fresh in its '
                                     'WLCG bearer-token file (oidc.tokens).')
    parser.add_argument('--config', help='the account\'s refresher configuration (default '
                        '~/.config/oidc-tokens/refresher/NAME.json)')
    parser.add_argument('-v', '--verbose', action='store_true', help='log debug messages too')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    run = sub.add_parser('run', help='keep the bearer-token file fresh until stopped or the account ends')
    run.add_argument('--detach', action='store_true', help='run in the background (returns once the loop runs)')
    sub.add_parser('once', help='one pass: make sure the bearer-token file holds a valid token')
    for name, text in (('token', 'print an access token (like oidc-token)'),
                       ('check', 'exit 0 when the bearer-token file holds a token valid long enough')):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument('-t', '--min-valid-period', type=int, metavar='SECONDS',
                         help='seconds the token must still be valid (default: the configured min_valid_period)')
    sub.choices['check'].add_argument('--wait', type=float, default=0, metavar='SECONDS',
                                      help='wait up to SECONDS for the token (default 0: answer at once)')
    sub.add_parser('status', help='print what the refresher knows, as JSON (never a token)')
    stop = sub.add_parser('stop', help='stop the running refresh loop')
    stop.add_argument('--timeout', type=float, default=15, help='seconds to wait before SIGKILL (default 15)')
    end = sub.add_parser('teardown', help='stop, revoke the refresh token, remove the account and the files')
    end.add_argument('--force', action='store_true', help='remove the account even when the revocation fails')
    end.add_argument('--remove-logs', action='store_true', help='remove the log files too')
    for cmd in sub.choices.values():
        cmd.add_argument('name', metavar='NAME', help='the account name')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.umask(0o077)
    try:
        config = load_config(args.name, args.config)
    except (ConfigError, OidcTokensError) as exc:
        sys.stderr.write('%s: %s\n' % (PROG, exc))
        return EXIT_FAILED
    try:
        return COMMANDS[args.command](config, args)
    except UnsafeFileError as exc:   # the state or pid file is not ours
        sys.stderr.write('%s: %s: %s\n' % (PROG, config['name'], exc))
        return EXIT_FAILED
