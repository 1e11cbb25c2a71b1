# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What root does on a worker for a job user's refresher (the module oidc.tokens.oidc_refresher).

The one place of the refresher's paths, its installation (the program _refresher.py and the
module_utils it imports, verbatim, as one zip application), its schedule (systemd units or a cron
entry) and its start. Whatever touches the job user's files runs as the job user (run_as: a child
process that dropped root), so that a link the user planted in their own directories cannot make
root write or read elsewhere; root itself writes only below the prefix, /etc/systemd/system, the
crontab and the root-owned run directory.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import json
import os
import pwd
import re
import shlex
import stat
import subprocess
import sys
import zipfile
from collections import namedtuple

# _refresher is the program this module installs, and the code that runs as the job user.
from ansible_collections.oidc.tokens.plugins.module_utils import (
    _account_store, _accounts, _jobs, _options, _passwords, _private_files, _refresher)
from ansible_collections.oidc.tokens.plugins.module_utils._account_names import validate_name
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError

PROGRAM = 'oidc-tokens-refresher'
PACKAGE = 'ansible_collections.oidc.tokens.plugins.module_utils'
MAIN = ('import sys\n'
        'from %s._refresher import main\n'
        'sys.exit(main())\n' % PACKAGE).encode('ascii')
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
LIBRARIES = (('requests', 'requests'), ('nacl', 'PyNaCl'), ('cryptography', 'cryptography'))
SAFE_PATH = re.compile(r'^/[A-Za-z0-9_./+-]+$')
SAFE_USER = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$')
SYSTEMD_DIR = '/etc/systemd/system'
PASSED_ENVIRONMENT = ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY', 'no_proxy', 'NO_PROXY',
                      'REQUESTS_CA_BUNDLE', 'SSL_CERT_FILE')
# The marker ansible.builtin.cron writes, so that the entries of earlier versions of the role are found too.


class RefresherSetupError(OidcTokensError):
    """The refresher cannot be installed, scheduled, started or removed on this host."""


class MissingLibrariesError(RefresherSetupError):
    """The Python that runs the refresher (and the exchange) lacks libraries: ``missing`` names their packages."""

    def __init__(self, python, missing):
        super(MissingLibrariesError, self).__init__(
            'The Python at %s cannot import %s, which the exchange and the refresher need: install them (the role '
            'job_tokens does with job_tokens_install_dependencies).' % (python, ', '.join(missing)))
        self.python, self.missing = python, missing


class JobUser(namedtuple('JobUser', 'name uid gid home groups')):
    @classmethod
    def find(cls, name):
        if not SAFE_USER.match(name or ''):
            raise RefresherSetupError('The job user %r must consist of letters, digits, ., _ and - (it is written into '
                                      'a systemd unit and a cron line).' % (name,))
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RefresherSetupError('The job user %s does not exist on this host; create it first.' % name)
        return cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir, os.getgrouplist(name, entry.pw_gid))

    def env(self):
        """A clean environment for the user's processes: none of the module's variables but the proxy and CA ones
        the provider may only be reachable with (the task's environment: keyword sets them)."""
        env = dict((key, os.environ[key]) for key in PASSED_ENVIRONMENT if os.environ.get(key))
        env.update({'HOME': self.home, 'USER': self.name, 'LOGNAME': self.name, 'PATH': '/usr/local/bin:/usr/bin:/bin',
                    'LANG': 'C.UTF-8'})
        return env


# --- paths ---------------------------------------------------------------------------------------

def unit_name(user, name):
    """The systemd unit of the account: letters, digits and : _ . - only; a hash keeps two mangled names apart."""
    if re.match(r'^[A-Za-z0-9_.:-]+$', name):
        return '%s-%s-%s' % (PROGRAM, user, name)
    return '%s-%s-%s-%s' % (PROGRAM, user, re.sub(r'[^A-Za-z0-9_.:-]', '_', name),
                            hashlib.sha1(name.encode('utf-8')).hexdigest()[:8])


def tokens_dir_of(user):
    return os.path.join(user.home, '.config', 'oidc-tokens')


def refresher_config_path(user, name):
    return os.path.join(tokens_dir_of(user), 'refresher', '%s.json' % validate_name(name))


