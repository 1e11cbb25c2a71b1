# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The encrypted account store: oidc-agent account files, written safely.

An account file is what oidc-agent (>= 2.1 through 5.x) reads and writes: seven lines joined by
``\\n`` and no trailing newline::

    1 ciphertext length in decimal (= plaintext bytes + 16)
    2 24-byte nonce, standard base64 with padding
    3 16-byte salt, same base64
    4 24:16:16:32:1:2:67108864:2   (nonce:salt:mac:key lengths:base64 variant:opslimit:memlimit:alg)
    5 crypto_secretbox_easy(plaintext, nonce, key), base64 (XSalsa20-Poly1305, MAC first)
    6 "hash key", base64
    7 Generated using version: X.Y.Z

``crypto_pwhash`` (Argon2id13, opslimit 2, memlimit 64 MiB) turns the password and salt into 64
bytes: bytes 0-31 are the secretbox key, bytes 32-63 are line 6 and identify a wrong password
before decryption. PyNaCl does all of the cryptography. The plaintext is the account JSON.

The store: atomic writes (temporary file in the same directory, fsync, rename, fsync of the
directory), 0600 files in a 0700 directory owned by the running user, and one exclusive lock per
account (``fcntl.flock`` on ``.NAME.lock`` in the same directory; oidc-agent ignores dot files).
``AccountStore.update`` is the one read -> callback -> write sequence callers use, so a rotated
refresh token is on disk before anything derived from it is handed out. It speaks no HTTP.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hmac
import json
import os
import re
import secrets
import shlex
import stat
import subprocess
import time
import traceback

from collections.abc import MutableMapping

# PyNaCl is imported on first use (nacl_import_error), not here: the lookup's cache-hit path uses
# this file's name and directory rules and must not load a crypto library it does not need.
nacl = None
HAS_NACL = None            # None: not tried yet; then True or False
NACL_IMPORT_ERROR = None

from ansible_collections.oidc.tokens.plugins.module_utils._account_names import (  # noqa: F401 (part of this API)
    AccountStoreError, InvalidAccountNameError, default_config_dir, is_reserved_name, validate_name)

# --- the file format -------------------------------------------------------------------------

NONCE_BYTES = 24
SALT_BYTES = 16
MAC_BYTES = 16
KEY_BYTES = 32
BASE64_VARIANT_ORIGINAL = 1
OPSLIMIT = 2                # crypto_pwhash_OPSLIMIT_INTERACTIVE (Argon2id)
MEMLIMIT = 67108864         # crypto_pwhash_MEMLIMIT_INTERACTIVE (Argon2id), 64 MiB
ALG_ARGON2ID13 = 2          # crypto_pwhash_ALG_ARGON2ID13 (= crypto_pwhash_ALG_DEFAULT)
PARAMS_LINE = '%d:%d:%d:%d:%d:%d:%d:%d' % (NONCE_BYTES, SALT_BYTES, MAC_BYTES, KEY_BYTES,
                                           BASE64_VARIANT_ORIGINAL, OPSLIMIT, MEMLIMIT,
                                           ALG_ARGON2ID13)
VERSION_PREFIX = 'Generated using version: '
# The version written on line 7. oidc-agent reads this line only to tell the current format from
# the hex format of versions before 2.1.0; 4.2.6 is the oldest oidc-agent the collection is tested
# against, and every oidc-agent from 2.1.0 on reads the file.
FORMAT_VERSION = '4.2.6'
MIN_VERSION = (2, 1, 0)

# Fields oidc-agent's account JSON has; they are always written (empty when unknown).
ACCOUNT_FIELDS = ('name', 'client_name', 'issuer_url', 'client_id', 'client_secret',
                  'refresh_token', 'cert_path', 'scope', 'auth_scope', 'audience',
                  'redirect_uris', 'username', 'password')
# Our own fields live in one extra object; oidc-agent keeps unknown keys when it rewrites a file.
META_KEY = 'oidc_tokens'
SECRET_FIELDS = frozenset(('client_secret', 'refresh_token', 'password', 'access_token',
                           'id_token'))

