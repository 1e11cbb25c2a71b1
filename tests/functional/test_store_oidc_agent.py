# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The account store against the real oidc-agent (Debian's oidc-agent-cli) and the test provider.

Both directions of the file format, and the agent using and rotating a file we wrote:
- a file we write is decrypted by ``oidc-gen -p NAME --pw-env`` / ``--pw-file``; a wrong password
  is rejected by it;
- a file ``oidc-gen NAME --iss ... --rt-env --pw-env`` writes (it refreshes at the provider) is
  read by the store;
- ``oidc-add NAME`` + ``oidc-token NAME`` get an access token with a file we wrote; after the agent
  rewrites the file on rotation, the store reads it and gets the new, live refresh token.

Each test runs its own oidc-agent with its own HOME, OIDC_CONFIG_DIR and socket, passes passwords
through the environment or a 0600 file (never argv) and kills the agent at the end.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore

from store_helpers import OidcAgent, introspect, refresh_raw

PASSWORD = 'interop-pass-phrase'
SCOPE = 'openid profile offline_access'
# oidc-agent 4.2.6 puts client_id:client_secret into HTTP Basic without the form-urlencoding of
# RFC 6749 2.3.1; the provider rejects the exchanger client's secret ('%', '+', '&', '/') from it.
# The interop tests therefore use the user-cli client, whose secret has no such characters.
CLIENT = 'user-cli'


pytestmark = pytest.mark.usefixtures('needs_oidc_agent')


@pytest.fixture
def agent(tmp_path):
    a = OidcAgent(tmp_path / 'agent').start()
    try:
        yield a
    finally:
        a.stop()


def fresh_refresh_token(provider):
    tokens = provider.user_tokens('alice', scope=SCOPE)
    assert tokens.get('refresh_token'), tokens
    return tokens['refresh_token']


def our_account(provider, refresh_token, **extra):
    client = provider.client(CLIENT)
    account = {
        'issuer_url': provider.issuer,
        'client_id': client['client_id'],
        'client_secret': client['client_secret'],
        'refresh_token': refresh_token,
        'scope': SCOPE,
        'client_name': 'oidc.tokens functional test',
        'oidc_tokens': {'created_at': 1700000000, 'source': 'functional-test',
                        'lifetime_end': 1700086400},
    }
    account.update(extra)
    return account


