"""The same user flows against every provider the collection is tested with: a real Keycloak (the provider
family of the seeds, standard token exchange) and the real node-oidc-provider with RFC 8693 added.

Exchange (oidc_token_exchange) -> oidc_token (the kept access token, a forced refresh with the rotated
refresh token persisted, a down-scoped token, an audience) -> the lookup on 200 hosts (one refresh at the
provider) -> oidc_account_info (active) -> oidc_revoke (the refresh token introspects inactive and no
longer refreshes) -> the role job_tokens on a local worker, for a job that outlives several access-token
lifetimes.

Each step runs ansible-playbook as users do; the provider's own view (introspection, its counters or
event log) is the judge.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile

import pytest

from evidence import REPO_ROOT, Ansible, load_account, play, write_private_file

PASSWORD = 'flows by provider password'
PROVIDERS = ['node-oidc-provider', 'keycloak']
AT_TTL = 10


@pytest.fixture(scope='module', params=PROVIDERS)
def op(request, provider_factory, tmp_path_factory):
    if request.param == 'keycloak':
        from keycloak import Keycloak
        instance = Keycloak(tls=True, at_ttl=AT_TTL, user_at_ttl=300,
                            workdir=str(tmp_path_factory.mktemp('keycloak'))).start()
        yield instance
        instance.stop()
    else:
        # JWT access tokens, so that the test can read their audience as it reads Keycloak's.
        yield provider_factory(tls=True, at_ttl=AT_TTL, user_at_ttl=300, access_token_format='jwt')


class Flow(object):
    """One provider's run of the flow: an account directory, a password file, Ansible with the controller's
    settings in the environment, and what the steps learned."""

    def __init__(self, op, base):
        self.op = op
        self.base = str(base)
        self.config_dir = os.path.join(self.base, 'accounts')
        self.password_file = write_private_file(os.path.join(self.base, 'password'), PASSWORD + '\n')
        self.ansible = Ansible(os.path.join(self.base, 'ansible'))
        self.exchanger = op.client('oidc-tokens-exchanger')
        self.env = {'OIDC_CONFIG_DIR': self.config_dir, 'OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE': self.password_file,
                    'OIDC_TOKENS_CA_PATH': op.ca_path, 'OIDC_TOKENS_CACHE_DIR': os.path.join(self.base, 'cache')}

    def store(self, **extra):
        return dict({'name': 'job1', 'config_dir': self.config_dir, 'encryption_password_file': self.password_file,
                     'ca_path': self.op.ca_path}, **extra)

    def run(self, tasks, **kwargs):
        result = self.ansible.playbook(play(tasks), env=self.env, **kwargs)
        return result

    def refresh_token(self):
        return load_account(self.config_dir, 'job1', PASSWORD)['refresh_token']

    def active(self, token):
        return self.op.introspect(token)['active'] is True


@pytest.fixture(scope='module')
def flow(op, tmp_path_factory):
    return Flow(op, tmp_path_factory.mktemp('flow'))


def test_exchange(flow):
    args = flow.store(issuer=flow.op.issuer, client_id=flow.exchanger['client_id'],
                      client_secret=flow.exchanger['client_secret'], subject_token=flow.op.user_access_token(
                          scope=flow.op.subject_scope), scope=flow.op.exchange_scope, lifetime=3600)
    run = flow.run([{'name': 'exchange', 'oidc.tokens.oidc_token_exchange': args, 'register': 'ex'},
                    {'name': 'again', 'oidc.tokens.oidc_token_exchange': args, 'register': 'again'},
                    {'name': 'check', 'ansible.builtin.assert': {'that': [
                        'ex is changed', 'again is not changed', 'ex.account.has_refresh_token',
                        'ex.account.issuer == %r' % flow.op.metadata()['issuer'],
                        'ex.account.offline_access == %s' % flow.op.wants_offline_access]}}])
    assert run.rc == 0, run.stdout[-4000:]
    assert flow.active(flow.refresh_token())


def test_a_refresh_token_that_dies_before_the_lifetime(flow):
    """Keycloak's exchanged refresh token lives as long as the SSO session: warned about, or refused."""
    if not flow.op.says_refresh_token_expiry:
        pytest.skip('%s does not say when its refresh tokens expire' % type(flow.op).__name__)
    args = flow.store(name='long', issuer=flow.op.issuer, client_id=flow.exchanger['client_id'],
                      client_secret=flow.exchanger['client_secret'], scope=flow.op.exchange_scope,
                      subject_token=flow.op.user_access_token(scope=flow.op.subject_scope), lifetime=30 * 86400)
    before = flow.op.counts()['revocation']
    run = flow.run([
        {'name': 'warn', 'oidc.tokens.oidc_token_exchange': args, 'register': 'warned'},
        {'name': 'check', 'ansible.builtin.assert': {'that': [
            'warned.account.refresh_token_expires_at < warned.account.lifetime_end',
            "warned.warnings | select('search', 'SSO Session Max') | list | length == 1"]}},
        {'name': 'fail', 'oidc.tokens.oidc_token_exchange': dict(args, name='refused', short_refresh_token='fail'),
         'ignore_errors': True},
        {'name': 'revoke', 'oidc.tokens.oidc_revoke': flow.store(name='long')},
    ])
    assert run.task('check')['status'] == 'ok', run.stdout[-4000:]
    assert run.task('fail')['status'] == 'ignored' and 'SSO Session Max' in run.task('fail')['msg']
    assert not os.path.exists(os.path.join(flow.config_dir, 'refused'))
    assert flow.op.counts()['revocation'] - before == 1   # 'long' at the end; the refused one is not revoked