def job_paths(user, name, prefix, run_dir, config_dir=None, token_file=None, token_file_in_tmp=False,
              password_file=None, password_command=None, password_given=False):
    """Every path of the account's refresher on this host, from the options and the job user's entry.

    The password file the module manages lives in the job user's directory under ``run_dir``
    (root's, so nobody can plant anything there; a tmpfs where /run is one), never beside the account
    in the home directory, where a backup or an NFS export would hold both. The bearer-token file is
    the account's own, bt_u<uid>-<name> (so that two jobs of a user never share one), in the user's
    runtime directory $XDG_RUNTIME_DIR when there is one, else in that same private directory; the
    WLCG discovery place /tmp/bt_u<uid> only when ``token_file_in_tmp`` asks for it.
    """
    validate_name(name)
    for option, value in (('prefix', prefix), ('run_dir', run_dir)):
        if not SAFE_PATH.match(value or ''):
            raise RefresherSetupError('%s %r must be an absolute path of letters, digits and . _ / + - (it is written '
                                      'into systemd units and cron lines).' % (option, value))
    private_dir = os.path.join(run_dir, str(user.uid))
    runtime_dir = '/run/user/%d' % user.uid
    try:
        st = os.lstat(runtime_dir)
        has_runtime_dir = stat.S_ISDIR(st.st_mode) and st.st_uid == user.uid
    except OSError:
        has_runtime_dir = False
    token_dir = '/tmp' if token_file_in_tmp else (runtime_dir if has_runtime_dir else private_dir)
    tokens_dir = tokens_dir_of(user)
    # The module writes the password file unless the user keeps their own (a file without a password, a command).
    managed = not password_command and (password_given or not password_file)
    return {
        'name': name,
        'config_dir': config_dir or os.path.join(user.home, '.config', 'oidc-agent'),
        'tokens_dir': tokens_dir,
        'refresher_dir': os.path.join(tokens_dir, 'refresher'),
        'refresher_config': refresher_config_path(user, name),
        'state_dir': os.path.join(user.home, '.local', 'state', 'oidc-tokens'),
        'run_dir': run_dir,
        'private_dir': private_dir,
        'token_file': token_file or os.path.join(token_dir, ('bt_u%d' if token_file_in_tmp else 'bt_u%d-' + name)
                                                 % user.uid),
        'password_file': None if password_command else password_file or os.path.join(private_dir, '%s.password' % name),
        'password_command': password_command or None,
        'password_file_managed': managed,
        'prefix': prefix,
        'bin': os.path.join(prefix, 'bin', PROGRAM),
        'program': os.path.join(prefix, 'libexec', PROGRAM + '.pyz'),
        'unit': unit_name(user.name, name),
        'cron_marker': _refresher.CRON_MARKER % name,
    }


# --- running as the job user ---------------------------------------------------------------------

def run_as(user, function, *args):
    """function(*args) in a child process that runs as ``user``; its JSON-able result, or its error raised here.

    Root never opens a path below the user's home or private directory itself: the child drops to the
    user's uid, gid and groups first, so the kernel applies the user's rights to every path it follows.
    """
    if os.geteuid() == user.uid:
        return function(*args)
    _import_all()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:    # the child: never returns
        try:
            os.close(read_end)
            os.setgroups(user.groups)
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.environ.clear()
            os.environ.update(user.env())
            os.umask(0o077)
            os.chdir('/')
            answer = {'value': function(*args)}
        except BaseException as exc:   # noqa: B902 - everything goes back to the parent, as a message
            answer = {'error': str(exc) or type(exc).__name__}
        try:
            with os.fdopen(write_end, 'wb') as handle:
                handle.write(json.dumps(answer).encode('utf-8'))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, 'rb') as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    try:
        answer = json.loads(data.decode('utf-8'))
    except ValueError:
        raise RefresherSetupError('The process that acted as %s ended without an answer.' % user.name)
    if 'error' in answer:
        raise RefresherSetupError(answer['error'])
    return answer['value']


def _import_all():
    """Import every module_utils file of the collection here: the payload the module runs from is root's (0700), so
    the child that dropped root could not import one on first use."""
    for name in sorted(_module_utils_sources()):
        if name != '__init__.py':
            importlib.import_module('%s.%s' % (PACKAGE, name[:-3]))


