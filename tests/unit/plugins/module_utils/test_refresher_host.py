# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of what oidc_refresher does for a job user's refresher (_refresher_host.py): the paths, the
configuration, the program bundle and the schedule (systemd units, the crontab entry)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _refresher_host as host
from ansible_collections.oidc.tokens.plugins.module_utils._errors import InvalidAccountNameError

OPTIONS = {'min_valid_period': 60, 'lifetime_end': 1900000000, 'retry_max': 30, 'scheduler': 'cron', 'job_poll': 30,
           'ca_path': '/etc/ca.pem', 'validate_certs': True, 'timeout': 10, 'retries': 3}


def job_user(tmp_path, uid=4242):
    return host.JobUser('alice', uid, uid, str(tmp_path / 'home'), [uid])


def test_paths_of_a_user_without_runtime_directory(tmp_path):
    paths = host.job_paths(job_user(tmp_path), 'job1', '/opt/oidc-tokens', '/run/oidc-tokens')
    home = str(tmp_path / 'home')
    assert paths['token_file'] == '/run/oidc-tokens/4242/bt_u4242-job1'
    assert paths['password_file'] == '/run/oidc-tokens/4242/job1.password' and paths['password_file_managed']
    assert paths['config_dir'] == home + '/.config/oidc-agent'
    assert paths['refresher_config'] == home + '/.config/oidc-tokens/refresher/job1.json'
    assert paths['state_dir'] == home + '/.local/state/oidc-tokens'
    assert paths['bin'] == '/opt/oidc-tokens/bin/oidc-tokens-refresher'
    assert paths['unit'] == 'oidc-tokens-refresher-alice-job1'


def test_paths_follow_the_options(tmp_path):
    user = job_user(tmp_path)
    in_tmp = host.job_paths(user, 'job1', '/p', '/r', token_file_in_tmp=True, config_dir='/c')
    assert in_tmp['token_file'] == '/tmp/bt_u4242' and in_tmp['config_dir'] == '/c'
    own_file = host.job_paths(user, 'job1', '/p', '/r', password_file='/secrets/pw')
    assert own_file['password_file'] == '/secrets/pw' and not own_file['password_file_managed']
    written = host.job_paths(user, 'job1', '/p', '/r', password_file='/secrets/pw', password_given=True)
    assert written['password_file_managed']
    command = host.job_paths(user, 'job1', '/p', '/r', password_command='pass show job1')
    assert command['password_file'] is None and command['password_command'] == 'pass show job1'
    assert not command['password_file_managed']


def test_a_name_a_unit_cannot_hold_is_mangled_and_kept_apart():
    first, second = host.unit_name('alice', 'job@site'), host.unit_name('alice', 'job+site')
    assert first.startswith('oidc-tokens-refresher-alice-job_site-') and second.startswith(
        'oidc-tokens-refresher-alice-job_site-')
    assert first != second


@pytest.mark.parametrize('prefix, run_dir', [('relative', '/run/x'), ('/opt/a b', '/run/x'), ('/opt', '/run/$x')])
def test_paths_written_into_units_and_cron_lines_are_refused(tmp_path, prefix, run_dir):
    with pytest.raises(host.RefresherSetupError, match='must be an absolute path'):
        host.job_paths(job_user(tmp_path), 'job1', prefix, run_dir)


def test_the_account_name_follows_the_store_rule(tmp_path):
    with pytest.raises(InvalidAccountNameError):
        host.job_paths(job_user(tmp_path), '../etc', '/p', '/r')


def test_a_missing_or_unsafe_user_is_refused():
    with pytest.raises(host.RefresherSetupError, match='does not exist'):
        host.JobUser.find('no-such-user-oidc-tokens')
    with pytest.raises(host.RefresherSetupError, match='must consist of'):
        host.JobUser.find('alice;rm')


def test_the_configuration_names_the_password_source_not_the_password(tmp_path):
    paths = host.job_paths(job_user(tmp_path), 'job1', '/p', '/r')
    config = host.refresher_config(paths, OPTIONS)
    assert config['password_file'] == paths['password_file'] and config['password_command'] is None
    assert config['provider'] == {'ca_path': '/etc/ca.pem', 'validate_certs': True, 'timeout': 10, 'retries': 3}
    assert config['lifetime_end'] == 1900000000 and config['scheduler'] == 'cron'
    assert config['job'] is None and config['job_poll'] == 30
    json.dumps(config)    # what the module writes
    job = {'kind': 'slurm', 'id': '42'}
    assert host.refresher_config(paths, dict(OPTIONS, job=job))['job'] == job