def test_oidc_token_kept_forced_and_downscoped(flow):
    first_rt = flow.refresh_token()
    narrow, dropped = flow.op.exchange_scope[-1], flow.op.exchange_scope[-2]
    # The forced refresh first: the token it keeps in the account is then seconds old when 'kept' asks.
    run = flow.run([
        {'name': 'forced', 'oidc.tokens.oidc_token': flow.store(force=True), 'register': 'forced', 'no_log': True},
        {'name': 'kept', 'oidc.tokens.oidc_token': flow.store(min_valid_period=1), 'register': 'kept', 'no_log': True},
        {'name': 'down-scoped', 'oidc.tokens.oidc_token': flow.store(scope=['openid', narrow]), 'register': 'down',
         'no_log': True},
        {'name': 'check', 'ansible.builtin.assert': {'that': [
            'forced is changed', 'kept is not changed', 'kept.access_token == forced.access_token',
            'forced.claims.exp is defined',
            # Narrowed: what was left out is gone (Keycloak adds its default scopes, email and profile).
            '%r in down.scope and %r not in down.scope' % (narrow, dropped)]}},
    ])
    assert run.rc == 0, run.stdout[-4000:]
    rotated = flow.refresh_token()
    assert rotated != first_rt and flow.active(rotated) and not flow.active(first_rt)


def test_an_account_for_an_audience(flow):
    """The audience asked for at the exchange is in every access token the account hands out."""
    audience = flow.op.audience
    args = flow.store(name='aud', issuer=flow.op.issuer, client_id=flow.exchanger['client_id'],
                      client_secret=flow.exchanger['client_secret'], audience=[audience],
                      subject_token=flow.op.user_access_token(scope=flow.op.subject_scope),
                      scope=flow.op.exchange_scope)
    run = flow.run([
        {'name': 'exchange', 'oidc.tokens.oidc_token_exchange': args},
        {'name': 'token', 'oidc.tokens.oidc_token': flow.store(name='aud', force=True), 'register': 'aud',
         'no_log': True},
        {'name': 'check', 'ansible.builtin.assert': {'that': '%r in ([aud.claims.aud] | flatten)' % audience}},
        {'name': 'revoke', 'oidc.tokens.oidc_revoke': flow.store(name='aud')},
    ])
    assert run.rc == 0, run.stdout[-4000:]


