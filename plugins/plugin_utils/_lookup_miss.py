# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the lookup ``oidc.tokens.oidc_token`` does on a miss of its token cache
(``_lookup_cache.TokenCache``): ask the shared token layer (``fetch_token``), and, under the
account's lock, fill the entry and keep the directory tidy.

Imported on the first miss of a worker process only, so that a cache hit does not pay for
compiling it (see _lookup_cache.py); the account store, OAuth and PyNaCl only inside
``fetch_token``. The cache's files, directory and lock go through _private_files.py (atomic
replace, the 0700 directory, the lock file).

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError, PrivatePathError
from ansible_collections.oidc.tokens.plugins.module_utils._lookup_cache_files import ENTRY_SUFFIX
from ansible_collections.oidc.tokens.plugins.module_utils._private_files import (
    TMP_INFIX, create_temp_file, ensure_private_dir, lock_file, replace_with_temp_file)
from ansible_collections.oidc.tokens.plugins.plugin_utils._lookup_cache import (
    CACHE_VERSION, TokenCacheError, account_stamp)

# The cache's words for a PrivatePathError of its directory.
_DIR_ERRORS = {
    'create': 'Cannot create the token cache directory %(path)s: %(strerror)s',
    'link': 'The token cache directory %(path)s is a symbolic link; give the real directory as cache_dir.',
    'type': 'The token cache directory %(path)s is not a directory.',
    'owner': ('The token cache directory %(path)s belongs to uid %(uid)d, not to the controller user (uid %(euid)d); '
              'use another cache_dir.'),
    'chmod': 'Cannot set mode 0700 on the token cache directory %(path)s: %(strerror)s',
}


def fetch_token(get_option, name, force, claims, warn):
    """The token dict of account ``name`` from the account store (and the provider if need be), as the module
    oidc_token gets it; ``get_option``: the lookup's; ``warn``: shows the token layer's warnings."""
    from ansible_collections.oidc.tokens.plugins.module_utils import _imports, _options, _tokens

    _imports.REQUESTS.require(OidcTokensError, 'by the lookup oidc.tokens.oidc_token on the controller')
    _imports.NACL.require(OidcTokensError, 'by the lookup oidc.tokens.oidc_token to read the encrypted account')
    store = _options.account_store(get_option)
    password = _options.encryption_password(get_option)

    def client_for(account):
        return _options.oauth_client(get_option, account)

    result = _tokens.access_token(store, name, password, client_for, get_option('min_valid_period'),
                                  get_option('scope'), get_option('audience'), get_option('resource'), force,
                                  claims=claims)
    for warning in result.get('warnings') or []:
        warn(warning)
    return result


def make_entry(name, config_dir, result, stamp, claims_mode, now=None):
    """A cache entry from what ``_tokens.access_token`` returned."""
    return {
        'version': CACHE_VERSION,
        'account': str(name),
        'config_dir': str(config_dir),
        'access_token': result['access_token'],
        'expires_at': result.get('expires_at'),
        'issuer': result.get('issuer') or '',
        'scope': list(result.get('scope') or []),
        'claims': result.get('claims') or {},
        'claims_mode': claims_mode,
        'account_stamp': stamp,
        'lifetime_end': result.get('lifetime_end'),
        'created_at': int(time.time() if now is None else now),
    }


def fill(cache, config_dir, name, account, key, fetch, force, claims):
    """Fetch under the account's lock and keep the result; a cache that cannot be written is a warning."""
    account_path = os.path.join(config_dir, name)
    before = account_stamp(account_path)
    # Claims are at least decoded (free for a JWT) so that a later query on them is a hit too.
    claims_mode = claims or 'decode'
    result = fetch(force, claims_mode)
    after = account_stamp(account_path)
    entry = make_entry(name, config_dir, result, after, claims_mode)
    try:
        if after is not None and isinstance(entry['expires_at'], (int, float)):
            cache.write(account, key, entry)
            if cache.on_disk_by_default:
                cache.warn('The lookup oidc.tokens.oidc_token keeps access tokens in %s, on a disk: there is no '
                           'XDG_RUNTIME_DIR. Set cache_dir (ansible.cfg [oidc_tokens] cache_dir, or '
                           'OIDC_TOKENS_CACHE_DIR) to a directory on a tmpfs, or cache=false.' % cache.directory)
        else:
            cache.remove(account, key)
        if result.get('refreshed') and before is not None and after is not None and before != after:
            # This worker rotated the refresh token: the account's other entries stay valid.
            cache.restamp(account, before, after, skip_key=key)
        cache.prune(account)
    except (OSError, TokenCacheError) as exc:
        # The token is good and the account already saved: a cache that cannot be written costs
        # the next hosts a refresh each, not this one its token.
        cache.warn('The token of account %r was not kept in the cache %s: %s'
                   % (name, cache.directory, getattr(exc, 'strerror', None) or exc))
    return entry


