# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _lists.py: scope, audience and resource lists as users give them."""

from __future__ import annotations

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._lists import as_list, same_items, sorted_unique, space_separated


@pytest.mark.parametrize('value, expected', [
    (['openid', ' compute.read '], ['openid', 'compute.read']),
    ('openid  compute.read', ['openid', 'compute.read']),
    (['storage.read:/ a'], ['storage.read:/ a']),      # a list item is one entry
    (['a', '', '  ', None], ['a']),
    (('a', 'b'), ['a', 'b']),
    ([], []), (None, []), ('', []),
])
def test_as_list(value, expected):
    assert as_list(value) == expected


@pytest.mark.parametrize('value, expected', [(['openid', ' compute.read '], 'openid compute.read'),
                                             ('openid  compute.read', 'openid compute.read'),
                                             ([], ''), (None, ''), ('', '')])
def test_scope_lists(value, expected):
    assert space_separated(value) == expected


def test_order_and_repeats_do_not_matter_when_comparing():
    assert sorted_unique('b a b') == ['a', 'b']
    assert same_items('openid compute.read', ['compute.read', 'openid', 'openid'])
    assert same_items(None, [])
    assert not same_items('openid', 'openid compute.read')