# --- the program ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)     # the same files for the whole run: read them once (run_as imports them all)
def _module_utils_sources():
    """{file name: bytes} of this package's Python files, from the module's payload zip or from the directory."""
    prefix = PACKAGE.replace('.', '/') + '/'
    archive = getattr(globals().get('__loader__'), 'archive', None)
    if archive:    # run as an Ansible module: the payload zip holds what the module imports
        with zipfile.ZipFile(archive) as payload:
            return dict((entry[len(prefix):], payload.read(entry)) for entry in payload.namelist()
                        if entry.startswith(prefix) and entry.endswith('.py') and '/' not in entry[len(prefix):])
    directory = os.path.dirname(os.path.abspath(__file__))
    sources = {}
    for entry in os.listdir(directory):
        if entry.endswith('.py'):
            with open(os.path.join(directory, entry), 'rb') as handle:
                sources[entry] = handle.read()
    return sources


def program_bundle():
    """The refresher as a zip application: the same bytes for the same sources (sorted, stored, fixed times)."""
    buffer = io.BytesIO()

    def add(archive, name, data):
        info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
        info.external_attr = 0o644 << 16
        archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)

    with zipfile.ZipFile(buffer, 'w') as archive:
        add(archive, '__main__.py', MAIN)
        parts = PACKAGE.split('.')
        for depth in range(1, len(parts)):
            add(archive, '/'.join(parts[:depth] + ['__init__.py']), b'')
        sources = dict(_module_utils_sources())
        sources.setdefault('__init__.py', b'')
        for name in sorted(sources):
            add(archive, '/'.join(parts + [name]), sources[name])
    return buffer.getvalue()