# -- the directory -----------------------------------------------------------------------------

def ensure_dir(cache):
    """Create the directory 0700 (and a missing parent 0700), or check and tighten it."""
    try:
        ensure_private_dir(cache.directory, follow_links=False)
    except PrivatePathError as e:
        words = {'path': cache.directory, 'strerror': e.strerror, 'uid': e.uid, 'euid': os.geteuid()}
        raise TokenCacheError(_DIR_ERRORS[e.reason] % words)


# -- entries -------------------------------------------------------------------------------------

def write(cache, account, key, entry):
    """Replace the entry atomically: a 0600 temporary file in the directory, then rename.

    No fsync: a cache entry lost or torn by a crash is only a miss.
    """
    path = cache.entry_path(account, key)
    data = json.dumps(entry, sort_keys=True, separators=(',', ':')).encode('utf-8')
    try:
        fd, tmp = create_temp_file(path)
    except OSError as e:
        raise TokenCacheError('Cannot create a file in the token cache directory %s: %s'
                              % (cache.directory, e.strerror or e))
    replace_with_temp_file(fd, tmp, path, data, sync=False)
    return path


def remove(cache, account, key):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cache.entry_path(account, key))


def entries_of(cache, account):
    """{key: path} of the entries of one account."""
    prefix = '%s-' % account
    found = {}
    try:
        names = os.listdir(cache.directory)
    except OSError:
        return found
    for name in names:
        if name.startswith(prefix) and name.endswith(ENTRY_SUFFIX):
            found[name[len(prefix):-len(ENTRY_SUFFIX)]] = os.path.join(cache.directory, name)
    return found


def restamp(cache, account, old_stamp, new_stamp, skip_key=None):
    """After this lookup rewrote the account (a rotated refresh token), keep the account's other
    entries that were valid for the old file. Call under the account's lock. Returns how many."""
    moved = 0
    for key, path in cache.entries_of(account).items():
        if key == skip_key:
            continue
        entry = cache._read_path(path)
        if entry is None or entry.get('account_stamp') != old_stamp:
            continue
        entry['account_stamp'] = new_stamp
        cache.write(account, key, entry)
        moved += 1
    return moved


def prune(cache, account, now=None):
    """Remove the account's expired entries and temporary files left by killed workers.
    Call under the account's lock. Returns how many files went."""
    now = time.time() if now is None else now
    removed = 0
    for key, path in cache.entries_of(account).items():
        entry = cache._read_path(path)
        expires_at = entry.get('expires_at') if entry else None
        if entry is None or not isinstance(expires_at, (int, float)) or expires_at <= now:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
    tmp_prefix = '.%s-' % account
    try:
        names = os.listdir(cache.directory)
    except OSError:
        return removed
    for name in names:
        if name.startswith(tmp_prefix) and TMP_INFIX in name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(cache.directory, name))
                removed += 1
    return removed


# -- the lock ------------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(cache, account, name=None):
    """Hold the exclusive lock of one account's entries (the directory is made ready first).

    A holder that leaves no entry of the account (its fetch failed) removes the lock file, so a
    failed lookup leaves nothing behind. A waiter that then gets the lock of the removed file sees
    that the path names another file (or none) and locks that one instead (_private_files.lock_file).
    """
    cache.ensure_dir()
    path = cache.lock_path(account)
    deadline = None if cache.lock_timeout is None else time.monotonic() + cache.lock_timeout
    try:
        fd = lock_file(path, deadline)
    except PrivatePathError as e:
        raise TokenCacheError('Cannot open the token cache lock %s: %s' % (path, e.strerror))
    if fd is None:
        raise TokenCacheError('Another worker held the token cache lock of account %r (%s) for more than '
                              '%d s.' % (name, path, cache.lock_timeout))
    try:
        yield path
    finally:
        try:
            if not cache.entries_of(account):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        finally:
            os.close(fd)   # closing releases the flock
