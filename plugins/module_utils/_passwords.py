# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The encryption password of an account, from the one source the user configured.

A source is the value itself, a file, an environment variable or a command; ``resolve_password``
takes exactly one. No error message ever holds the password or what a command printed.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess

from ansible_collections.oidc.tokens.plugins.module_utils._errors import PasswordSourceError


def password_bytes(password, account=None, path=None):
    """The password as the bytes the key derivation takes; PasswordSourceError when it is unusable."""
    if password is None:
        raise PasswordSourceError('No encryption password given for account %r.' % account,
                                  account=account, path=path)
    if isinstance(password, bytes):
        raw = password
    else:
        if not isinstance(password, str):
            password = str(password)   # e.g. an Ansible vault-encrypted value
        try:
            raw = password.encode('utf-8')
        except UnicodeError:
            raise PasswordSourceError('The encryption password for account %r is not valid '
                                      'text.' % account, account=account, path=path)
    if not raw:
        raise PasswordSourceError('The encryption password for account %r is empty.' % account,
                                  account=account, path=path)
    if b'\x00' in raw:
        raise PasswordSourceError('The encryption password for account %r contains a NUL byte, '
                                  'which oidc-agent cannot use.' % account,
                                  account=account, path=path)
    return raw


def _read_private_file(path, limit=64 * 1024):
    """The start of a password file that only the running user can read, else PasswordSourceError.

    A password kept beside an account protects nothing when others can read it, and a file another user
    owns may be theirs to change. Opened without blocking (a FIFO planted there fails, it does not hang).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0))
    except (IOError, OSError) as e:
        raise PasswordSourceError('Cannot read the password file %s: %s' % (path, e.strerror or e), path=path)
    try:
        st = os.fstat(fd)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = 'it is not a regular file'
        elif st.st_uid != os.geteuid():
            why = 'it belongs to uid %d, not to the running user (uid %d)' % (st.st_uid, os.geteuid())
        elif stat.S_IMODE(st.st_mode) & 0o077:
            why = 'group or others have access to it (mode %04o); chmod 600 it' % stat.S_IMODE(st.st_mode)
        if why:
            raise PasswordSourceError('Refusing the password file %s: %s.' % (path, why), path=path)
        return os.read(fd, limit)
    except OSError as e:
        raise PasswordSourceError('Cannot read the password file %s: %s' % (path, e.strerror or e), path=path)
    finally:
        os.close(fd)


# --- one function per source -----------------------------------------------------------------

def _from_value(password):
    return password if isinstance(password, (str, bytes)) else str(password)


def _from_file(password_file):
    path = os.path.expanduser(str(password_file))
    data = _read_private_file(path)
    value = data.split(b'\n', 1)[0]
    try:
        value = value.decode('utf-8')
    except UnicodeError:
        raise PasswordSourceError('The password file %s is not UTF-8 text.' % path,
                                  path=path)
    if not value:
        raise PasswordSourceError('The password file %s starts with an empty line.' % path,
                                  path=path)
    return value


def _from_env(password_env):
    value = os.environ.get(password_env)
    if value is None:
        raise PasswordSourceError('The environment variable %s holding the encryption '
                                  'password is not set.' % password_env)
    if not value:
        raise PasswordSourceError('The environment variable %s holding the encryption '
                                  'password is empty.' % password_env)
    return value


def _command_argv(password_command):
    if isinstance(password_command, (list, tuple)):
        argv = [str(a) for a in password_command]
    else:
        try:
            argv = shlex.split(str(password_command))
        except ValueError as e:
            raise PasswordSourceError('Cannot parse password_command: %s' % e)
    if not argv:
        raise PasswordSourceError('password_command is empty.')
    return argv


def _from_command(password_command, timeout):
    argv = _command_argv(password_command)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PasswordSourceError('password_command %s did not finish within %s s.'
                                  % (argv[0], timeout))
    except (IOError, OSError) as e:
        raise PasswordSourceError('Cannot run password_command %s: %s'
                                  % (argv[0], e.strerror or e))
    if proc.returncode != 0:
        # The command's output is not shown: it may hold the password or part of it.
        raise PasswordSourceError('password_command %s failed with exit status %d.'
                                  % (argv[0], proc.returncode))
    out = proc.stdout
    if out.endswith(b'\n'):
        out = out[:-1]
    try:
        value = out.decode('utf-8')
    except UnicodeError:
        raise PasswordSourceError('password_command %s printed something that is not UTF-8 '
                                  'text.' % argv[0])
    if not value:
        raise PasswordSourceError('password_command %s printed an empty password.'
                                  % argv[0])
    return value


def resolve_password(password=None, password_file=None, password_env=None,
                     password_command=None, timeout=60):
    """Return the encryption password from exactly one source.

    ``password``: the value itself (e.g. an Ansible Vault variable).
    ``password_file``: the first line of that file, without its line end (oidc-agent's
    ``--pw-file`` reads it the same way).
    ``password_env``: the name of an environment variable holding it.
    ``password_command``: a command (string split with shlex, or a list) run without a shell;
    its standard output, less one trailing newline.
    Errors never contain the password or the command's output.
    """
    given = [k for k, v in (('password', password), ('password_file', password_file),
                            ('password_env', password_env),
                            ('password_command', password_command)) if v is not None]
    if not given:
        raise PasswordSourceError('No encryption password: give one of password, password_file, '
                                  'password_env or password_command.')
    if len(given) > 1:
        raise PasswordSourceError('Give only one encryption password source, not %s.'
                                  % ', '.join(given))
    if password is not None:
        value = _from_value(password)
    elif password_file is not None:
        value = _from_file(password_file)
    elif password_env is not None:
        value = _from_env(password_env)
    else:
        value = _from_command(password_command, timeout)
    password_bytes(value)   # empty / NUL checks
    return value
