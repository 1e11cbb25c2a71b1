# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The encrypted account store: a directory of oidc-agent account files, written safely.

Account files are 0600 and replaced atomically, in a 0700 directory owned by the running user, with
one exclusive lock per account (``fcntl.flock`` on ``.NAME.lock`` in the same directory; oidc-agent
ignores dot files). ``AccountStore.update`` is the one read -> callback -> write sequence callers
use, so a rotated refresh token is on disk before anything derived from it is handed out. It speaks
no HTTP.

Elsewhere: the file format and its cryptography (_account_file.py), the password sources
(_passwords.py), atomic writes, the private directory and flock (_private_files.py).

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import re
import secrets
import stat
import time

from ansible_collections.oidc.tokens.plugins.module_utils._account_file import (
    SALT_BYTES, account_from_plaintext, decrypt_parsed, derive_key, encrypt_account_bytes, parse_account_file,
    plaintext_from_account, require_nacl)
from ansible_collections.oidc.tokens.plugins.module_utils._account_names import (
    default_config_dir, is_reserved_name, validate_name)
from ansible_collections.oidc.tokens.plugins.module_utils._errors import (
    AccountExistsError, AccountNotFoundError, CorruptAccountError, InvalidAccountNameError, LockTimeoutError,
    PrivatePathError, StorePermissionError)
from ansible_collections.oidc.tokens.plugins.module_utils._passwords import password_bytes
from ansible_collections.oidc.tokens.plugins.module_utils._private_files import (
    FILE_MODE, TMP_INFIX, ensure_private_dir, fsync_dir, lock_file, write_secret_file)

MAX_FILE_BYTES = 1024 * 1024
DEFAULT_LOCK_TIMEOUT = 120.0

# The store's words for a PrivatePathError of its directory (links are followed: no 'link').
_DIR_ERRORS = {
    'create': 'Cannot create the account directory %(path)s: %(strerror)s',
    'type': 'The account directory %(path)s is not a directory.',
    'owner': ('The account directory %(path)s belongs to uid %(uid)d, not to the user the task runs as '
              '(uid %(euid)d); run the task as the account owner (become_user).'),
    'chmod': 'Cannot set mode 0700 on %(path)s: %(strerror)s',
}


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
        return re.compile(r'^\.%s%s[0-9a-f]{16}$' % (re.escape(name), re.escape(TMP_INFIX)))

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
        path = self.config_dir
        try:
            created, old_mode = ensure_private_dir(path)
        except PrivatePathError as e:
            words = {'path': path, 'strerror': e.strerror, 'uid': e.uid, 'euid': os.geteuid()}
            raise StorePermissionError(_DIR_ERRORS[e.reason] % words, path=path)
        if created:
            self.dir_messages.append('created %s with mode 0700' % path)
        elif old_mode is not None:
            self.dir_messages.append('changed mode of %s from %04o to 0700' % (path, old_mode))
        changed = created or old_mode is not None
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
        try:
            fd = lock_file(lock_path, deadline)
        except PrivatePathError as e:
            raise StorePermissionError('Cannot open the lock file %s of account %r: %s'
                                       % (lock_path, name, e.strerror), account=name, path=lock_path)
        if fd is None:
            raise LockTimeoutError('Another process held the lock of account %r (%s) for more than %s s.'
                                   % (name, lock_path, timeout), account=name, path=lock_path)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
                os.fchmod(fd, FILE_MODE)
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
        pw = password_bytes(password, account=name, path=path)
        require_nacl()
        parsed = self._read_parsed(name, path)
        if key is None or not hmac.compare_digest(key.salt, parsed.salt):
            key = self._derive(pw, parsed.salt)
        plaintext = decrypt_parsed(parsed, key, account=name, path=path)
        account = account_from_plaintext(plaintext, account=name, path=path)
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
        plaintext = plaintext_from_account(account, name)
        return encrypt_account_bytes(plaintext, key)

    def save(self, name, account, password, overwrite=True):
        """Encrypt ``account`` (a mapping) as ``name`` with a fresh salt, atomically, locked.

        The JSON ``name`` is set to ``name``; the oidc-agent fields missing from ``account`` are
        written empty; ``scope`` and ``auth_scope`` are written with one value. One derivation.
        """
        path = self.path(name)
        pw = password_bytes(password, account=name, path=path)
        require_nacl()
        plaintext = plaintext_from_account(account, name)
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
        new_pw = password_bytes(new_password, account=name, path=path)
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
        fsync_dir(self.config_dir)
        return existed
