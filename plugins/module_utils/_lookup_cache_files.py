# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the lookup's token cache keeps an account's entries, and how they are dropped.

The cache itself is the lookup's (plugin_utils/_lookup_cache.py). This part lives in module_utils
because a module that revokes or removes an account on the controller must drop that account's
cached access tokens too, and modules can only import module_utils. Standard library only.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

ENTRY_SUFFIX = '.json'
_HASH_CHARS = 32


def digest(value):
    """A short stable hash of a JSON-able value (names cache files; reveals nothing of a token)."""
    data = json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    return hashlib.sha256(data.encode('ascii')).hexdigest()[:_HASH_CHARS]


def runtime_cache_dir(environ=None):
    """``$XDG_RUNTIME_DIR/oidc-tokens`` (a per-user tmpfs on systemd systems), or None without one."""
    runtime = (os.environ if environ is None else environ).get('XDG_RUNTIME_DIR')
    return os.path.join(runtime, 'oidc-tokens') if runtime and os.path.isabs(runtime) else None


def default_cache_dir(environ=None):
    """The runtime directory's ``oidc-tokens`` when there is one, else ``~/.cache/oidc-tokens`` (on a disk)."""
    return runtime_cache_dir(environ) or os.path.join(os.path.expanduser('~'), '.cache', 'oidc-tokens')


def account_id(config_dir, name):
    """The hash naming an account's entries and lock: absolute config_dir and account name."""
    return digest(['account', str(config_dir), str(name)])


def drop_account_entries(config_dir, name, cache_dir=None):
    """Remove every cached access token of account ``name`` of ``config_dir``; returns how many.

    ``cache_dir``: the lookup's cache directory; by default $OIDC_TOKENS_CACHE_DIR (the lookup's own
    environment variable), else the lookup's default. A directory that is not the running user's own
    is left alone. Never raises for a missing directory.
    """
    directory = cache_dir or os.environ.get('OIDC_TOKENS_CACHE_DIR') or default_cache_dir()
    directory = os.path.abspath(os.path.expanduser(str(directory)))
    try:
        st = os.lstat(directory)
        names = os.listdir(directory) if st.st_uid == os.geteuid() else []
    except OSError:
        return 0
    prefix = '%s-' % account_id(config_dir, name)
    dropped = 0
    for entry in names:
        if entry.startswith(prefix) and entry.endswith(ENTRY_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))
                dropped += 1
    return dropped
