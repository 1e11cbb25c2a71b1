"""The device flow (RFC 8628) end to end: oidc.tokens.oidc_device_login in plays run with ansible-playbook against
the built collection and the test provider (node-oidc-provider's device flow, with its own login and consent
pages), and a scripted user (tests/support/device_user.py) who reads the code from the play's output while the
play waits, then approves, denies, or never answers. The provider records every poll of every device code
(Provider.device_codes), which is how intervals and slow_down are measured. The last tests log in at Keycloak
(its device pages, login and consent; tests/keycloak/realm.json has the device clients).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from device_user import DeviceUser, KeycloakDeviceUser   # conftest puts tests/support on sys.path
from fault_proxy import FaultProxy
from keycloak import Keycloak

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import DeviceFlowError, OAuthClient

BIN = os.path.dirname(sys.executable)
PUBLIC = 'oidc-tokens-device'
CONFIDENTIAL = 'oidc-tokens-device-confidential'
PASSWORD = 'device flow account password 7d1e'
LOGIN_LINE = re.compile(r'open (\S+) and enter the code (\S+)')
COMPLETE_LINE = re.compile(r'^\s+or open (\S+)')

LOGIN_TASK = '''
    - name: Log in with the device flow
      oidc.tokens.oidc_device_login:
        name: "{{ account }}"
        issuer: "{{ issuer }}"
        client_id: "{{ client_id }}"
        client_secret: "{{ lookup('ansible.builtin.env', 'DEVICE_CLIENT_SECRET') or omit }}"
        scope: [openid, profile, storage.read:/]
        config_dir: "{{ config_dir }}"
        encryption_password_env: "{{ password_variable | default('ACCOUNT_PASSWORD') }}"
        login_timeout: "{{ login_timeout | default(omit) }}"
        device_code: "{{ internal_device_code | default(omit) }}"
        force: "{{ force | default(false) }}"
        ca_path: "{{ ca_path | default(omit) }}"
      register: login
'''

USE_TASKS = '''
    - name: An access token from the account
      oidc.tokens.oidc_token:
        name: "{{ account }}"
        config_dir: "{{ config_dir }}"
        encryption_password_env: ACCOUNT_PASSWORD
        ca_path: "{{ ca_path | default(omit) }}"
        min_valid_period: 5
      register: first
      no_log: true

    - name: The token works at userinfo
      ansible.builtin.uri:
        url: "{{ userinfo }}"
        ca_path: "{{ ca_path | default(omit) }}"
        headers: {Authorization: "Bearer {{ first.access_token }}"}
      register: me
      no_log: true

    - name: A refreshed access token
      oidc.tokens.oidc_token:
        name: "{{ account }}"
        config_dir: "{{ config_dir }}"
        encryption_password_env: ACCOUNT_PASSWORD
        ca_path: "{{ ca_path | default(omit) }}"
        force: true
      register: second
      no_log: true

    - name: The refreshed token works at userinfo too
      ansible.builtin.uri:
        url: "{{ userinfo }}"
        ca_path: "{{ ca_path | default(omit) }}"
        headers: {Authorization: "Bearer {{ second.access_token }}"}
      register: me_again
      no_log: true

    - name: Keep both tokens for the test (to look for them in the output)
      ansible.builtin.copy:
        dest: "{{ out_dir }}/{{ item.0 }}"
        content: "{{ item.1 }}"
        mode: '0600'
      loop: [['first', "{{ first.access_token }}"], ['second', "{{ second.access_token }}"]]
      no_log: true

    - name: Both tokens belong to the user who logged in, and the refresh gave a new one
      ansible.builtin.assert:
        that:
          - me.json.sub == user_sub
          - me_again.json.sub == user_sub
          - first.access_token != second.access_token
          - login.changed and login.logged_in
          - login.account.source == 'device_flow'
          - "'offline_access' in login.account.scope"
          - login.access_token is not defined and login.refresh_token is not defined
      no_log: true
'''


def play_text(use=False):
    return '---\n- name: Device login\n  hosts: localhost\n  gather_facts: false\n  tasks:\n' + LOGIN_TASK + (
        USE_TASKS if use else '')


class RunningPlay:
    """ansible-playbook in the background; its output is read line by line while it runs, as a user reads it."""

    def __init__(self, args, env, cwd):
        self.lines = []
        self.started = time.monotonic()
        self._seen = threading.Condition()
        self.process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self.lines.append(None)   # end of output
            self._seen.notify_all()

    def wait_for(self, pattern, timeout=60):
        """The first match of pattern in the output so far or to come; None when the play ended without one."""
        deadline = time.monotonic() + timeout
        with self._seen:
            index = 0
            while True:
                while index < len(self.lines):
                    line = self.lines[index]
                    index += 1
                    if line is None:
                        return None
                    match = pattern.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError('no line matching %r within %d s:\n%s' % (pattern.pattern, timeout, self.output))
                self._seen.wait(left)

    def finish(self, timeout=180):
        self.process.wait(timeout)
        self._reader.join(10)
        self.elapsed = time.monotonic() - self.started
        return self.process.returncode

    @property
    def output(self):
        return ''.join(line for line in self.lines if line is not None)


@pytest.fixture
def project(built_collection, tmp_path):
    """A project directory, an environment as a user's shell would have, and a way to start the play."""
    _tarball, collections = built_collection
    (tmp_path / 'out').mkdir()
    home = tmp_path / 'home'
    home.mkdir()
    (tmp_path / 'inventory').write_text('localhost ansible_connection=local ansible_python_interpreter=%s\n'
                                        % sys.executable)
    env = {'PATH': os.environ['PATH'], 'HOME': str(home), 'LANG': 'C.UTF-8', 'ANSIBLE_NOCOLOR': '1',
           'ANSIBLE_COLLECTIONS_PATH': str(collections), 'ANSIBLE_LOCAL_TEMP': str(tmp_path / 'ansible-tmp'),
           'ACCOUNT_PASSWORD': PASSWORD}

    plays = []

    class Project:
        path = tmp_path
        config_dir = str(home / '.config' / 'oidc-agent')
        out_dir = tmp_path / 'out'

        def store(self):
            return AccountStore(config_dir=self.config_dir)

        def start(self, provider, use=False, client=PUBLIC, account='dev1', extra=(), **variables):
            (tmp_path / 'play.yml').write_text(play_text(use))
            entry = provider.client(client)
            variables = dict(variables, account=account, issuer=provider.issuer, client_id=client,
                             config_dir=self.config_dir, out_dir=str(self.out_dir), userinfo=provider.userinfo_endpoint,
                             user_sub=provider.user('alice')['sub'])
            args = [os.path.join(BIN, 'ansible-playbook'), '-i', 'inventory', 'play.yml', '-v']
            for key, value in variables.items():
                args += ['-e', '%s=%s' % (key, value)]
            environment = dict(env, DEVICE_CLIENT_SECRET=entry['client_secret'] or '')
            plays.append(RunningPlay(args + list(extra), environment, str(tmp_path)))
            return plays[-1]

    yield Project()
    for play in plays:   # a failed test leaves no play waiting for a user
        if play.process.poll() is None:
            play.process.kill()
            play.process.wait(10)