def missing_libraries(python):
    """The Python libraries the refresher and the modules need that ``python`` cannot import (package names)."""
    code = 'import importlib.util, sys; sys.stdout.write(" ".join(n for n in sys.argv[1:] if not importlib.util.find_spec(n)))'
    if python == sys.executable:
        import importlib.util
        missing = [module for module, _package in LIBRARIES if importlib.util.find_spec(module) is None]
    else:
        done = subprocess.run([python, '-c', code] + [m for m, _p in LIBRARIES], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RefresherSetupError('Cannot run the Python %s: %s' % (python, (done.stderr or '').strip()[-300:]))
        missing = done.stdout.split()
    return [package for module, package in LIBRARIES if module in missing]


def _root_dir(path, mode, check):
    """Make ``path`` a directory of root that only root may write (``mode``); True when it was (or would be) made."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not check:
            os.makedirs(path, mode)
            os.chmod(path, mode)
        return True
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o022:
        raise RefresherSetupError('%s must be a directory of root that only root may write; it is not (a link, another '
                                  'owner or a mode of %04o), so nothing was installed there.'
                                  % (path, stat.S_IMODE(st.st_mode)))
    return False


def _root_file(path, data, mode, check):
    """Give ``path`` (root's, in a directory of root) ``data`` and ``mode``, atomically; True when it changed."""
    try:
        with open(path, 'rb') as handle:
            if handle.read() == data and stat.S_IMODE(os.fstat(handle.fileno()).st_mode) == mode:
                return False
    except FileNotFoundError:
        pass
    if not check:
        fd, tmp = _private_files.create_temp_file(path)
        _private_files.replace_with_temp_file(fd, tmp, path, data)
        os.chmod(path, mode)
        _private_files.fsync_dir(os.path.dirname(path))
    return True


def install_program(paths, python, check):
    """The zip application and the command that runs it with ``python``: True when something changed."""
    prefix = paths['prefix']
    changed = False
    for path in (prefix, os.path.join(prefix, 'bin'), os.path.join(prefix, 'libexec')):
        changed = _root_dir(path, 0o755, check) or changed
    command = ('#!/bin/sh\n'
               '# %s of the oidc.tokens collection (a zip application of the refresher and the collection\'s\n'
               '# module_utils), run with the Python that has its libraries; installed by oidc.tokens.oidc_refresher.\n'
               'exec %s %s "$@"\n' % (PROGRAM, shlex.quote(python), shlex.quote(paths['program'])))
    changed = _root_file(paths['program'], program_bundle(), 0o644, check) or changed
    return _root_file(paths['bin'], command.encode('utf-8'), 0o755, check) or changed


def private_run_dir(user, paths, check):
    """The user's directory under the run directory: the base root's (0711), the user's own 0700. True when changed."""
    changed = _root_dir(paths['run_dir'], 0o711, check)
    path = paths['private_dir']
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not check:
            os.mkdir(path, 0o700)
            os.chown(path, user.uid, user.gid)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise RefresherSetupError('%s is not a directory; remove it as root.' % path)
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (user.uid, user.gid, 0o700):
        if not check:   # only root can have made it, below root's 0711 directory
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
            os.chmod(path, 0o700)
        changed = True
    return changed


# --- schedule ------------------------------------------------------------------------------------

def systemd_running():
    return os.path.isdir('/run/systemd/system')


def choose_scheduler(scheduler):
    if scheduler != 'auto':
        return scheduler
    return 'systemd' if systemd_running() else 'cron'


def systemd_units(user, paths):
    """{'service': text, 'timer': text} of the account's refresher."""
    name, unit = paths['name'], paths['unit']
    service = ('# Managed by oidc.tokens.oidc_refresher.\n'
               '# The refresh loop of account %(name)s of %(user)s.\n'
               '[Unit]\n'
               'Description=oidc.tokens refresher of account %(name)s (%(user)s)\n'
               'Documentation=man:systemd.service(5)\n'
               'After=network-online.target\n'
               'Wants=network-online.target\n'
               'StartLimitIntervalSec=0\n\n'
               '[Service]\n'
               'Type=simple\n'
               'User=%(user)s\n'
               'ExecStart=%(bin)s run %(name)s\n'
               '# 3: the account\'s lifetime ended, 4: the account was removed or revoked, 5: the job it followed\n'
               '# ended. Each is the end, not a failure.\n'
               'SuccessExitStatus=3 4 5\n'
               'Restart=on-failure\n'
               'RestartSec=10\n'
               'UMask=0077\n'
               'NoNewPrivileges=yes\n'
               'PrivateTmp=no\n'
               'ProtectSystem=full\n\n'
               '[Install]\n'
               'WantedBy=multi-user.target\n')
    timer = ('# Managed by oidc.tokens.oidc_refresher.\n'
             '# Starts %(unit)s.service every minute if it is not running (a watchdog).\n'
             '[Unit]\n'
             'Description=Watchdog of the oidc.tokens refresher of account %(name)s (%(user)s)\n\n'
             '[Timer]\n'
             'OnCalendar=minutely\n'
             'AccuracySec=10s\n'
             'Unit=%(unit)s.service\n\n'
             '[Install]\n'
             'WantedBy=timers.target\n')
    values = {'name': name, 'user': user.name, 'bin': paths['bin'], 'unit': unit}
    return {'service': service % values, 'timer': timer % values}


def _systemctl(*args):
    done = subprocess.run(('systemctl',) + args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RefresherSetupError('systemctl %s failed: %s' % (' '.join(args), (done.stderr or done.stdout).strip()))


def unit_paths(paths):
    return dict((kind, os.path.join(SYSTEMD_DIR, '%s.%s' % (paths['unit'], kind))) for kind in ('service', 'timer'))


def schedule_systemd(user, paths, check):
    """Install the units and enable the watchdog timer: True when the units changed."""
    changed = False
    for kind, text in systemd_units(user, paths).items():
        changed = _root_file(unit_paths(paths)[kind], text.encode('utf-8'), 0o644, check) or changed
    if not check:
        if changed:
            _systemctl('daemon-reload')
        _systemctl('enable', '--now', paths['unit'] + '.timer')
    return changed


def unschedule_systemd(paths, check):
    """Stop and remove the units (where there are any): True when there were."""
    present = [path for path in unit_paths(paths).values() if os.path.lexists(path)]
    if present and not check:
        if systemd_running():
            for kind in ('timer', 'service'):
                subprocess.run(['systemctl', 'disable', '--now', '%s.%s' % (paths['unit'], kind)], capture_output=True,
                               check=False)
        for path in present:
            os.unlink(path)
        if systemd_running():
            _systemctl('daemon-reload')
    return bool(present)


def cron_line(paths):
    return '* * * * * %s run --detach %s >/dev/null 2>&1' % (shlex.quote(paths['bin']), shlex.quote(paths['name']))


def _crontab(user, *args, **kwargs):
    try:
        return subprocess.run(['crontab', '-u', user.name] + list(args), capture_output=True, text=True, check=False,
                              **kwargs)
    except FileNotFoundError:
        return None


def set_cron_entry(user, paths, present, check):
    """Add (``present``) or remove the account's entry in the user's crontab: True when it changed."""
    listing = _crontab(user, '-l')
    if listing is None:
        if present:
            raise RefresherSetupError('There is no crontab command on this host: install cron, or choose the scheduler '
                                      'systemd or none.')
        return False
    lines = listing.stdout.splitlines() if listing.returncode == 0 else []
    wanted = _refresher.without_cron_entry(lines, paths['cron_marker'])
    if present:
        wanted += [paths['cron_marker'], cron_line(paths)]
    if wanted == lines:
        return False
    if not check:
        done = _crontab(user, '-', input='\n'.join(wanted) + '\n')
        if done.returncode != 0:
            raise RefresherSetupError('crontab -u %s failed: %s' % (user.name, done.stderr.strip()))
    return True


def cron_entry_present(user, paths):
    listing = _crontab(user, '-l')
    return listing is not None and listing.returncode == 0 and paths['cron_marker'] in listing.stdout.splitlines()


# --- as the job user -----------------------------------------------------------------------------

def refresher_config(paths, options):
    """The refresher's configuration file's content (never a secret: it names the password's source)."""
    return {
        'version': 1,
        'name': paths['name'],
        'config_dir': paths['config_dir'],
        'token_file': paths['token_file'],
        'min_valid_period': options['min_valid_period'],
        'password_file': paths['password_file'],
        'password_command': paths['password_command'],
        'password_file_managed': paths['password_file_managed'],
        'state_dir': paths['state_dir'],
        'log_file': os.path.join(paths['state_dir'], '%s.log' % paths['name']),
        'lifetime_end': options['lifetime_end'],
        'retry_max': options['retry_max'],
        'job': options.get('job'),
        'job_poll': options['job_poll'],
        'scheduler': options['scheduler'],
        'unit': paths['unit'],
        'provider': dict((key, options[key]) for key in ('ca_path', 'validate_certs', 'timeout', 'retries')),
    }


def _random_password():
    import secrets
    import string

    alphabet = string.ascii_letters + string.digits
    return ''.join(secrets.choice(alphabet) for dummy in range(40))


def prepare_as_user(paths, password, check):
    """The user's private directories and the managed password file: True when something changed."""

    changed = False
    for path in (paths['tokens_dir'], paths['refresher_dir'], paths['state_dir']):
        if check:
            changed = changed or not os.path.isdir(path)
        else:
            created, old_mode = _private_files.ensure_private_dir(path, follow_links=False)
            changed = changed or created or old_mode is not None
    if paths['password_file_managed']:
        current = _refresher.read_own(paths['password_file'])
        if password is not None and current != (password + '\n').encode('utf-8'):
            wanted = password
        elif password is None and not current:
            wanted = _random_password()
        else:
            wanted = None
        if wanted is not None:
            changed = True
            if not check:
                _private_files.write_secret_file(paths['password_file'], wanted + '\n')
    elif paths['password_file'] and not os.access(paths['password_file'], os.R_OK):
        raise RefresherSetupError('The password file %s does not exist on this host (or the job user cannot read it). '
                                  'Create it, or give encryption_password to have the module write it.'
                                  % paths['password_file'])
    return changed


# The exchange options of oidc_token_exchange that oidc_refresher passes on, and what it fixes.
EXCHANGE_OPTIONS = ('issuer', 'client_id', 'client_secret', 'auth_method', 'allow_insecure_http', 'ca_path',
                    'validate_certs', 'timeout', 'retries', 'subject_token', 'subject_token_type', 'scope', 'audience',
                    'lifetime', 'offline_access', 'short_refresh_token')
EXCHANGE_FIXED = {'persist': True, 'requested_token_type': 'refresh_token', 'resource': None, 'actor_token': None,
                  'actor_token_type': None, 'return_access_token': False}


def exchange_as_user(paths, options, check):
    """oidc_token_exchange's exchange, as the job user, into the account with the password the module keeps."""
    store = _account_store.AccountStore(config_dir=paths['config_dir'])
    password = None
    if store.exists(paths['name']) or not check:
        password = _passwords.resolve_password(password_file=paths['password_file'],
                                               password_command=paths['password_command'])
    client = _options.oauth_client(options.get)
    return _accounts.exchange_account(store, paths['name'], password, client, options.get, check)


def configure_as_user(paths, config, check):
    """Write the refresher's configuration: (changed, the configuration before or None)."""

    # In check mode the exchange before this made no account either: what would be written is still shown.
    if not check and not os.path.exists(os.path.join(paths['config_dir'], paths['name'])):
        raise RefresherSetupError('There is no account %s in %s: exchange a token for it (oidc.tokens.'
                                  'oidc_token_exchange) before the refresher is started.'
                                  % (paths['name'], paths['config_dir']))
    before = _refresher.read_config(paths['refresher_config'])
    changed = before != config
    if not check:
        if changed:
            _private_files.write_secret_file(paths['refresher_config'],
                                             json.dumps(config, indent=2, sort_keys=True) + '\n')
        # An earlier loop that ended for good left this mark; the account was exchanged again since.
        _refresher.remove_own_file(os.path.join(paths['state_dir'], '%s.done' % paths['name']), 'the end mark',
                                   'the refresher starts again')
    return changed, before


def launch_as_user(paths):
    """Start the loop in the background (where cron or nothing schedules it): True when it was not running."""
    done = subprocess.run([paths['bin'], 'run', '--detach', paths['name']], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)
    if done.returncode != 0:
        raise RefresherSetupError('The refresher did not start: %s' % (done.stderr or done.stdout).strip())
    return done.stdout.startswith(('started ', 'restarted '))


def wait_as_user(paths, wanted, timeout):
    """(ready, what the refresher says, its status) after waiting up to ``timeout`` s for a valid token."""

    config = _refresher.load_config(paths['name'], paths['refresher_config'])
    ready, text = _refresher.wait_ready(config, wanted, timeout)
    valid_for, _token, _unsafe = _refresher.token_file_report(config)
    return ready, text, {'pid': _refresher.running_pid(config),
                         'valid_for': None if valid_for is None else int(valid_for)}


def status_as_user(paths):
    """The refresher's own status (_refresher.status) and whether the account exists, or None without a configuration."""

    data = _refresher.read_config(paths['refresher_config'])
    if data is None:
        return None
    config = _refresher.make_config(paths['name'], paths['refresher_config'], data)
    result = _refresher.status(config)
    result['account_exists'] = os.path.exists(os.path.join(config['config_dir'], paths['name']))
    return result


def status(options):
    """What oidc_refresher_info reports of the account's refresher on this host (read-only)."""
    user = JobUser.find(options['user'])
    paths = {'name': options['name'], 'refresher_config': refresher_config_path(user, options['name'])}
    found = run_as(user, status_as_user, paths)
    return {'changed': False, 'exists': found is not None, 'refresher': found or {}}


def teardown_as_user(paths, fallback, overrides, force, keep_logs, password, check):
    """End the account's refresher with the configuration start wrote (or ``fallback``): what was (or would be) done."""

    data = _refresher.read_config(paths['refresher_config']) or fallback
    data = dict(data, **overrides)
    config = _refresher.make_config(paths['name'], paths['refresher_config'], data)
    if check:
        there = [path for path in (os.path.join(config['config_dir'], paths['name']), config['token_file'],
                                   config['path'], _refresher.state_path(config, 'state.json'))
                 if os.path.lexists(path)]
        return {'existed': bool(there), 'removed': there, 'revoked': False, 'left_behind': [], 'warnings': [],
                'error': None, 'stopped': 'running' if _refresher.running_pid(config) else 'not running'}
    return _refresher.teardown(config, force=force, keep_logs=keep_logs, password=password)


# --- what the module asks for --------------------------------------------------------------------

def _paths_for(user, options):
    return job_paths(user, options['name'], options['prefix'], options['run_dir'], config_dir=options['config_dir'],
                     token_file=options['token_file'], token_file_in_tmp=options['token_file_in_tmp'],
                     password_file=options['encryption_password_file'],
                     password_command=options['encryption_password_command'],
                     password_given=options['encryption_password'] is not None)


def _facts(paths, scheduler):
    facts = dict((key, paths[key]) for key in ('config_dir', 'token_file', 'password_file', 'refresher_config',
                                               'state_dir', 'bin'))
    facts['scheduler'] = scheduler
    facts['unit'] = paths['unit'] if scheduler == 'systemd' else None
    facts['environment'] = {'BEARER_TOKEN_FILE': paths['token_file'], 'OIDC_TOKENS_ACCOUNT': paths['name'],
                            'OIDC_TOKENS_REFRESHER': paths['bin']}
    facts['account_options'] = dict({'name': paths['name'], 'config_dir': paths['config_dir']},
                                    **({'encryption_password_command': paths['password_command']}
                                       if paths['password_command'] else
                                       {'encryption_password_file': paths['password_file']}))
    return facts


def present(options, check, refuse=None):
    """Directories, the password file and the program: the host ready for the account's exchange.

    ``refuse(user, paths)``: raises when the task must not go on, before anything is changed.
    """
    if os.geteuid() != 0:
        raise RefresherSetupError('oidc.tokens.oidc_refresher runs as root (become: true): it installs the refresher '
                                  'and schedules it; it acts as the job user where the job user\'s files are concerned.')
    user = JobUser.find(options['user'])
    paths = _paths_for(user, options)
    if refuse is not None:
        refuse(user, paths)
    python = options['python'] or sys.executable
    changed = install_program(paths, python, check)
    changed = private_run_dir(user, paths, check) or changed
    changed = run_as(user, prepare_as_user, paths, options['encryption_password'], check) or changed
    result = dict(_facts(paths, choose_scheduler(options['scheduler'])), changed=changed, python=python,
                  missing_libraries=missing_libraries(python))
    return user, paths, result


class JobConflictError(RefresherSetupError):
    """The start would take over the tokens or the bearer-token file of another job: nothing was changed."""


def conflict_view_as_user(paths):
    """The account's refresher configuration, whether its account exists, and the other accounts writing its token file."""
    return {'config': _refresher.read_config(paths['refresher_config']),
            'account': os.path.exists(os.path.join(paths['config_dir'], paths['name'])),
            'holders': _refresher.token_file_holders(paths['refresher_dir'], paths['token_file'], paths['name'])}


def refuse_conflicts(user, paths, job, exclusive=False):
    """Refuse a start that would take over another job's tokens or bearer-token file (as the job user, who owns them).

    ``exclusive``: this start begins a new job, so any refresher of the account belongs to another one.
    """
    view = run_as(user, conflict_view_as_user, paths)
    before = view['config'] if view['account'] else None    # a configuration left without its account holds nothing
    if exclusive and before is not None:
        raise JobConflictError('Account %r of %s has a refresher already: a job of that name runs, or was never torn '
                               'down. Give the new job an account name of its own, or tear the other one down first.'
                               % (paths['name'], user.name))
    refuse_another_job(paths['name'], before, job)
    holders = view['holders']
    if holders:
        raise JobConflictError('%s is the bearer-token file of account %s of %s already: two jobs would overwrite '
                               'each other\'s tokens. Name another token_file, or leave it to the default (each '
                               'account its own).' % (paths['token_file'], ', '.join(holders), user.name))


def refuse_another_job(name, before, job):
    """Refuse to start account ``name`` for ``job`` when its refresher follows another job.

    Starting the same job again keeps everything (start is idempotent), and a refresher that follows no job
    yet may be tied to one (job_submit.yml does that once the batch system gave the job its id). But the
    tokens of a job that is followed are that job's: a second job started under the same name would take
    them over, and the end of either would end the other's tokens.
    """
    followed = (before or {}).get('job')
    if not followed or (job and (job['kind'], job['id']) == (followed.get('kind'), followed.get('id'))):
        return
    raise JobConflictError('Account %r already holds the tokens of %s%s. Give the new job an account name of its '
                           'own; the tokens of that job end with it (or with state absent).' % (
                               name, _jobs.job_label(followed),
                               ', while this task names %s' % _jobs.job_label(job) if job else
                               ', and this task names no job (it would untie them from it)'))


def started(options, check):
    """present(), the exchange when a subject token is given, then the configuration, the schedule, the loop running
    and a valid token in the file."""
    job = options.get('job')
    if job:     # checked before anything is done; a process's start time is read now
        job = _jobs.describe_job(job['kind'], job['id'], job.get('slurm_conf'), job.get('scope'))
    user, paths, result = present(options, check,
                                  refuse=lambda user, paths: refuse_conflicts(user, paths, job, options['exclusive']))
    scheduler = result['scheduler']
    lifetime_end = options['lifetime_end']
    if options['subject_token']:
        if result['missing_libraries']:
            raise MissingLibrariesError(result['python'], result['missing_libraries'])
        exchange = dict((key, options[key]) for key in EXCHANGE_OPTIONS)
        exchange.update(EXCHANGE_FIXED, force=options['force_exchange'])
        done = run_as(user, exchange_as_user, paths, exchange, check)
        result['changed'] = result['changed'] or done['changed']
        result['exchanged'] = done['exchanged']
        result['account'] = done.get('account')
        result['warnings'] = done.get('warnings') or []
        lifetime_end = lifetime_end or (done.get('account') or {}).get('lifetime_end')
    config = refresher_config(paths, dict(options, scheduler=scheduler, lifetime_end=lifetime_end, job=job))
    changed, before = run_as(user, configure_as_user, paths, config, check)
    result['diff'] = {'before': before or {}, 'after': config}
    if scheduler == 'systemd':
        changed = schedule_systemd(user, paths, check) or changed
    elif scheduler == 'cron':
        changed = set_cron_entry(user, paths, True, check) or changed
    result['changed'] = result['changed'] or changed
    if check:
        return result
    if scheduler == 'systemd':
        active = subprocess.run(['systemctl', 'is-active', '--quiet', paths['unit'] + '.service'],
                                check=False).returncode == 0
        _systemctl('restart' if changed else 'start', paths['unit'] + '.service')
        result['changed'] = result['changed'] or not active
    else:
        result['changed'] = run_as(user, launch_as_user, paths) or result['changed']
    ready, text, status = run_as(user, wait_as_user, paths, options['min_valid_period'], options['start_timeout'])
    result.update(status)
    if not ready:
        raise RefresherSetupError('No valid access token in %s after %d s: %s. Its log: %s. Remove the refresher '
                                  '(state absent) to clean up.' % (paths['token_file'], options['start_timeout'], text,
                                                                   config['log_file']))
    return result


def absent(options, check):
    """Unschedule and stop the loop, revoke the refresh token, remove the account and every file start made."""
    try:
        user = JobUser.find(options['user'])
    except RefresherSetupError:
        if not SAFE_USER.match(options['user'] or ''):
            raise
        user = None
    if user is None:    # a user that is gone has no files left; its units may be
        paths = {'unit': unit_name(options['user'], options['name']), 'name': options['name']}
        return {'changed': unschedule_systemd(paths, check), 'revoked': False, 'removed': [], 'left_behind': []}
    paths = _paths_for(user, options)
    changed = unschedule_systemd(paths, check)
    changed = set_cron_entry(user, paths, False, check) or changed
    fallback = refresher_config(paths, dict(options, scheduler='none', job=None))
    # What the task names explicitly wins over what start wrote; the rest comes from start's configuration.
    explicit = (('token_file', 'token_file'), ('password_file', 'encryption_password_file'),
                ('password_command', 'encryption_password_command'))
    given = dict((key, paths[key]) for key, option in explicit if options[option])
    if given.get('password_command'):
        given['password_file'] = None
    if options['ca_path']:
        given['provider'] = dict(fallback['provider'], ca_path=options['ca_path'])
    outcome = run_as(user, teardown_as_user, paths, fallback, given, options['force'], options['keep_logs'],
                     options['encryption_password'], check)
    outcome['changed'] = changed or bool(outcome['removed']) or outcome['stopped'] in ('stopped', 'killed', 'running')
    return outcome