_VERSION_RE = re.compile(r'^Generated using version: ([0-9]+)\.([0-9]+)\.([0-9]+)\S*$')
_TMP_INFIX = '.tmp-'
MAX_FILE_BYTES = 1024 * 1024

DIR_MODE = 0o700
FILE_MODE = 0o600
DEFAULT_LOCK_TIMEOUT = 120.0


# --- errors ----------------------------------------------------------------------------------

class MissingDependencyError(AccountStoreError):
    """PyNaCl is not installed where the store runs."""


class AccountNotFoundError(AccountStoreError):
    """No account file of that name."""


class AccountExistsError(AccountStoreError):
    """``save(..., overwrite=False)`` found an account of that name."""


class WrongPasswordError(AccountStoreError):
    """The password does not open the account file (the hash key on line 6 differs)."""


class CorruptAccountError(AccountStoreError):
    """Truncated, damaged or tampered file, or plaintext that is not an account JSON object."""


class UnsupportedFormatError(AccountStoreError):
    """A file in a format the store does not read (pre-2.1 hex, GPG, CRLF, other parameters)."""


class PasswordSourceError(AccountStoreError):
    """No usable encryption password (missing, empty, unreadable, failing command)."""


class StorePermissionError(AccountStoreError):
    """Directory or file not owned by the running user, not a regular file, or not writable."""


class LockTimeoutError(AccountStoreError):
    """Another process held the account's lock for longer than the timeout."""


def nacl_import_error():
    """None when PyNaCl imports, else the import's traceback. Imports it on the first call."""
    global nacl, HAS_NACL, NACL_IMPORT_ERROR
    if HAS_NACL is None:
        try:
            import nacl.exceptions
            import nacl.pwhash.argon2id
            import nacl.secret
            HAS_NACL = True
        except ImportError:
            HAS_NACL = False
            NACL_IMPORT_ERROR = traceback.format_exc()
    return None if HAS_NACL else (NACL_IMPORT_ERROR or 'PyNaCl could not be imported.')


def _require_nacl():
    if nacl_import_error() is not None:
        raise MissingDependencyError(
            'The oidc.tokens account store needs the Python library PyNaCl (python3-nacl, '
            'pip install PyNaCl) on the host where it runs; importing it failed:\n%s'
            % NACL_IMPORT_ERROR)


# --- passwords -------------------------------------------------------------------------------

def _password_bytes(password, account=None, path=None):
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
        value = password if isinstance(password, (str, bytes)) else str(password)
    elif password_file is not None:
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
    elif password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise PasswordSourceError('The environment variable %s holding the encryption '
                                      'password is not set.' % password_env)
        if not value:
            raise PasswordSourceError('The environment variable %s holding the encryption '
                                      'password is empty.' % password_env)
    else:
        if isinstance(password_command, (list, tuple)):
            argv = [str(a) for a in password_command]
        else:
            try:
                argv = shlex.split(str(password_command))
            except ValueError as e:
                raise PasswordSourceError('Cannot parse password_command: %s' % e)
        if not argv:
            raise PasswordSourceError('password_command is empty.')
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
    _password_bytes(value)   # empty / NUL checks
    return value


# --- the account -----------------------------------------------------------------------------

