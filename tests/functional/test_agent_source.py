# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lookup's ``source=agent`` against Debian's real oidc-agent and the test provider.

Each test runs its own oidc-agent (own HOME, OIDC_CONFIG_DIR and socket; tests/support/store_helpers.py),
loads an account our store wrote for a user of the test provider with ``oidc-add --pw-env`` (password through
the environment, never argv), and runs ansible-playbook with the collection as users install it
(``built_collection``), whose results the default callback prints as JSON:

- a loaded account: the token is live at the provider (introspection, userinfo), the agent's kept token is
  reused for a small min_valid_period and renewed for a large one, a down-scoped token has only the scope
  asked for, claims are verified against the provider's JWKS; no file anywhere holds a token afterwards and
  the account file is as it was;
- an agent without the account (with and without autoload), a locked agent (``oidc-add --lock`` on a
  terminal: 4.2.6 reads the lock password from a terminal only), a stopped agent and no OIDC_SOCK fail the
  lookup with what to run;
- modules and the store lookup using an account file the agent has loaded warn about it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore

from store_helpers import PW_ENV, OidcAgent, introspect

PASSWORD = 'agent-source-pass-phrase'
LOCK_PASSWORD = 'agent-lock-pass-phrase'
SCOPE = 'openid profile offline_access'
CLIENT = 'user-cli'   # see test_store_oidc_agent.py: oidc-agent 4.2.6's Basic auth needs a plain secret
BIN = os.path.dirname(sys.executable)


pytestmark = pytest.mark.usefixtures('needs_oidc_agent')


@pytest.fixture
def agents(tmp_path):
    started = []

    def start(name='agent', autoload=False):
        agent = OidcAgent(tmp_path / name, autoload=autoload).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def save_and_load(agent, provider, name='wlcg', load=True):
    tokens = provider.user_tokens('alice', scope=SCOPE)
    client = provider.client(CLIENT)
    AccountStore(agent.config_dir).save(name, {
        'issuer_url': provider.issuer, 'client_id': client['client_id'], 'client_secret': client['client_secret'],
        'refresh_token': tokens['refresh_token'], 'scope': SCOPE, 'client_name': 'oidc.tokens functional test'},
        PASSWORD)
    if load:
        added = agent.run(['oidc-add', '--pw-env', name], password=PASSWORD)
        assert 'success' in (added.out + added.err).lower()
    return client