@pytest.fixture(scope='module')
def device_provider(provider_factory):
    """Polling interval 1 s, device codes live 600 s."""
    return provider_factory(device_interval=1)


def login_of(play):
    """What the user reads in the play's output: (verification URI, user code, complete URI)."""
    match = play.wait_for(LOGIN_LINE)
    assert match, play.output
    complete = play.wait_for(COMPLETE_LINE)
    assert complete, play.output
    return match.group(1), match.group(2), complete.group(1)


def gaps_honour_the_interval(code):
    """Every poll came at least the interval in effect after the previous one (250 ms of slack, as the provider
    allows), and each slow_down the provider sent raised that interval by 5 s."""
    interval = code['interval'] - 5 * sum(1 for poll in code['polls'] if poll['answer'] == 'slow_down')
    for previous, poll in zip(code['polls'], code['polls'][1:]):
        if previous['answer'] == 'slow_down':
            interval += 5
        assert poll['since_last_ms'] >= interval * 1000 - 250, code['polls']
    return interval


def approved_login(project, provider, user, success, client, how, **variables):
    """The play that logs in and uses the account (the token at userinfo, a forced refresh, the new token), with
    ``user`` approving as ``how`` says; the play must succeed and the account be the device login's.
    Returns (play, account, (verification URI, user code, complete URI))."""
    play = project.start(provider, use=True, client=client, **variables)
    uri, user_code, complete = login_of(play)
    assert complete == '%s?user_code=%s' % (uri, user_code) and uri == provider.url + '/device'
    if how == 'types the code':
        assert user.approve(uri, user_code, 'alice', 'alice-pw') == success
    else:
        assert user.approve(complete, None, 'alice', 'alice-pw') == success
    assert play.finish() == 0, play.output[-5000:]

    account = project.store().load('dev1', PASSWORD)
    assert account['client_id'] == client and account.meta['source'] == 'device_flow'
    assert 'offline_access' in account['scope'].split() and 'storage.read:/' in account['scope'].split()
    assert bool(account['client_secret']) == (client == CONFIDENTIAL)
    return play, account, (uri, user_code, complete)


