# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a refresher takes for the end of its job (_jobs.py). squeue and systemctl are scripts here that answer
as the real ones do (their output is what Slurm 22.05 and systemd print); tests/functional and the Slurm suite
run the real ones."""

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _jobs


def test_a_process_is_described_with_its_start_time_and_followed_until_it_exits():
    proc = subprocess.Popen(['sleep', '60'])
    try:
        job = _jobs.describe_job('pid', proc.pid)
        assert job['start_time'] == _jobs.process_start_time(proc.pid) and job['start_time'] > 0
        assert _jobs.job_state(job)[0] == 'running'
    finally:
        proc.kill()
        proc.wait()
    assert _jobs.job_state(job) == ('ended', 'process %d has exited' % proc.pid)


def test_a_command_name_with_spaces_and_parentheses_does_not_confuse_the_start_time(tmp_path):
    program = tmp_path / 'a (b) c'
    os.symlink('/bin/sleep', str(program))
    proc = subprocess.Popen([str(program), '60'])
    try:
        with open('/proc/%d/stat' % proc.pid, encoding='ascii') as handle:
            expected = int(handle.read().rsplit(')', 1)[1].split()[19])
        assert _jobs.process_start_time(proc.pid) == expected
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize('kind, ident, message', [
    ('pid', 'abc', 'process id'), ('pid', '1', 'process id'), ('pid', '999999999', 'no process'),
    ('slurm', '12; rm -rf /', 'Slurm job id'), ('slurm', '', 'Slurm job id'),
    ('systemd', 'job', 'unit name'), ('systemd', '../x.service', 'unit name'), ('condor', '1', 'Unknown job kind'),
])
def test_a_job_that_cannot_be_followed_is_refused(kind, ident, message):
    with pytest.raises(_jobs.JobError, match=message):
        _jobs.describe_job(kind, ident)


def test_slurm_array_elements_and_a_configuration_are_kept():
    assert _jobs.describe_job('slurm', '77_3', slurm_conf='/etc/x/slurm.conf') == {
        'kind': 'slurm', 'id': '77_3', 'slurm_conf': '/etc/x/slurm.conf'}
    with pytest.raises(_jobs.JobError, match='absolute'):
        _jobs.describe_job('slurm', '77', slurm_conf='slurm.conf')


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A directory first on PATH where a test writes squeue or systemctl."""
    directory = tmp_path / 'bin'
    directory.mkdir()
    monkeypatch.setenv('PATH', '%s:%s' % (directory, os.environ['PATH']))

    def write(name, stdout='', stderr='', code=0):
        script = directory / name
        script.write_text('#!/bin/sh\necho "$SLURM_CONF $*" > %s/args\nprintf %%s "%s"\nprintf %%s "%s" >&2\nexit %d\n'
                          % (directory, stdout, stderr, code))
        script.chmod(0o755)
        return directory / 'args'
    return write


@pytest.mark.parametrize('stdout, stderr, code, state', [
    ('RUNNING', '', 0, 'running'),
    ('PENDING', '', 0, 'running'),
    ('COMPLETING', '', 0, 'running'),      # the epilog still runs and may use the token
    ('COMPLETED', '', 0, 'ended'),
    ('CANCELLED', '', 0, 'ended'),
    ('NODE_FAIL', '', 0, 'ended'),
    ('', '', 0, 'ended'),
    ('', 'slurm_load_jobs error: Invalid job id specified', 1, 'ended'),
    ('', 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)', 1, 'unknown'),
])
def test_what_squeue_says_of_a_job(fake_bin, stdout, stderr, code, state):
    args = fake_bin('squeue', stdout, stderr, code)
    assert _jobs.job_state({'kind': 'slurm', 'id': '42', 'slurm_conf': '/x/slurm.conf'})[0] == state
    assert args.read_text().split() == ['/x/slurm.conf', '--noheader', '--states=all', '--jobs=42', '--format=%T']


def test_no_squeue_is_unknown_not_ended(monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))
    assert _jobs.job_state({'kind': 'slurm', 'id': '42'})[0] == 'unknown'


@pytest.mark.parametrize('stdout, code, state', [
    ('active', 0, 'running'), ('deactivating', 0, 'running'), ('inactive', 0, 'ended'), ('failed', 0, 'ended'),
    ('', 1, 'unknown'),
])
def test_what_systemctl_says_of_a_unit(fake_bin, stdout, code, state):
    args = fake_bin('systemctl', stdout, 'Failed to connect to bus' if code else '', code)
    assert _jobs.job_state({'kind': 'systemd', 'id': 'job.service', 'scope': 'user'})[0] == state
    assert args.read_text().split()[-5:] == ['--user', 'show', '--property=ActiveState', '--value', 'job.service']


def test_the_loop_looks_at_its_job_every_job_poll_seconds_without_refreshing_early(tmp_path):
    from ansible_collections.oidc.tokens.plugins.module_utils import _refresher
    data = {'token_file': str(tmp_path / 'bt'), 'password_file': str(tmp_path / 'pw'), 'min_valid_period': 60}
    plain = _refresher.Refresher(_refresher.make_config('job1', 'x.json', data))
    following = _refresher.Refresher(_refresher.make_config('job1', 'x.json', dict(
        data, job={'kind': 'slurm', 'id': '42'}, job_poll=5)))
    now = 1000000.0
    assert plain.next_wakeup(now + 200, now)[0] > 100
    assert following.next_wakeup(now + 200, now) == (5, None)   # None: the next pass refreshes only when due
    delay, min_valid = following.next_wakeup(now + 65, now)
    assert delay < 5 and min_valid > 60                           # due before the next look: refreshed then
    with pytest.raises(_refresher.ConfigError, match='kind'):
        _refresher.make_config('job1', 'x.json', dict(data, job={'kind': 'condor'}))