def test_oidc_gen_decrypts_our_file_and_rejects_a_wrong_password(agent, tmp_path):
    store = AccountStore(agent.config_dir)
    store.save('ours', {'issuer_url': 'https://issuer.example/', 'client_id': 'c',
                        'client_secret': 'client-secret', 'refresh_token': 'rt-value',
                        'scope': 'openid offline_access', 'oidc_tokens': {'k': [1, 'two']}},
               PASSWORD)
    path = store.path('ours')
    assert stat.S_IMODE(os.stat(agent.config_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path, 'rb') as f:
        before = f.read()

    printed = agent.run(['oidc-gen', '-p', 'ours', '--pw-env'], password=PASSWORD)
    data = json.loads(printed.out)
    assert data['refresh_token'] == 'rt-value'
    assert data['scope'] == data['auth_scope'] == 'openid offline_access'
    assert data['oidc_tokens'] == {'k': [1, 'two']}

    pw_file = tmp_path / 'pw'
    pw_file.write_text(PASSWORD + '\n')
    os.chmod(str(pw_file), 0o600)
    printed = agent.run(['oidc-gen', '-p', 'ours', '--pw-file=%s' % pw_file])
    assert json.loads(printed.out)['client_secret'] == 'client-secret'

    wrong = agent.run(['oidc-gen', '-p', 'ours', '--pw-env'], password='not-' + PASSWORD,
                      check=False)
    assert wrong.returncode != 0
    assert 'rt-value' not in wrong.out
    assert 'tries' in wrong.err or 'password' in wrong.err.lower()

    # The lock file (.ours.lock) is not an account for oidc-agent.
    listed = agent.run(['oidc-add', '-l'])
    assert listed.out.split(':', 1)[1].split() == ['ours']
    with open(path, 'rb') as f:
        assert f.read() == before


def test_store_reads_what_oidc_gen_writes(agent, provider):
    rt = fresh_refresh_token(provider)
    client = provider.client(CLIENT)
    # oidc-gen refreshes with --rt at the provider and writes the account. The client secret has
    # no env option in 4.2.6; it is a test client's secret, the RT goes through the environment.
    agent.run(['oidc-gen', 'generated', '--iss=%s/' % provider.issuer,
               '--client-id=%s' % client['client_id'],
               '--client-secret=%s' % client['client_secret'],
               '--rt-env=TEST_RT', '--pw-env', '--scope=%s' % SCOPE, '--confirm-default'],
              password=PASSWORD, env={'TEST_RT': rt}, timeout=60)
    store = AccountStore(agent.config_dir)
    assert 'generated' in store.list()
    assert 'issuer.config' not in store.list()
    account = store.load('generated', PASSWORD)
    assert account['name'] == 'generated'
    assert account['issuer_url'].rstrip('/') == provider.issuer
    assert account['client_id'] == CLIENT
    assert account['scope'] == account['auth_scope'] == SCOPE
    assert introspect(provider, client, account['refresh_token'])['active'] is True
    with open(store.path('generated'), 'rb') as f:
        version = f.read().split(b'\n')[6]
    assert version.startswith(b'Generated using version: 4.')

    # Our rewrite keeps oidc-agent's own keys and oidc-agent still reads it.
    keys_before = set(account)

    def mark(acc):
        acc.meta['adopted'] = True
        return acc, None

    store.update('generated', PASSWORD, mark)
    assert stat.S_IMODE(os.stat(store.path('generated')).st_mode) == 0o600
    data = json.loads(agent.run(['oidc-gen', '-p', 'generated', '--pw-env'],
                                password=PASSWORD).out)
    assert keys_before <= set(data)
    assert data['oidc_tokens'] == {'adopted': True}
    assert data['refresh_token'] == account['refresh_token']


def test_oidc_agent_uses_our_file_and_rotation_rewrite_is_read_back(agent, provider):
    client = provider.client(CLIENT)
    rt1 = fresh_refresh_token(provider)
    store = AccountStore(agent.config_dir)
    store.save('job', our_account(provider, rt1), PASSWORD)

    # --pw-store lets the agent keep the password, so it can rewrite the file on rotation.
    added = agent.run(['oidc-add', '--pw-env', '--pw-store', 'job'], password=PASSWORD)
    assert 'success' in added.out.lower() + added.err.lower()
    at1 = agent.run(['oidc-token', 'job']).out.strip()
    assert at1 and introspect(provider, client, at1)['active'] is True

    # oidc-add refreshed at load: the provider rotated rt1, the agent rewrote our file.
    rt2 = store.load('job', PASSWORD)['refresh_token']
    assert rt2 != rt1
    assert introspect(provider, client, rt1)['active'] is False

    at2 = agent.run(['oidc-token', '-f', 'job']).out.strip()
    assert at2 and at2 != at1
    account = store.load('job', PASSWORD)
    rt3 = account['refresh_token']
    assert rt3 != rt2
    assert introspect(provider, client, at2)['active'] is True
    assert introspect(provider, client, rt3)['active'] is True
    # The agent's rewrites kept our extra keys, both scope keys and the file mode.
    assert account['oidc_tokens'] == {'created_at': 1700000000, 'source': 'functional-test',
                                      'lifetime_end': 1700086400}
    assert account['scope'] == SCOPE
    assert stat.S_IMODE(os.stat(store.path('job')).st_mode) == 0o600
    assert sorted(os.listdir(agent.config_dir)) == ['.job.lock', 'job']

    # Stop the agent; the RT on disk is the live one: it refreshes at the provider.
    agent.stop()
    status, body = refresh_raw(provider, client, rt3)
    assert status == 200, body
    assert introspect(provider, client, body['access_token'])['active'] is True


def test_oidc_add_rejects_a_wrong_password_for_our_file(agent, provider):
    store = AccountStore(agent.config_dir)
    store.save('locked-out', our_account(provider, 'not-a-real-rt'), PASSWORD)
    before = open(store.path('locked-out'), 'rb').read()
    result = agent.run(['oidc-add', '--pw-env', 'locked-out'], password='wrong', check=False)
    assert result.returncode != 0
    assert agent.run(['oidc-add', '-a'], check=False).out.find('locked-out') == -1
    assert open(store.path('locked-out'), 'rb').read() == before