def play(tmp_path, collections, agent, tasks, extra_env=None, json_output=True, extra_args=()):
    """Run ``tasks`` (YAML text) on localhost with the agent's environment; the JSON callback's output, parsed
    (or the completed process when json_output is false)."""
    book = tmp_path / ('play-%d.yml' % time.monotonic_ns())
    book.write_text('- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n' + tasks)
    runtime = tmp_path / 'xdg-runtime'
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = agent.base_env()
    env.update({'ANSIBLE_COLLECTIONS_PATH': str(collections), 'ANSIBLE_NOCOLOR': '1',
                'ANSIBLE_LOCAL_TEMP': str(tmp_path / 'ansible-local'), 'XDG_RUNTIME_DIR': str(runtime),
                'ANSIBLE_PYTHON_INTERPRETER': sys.executable, 'ANSIBLE_DEPRECATION_WARNINGS': '0',
                'PATH': BIN + os.pathsep + os.environ.get('PATH', '')})
    env['ANSIBLE_CALLBACK_RESULT_FORMAT'] = 'json'
    env.update(extra_env or {})
    env = dict((k, v) for k, v in env.items() if v is not None)
    proc = subprocess.run([os.path.join(BIN, 'ansible-playbook'), '-i', 'localhost,'] + list(extra_args) + [str(book)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if not json_output:
        return proc
    results = task_results(proc.stdout)
    if not results:
        raise AssertionError('ansible-playbook printed no task result (status %d): %s %s'
                             % (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    return results


def task_results(stdout):
    """{task name: its result} from the default callback's output (results as JSON, ansible.posix's json
    callback is not installed): a task's ``ok: [localhost] => {`` up to ``}``, or ``fatal: ... => {...}``."""
    results, task, body = {}, None, None
    for line in stdout.splitlines():
        if body is not None:
            body.append(line)
            if line == '}':
                results[task] = json.loads('\n'.join(body))
                body = None
        elif line.startswith('TASK ['):
            task = line[len('TASK ['):line.rindex(']')]
        elif line.endswith('=> {') and task is not None:
            body = ['{']
        elif ' => {' in line and line.endswith('}') and task is not None:
            results[task] = json.loads(line[line.index(' => {') + 4:])
            if line.startswith('fatal: '):
                results[task]['failed'] = True   # the callback leaves it out of what it prints
    return results


def files_holding(root, secrets, skip=()):
    """The regular files under root whose content holds one of the secrets."""
    found = []
    for directory, _dirs, names in os.walk(str(root)):
        for name in names:
            path = os.path.join(directory, name)
            if path in skip or not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with open(path, 'rb') as handle:
                data = handle.read()
            found.extend(path for secret in secrets if secret.encode() in data)
    return found


LOADED_TASKS = '''
    - name: first
      ansible.builtin.set_fact:
        first: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', min_valid_period=10,
                          query='{token: access_token, exp: expires_at, iss: issuer}') }}"
    - name: again
      ansible.builtin.set_fact:
        again: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', min_valid_period=10) }}"
    - name: wait
      ansible.builtin.command: sleep 2
      changed_when: false
    - name: longer
      ansible.builtin.set_fact:
        longer: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', min_valid_period=59,
                           query='{token: access_token, exp: expires_at}') }}"
    - name: scoped
      ansible.builtin.set_fact:
        scoped: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', scope=['openid'], verify=false,
                           query='{token: access_token, exp: expires_at, scope: scope}') }}"
    - name: forced
      ansible.builtin.set_fact:
        forced: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', force=true) }}"
    - name: show
      ansible.builtin.debug:
        msg: "{{ {'first': first, 'again': again, 'longer': longer, 'scoped': scoped, 'forced': forced} }}"
'''


def test_a_loaded_account_gives_live_tokens_and_nothing_is_written(agents, provider, built_collection, tmp_path):
    agent = agents()
    client = save_and_load(agent, provider)
    account_file = os.path.join(agent.config_dir, 'wlcg')
    os.unlink(os.path.join(agent.config_dir, '.wlcg.lock'))   # what our store's save left; nobody holds it
    with open(account_file, 'rb') as handle:
        before = handle.read()
    started = time.time()

    results = play(tmp_path, built_collection[1], agent, LOADED_TASKS)
    got = results['show']['msg']
    first, again, longer, scoped, forced = got['first'], got['again'], got['longer'], got['scoped'], got['forced']

    # The agent's kept default token serves a small min_valid_period; 59 s of the provider's 60 s tokens
    # needs a new one after 2 s.
    assert first['iss'].rstrip('/') == provider.issuer
    assert again == first['token']
    assert longer['token'] != first['token']
    assert longer['exp'] >= started + 59
    assert first['exp'] <= longer['exp']
    # force (oidc-token -f): a new token although the kept one has nearly 60 s left.
    assert forced not in (first['token'], longer['token'], scoped['token'])
    for token in (first['token'], longer['token'], scoped['token'], forced):
        assert introspect(provider, client, token)['active'] is True
    assert set(introspect(provider, client, first['token'])['scope'].split()) >= {'openid', 'profile'}
    # Down-scoping: only what was asked. The agent's expires_at is its default token's; an opaque
    # down-scoped token's own expiry is not known.
    assert introspect(provider, client, scoped['token'])['scope'].split() == ['openid']
    assert scoped['scope'] == ['openid'] and scoped['exp'] is None
    userinfo = provider.session.get(provider.metadata()['userinfo_endpoint'], timeout=10,
                                    headers={'Authorization': 'Bearer ' + longer['token']})
    assert userinfo.status_code == 200, userinfo.text
    assert userinfo.json().get('sub')

    # No cache, no file: the store never opened the account (it would have made its lock file .wlcg.lock), no
    # cache directory was made, and no file under the test's tree (HOME, the runtime directory, Ansible's
    # temporary directories, the agent's) holds a token. oidc-agent itself rewrites the account file when the
    # provider rotates the refresh token (it got the password from oidc-add); that file is its, encrypted.
    assert sorted(os.listdir(agent.config_dir)) == ['wlcg']
    with open(account_file, 'rb') as handle:
        after = handle.read()
    assert after == before or after.split(b'\n')[6] == b'Generated using version: 4.2.6' or \
        after.split(b'\n')[6].startswith(b'Generated using version: ')
    assert not (tmp_path / 'xdg-runtime' / 'oidc-tokens').exists()
    assert not os.path.exists(os.path.join(agent.home, '.cache', 'oidc-tokens'))
    assert files_holding(tmp_path, [first['token'], longer['token'], scoped['token'], forced]) == []


def test_claims_are_verified_and_a_scoped_jwt_has_its_own_expiry(agents, provider_factory, built_collection,
                                                                 tmp_path):
    jwt_provider = provider_factory(access_token_format='jwt')
    agent = agents()
    save_and_load(agent, jwt_provider)
    results = play(tmp_path, built_collection[1], agent, '''
    - name: show
      ansible.builtin.debug:
        msg:
          whole: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', query='{sub: claims.sub, exp: expires_at, iss: claims.iss}') }}"
          scoped: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', scope='openid',
                             query='{scope: claims.scope, exp: expires_at, claims_exp: claims.exp}') }}"
''')
    got = results['show']['msg']
    assert got['whole']['sub'] and got['whole']['iss'].rstrip('/') == jwt_provider.issuer
    assert got['scoped']['scope'] == 'openid'
    assert got['scoped']['exp'] == got['scoped']['claims_exp'] and got['scoped']['exp'] > time.time()


STATE_TASK = '''
    - name: ask
      ansible.builtin.set_fact:
        token: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent') }}"
      ignore_errors: true
'''


def failure_of(tmp_path, collections, agent, extra_env=None):
    result = play(tmp_path, collections, agent, STATE_TASK, extra_env)['ask']
    assert result.get('failed') is True, result
    return result['msg']


def test_an_agent_without_the_account(agents, built_collection, tmp_path):
    collections = built_collection[1]
    msg = failure_of(tmp_path, collections, agents('no-autoload'))
    assert "has not loaded account 'wlcg': run oidc-add wlcg" in msg
    # With autoload (oidc-agent's default) and no account file of that name.
    msg = failure_of(tmp_path, collections, agents('autoload', autoload=True))
    assert "knows no account 'wlcg'" in msg and 'oidc-add wlcg' in msg


def test_a_locked_agent_and_unlocking_it(agents, provider, built_collection, tmp_path):
    collections = built_collection[1]
    agent = agents()
    client = save_and_load(agent, provider)
    status, printed = agent.run_with_tty(['oidc-add', '--lock'], [LOCK_PASSWORD, LOCK_PASSWORD])
    assert status == 0 and 'Agent locked' in printed, printed
    assert LOCK_PASSWORD not in printed
    msg = failure_of(tmp_path, collections, agent)
    assert 'is locked: unlock it with oidc-add --unlock' in msg
    status, printed = agent.run_with_tty(['oidc-add', '--unlock'], [LOCK_PASSWORD])
    assert status == 0 and 'Agent unlocked' in printed, printed
    token = play(tmp_path, collections, agent, STATE_TASK + '''
    - name: show
      ansible.builtin.debug:
        var: token
''')['show']['token']
    assert introspect(provider, client, token)['active'] is True


def test_no_agent(agents, built_collection, tmp_path):
    collections = built_collection[1]
    agent = agents()
    socket_path = agent.socket
    agent.stop()
    msg = failure_of(tmp_path, collections, agent, {'OIDC_SOCK': socket_path})
    assert 'No oidc-agent is running at %s' % socket_path in msg and 'eval "$(oidc-agent)"' in msg
    msg = failure_of(tmp_path, collections, agent)
    assert 'OIDC_SOCK is not set' in msg
    # A host variable cannot point the lookup at another socket.
    result = play(tmp_path, collections, agent, STATE_TASK.replace('ignore_errors: true', '''ignore_errors: true
      vars:
        oidc_tokens_agent_socket: /tmp/elsewhere.sock
        OIDC_SOCK: /tmp/elsewhere.sock'''))['ask']
    assert 'OIDC_SOCK is not set' in result['msg']


def test_a_loaded_account_used_from_its_file_is_warned_about(agents, provider, built_collection, tmp_path):
    agent = agents()
    save_and_load(agent, provider)
    expected = "has account 'wlcg' loaded, the same account file as %s" % os.path.join(agent.config_dir, 'wlcg')
    # Ansible shows a warning once per run, so the modules and the lookup run in a play each.
    for task in ("""
      oidc.tokens.oidc_token:
        name: wlcg
        encryption_password_env: %s
""" % PW_ENV, """
      ansible.builtin.set_fact:
        token: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', cache=false, encryption_password_env='%s') }}"
""" % PW_ENV, """
      oidc.tokens.oidc_revoke:
        name: wlcg
        encryption_password_env: %s
""" % PW_ENV):
        proc = play(tmp_path, built_collection[1], agent, '    - name: use the file' + task + '      no_log: true\n',
                    extra_env={PW_ENV: PASSWORD}, json_output=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        output = ' '.join((proc.stdout + proc.stderr).split())
        assert expected in output and 'oidc-add -r wlcg' in output, output


ROLE_START = '''
    - name: start
      block:
        - name: include
          ansible.builtin.include_role:
            name: oidc.tokens.job_tokens
            tasks_from: start
          vars:
            job_tokens_account: job1
            job_tokens_user: oidcjob1
            job_tokens_issuer: https://127.0.0.1:1/
            job_tokens_client_id: oidc-tokens-exchanger
            job_tokens_client_secret: not-a-secret
            job_tokens_subject_token_source: agent
            %s
            # Both password sources: start's input check fails after it has templated the subject token.
            job_tokens_password: not-a-password
            job_tokens_password_command: /bin/false
      rescue:
        - name: failed
          ansible.builtin.debug:
            msg: "{{ ansible_failed_result.msg }}"
'''


def test_the_role_takes_the_subject_token_from_the_agent(agents, provider, built_collection, tmp_path):
    collections = built_collection[1]
    agent = agents()
    client = save_and_load(agent, provider)
    defaults = os.path.join(str(collections), 'ansible_collections', 'oidc', 'tokens', 'roles', 'job_tokens',
                            'defaults', 'main.yml')
    # The role's default subject token, as start templates it for each worker.
    token = play(tmp_path, collections, agent, '''
    - name: defaults
      ansible.builtin.include_vars:
        file: %s
    - name: show
      ansible.builtin.debug:
        var: job_tokens_subject_token
''' % defaults, extra_args=['-e', 'job_tokens_subject_token_source=agent',
                            '-e', 'job_tokens_subject_token_agent_account=wlcg'])['show']['job_tokens_subject_token']
    assert introspect(provider, client, token)['active'] is True
    assert files_holding(tmp_path, [token]) == []

    # start: the token resolved (the check that fails is the next one), an account the agent lacks, no account.
    msg = play(tmp_path, collections, agent, ROLE_START % 'job_tokens_subject_token_agent_account: wlcg')['failed']['msg']
    assert 'job_tokens_password_command excludes job_tokens_password' in msg and 'subject_token' not in msg, msg
    msg = play(tmp_path, collections, agent, ROLE_START % 'job_tokens_subject_token_agent_account: nothere')['failed']['msg']
    assert "has not loaded account 'nothere': run oidc-add nothere" in msg, msg
    msg = play(tmp_path, collections, agent, ROLE_START % '')['failed']['msg']
    assert 'set job_tokens_subject_token_agent_account to the account loaded in your oidc-agent' in msg, msg