class Account(MutableMapping):
    """An account's JSON object, dict-like. ``repr`` and ``str`` never show a secret.

    ``scope`` and ``auth_scope`` are one value (oidc-agent 4.x reads ``scope``, 5.2+ prefers
    ``auth_scope``): setting either sets both. ``issuer_url`` is read from ``issuer`` when only
    that is present, and written with a trailing ``/`` (oidc-agent 4.x needs it; compare issuers
    without trailing slashes). Unknown keys are kept as they are.
    """

    _SCOPE_KEYS = ('scope', 'auth_scope')

    def __init__(self, data=None, **kwargs):
        self._data = {}
        if data is not None:
            if isinstance(data, Account):
                data = data.to_dict()
            for key, value in dict(data).items():
                self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    @classmethod
    def _from_file_json(cls, data):
        """Normalise an object read from a file (5.x writes only auth_scope, may write issuer)."""
        account = cls()
        account._data = dict(data)
        scope = data.get('auth_scope') or data.get('scope') or ''
        account._data['scope'] = scope
        account._data['auth_scope'] = scope
        if not data.get('issuer_url') and data.get('issuer'):
            account._data['issuer_url'] = data['issuer']
        return account

    def __getitem__(self, key):
        return self._data[key]

    def __setitem__(self, key, value):
        if key in self._SCOPE_KEYS:
            if isinstance(value, (list, tuple)):
                value = ' '.join(value)
            self._data['scope'] = value
            self._data['auth_scope'] = value
        else:
            self._data[key] = value

    def __delitem__(self, key):
        if key in self._SCOPE_KEYS:
            del self._data['scope']
            self._data.pop('auth_scope', None)
        else:
            del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        shown = []
        for key in ('name', 'issuer_url', 'client_id', 'scope'):
            if key in self._data:
                shown.append('%s=%r' % (key, self._data[key]))
        for key in sorted(self._data):
            if _is_secret_key(key):
                shown.append('%s=<%s>' % (key, 'set' if self._data[key] else 'empty'))
        others = sorted(k for k in self._data
                        if k not in ('name', 'issuer_url', 'client_id', 'scope')
                        and not _is_secret_key(k))
        if others:
            shown.append('other_keys=%s' % ','.join(others))
        return 'Account(%s)' % ', '.join(shown)

    __str__ = __repr__

    def copy(self):
        return Account(json.loads(json.dumps(self._data)))

    def to_dict(self):
        """A plain deep copy (secrets included: do not log it)."""
        return json.loads(json.dumps(self._data))

    @property
    def meta(self):
        """The collection's own fields (an object under ``oidc_tokens``), created on demand."""
        value = self._data.get(META_KEY)
        if not isinstance(value, dict):
            value = {}
            self._data[META_KEY] = value
        return value

    def _to_file_json(self, name):
        data = dict(self._data)
        data['name'] = name
        for key in ACCOUNT_FIELDS:
            if data.get(key) is None:
                data[key] = [] if key == 'redirect_uris' else ''
        scope = data.get('auth_scope') or data.get('scope') or ''
        data['scope'] = scope
        data['auth_scope'] = scope
        issuer = data.get('issuer_url')
        if isinstance(issuer, str) and issuer and not issuer.endswith('/'):
            # oidc-agent 4.x appends '.well-known/openid-configuration' to issuer_url as it is,
            # so it needs the trailing slash; oidc-gen writes it that way too.
            data['issuer_url'] = issuer + '/'
        return data


def _is_secret_key(key):
    low = str(key).lower()
    return (key in SECRET_FIELDS or 'secret' in low or 'token' in low or 'password' in low) \
        and key != META_KEY


# --- encryption ------------------------------------------------------------------------------

class _Key(object):
    """The result of one Argon2id derivation: salt, secretbox key, hash key."""

    __slots__ = ('salt', 'key', 'hash_key')

    def __init__(self, salt, key, hash_key):
        self.salt = salt
        self.key = key
        self.hash_key = hash_key


class _Parsed(object):
    __slots__ = ('nonce', 'salt', 'ciphertext', 'hash_key', 'version')

    def __init__(self, nonce, salt, ciphertext, hash_key, version):
        self.nonce = nonce
        self.salt = salt
        self.ciphertext = ciphertext
        self.hash_key = hash_key
        self.version = version


def _b64(data):
    return base64.b64encode(data).decode('ascii')


def _unb64(text, what, expected_len, fail):
    try:
        raw = base64.b64decode(text.encode('ascii'), validate=True)
    except (binascii.Error, ValueError, UnicodeError):
        raise fail('%s is not valid base64' % what)
    if expected_len is not None and len(raw) != expected_len:
        raise fail('%s has %d bytes, expected %d' % (what, len(raw), expected_len))
    return raw