def assert_no_secret(output, *secrets):
    for secret in secrets:
        assert secret and secret not in output


@pytest.mark.parametrize('client, how', [(PUBLIC, 'types the code'), (CONFIDENTIAL, 'opens the complete URI')])
def test_a_user_who_approves_gets_an_account_whose_tokens_work_and_refresh(project, device_provider, client, how):
    provider = device_provider
    refreshes = provider.request_counts()['requests']['refresh']
    play, account, (uri, user_code, complete) = approved_login(project, provider, DeviceUser(verify=provider.verify),
                                                               'Sign-in Success', client, how)
    assert provider.introspect(account['refresh_token'])['active'] is True
    assert provider.request_counts()['requests']['refresh'] > refreshes

    code = provider.device_codes()[user_code]
    assert code['client_id'] == client and code['polls'][-1]['answer'] == 'tokens'
    assert not [p for p in code['polls'] if p['answer'] == 'slow_down']
    gaps_honour_the_interval(code)

    output = play.output
    assert 'enter the code %s' % user_code in output and uri in output and complete in output
    tokens = [(project.out_dir / name).read_text() for name in ('first', 'second')]
    assert_no_secret(output, code['device_code'], account['refresh_token'], account.meta['access_token'], *tokens)
    if client == CONFIDENTIAL:
        assert_no_secret(output, provider.client(CONFIDENTIAL)['client_secret'])

    # Again: the account is usable, so nobody is asked and nothing changes.
    codes = set(provider.device_codes())
    again = project.start(provider, client=client)
    assert again.finish() == 0, again.output[-3000:]
    assert 'enter the code' not in again.output and 'changed=0' in again.output
    assert set(provider.device_codes()) == codes


def test_force_logs_in_again_and_revokes_the_replaced_refresh_token(project, device_provider):
    provider = device_provider
    first = project.start(provider, account='twice')
    uri, user_code, _complete = login_of(first)
    DeviceUser(verify=provider.verify).approve(uri, user_code, 'alice', 'alice-pw')
    assert first.finish() == 0, first.output[-3000:]
    old = project.store().load('twice', PASSWORD)['refresh_token']

    second = project.start(provider, account='twice', force='true')
    uri, user_code, _complete = login_of(second)
    DeviceUser(verify=provider.verify).approve(uri, user_code, 'bob', 'bob-pw')
    assert second.finish() == 0, second.output[-3000:]
    new = project.store().load('twice', PASSWORD)['refresh_token']
    assert new != old
    assert provider.introspect(old)['active'] is False
    assert provider.introspect(new)['active'] is True and provider.introspect(new)['sub'] == provider.user('bob')['sub']