def test_lookup_on_200_hosts_refreshes_once(flow):
    inventory = flow.ansible.write_private('many.ini', '[many]\n' + '\n'.join('h%03d' % i for i in range(200)) +
                                           '\n[many:vars]\nansible_connection=local\n')
    before = flow.op.counts()['refresh']
    tasks = [{'name': 'token', 'ansible.builtin.set_fact': {
        'ok': "{{ lookup('oidc.tokens.oidc_token', 'job1', min_valid_period=2, force=false) | length > 0 }}"}}]
    run = flow.ansible.playbook([{'name': 'many', 'hosts': 'many', 'gather_facts': False, 'tasks': tasks}],
                                inventory=inventory, forks=20, env=dict(flow.env))
    assert run.rc == 0, run.stdout[-3000:]
    assert len([r for r in run.results if r['status'] == 'ok']) == 200
    # One refresh per access-token lifetime, not one per host: the play outlives a 10-s token.
    refreshes, lifetimes = flow.op.counts()['refresh'] - before, 1 + int(run.seconds // (AT_TTL - 2))
    print('200 hosts in %.1f s: %d refreshes at the provider (at most %d token lifetimes)'
          % (run.seconds, refreshes, lifetimes))
    assert 1 <= refreshes <= lifetimes
    assert flow.active(flow.refresh_token())


def test_account_info_active_then_revoke(flow):
    rt = flow.refresh_token()
    run = flow.run([
        {'name': 'info', 'oidc.tokens.oidc_account_info': {
            'name': ['job1'], 'config_dir': flow.config_dir, 'encryption_password_file': flow.password_file,
            'ca_path': flow.op.ca_path, 'check_active': True}, 'register': 'info'},
        {'name': 'active', 'ansible.builtin.assert': {'that': 'info.accounts.job1.active'}},
        {'name': 'revoke', 'oidc.tokens.oidc_revoke': flow.store()},
        {'name': 'no more tokens', 'oidc.tokens.oidc_token': flow.store(force=True), 'ignore_errors': True},
    ])
    assert run.task('active')['status'] == 'ok', run.stdout[-3000:]
    assert run.task('revoke')['status'] in ('ok', 'changed')
    assert run.task('no more tokens')['status'] == 'ignored'
    assert not flow.active(rt)
    with pytest.raises(Exception):
        flow.op.refresh_with(rt)


def can_make_users():
    return os.geteuid() == 0 and all(shutil.which(c) for c in ('useradd', 'userdel', 'su'))


@pytest.mark.skipif(not can_make_users(), reason='needs root, useradd, userdel and su (it creates a job user)')
def test_the_role_runs_a_job_longer_than_several_access_token_lifetimes(op, tmp_path):
    user = 'oidcpf%s' % secrets.token_hex(3)
    subprocess.run(['useradd', '--create-home', '--shell', '/bin/bash', user], check=True)
    base = tempfile.mkdtemp(prefix='oidc-flows-')
    os.chmod(base, 0o755)
    try:
        ansible = Ansible(os.path.join(base, 'ansible'))
        ca_path = os.path.join(base, 'ca.pem')   # where the job user can read it
        shutil.copyfile(op.ca_path, ca_path)
        os.chmod(ca_path, 0o644)
        exchanger = op.client('oidc-tokens-exchanger')
        duration = 3 * AT_TTL
        check = ('for i in $(seq %d); do t=$(cat "$BEARER_TOKEN_FILE") || exit 9; echo "$t" >> "$HOME/seen"; '
                 'sleep 1; done' % duration)
        inventory = ansible.write_private('inventory.yml', {'all': {'children': {'workers': {'hosts': {'worker1': {
            'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3',
            'ansible_become_method': 'su', 'job_tokens_user': user, 'job_tokens_account': 'job1',
            'job_tokens_issuer': op.issuer, 'job_tokens_client_id': exchanger['client_id'],
            'job_tokens_client_secret': exchanger['client_secret'], 'job_tokens_ca_path': ca_path,
            'job_tokens_subject_token': op.user_access_token(scope=op.subject_scope),
            'job_tokens_scope': op.exchange_scope, 'job_tokens_lifetime': 3600, 'job_tokens_min_valid_period': 2,
            'job_tokens_prefix': os.path.join(base, 'prefix'), 'job_tokens_run_dir': os.path.join(base, 'run'),
            'job_tokens_install_dependencies': False, 'job_command': check, 'job_poll': 1}}}}}})
        run = ansible.playbook(os.path.join(REPO_ROOT, 'playbooks', 'job_run.yml'), inventory=inventory, timeout=600)
        assert run.rc == 0, run.stdout[-5000:] + run.stderr[-2000:]
        with open(os.path.join(pwd.getpwnam(user).pw_dir, 'seen'), encoding='utf-8') as handle:
            seen = [line.strip() for line in handle if line.strip()]
        assert len(seen) >= duration and len(set(seen)) >= 3, 'the job saw %d tokens' % len(set(seen))
    finally:
        subprocess.run(['crontab', '-r', '-u', user], capture_output=True, check=False)
        subprocess.run(['pkill', '-u', user], capture_output=True, check=False)
        subprocess.run(['userdel', '-r', user], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
