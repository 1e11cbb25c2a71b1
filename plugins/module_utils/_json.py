# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JSON with a depth limit, for what the provider sends: its HTTP answers (_oauth) and JWTs (_jwt).

Standard library only. Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import json

# OAuth answers and JWT claims are a few levels deep. Deeper JSON is refused: json.loads of thousands
# of levels raises RecursionError, and a few hundred would still break whatever walks the value later
# (Ansible's result handling, json.dumps) with one.
MAX_JSON_DEPTH = 64


class JsonTooDeep(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH, or deeper than the parser's recursion allows."""


def json_too_deep(value, limit=MAX_JSON_DEPTH):
    """True when lists and objects in value nest more than limit levels. Iterative: no recursion."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def load_json(text):
    """json.loads, but JSON nested too deeply raises JsonTooDeep (a ValueError), never RecursionError."""
    too_deep = False
    try:
        value = json.loads(text)
    except RecursionError:
        too_deep = True
    # Raised outside the except block, so no RecursionError rides along as the context.
    if too_deep or json_too_deep(value):
        raise JsonTooDeep('JSON nested more than %d levels deep.' % MAX_JSON_DEPTH)
    return value
