# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the private-file primitives (_private_files.py) the store, the lookup cache and the refresher share."""

from __future__ import annotations

import os
import stat
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._errors import PrivatePathError
from ansible_collections.oidc.tokens.plugins.module_utils._private_files import (
    create_temp_file, ensure_private_dir, lock_file, replace_with_temp_file, try_flock)


def mode(path):
    return stat.S_IMODE(os.lstat(str(path)).st_mode)


def test_ensure_private_dir_creates_and_tightens(tmp_path):
    old_umask = os.umask(0o022)
    try:
        assert ensure_private_dir(str(tmp_path / 'parent' / 'dir')) == (True, None)
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / 'parent' / 'dir') == 0o700 and mode(tmp_path / 'parent') == 0o700
    assert ensure_private_dir(str(tmp_path / 'parent' / 'dir')) == (False, None)
    (tmp_path / 'loose').mkdir()
    (tmp_path / 'loose').chmod(0o755)
    assert ensure_private_dir(str(tmp_path / 'loose')) == (False, 0o755)
    assert mode(tmp_path / 'loose') == 0o700


def test_ensure_private_dir_refusals_say_why(tmp_path):
    (tmp_path / 'file').write_text('x')
    (tmp_path / 'real').mkdir(mode=0o700)
    (tmp_path / 'link').symlink_to(tmp_path / 'real')
    with pytest.raises(PrivatePathError) as info:
        ensure_private_dir(str(tmp_path / 'file'))
    assert info.value.reason == 'type'
    with pytest.raises(PrivatePathError) as info:
        ensure_private_dir(str(tmp_path / 'link'), follow_links=False)
    assert info.value.reason == 'link'
    assert ensure_private_dir(str(tmp_path / 'link')) == (False, None)
    if os.geteuid() == 0:
        (tmp_path / 'theirs').mkdir(mode=0o700)
        os.chown(str(tmp_path / 'theirs'), 65534, 65534)
        with pytest.raises(PrivatePathError) as info:
            ensure_private_dir(str(tmp_path / 'theirs'))
        assert (info.value.reason, info.value.uid) == ('owner', 65534)


def test_temp_file_replaces_atomically_and_is_removed_on_failure(tmp_path, monkeypatch):
    target = tmp_path / 'entry.json'
    fd, tmp = create_temp_file(str(target))
    assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith('.entry.json.tmp-')
    replace_with_temp_file(fd, tmp, str(target), b'one', sync=False)
    assert target.read_bytes() == b'one' and mode(target) == 0o600 and os.listdir(str(tmp_path)) == ['entry.json']

    def boom(src, dst):
        raise OSError(28, 'No space left on device')

    fd, tmp = create_temp_file(str(target))
    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(OSError):
        replace_with_temp_file(fd, tmp, str(target), b'two')
    monkeypatch.undo()
    assert target.read_bytes() == b'one' and os.listdir(str(tmp_path)) == ['entry.json']


def test_lock_file_waits_until_its_deadline(tmp_path):
    path = str(tmp_path / '.a.lock')
    fd = lock_file(path)
    try:
        assert mode(path) == 0o600
        other = os.open(path, os.O_RDWR)
        try:
            assert try_flock(other) is False
        finally:
            os.close(other)
        start = time.monotonic()
        assert lock_file(path, time.monotonic() + 0.2) is None
        assert time.monotonic() - start >= 0.2
    finally:
        os.close(fd)
    fd = lock_file(path, time.monotonic() + 0.2)
    assert fd is not None
    os.close(fd)


def test_lock_file_refuses_a_symbolic_link(tmp_path):
    (tmp_path / 'elsewhere').write_text('')
    (tmp_path / '.a.lock').symlink_to(tmp_path / 'elsewhere')
    with pytest.raises(PrivatePathError) as info:
        lock_file(str(tmp_path / '.a.lock'))
    assert info.value.reason == 'open'
