# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _imports.py: optional libraries imported on first use, one message when one is missing."""

from __future__ import annotations

import json
import sys

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _account_file, _oauth
from ansible_collections.oidc.tokens.plugins.module_utils._errors import MissingDependencyError, OidcTokensError
from ansible_collections.oidc.tokens.plugins.module_utils._imports import CRYPTOGRAPHY, NACL, REQUESTS, OptionalLibrary


def test_a_library_is_imported_on_the_first_call_only(monkeypatch):
    monkeypatch.delitem(sys.modules, 'json.tool', raising=False)
    library = OptionalLibrary('json', ('json.tool',))
    assert library.available is None and 'json.tool' not in sys.modules
    assert library.import_error() is None
    assert 'json.tool' in sys.modules
    assert library.require(OidcTokensError, 'here') is json
    assert library.module.tool is sys.modules['json.tool']


def test_a_missing_library_is_remembered_and_named_with_its_package(monkeypatch):
    library = OptionalLibrary('Frobnicator', ('oidc_tokens_no_such_module.sub',), package='frobnicator-py')
    error = library.import_error()
    assert 'oidc_tokens_no_such_module' in error and 'Traceback' in error
    # Remembered: a module appearing later does not change the answer within the process.
    monkeypatch.setitem(sys.modules, 'oidc_tokens_no_such_module', json)
    assert library.import_error() == error and library.available is False
    with pytest.raises(MissingDependencyError) as info:
        library.require(MissingDependencyError, 'to frobnicate')
    message = str(info.value)
    assert message.startswith('The Python library Frobnicator is required to frobnicate (pip install frobnicator-py).')
    assert message.endswith("No module named 'oidc_tokens_no_such_module'")
    assert 'Traceback' not in message


def test_the_collection_names_its_optional_libraries_and_packages():
    assert (REQUESTS.name, REQUESTS.package) == ('requests', 'requests')
    assert (NACL.name, NACL.package) == ('PyNaCl', 'PyNaCl')
    assert (CRYPTOGRAPHY.name, CRYPTOGRAPHY.package) == ('cryptography', 'cryptography')


@pytest.mark.parametrize('library, purpose, call', [
    (REQUESTS, 'on this host', lambda: _oauth.OAuthClient('https://op.example.org', 'c')),
    (CRYPTOGRAPHY, 'to verify JWTs', lambda: _oauth.verify_jwt('a.b.c', {'keys': []}, 'https://op.example.org')),
    (NACL, 'for the oidc.tokens account store', lambda: _account_file.derive_key(b'pw', b'0' * 16)),
], ids=['requests', 'cryptography', 'PyNaCl'])
def test_each_user_of_a_missing_library_gives_the_one_message(monkeypatch, library, purpose, call):
    monkeypatch.setattr(library, 'available', False)
    monkeypatch.setattr(library, 'error', 'ImportError: blocked')
    with pytest.raises(OidcTokensError) as info:
        call()
    assert str(info.value) == ('The Python library %s is required %s%s (pip install %s). Importing it failed: '
                               'ImportError: blocked' % (library.name, purpose,
                                                         ' on the host where it runs' if library is NACL else '',
                                                         library.package))
