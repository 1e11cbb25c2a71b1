# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scope, audience and resource lists, as users give them and as accounts and requests hold them.

Users give a list or a space-separated string (OAuth's scope is one space-separated string; an
account file keeps scope and audience that way too). Standard library only: the lookup's cache-hit
path may use it.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations


def as_list(value):
    """A list of strings from a list (blank items dropped), a space-separated string, or nothing."""
    if not value:
        return []
    if isinstance(value, str):
        return value.split()
    try:
        items = list(value)
    except TypeError:   # a single number or the like: one entry
        return [str(value)]
    # A list item is one entry even with a space in it; only the surrounding blanks go.
    return [item for item in (str(v).strip() for v in items if v) if item]


def space_separated(value):
    """The entries as one space-separated string ('' for none): OAuth's scope parameter, an account's scope."""
    return ' '.join(as_list(value))


def sorted_unique(value):
    """The entries sorted, each once: for comparing two lists and for cache keys, where order and repeats do not matter."""
    return sorted(set(as_list(value)))


def same_items(value, other):
    """True when both name the same entries, in any order."""
    return sorted_unique(value) == sorted_unique(other)