def parse_account_file(content, account=None, path=None):
    """Check the layout of an account file (bytes) and return its parts; no key derivation.

    Raises CorruptAccountError or UnsupportedFormatError naming ``account`` and ``path``.
    """
    where = 'account %r (%s)' % (account, path)

    def corrupt(why):
        return CorruptAccountError('The account file of %s is corrupt or truncated: %s. '
                                   'The file was left as it is.' % (where, why),
                                   account=account, path=path)

    def unsupported(why):
        return UnsupportedFormatError('The account file of %s is in a format the store does not '
                                      'read: %s. The file was left as it is.' % (where, why),
                                      account=account, path=path)

    if not content:
        raise corrupt('the file is empty')
    if content.lstrip().startswith(b'-----BEGIN PGP'):
        raise unsupported('it is GPG-encrypted (oidc-gen --pw-gpg); only password-encrypted '
                          'files are supported')
    try:
        text = content.decode('ascii')
    except UnicodeError:
        raise corrupt('it contains non-ASCII bytes')
    if '\r' in text:
        raise unsupported('it has CRLF line ends, which oidc-agent rejects too; convert it '
                          'with dos2unix')
    if text.endswith('\n'):
        text = text[:-1]   # oidc-agent reads a file with one trailing newline the same way
    lines = text.split('\n')
    if len(lines) == 1:
        if re.match(r'^[0-9]+:[0-9a-fA-F]+:[0-9a-fA-F]+:[0-9a-fA-F]+$', lines[0]):
            raise unsupported('it is the hex format of oidc-agent before 2.1.0; convert it '
                              'with oidc-gen -u')
        raise corrupt('it has 1 line, expected 7')
    if len(lines) != 7:
        raise corrupt('it has %d lines, expected 7' % len(lines))
    m = _VERSION_RE.match(lines[6])
    if not m:
        raise corrupt("line 7 is not 'Generated using version: X.Y.Z'")
    version = tuple(int(x) for x in m.groups())
    if version < MIN_VERSION:
        raise unsupported('it says oidc-agent %d.%d.%d wrote it; files from before 2.1.0 use a '
                          'hex format' % version)
    if lines[3] != PARAMS_LINE:
        raise unsupported('its crypto parameters are %r, the store reads only %r'
                          % (lines[3][:80], PARAMS_LINE))
    if not re.match(r'^[0-9]{1,9}$', lines[0]):
        raise corrupt('line 1 is not a ciphertext length')
    cipher_len = int(lines[0])
    nonce = _unb64(lines[1], 'the nonce (line 2)', NONCE_BYTES, corrupt)
    salt = _unb64(lines[2], 'the salt (line 3)', SALT_BYTES, corrupt)
    ciphertext = _unb64(lines[4], 'the ciphertext (line 5)', None, corrupt)
    hash_key = _unb64(lines[5], 'the hash key (line 6)', KEY_BYTES, corrupt)
    if len(ciphertext) != cipher_len:
        raise corrupt('the ciphertext has %d bytes but line 1 says %d'
                      % (len(ciphertext), cipher_len))
    if cipher_len <= MAC_BYTES:
        raise corrupt('the ciphertext is too short')
    return _Parsed(nonce, salt, ciphertext, hash_key, '%d.%d.%d' % version)


def derive_key(password, salt):
    """One Argon2id13 derivation (opslimit 2, memlimit 64 MiB, 64 bytes) -> _Key."""
    _require_nacl()
    out = nacl.pwhash.argon2id.kdf(2 * KEY_BYTES, password, salt,
                                   opslimit=OPSLIMIT, memlimit=MEMLIMIT)
    return _Key(salt, out[:KEY_BYTES], out[KEY_BYTES:])


def encrypt_account_bytes(plaintext, key):
    """The seven-line file for ``plaintext`` (bytes) under a derived key, with a fresh nonce."""
    _require_nacl()
    if b'\x00' in plaintext:
        raise ValueError('plaintext must not contain NUL bytes (oidc-agent uses C strings)')
    nonce = secrets.token_bytes(NONCE_BYTES)
    box = nacl.secret.SecretBox(key.key)
    ciphertext = box.encrypt(plaintext, nonce).ciphertext   # MAC first, as crypto_secretbox_easy
    lines = [str(len(ciphertext)), _b64(nonce), _b64(key.salt), PARAMS_LINE, _b64(ciphertext),
             _b64(key.hash_key), VERSION_PREFIX + FORMAT_VERSION]
    return '\n'.join(lines).encode('ascii')


