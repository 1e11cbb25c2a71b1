# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Account names and the account directory: the account store's rules, without its cryptography.

A separate file so that the lookup's cache-hit path can find an account's file (to see whether a
cached token still belongs to it) while importing nothing but the standard library.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import os
import re

from ansible_collections.oidc.tokens.plugins.module_utils._errors import InvalidAccountNameError

# Names oidc-agent keeps in its directory that are not accounts.
_RESERVED_NAMES = frozenset(('config', 'issuer.config', 'pubclients.config'))
_RESERVED_SUFFIXES = ('.config', '.stats', '.log')
_NAME_RE = re.compile(r'^[A-Za-z0-9_@+=,:~-][A-Za-z0-9._@+=,:~-]*$')
MAX_NAME_LENGTH = 128


def is_reserved_name(name):
    """True for file names oidc-agent keeps in its directory that are not accounts."""
    if name in _RESERVED_NAMES:
        return True
    if name.endswith(_RESERVED_SUFFIXES):
        return True
    return '.clientconfig' in name


def validate_name(name):
    """Return ``name`` if it is a safe account short name, else raise InvalidAccountNameError."""
    if not isinstance(name, str):
        raise InvalidAccountNameError('Account name must be a string, got %s'
                                      % type(name).__name__)
    shown = name if len(name) <= MAX_NAME_LENGTH and name.isprintable() else repr(name[:40])
    why = None
    if not name:
        why = 'it is empty'
    elif '\x00' in name:
        why = 'it contains a NUL byte'
    elif '/' in name or '\\' in name:
        why = 'it contains a path separator'
    elif '..' in name:
        why = "it contains '..'"
    elif name.startswith('.'):
        why = "it starts with '.' (hidden names are the store's lock and temporary files)"
    elif len(name) > MAX_NAME_LENGTH:
        why = 'it is longer than %d characters' % MAX_NAME_LENGTH
    elif is_reserved_name(name):
        why = 'oidc-agent reserves it (config, *.config, *.clientconfig*, *.stats, *.log)'
    elif not _NAME_RE.fullmatch(name):
        why = 'only letters, digits and . _ - @ + = , : ~ are allowed'
    if why:
        raise InvalidAccountNameError('Invalid account name %r: %s.' % (shown, why),
                                      account=shown)
    return name


def default_config_dir(config_dir=None):
    """oidc-agent's order: the option, else $OIDC_CONFIG_DIR, else ~/.config/oidc-agent.

    ``~`` is the running user's home ($HOME, as oidc-agent uses it). When ~/.config/oidc-agent
    does not exist but the older ~/.oidc-agent does, that one is used, as oidc-agent does.
    """
    if config_dir:
        return os.path.abspath(os.path.expanduser(str(config_dir)))
    env = os.environ.get('OIDC_CONFIG_DIR')
    if env:
        return os.path.abspath(os.path.expanduser(env))
    home = os.path.expanduser('~')
    primary = os.path.join(home, '.config', 'oidc-agent')
    legacy = os.path.join(home, '.oidc-agent')
    if not os.path.isdir(primary) and os.path.isdir(legacy):
        return legacy
    return primary