def test_the_systemd_units_run_the_loop_as_the_job_user(tmp_path):
    paths = host.job_paths(job_user(tmp_path), 'job1', '/opt/oidc-tokens', '/run/oidc-tokens')
    units = host.systemd_units(job_user(tmp_path), paths)
    service = units['service'].splitlines()
    assert 'User=alice' in service and 'ExecStart=/opt/oidc-tokens/bin/oidc-tokens-refresher run job1' in service
    assert 'SuccessExitStatus=3 4 5' in service and 'Restart=on-failure' in service
    assert 'Unit=oidc-tokens-refresher-alice-job1.service' in units['timer'].splitlines()


def test_the_bundle_is_the_same_bytes_each_time_and_runs(tmp_path):
    first, second = host.program_bundle(), host.program_bundle()
    assert first == second
    program = tmp_path / 'oidc-tokens-refresher.pyz'
    program.write_bytes(first)
    with zipfile.ZipFile(str(program)) as archive:
        names = archive.namelist()
    assert '__main__.py' in names
    assert 'ansible_collections/oidc/tokens/plugins/module_utils/_refresher.py' in names
    assert 'ansible_collections/oidc/tokens/plugins/module_utils/_tokens.py' in names
    # Run without the checkout on the path: the bundle holds everything it imports.
    env = dict((k, v) for k, v in os.environ.items() if k not in ('PYTHONPATH',))
    done = subprocess.run([sys.executable, '-S', str(program), '--help'], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), check=False)
    assert done.returncode == 0, done.stderr
    assert 'teardown' in done.stdout and 'check' in done.stdout


def test_the_user_environment_keeps_proxies_and_ca_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv('https_proxy', 'http://proxy.example.org:3128')
    monkeypatch.setenv('REQUESTS_CA_BUNDLE', '/etc/site-ca.pem')
    monkeypatch.setenv('OIDC_SECRET_OF_THE_PLAY', 'not for the job user')
    env = job_user(tmp_path).env()
    assert env['https_proxy'] == 'http://proxy.example.org:3128' and env['REQUESTS_CA_BUNDLE'] == '/etc/site-ca.pem'
    assert 'OIDC_SECRET_OF_THE_PLAY' not in env and env['HOME'] == str(tmp_path / 'home') and env['USER'] == 'alice'


def test_run_as_the_running_user_calls_directly(tmp_path):
    me = pwd.getpwuid(os.geteuid())
    user = host.JobUser(me.pw_name, me.pw_uid, me.pw_gid, me.pw_dir, [me.pw_gid])
    assert host.run_as(user, lambda a, b: a + b, 2, 3) == 5


@pytest.fixture
def crontab(tmp_path, monkeypatch):
    """A crontab command that keeps one user's table in a file (crontab -u USER -l | -)."""
    table = tmp_path / 'table'
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    script = bin_dir / 'crontab'
    script.write_text('#!/bin/sh\n'
                      'table=%s\n'
                      'case "$3" in\n'
                      '  -l) [ -f "$table" ] || { echo "no crontab for $2" >&2; exit 1; }; cat "$table" ;;\n'
                      '  -) cat > "$table" ;;\n'
                      'esac\n' % table)
    script.chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (bin_dir, os.environ['PATH']))
    return table


def test_the_cron_entry_is_added_once_and_removed_leaving_other_lines(tmp_path, crontab):
    user, paths = job_user(tmp_path), host.job_paths(job_user(tmp_path), 'job1', '/opt/o', '/run/o')
    crontab.write_text('MAILTO=alice\n17 * * * * backup\n')
    assert host.set_cron_entry(user, paths, True, check=True)
    assert crontab.read_text() == 'MAILTO=alice\n17 * * * * backup\n'   # check mode writes nothing
    assert host.set_cron_entry(user, paths, True, check=False)
    lines = crontab.read_text().splitlines()
    assert lines == ['MAILTO=alice', '17 * * * * backup', '#Ansible: oidc.tokens refresher of account job1',
                     '* * * * * /opt/o/bin/oidc-tokens-refresher run --detach job1 >/dev/null 2>&1']
    assert host.cron_entry_present(user, paths)
    assert not host.set_cron_entry(user, paths, True, check=False)
    assert host.set_cron_entry(user, paths, False, check=False)
    assert crontab.read_text().splitlines() == ['MAILTO=alice', '17 * * * * backup']
    assert not host.set_cron_entry(user, paths, False, check=False)


