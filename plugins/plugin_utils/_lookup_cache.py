# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's cache of access tokens for the lookup ``oidc.tokens.oidc_token``: its one entry
point, ``TokenCache.token()``, and the hit path.

Ansible templates a lookup once per host, each time in a fresh worker process, so nothing kept in
memory survives from one host to the next. The cache keeps what the lookup handed out on disk
instead, so that a play over many hosts costs one refresh (and one Argon2id derivation) per
access-token lifetime rather than one per host.

Layout, in one directory of the controller user (``default_cache_dir()``), mode 0700:

``<account>-<key>.json``
    One entry (mode 0600): the access token, ``expires_at``, ``issuer``, ``scope``, ``claims``
    (with ``claims_mode``: how they were obtained) and the ``account_stamp`` (device, inode, size,
    mtime of the account file when the token was obtained). ``<account>`` hashes the absolute
    config_dir and the account name, ``<key>`` hashes everything that selects a token (scope,
    audience, resource, issuer and client overrides).
``.<account>.lock``
    The exclusive ``flock`` a worker holds while it fills an entry of that account, so concurrent
    workers wait for one refresh instead of racing a rotating refresh token. Removed again by a
    worker that leaves no entry of the account (a failed lookup writes nothing).

The lookup makes one call, ``TokenCache.token()``: an entry that is usable now, or else, under the
account's lock, the entry another worker filled meanwhile, or else what the lookup's ``fetch``
callable gets (it asks the shared token layer, ``_tokens.access_token``), kept as the new entry.

An entry is used while ``expires_at - now >= min_valid_period`` and while the account file is the
one it came from: a revoked (deleted), replaced or otherwise rewritten account invalidates it. The
lookup itself rewrites the account when a refresh rotates the refresh token; it then moves the
entries of the same account that were valid before to the new stamp, under the lock.

Reading an entry takes no lock (entries are replaced atomically). Ansible compiles this file from
source in every worker process (its collection loader keeps no bytecode), so it holds the hit path
only: standard library, the collection's errors, the account-name rule and where entries live.
Everything a miss needs (the lock, writing, pruning, the private-file primitives) is in
``_lookup_miss.py``, imported on the first miss of a process.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import json
import os
import stat
import time

from ansible_collections.oidc.tokens.plugins.module_utils._account_names import default_config_dir, validate_name
from ansible_collections.oidc.tokens.plugins.module_utils._errors import InvalidAccountNameError, OidcTokensError
from ansible_collections.oidc.tokens.plugins.module_utils._lookup_cache_files import (
    ENTRY_SUFFIX, account_id, default_cache_dir, digest as _digest, runtime_cache_dir)

CACHE_VERSION = 1
LOCK_TIMEOUT = 300.0
MAX_ENTRY_BYTES = 256 * 1024
ENTRY_MODE = 0o600   # _private_files.FILE_MODE, what its atomic replace gives a file (not imported on a hit)

CLAIMS_MODES = (None, 'decode', 'verify')


class TokenCacheError(OidcTokensError):
    """The cache directory or one of its files cannot be used safely."""


def cacheable_name(name):
    """True when ``name`` is an account short name the store accepts (then it is safe in a path)."""
    try:
        validate_name(name)
    except InvalidAccountNameError:
        return False
    return True


def _sorted_list(value):
    if not value:
        return []
    if isinstance(value, str):
        value = value.split()
    return sorted(set(str(v) for v in value if v))


def entry_key(scope=None, audience=None, resource=None, issuer=None, client_id=None):
    """The hash of what selects a token of an account: scope, audience, resource, issuer and client."""
    return _digest({
        'scope': _sorted_list(scope),
        'audience': _sorted_list(audience),
        'resource': _sorted_list(resource),
        'issuer': str(issuer).strip().rstrip('/') if issuer else None,
        'client_id': str(client_id) if client_id else None,
    })