@pytest.mark.parametrize('where', ['abort at the code', 'deny at the consent'])
def test_a_user_who_denies_gets_a_clear_error_and_nothing_is_written(project, device_provider, where):
    provider = device_provider
    play = project.start(provider, account='denied')
    uri, user_code, complete = login_of(play)
    user = DeviceUser(verify=provider.verify)
    if where == 'abort at the code':
        user.deny(complete, None)
    else:
        user.deny_consent(uri, user_code, 'alice', 'alice-pw')
    assert play.finish() != 0
    output = play.output
    assert 'The user denied the device login at %s (access_denied)' % provider.issuer in output, output[-3000:]
    assert not project.store().exists('denied')
    assert not os.path.exists(project.config_dir) or os.listdir(project.config_dir) == []
    code = provider.device_codes()[user_code]
    assert code['polls'][-1]['answer'] == 'access_denied'
    assert_no_secret(output, code['device_code'])


@pytest.fixture(scope='module')
def short_provider(provider_factory):
    """Device codes live 6 s; polling interval 1 s."""
    return provider_factory(device_interval=1, device_code_ttl=6)


@pytest.mark.parametrize('limit', ['the code expires', 'login_timeout'])
def test_nobody_answers_the_login_gives_up_in_time_with_a_clear_error(project, device_provider, short_provider, limit):
    provider, wait = (short_provider, 6) if limit == 'the code expires' else (device_provider, 3)
    variables = {} if limit == 'the code expires' else {'login_timeout': 3}
    play = project.start(provider, account='nobody', **variables)
    _uri, user_code, _complete = login_of(play)
    assert play.finish() != 0
    output = play.output
    assert 'Nobody approved the device login at %s in time' % provider.issuer in output, output[-3000:]
    assert not project.store().exists('nobody')
    code = provider.device_codes()[user_code]
    assert code['expires_in'] == (6 if limit == 'the code expires' else 600)
    # Polled at the interval up to the end of the wait, and not after it (the host's second module run starts a
    # second or so after the code was issued, so there are a few polls less than seconds).
    assert {p['answer'] for p in code['polls']} == {'authorization_pending'} and code['polls']
    assert code['polls'][-1]['at'] - code['issued_at'] <= wait * 1000
    gaps_honour_the_interval(code)
    assert play.elapsed < 60
    assert_no_secret(output, code['device_code'])


@pytest.fixture(scope='module')
def slow_down_provider(provider_factory):
    """Polling interval 1 s, and the first poll of every device code is answered slow_down."""
    return provider_factory(device_interval=1, device_slow_down=1)


def test_slow_down_adds_five_seconds_to_the_interval(project, slow_down_provider):
    provider = slow_down_provider
    play = project.start(provider, account='slow')
    uri, user_code, _complete = login_of(play)
    DeviceUser(verify=provider.verify).approve(uri, user_code, 'alice', 'alice-pw')
    assert play.finish() == 0, play.output[-3000:]
    assert project.store().exists('slow')
    code = provider.device_codes()[user_code]
    answers = [p['answer'] for p in code['polls']]
    assert answers[0] == 'slow_down' and code['polls'][0]['forced'] and answers[-1] == 'tokens'
    # The provider answers slow_down by itself to any poll that comes too early: there was none but the forced one.
    assert answers.count('slow_down') == 1
    assert code['polls'][1]['since_last_ms'] >= 6 * 1000 - 250
    assert gaps_honour_the_interval(code) == 6


def test_check_mode_makes_no_request_and_says_what_would_happen(project, device_provider):
    provider = device_provider
    before = set(provider.device_codes())
    play = project.start(provider, account='checked', extra=['--check'])
    assert play.finish() == 0, play.output[-3000:]
    assert 'A device login at %s would start because no account of that name exists' % provider.issuer in play.output
    assert 'enter the code' not in play.output
    assert set(provider.device_codes()) == before
    assert not project.store().exists('checked')


def test_a_task_may_not_set_the_internal_options(project, device_provider):
    before = set(device_provider.device_codes())
    play = project.start(device_provider, account='internal', internal_device_code='made-up')
    assert play.finish() != 0
    assert 'are set by the action plugin of oidc.tokens.oidc_device_login' in play.output, play.output[-3000:]
    assert set(device_provider.device_codes()) == before and 'made-up' not in play.output