def decrypt_parsed(parsed, key, account=None, path=None):
    """Plaintext bytes of a parsed file, or WrongPasswordError / CorruptAccountError."""
    _require_nacl()
    if not hmac.compare_digest(key.hash_key, parsed.hash_key):
        raise WrongPasswordError('Wrong encryption password for account %r (%s). The file was '
                                 'left as it is.' % (account, path), account=account, path=path)
    box = nacl.secret.SecretBox(key.key)
    try:
        return box.decrypt(parsed.ciphertext, parsed.nonce)
    except nacl.exceptions.CryptoError:
        raise CorruptAccountError('The account file of account %r (%s) failed authentication: '
                                  'the password is right but the ciphertext was changed or '
                                  'damaged. The file was left as it is.' % (account, path),
                                  account=account, path=path)


def _account_from_plaintext(plaintext, account=None, path=None):
    try:
        data = json.loads(plaintext.decode('utf-8'))
    except (UnicodeError, ValueError):
        raise CorruptAccountError('The account file of account %r (%s) decrypts, but not to '
                                  'JSON. The file was left as it is.' % (account, path),
                                  account=account, path=path)
    if not isinstance(data, dict):
        raise CorruptAccountError('The account file of account %r (%s) decrypts, but not to a '
                                  'JSON object. The file was left as it is.' % (account, path),
                                  account=account, path=path)
    return Account._from_file_json(data)


def _plaintext_from_account(account, name):
    if not isinstance(account, Account):
        if not isinstance(account, MutableMapping) and not isinstance(account, dict):
            raise TypeError('account must be a mapping')
        account = Account(account)
    data = account._to_file_json(name)
    try:
        return json.dumps(data, ensure_ascii=False, separators=(',', ':')).encode('utf-8')
    except (TypeError, ValueError) as e:
        raise AccountStoreError('Account %r cannot be written: a value is not JSON '
                                'serialisable (%s).' % (name, type(e).__name__), account=name)


# --- the store -------------------------------------------------------------------------------

def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_for_flock(fd, deadline=None):
    """Take an exclusive flock on ``fd``; wait until ``deadline`` (time.monotonic(); None: forever).

    Returns False when the deadline passed first.
    """
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def write_secret_file(path, content):
    """Replace the file ``path`` with ``content`` (str or bytes) atomically: mode 0600, owned by the running user.

    For secrets outside the store, such as the WLCG bearer-token file. A temporary file with an
    unpredictable name is created in the same directory (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, so it
    is never readable by anyone else, not even for a moment, and cannot be planted in advance in a
    sticky world-writable directory such as /tmp), written, fsynced and renamed over ``path``; then
    the directory is fsynced. Readers see the old content or the new, never a partial file.
    An existing ``path`` that is not a regular file, or belongs to another user, is left alone and
    StorePermissionError raised (its message holds no secret). Returns ``path``.
    """
    if isinstance(content, str):
        content = content.encode('utf-8')
    path = os.path.abspath(path)
    directory, base = os.path.split(path)

    def refuse(why):
        return StorePermissionError('Cannot write the file %s: %s' % (path, why), path=path)

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise refuse(e.strerror or str(e))
    else:
        if not stat.S_ISREG(st.st_mode):
            raise refuse('it exists and is not a regular file (a symbolic link?); it was left as it is')
        if st.st_uid != os.geteuid():
            raise refuse('it exists and belongs to uid %d, not to the running user (uid %d); it was left as it is'
                         % (st.st_uid, os.geteuid()))
    tmp = os.path.join(directory, '.%s%s%s' % (base, _TMP_INFIX, secrets.token_hex(8)))
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_NOFOLLOW', 0)
             | getattr(os, 'O_CLOEXEC', 0))
    try:
        fd = os.open(tmp, flags, FILE_MODE)
    except OSError as e:
        raise refuse('cannot create a temporary file in %s: %s' % (directory, e.strerror or e))
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise refuse(exc.strerror or str(exc))
        raise
    _fsync_dir(directory)
    return path