def account_stamp(path):
    """[device, inode, size, mtime_ns] of the account file, or None when there is none.

    Every write of the store is a rename of a new file, so any rewrite changes the stamp.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def claims_satisfied(have, need):
    """Whether claims obtained as ``have`` (None, 'decode', 'verify') serve a request for ``need``."""
    if need is None:
        return True
    if need == 'decode':
        return have in ('decode', 'verify')
    return have == 'verify'


def usable(entry, now, min_valid_period, stamp, claims=None):
    """Whether a cache entry may be handed out now."""
    if not isinstance(entry, dict) or entry.get('version') != CACHE_VERSION:
        return False
    token, expires_at = entry.get('access_token'), entry.get('expires_at')
    if not isinstance(token, str) or not token:
        return False
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        return False
    if expires_at - now < (min_valid_period or 0):
        return False
    if stamp is None or entry.get('account_stamp') != stamp:
        return False
    lifetime_end = entry.get('lifetime_end')
    if isinstance(lifetime_end, (int, float)) and now >= lifetime_end:
        return False   # the account's lifetime ended: the miss revokes it
    return claims_satisfied(entry.get('claims_mode'), claims)


def _miss():
    from ansible_collections.oidc.tokens.plugins.plugin_utils import _lookup_miss
    return _lookup_miss


class TokenCache(object):
    """Entries and locks in one directory of the controller user.

    ``directory``: the lookup's ``cache_dir``; when not set, ``default_cache_dir()``, and a cache
    that is then on a disk (no XDG_RUNTIME_DIR) says so through ``warn`` each time it writes a
    token. ``enabled=False`` (the lookup's ``cache=false``): ``token()`` only fetches.
    ``warn``: a callable taking a message (the lookup's ``display.warning``).
    """

    def __init__(self, directory=None, lock_timeout=LOCK_TIMEOUT, enabled=True, warn=None):
        self.on_disk_by_default = not directory and runtime_cache_dir() is None
        self.directory = os.path.abspath(os.path.expanduser(str(directory or default_cache_dir())))
        self.lock_timeout = lock_timeout
        self.enabled = enabled
        self.warn = warn or (lambda message: None)

    def entry_path(self, account, key):
        return os.path.join(self.directory, '%s-%s%s' % (account, key, ENTRY_SUFFIX))

    def lock_path(self, account):
        return os.path.join(self.directory, '.%s.lock' % account)

    # -- the one entry point ---------------------------------------------------------------------

    def token(self, config_dir, name, fetch, min_valid_period=0, force=False, claims=None, selectors=None):
        """The token of account ``name`` of ``config_dir`` (None: the default): a dict with
        ``access_token``, ``expires_at``, ``issuer``, ``scope`` and ``claims``.

        A usable entry when there is one (unless ``force``); else, under the account's lock, the
        entry another worker filled while this one waited, or what ``fetch(force, claims_mode)``
        returns (``_tokens.access_token``'s dict), kept as the entry. ``claims``: None, 'decode' or
        'verify', what the caller needs of the claims; ``selectors``: scope, audience, resource,
        issuer and client_id as given (see ``entry_key``). ``fetch`` is called at most once.

        A hit reads one file. Without the cache, for a name the store would refuse, or when there
        is no account file, ``fetch`` is called at once: the store says what is wrong, and no
        directory or lock is made for an account that is not there.
        """
        if not self.enabled or not cacheable_name(name):
            return fetch(force, claims or 'decode')
        config_dir = default_config_dir(config_dir)
        account_path = os.path.join(config_dir, name)
        stamp = account_stamp(account_path)
        if stamp is None:
            return fetch(force, claims or 'decode')
        account = account_id(config_dir, name)
        key = entry_key(**(selectors or {}))
        if not force:
            entry = self.read(account, key)
            if usable(entry, time.time(), min_valid_period, stamp, claims):
                return entry

        with self.locked(account, name):
            if not force:
                # Another worker may have filled the entry while this one waited for the lock.
                entry = self.read(account, key)
                if usable(entry, time.time(), min_valid_period, account_stamp(account_path), claims):
                    return entry
            return _miss().fill(self, config_dir, name, account, key, fetch, force, claims)

    # -- reading an entry ------------------------------------------------------------------------

    def read(self, account, key):
        """The entry, or None when there is none or it is not one this user wrote (never raises)."""
        return self._read_path(self.entry_path(account, key))

    @staticmethod
    def _read_path(path):
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                    or stat.S_IMODE(st.st_mode) != ENTRY_MODE or st.st_size > MAX_ENTRY_BYTES):
                return None
            data = os.read(fd, MAX_ENTRY_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            entry = json.loads(data.decode('utf-8'))
        except (UnicodeError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    # -- the miss path (_lookup_miss.py) ---------------------------------------------------

    def ensure_dir(self):
        """Create the directory 0700 (and a missing parent 0700), or check and tighten it."""
        _miss().ensure_dir(self)

    def write(self, account, key, entry):
        """Replace the entry atomically (0600); returns its path."""
        return _miss().write(self, account, key, entry)

    def remove(self, account, key):
        _miss().remove(self, account, key)

    def entries_of(self, account):
        """{key: path} of the entries of one account."""
        return _miss().entries_of(self, account)

    def restamp(self, account, old_stamp, new_stamp, skip_key=None):
        """Move the account's entries of the old account file to the new one (under the lock); how many."""
        return _miss().restamp(self, account, old_stamp, new_stamp, skip_key)

    def prune(self, account, now=None):
        """Remove the account's expired entries and stale temporary files (under the lock); how many."""
        return _miss().prune(self, account, now)

    def locked(self, account, name=None):
        """A context manager holding the exclusive lock of one account's entries."""
        return _miss().locked(self, account, name)