def test_a_user_without_crontab_gets_one(tmp_path, crontab):
    user, paths = job_user(tmp_path), host.job_paths(job_user(tmp_path), 'job1', '/opt/o', '/run/o')
    assert not host.set_cron_entry(user, paths, False, check=False)
    assert host.set_cron_entry(user, paths, True, check=False)
    assert len(crontab.read_text().splitlines()) == 2


def test_an_account_that_follows_a_job_is_not_taken_over_by_another():
    slurm = {'kind': 'slurm', 'id': '42'}
    host.refuse_another_job('job1', None, slurm)                           # a new account
    host.refuse_another_job('job1', {'job': None}, slurm)                  # tied once the job has its id
    host.refuse_another_job('job1', {'job': slurm}, dict(slurm))           # the same job started again
    with pytest.raises(host.RefresherSetupError, match="Account 'job1' already holds the tokens of slurm job 42, "
                                                       "while this task names slurm job 43"):
        host.refuse_another_job('job1', {'job': slurm}, {'kind': 'slurm', 'id': '43'})
    with pytest.raises(host.RefresherSetupError, match='names no job'):
        host.refuse_another_job('job1', {'job': slurm}, None)


def test_the_token_file_of_another_account_of_the_user_is_found(tmp_path):
    from ansible_collections.oidc.tokens.plugins.module_utils import _refresher
    directory = tmp_path / 'refresher'
    directory.mkdir(mode=0o700)
    accounts = tmp_path / 'oidc-agent'
    accounts.mkdir()
    for name, token_file in (('job1', '/run/u/bt_u1-job1'), ('job2', '/run/u/shared'), ('job3', '/run/u/shared'),
                             ('ended', '/run/u/shared')):
        path = directory / ('%s.json' % name)
        path.write_text(json.dumps({'token_file': token_file, 'config_dir': str(accounts)}))
        path.chmod(0o600)
        if name != 'ended':      # its tokens ended with its job: the account is gone, the configuration left
            (accounts / name).write_text('account')
    assert _refresher.token_file_holders(str(directory), '/run/u/shared', 'job3') == ['job2']
    assert _refresher.token_file_holders(str(directory), '/run/u/bt_u1-job1', 'job1') == []   # its own
    assert _refresher.token_file_holders(str(tmp_path / 'none'), '/run/u/shared', 'job4') == []
    paths = host.job_paths(job_user(tmp_path), 'job2', '/p', '/r')
    assert paths['token_file'] == '/r/4242/bt_u4242-job2'    # two accounts, two files by default


def test_an_exclusive_start_refuses_an_account_that_has_a_refresher(monkeypatch, tmp_path):
    user = host.JobUser(pwd.getpwuid(os.geteuid()).pw_name, os.geteuid(), os.getegid(), str(tmp_path), [])
    paths = host.job_paths(user, 'job1', '/p', '/r')
    host.refuse_conflicts(user, paths, None, exclusive=True)          # no refresher yet: a new job may start
    os.makedirs(paths['refresher_dir'], mode=0o700)
    with open(paths['refresher_config'], 'w', encoding='utf-8') as handle:
        handle.write('{"token_file": "%s", "config_dir": "%s"}' % (paths['token_file'], paths['config_dir']))
    os.chmod(paths['refresher_config'], 0o600)
    host.refuse_conflicts(user, paths, None, exclusive=True)          # a configuration without its account holds nothing
    os.makedirs(paths['config_dir'])
    with open(os.path.join(paths['config_dir'], 'job1'), 'w', encoding='utf-8') as handle:
        handle.write('account')
    host.refuse_conflicts(user, paths, None)                          # the same job started again
    with pytest.raises(host.JobConflictError, match="Account 'job1' of .* has a refresher already"):
        host.refuse_conflicts(user, paths, None, exclusive=True)
    other = host.job_paths(user, 'job2', '/p', '/r', token_file=paths['token_file'])
    with pytest.raises(host.JobConflictError, match='is the bearer-token file of account job1'):
        host.refuse_conflicts(user, other, None)