class AccountStore(object):
    """oidc-agent account files in one directory.

    ``config_dir``: the directory (default: see ``default_config_dir``).
    ``lock_timeout``: seconds to wait for another process's lock (None waits forever).
    ``read_retries``: how often a structurally incomplete file is read again (oidc-agent
    rewrites files in place, without our lock) before it counts as corrupt.

    After any call, ``dir_changed`` is True if the store created the directory or tightened its
    mode to 0700 (a module reports that as ``changed``). ``kdf_count`` and ``kdf_seconds`` count
    the Argon2id derivations this object did and the time they took.
    """

    # Returned by an ``update`` callback to remove the account under the lock.
    DELETE = object()

    def __init__(self, config_dir=None, lock_timeout=DEFAULT_LOCK_TIMEOUT, read_retries=4):
        self.config_dir = default_config_dir(config_dir)
        self.lock_timeout = lock_timeout
        self.read_retries = read_retries
        self.dir_changed = False
        self.dir_messages = []
        self.kdf_count = 0
        self.kdf_seconds = 0.0
        self.last_kdf_seconds = None

    # paths and listing

    def path(self, name):
        """The account file's path (the name is validated)."""
        return os.path.join(self.config_dir, validate_name(name))

    def _lock_path(self, name):
        return os.path.join(self.config_dir, '.%s.lock' % name)

    def _tmp_re(self, name):
        return re.compile(r'^\.%s%s[0-9a-f]{16}$' % (re.escape(name), re.escape(_TMP_INFIX)))

    def exists(self, name):
        """True if a regular file of that account name exists."""
        try:
            st = os.lstat(self.path(name))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode)

    def list(self):
        """Sorted account names: regular files oidc-agent would list, without reserved names."""
        try:
            entries = os.listdir(self.config_dir)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            if entry.startswith('.') or is_reserved_name(entry):
                continue
            try:
                validate_name(entry)
                st = os.lstat(os.path.join(self.config_dir, entry))
            except (InvalidAccountNameError, OSError):
                continue
            if stat.S_ISREG(st.st_mode):
                names.append(entry)
        return sorted(names)

    # directory

    def ensure_dir(self):
        """Create the directory 0700 or tighten it to 0700; True if it changed anything."""
        changed = False
        path = self.config_dir
        try:
            st = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            try:
                if parent and not os.path.isdir(parent):
                    os.makedirs(parent, DIR_MODE)
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                pass
            except OSError as e:
                raise StorePermissionError('Cannot create the account directory %s: %s'
                                           % (path, e.strerror or e), path=path)
            os.chmod(path, DIR_MODE)   # mkdir's mode is filtered by the umask
            self.dir_messages.append('created %s with mode 0700' % path)
            changed = True
            st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StorePermissionError('The account directory %s is not a directory.' % path,
                                       path=path)
        if st.st_uid != os.geteuid():
            raise StorePermissionError(
                'The account directory %s belongs to uid %d, not to the user the task runs as '
                '(uid %d); run the task as the account owner (become_user).'
                % (path, st.st_uid, os.geteuid()), path=path)
        mode = stat.S_IMODE(st.st_mode)
        if mode != DIR_MODE:
            try:
                os.chmod(path, DIR_MODE)
            except OSError as e:
                raise StorePermissionError('Cannot set mode 0700 on %s: %s'
                                           % (path, e.strerror or e), path=path)
            self.dir_messages.append('changed mode of %s from %04o to 0700' % (path, mode))
            changed = True
        if changed:
            self.dir_changed = True
        return changed

    # locking

    @contextlib.contextmanager
    def locked(self, name, timeout=None):
        """Hold the exclusive lock of account ``name`` (flock on ``.NAME.lock``).

        The lock file is created 0600 and kept; ``delete`` removes it, so the lock is taken
        again if the file was replaced while waiting. ``timeout`` defaults to the store's.
        """
        validate_name(name)
        self.ensure_dir()
        timeout = self.lock_timeout if timeout is None else timeout
        lock_path = self._lock_path(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        flags = os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)
        while True:
            try:
                fd = os.open(lock_path, flags, FILE_MODE)
            except OSError as e:
                raise StorePermissionError('Cannot open the lock file %s of account %r: %s'
                                           % (lock_path, name, e.strerror or e),
                                           account=name, path=lock_path)
            try:
                if not wait_for_flock(fd, deadline):
                    raise LockTimeoutError('Another process held the lock of account %r (%s) for more than %s s.'
                                           % (name, lock_path, timeout), account=name, path=lock_path)
                st = os.fstat(fd)
                try:
                    current = os.stat(lock_path)
                except FileNotFoundError:
                    current = None
                same = current is not None and (current.st_ino, current.st_dev) == (st.st_ino, st.st_dev)
                if same:
                    if stat.S_IMODE(st.st_mode) != FILE_MODE:
                        os.fchmod(fd, FILE_MODE)
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)   # the lock file was deleted or replaced while we waited: take it anew
        try:
            yield lock_path
        finally:
            os.close(fd)   # closing releases the flock

    # reading

    def _read_bytes(self, name, path):
        flags = os.O_RDONLY | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise AccountNotFoundError('No account %r: %s does not exist.' % (name, path),
                                       account=name, path=path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StorePermissionError('The account file of %r (%s) is a symbolic link; the '
                                           'store does not follow links.' % (name, path),
                                           account=name, path=path)
            raise StorePermissionError('Cannot open the account file of %r (%s): %s'
                                       % (name, path, e.strerror or e), account=name, path=path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StorePermissionError('The account file of %r (%s) is not a regular file.'
                                           % (name, path), account=name, path=path)
            if st.st_size > MAX_FILE_BYTES:
                raise CorruptAccountError('The account file of %r (%s) is %d bytes, too large '
                                          'for an account.' % (name, path, st.st_size),
                                          account=name, path=path)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            return b''.join(chunks)
        finally:
            os.close(fd)

    def _read_parsed(self, name, path, retries=None):
        # oidc-agent rewrites files in place (truncate, then write) and does not use our lock:
        # a structurally incomplete file is read again a few times before it counts as corrupt.
        retries = self.read_retries if retries is None else retries
        delay = 0.05
        for attempt in range(retries + 1):
            content = self._read_bytes(name, path)
            try:
                return parse_account_file(content, account=name, path=path)
            except CorruptAccountError:
                if attempt >= retries:
                    raise
            time.sleep(delay)
            delay *= 2

    def _derive(self, password, salt):
        start = time.perf_counter()
        key = derive_key(password, salt)
        elapsed = time.perf_counter() - start
        self.kdf_count += 1
        self.kdf_seconds += elapsed
        self.last_kdf_seconds = elapsed
        return key

    def _load(self, name, password, key=None):
        """(account, key, parsed); ``key`` (a _Key) is reused when the file's salt is still its salt."""
        path = self.path(name)
        pw = _password_bytes(password, account=name, path=path)
        _require_nacl()
        parsed = self._read_parsed(name, path)
        if key is None or not hmac.compare_digest(key.salt, parsed.salt):
            key = self._derive(pw, parsed.salt)
        plaintext = decrypt_parsed(parsed, key, account=name, path=path)
        account = _account_from_plaintext(plaintext, account=name, path=path)
        return account, key, parsed

    def load(self, name, password):
        """Decrypt account ``name`` -> Account. One Argon2id derivation; the file is not changed.

        Files replace each other atomically, so a load needs no lock.
        """
        return self._load(name, password)[0]

    def load_info(self, name):
        """What the file says without decrypting: path, mode, owner, size, version, mtime."""
        path = self.path(name)
        parsed = self._read_parsed(name, path)
        st = os.lstat(path)
        return {'path': path, 'mode': '%04o' % stat.S_IMODE(st.st_mode), 'uid': st.st_uid,
                'size': st.st_size, 'mtime': st.st_mtime, 'version': parsed.version}

    # writing

    def _cleanup_temp(self, name):
        """Remove temporary files of ``name`` left by a killed writer (call under the lock)."""
        pattern = self._tmp_re(name)
        removed = []
        try:
            entries = os.listdir(self.config_dir)
        except FileNotFoundError:
            return removed
        for entry in entries:
            if pattern.match(entry):
                try:
                    os.unlink(os.path.join(self.config_dir, entry))
                    removed.append(entry)
                except FileNotFoundError:
                    pass
        return removed

    def _write_atomic(self, name, content):
        """Replace the account file atomically (``write_secret_file``) after removing stale temp files."""
        path = self.path(name)
        self._cleanup_temp(name)
        try:
            write_secret_file(path, content)
        except StorePermissionError as e:
            raise StorePermissionError('Account %r was not written: %s' % (name, e), account=name, path=path)

    def _encrypt_for(self, name, account, key):
        plaintext = _plaintext_from_account(account, name)
        return encrypt_account_bytes(plaintext, key)

    def save(self, name, account, password, overwrite=True):
        """Encrypt ``account`` (a mapping) as ``name`` with a fresh salt, atomically, locked.

        The JSON ``name`` is set to ``name``; the oidc-agent fields missing from ``account`` are
        written empty; ``scope`` and ``auth_scope`` are written with one value. One derivation.
        """
        path = self.path(name)
        pw = _password_bytes(password, account=name, path=path)
        _require_nacl()
        plaintext = _plaintext_from_account(account, name)
        key = self._derive(pw, secrets.token_bytes(SALT_BYTES))
        content = encrypt_account_bytes(plaintext, key)
        with self.locked(name):
            if not overwrite and self.exists(name):
                raise AccountExistsError('Account %r already exists (%s).' % (name, path),
                                         account=name, path=path)
            self._write_atomic(name, content)
        return path

    def update(self, name, password, fn):
        """The one locked read -> ``fn`` -> write sequence.

        Under the account's lock: decrypt the file, call ``fn(account)``, which returns
        ``(new_account_or_None, result)``. A new account is written atomically, with the same salt
        and key and a fresh nonce, before ``result`` is returned; ``AccountStore.DELETE`` instead of
        an account removes the file under the same lock (after a revocation, so no refresh can slip
        in between). One Argon2id derivation, outside the lock. If ``fn`` raises, nothing is written
        and the exception propagates; the lock is released in every case. A second process calling
        ``update`` meanwhile waits for the lock and then sees the new file, so it never replays a
        spent refresh token.
        """
        path = self.path(name)
        # The key is derived before the lock, from the salt the file has now, so concurrent callers do not
        # queue behind each other's Argon2id (64 MiB, ~0.1 s each). Under the lock the file is read again
        # and the key derived again only if its salt changed meanwhile (save, change_password, oidc-agent).
        # A missing account, a wrong password or a damaged file is reported here, before a lock file exists.
        _account, key, _parsed = self._load(name, password)
        with self.locked(name) as lock_path:
            account, key, _parsed = self._load(name, password, key)
            new_account, result = fn(account)
            if new_account is self.DELETE:
                self._delete_locked(name, path, lock_path)
            elif new_account is not None:
                self._write_atomic(name, self._encrypt_for(name, new_account, key))
        return result

    def change_password(self, name, old_password, new_password):
        """Re-encrypt ``name`` under a new password with a fresh salt (two derivations)."""
        path = self.path(name)
        new_pw = _password_bytes(new_password, account=name, path=path)
        with self.locked(name):
            account, _key, _parsed = self._load(name, old_password)
            key = self._derive(new_pw, secrets.token_bytes(SALT_BYTES))
            self._write_atomic(name, self._encrypt_for(name, account, key))

    def delete(self, name):
        """Remove the account file, its lock file and stray temp files; True if it existed."""
        path = self.path(name)
        if not os.path.isdir(self.config_dir):
            return False
        with self.locked(name) as lock_path:
            return self._delete_locked(name, path, lock_path)

    def _delete_locked(self, name, path, lock_path):
        self._cleanup_temp(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            existed = False
        else:
            if not stat.S_ISREG(st.st_mode):
                raise StorePermissionError('%s is not a regular file; not deleted.' % path,
                                           account=name, path=path)
            os.unlink(path)
            existed = True
        try:
            os.unlink(lock_path)   # waiters notice the replaced lock file and retry
        except FileNotFoundError:
            pass
        _fsync_dir(self.config_dir)
        return existed
