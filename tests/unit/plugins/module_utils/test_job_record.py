# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's record of started jobs (_job_record.py)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _job_record

ENTRY = {'account': 'job1', 'worker': 'node1', 'job_user': 'alice', 'issuer': 'https://op.example/',
         'client_id': 'exchanger', 'token_file': '/run/user/1001/bt_u1001-job1', 'lifetime_end': 1900000000,
         'job': {'kind': 'slurm', 'id': '42'},
         'connection': {'ansible_host': 'node1.example', 'ansible_password': 'secret', 'ansible_port': None},
         'role': {'job_tokens_prefix': '/opt/oidc-tokens', 'job_tokens_password': 'secret'},
         'client_secret': 'secret'}


def test_entries_are_added_kept_private_and_hold_no_secret(tmp_path):
    path = str(tmp_path / 'state' / 'oidc-tokens' / 'jobs.json')
    changed, before, after = _job_record.update_record(path, add=[ENTRY, dict(ENTRY, worker='node2')])
    assert changed and before == {} and sorted(after) == ['job1@node1', 'job1@node2']
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    with open(path, encoding='utf-8') as handle:
        text = handle.read()
    assert 'secret' not in text     # fields and settings the record does not name are dropped
    kept = json.loads(text)['jobs']['job1@node1']
    assert kept['connection'] == {'ansible_host': 'node1.example'} and kept['job'] == {'kind': 'slurm', 'id': '42'}
    assert kept['started_at'] > 0
    assert _job_record.read_record(path) == after


def test_starting_again_changes_nothing_and_removal_takes_pairs_or_dicts(tmp_path):
    path = str(tmp_path / 'jobs.json')
    _job_record.update_record(path, add=[ENTRY, dict(ENTRY, worker='node2')])
    changed, _before, _after = _job_record.update_record(path, add=[ENTRY])
    assert not changed
    changed, _before, after = _job_record.update_record(path, remove=[['job1', 'node1']], check=True)
    assert changed and 'job1@node1' not in after
    assert 'job1@node1' in _job_record.read_record(path)           # check mode wrote nothing
    _job_record.update_record(path, remove=[['job1', 'node1'], {'account': 'job1', 'worker': 'node2'}])
    assert _job_record.read_record(path) == {}


@pytest.mark.parametrize('content, mode, message', [
    ('{"version": 1, "jobs": {}}', 0o644, 'not a private file'),
    ('<html>', 0o600, 'not valid JSON'),
    ('{"version": 7, "jobs": {}}', 0o600, 'not a record of version 1'),
])
def test_a_record_that_is_not_ours_or_not_one_is_left_alone(tmp_path, content, mode, message):
    path = tmp_path / 'jobs.json'
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(_job_record.JobRecordError, match=message):
        _job_record.update_record(str(path), add=[ENTRY])
    assert path.read_text() == content


def test_times_given_as_text_are_kept_as_numbers(tmp_path):
    # ansible-core 2.16 to 2.18 template "{{ ... }}" in a set_fact's dict as text.
    path = str(tmp_path / 'jobs.json')
    _changed, _before, after = _job_record.update_record(path, add=[dict(ENTRY, lifetime_end='1900000000', started_at='1800000000')])
    assert (after['job1@node1']['lifetime_end'], after['job1@node1']['started_at']) == (1900000000, 1800000000)
    with pytest.raises(_job_record.JobRecordError, match='time in seconds'):
        _job_record.update_record(path, add=[dict(ENTRY, worker='node2', lifetime_end='next week')])


def test_an_entry_needs_account_and_worker(tmp_path):
    with pytest.raises(_job_record.JobRecordError, match='account and a worker'):
        _job_record.update_record(str(tmp_path / 'jobs.json'), add=[{'account': 'job1'}])


def test_the_default_path_follows_xdg_state_home():
    assert _job_record.default_record_path({'XDG_STATE_HOME': '/s'}) == '/s/oidc-tokens/jobs.json'
    assert _job_record.default_record_path({}).endswith('/.local/state/oidc-tokens/jobs.json')