def test_a_missing_password_fails_before_anybody_is_asked_to_log_in(project, device_provider):
    before = set(device_provider.device_codes())
    play = project.start(device_provider, account='nopassword', password_variable='NO_SUCH_VARIABLE')
    assert play.finish() != 0
    assert 'NO_SUCH_VARIABLE' in play.output and 'enter the code' not in play.output, play.output[-3000:]
    assert set(device_provider.device_codes()) == before and not project.store().exists('nopassword')


def test_a_poll_whose_answer_is_lost_doubles_the_interval_and_the_login_goes_on(provider_factory):
    """RFC 8628 §3.5: after a connection problem the client polls less often, and carries on."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    provider = provider_factory(issuer='http://127.0.0.1:%d' % port, device_interval=1)
    with FaultProxy(provider.url, port=port) as proxy:
        client = OAuthClient(provider.issuer, PUBLIC)
        authorization = client.device_authorization(scope=['openid', 'offline_access'])
        proxy.push('reset_after', 1, match='POST /token')   # the first poll reaches the provider, its answer is lost

        def user():
            while not provider.device_codes()[authorization.user_code]['polls']:
                time.sleep(0.1)
            DeviceUser(verify=provider.verify).approve(authorization.verification_uri, authorization.user_code,
                                                       'alice', 'alice-pw')

        approving = threading.Thread(target=user, daemon=True)
        approving.start()
        token = client.poll_device_token(authorization.device_code, authorization.interval, time.time() + 60)
        approving.join(30)
    polls = provider.device_codes()[authorization.user_code]['polls']
    assert polls[0]['answer'] == 'authorization_pending' and polls[-1]['answer'] == 'tokens'
    assert polls[1]['since_last_ms'] >= 2 * 1000 - 250
    assert token.refresh_token and provider.introspect(token.refresh_token)['active'] is True


def test_the_poll_loop_reports_the_providers_expired_token(short_provider):
    """Polling past the code's end (as a client with a wrong clock would): the provider's expired_token is the
    error, not a hang or a generic refusal."""
    provider = short_provider
    client = OAuthClient(provider.issuer, PUBLIC, retries=0)
    authorization = client.device_authorization(scope=['openid', 'offline_access'])
    assert authorization.expires_in == 6 and authorization.interval == 1 and 'device_code=<set>' in repr(authorization)
    time.sleep(7)
    with pytest.raises(DeviceFlowError) as info:
        client.poll_device_token(authorization.device_code, authorization.interval, time.time() + 60)
    assert info.value.reason == 'expired_token' and 'expired before anybody approved it' in str(info.value)


# -- Keycloak ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def keycloak(tmp_path_factory):
    # TLS: Keycloak's login cookies are Secure. The plays get its CA as ca_path, the scripted user as verify.
    instance = Keycloak(tls=True, workdir=str(tmp_path_factory.mktemp('keycloak'))).start()
    yield instance
    instance.stop()


@pytest.mark.parametrize('client, how', [(PUBLIC, 'types the code'), (CONFIDENTIAL, 'opens the complete URI')])
def test_keycloak_a_user_who_approves_gets_an_account_whose_tokens_work_and_refresh(project, keycloak, client, how):
    play, account, (_uri, user_code, _complete) = approved_login(
        project, keycloak, KeycloakDeviceUser(verify=keycloak.ca_path), 'Device Login Successful', client, how,
        ca_path=keycloak.ca_path)
    output = play.output
    tokens = [(project.out_dir / name).read_text() for name in ('first', 'second')]
    assert_no_secret(output, account['refresh_token'], *tokens)
    assert 'enter the code %s' % user_code in output


def test_keycloak_a_user_who_denies_at_the_consent_gets_a_clear_error_and_nothing_is_written(project, keycloak):
    play = project.start(keycloak, account='denied', ca_path=keycloak.ca_path)
    uri, user_code, _complete = login_of(play)
    assert KeycloakDeviceUser(verify=keycloak.ca_path).deny_consent(uri, user_code, 'alice', 'alice-pw') == \
        'Device Login Failed'
    assert play.finish() != 0
    output = play.output
    assert 'The user denied the device login at %s (access_denied)' % keycloak.issuer in output, output[-3000:]
    assert not project.store().exists('denied')
