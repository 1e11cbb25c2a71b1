# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the lookup oidc.tokens.oidc_token: option handling, the token cache, the cheap hit path.

No network and no key derivation: ``_tokens.access_token`` is replaced by a fake that counts its
calls and rewrites the account file when it "refreshes", as the real one does on rotation.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible.errors import AnsibleError
from ansible.plugins.loader import lookup_loader

from ansible_collections.oidc.tokens.plugins.lookup import oidc_token as lookup_mod
from ansible_collections.oidc.tokens.plugins.module_utils import _account_file, _oauth, _tokens
from ansible_collections.oidc.tokens.plugins.module_utils._errors import (
    AccountNotFoundError, InvalidAccountNameError, OidcTokensError)
from ansible_collections.oidc.tokens.plugins.module_utils import _lookup_cache_files as cache_files
from ansible_collections.oidc.tokens.plugins.plugin_utils import _lookup_cache as cache_mod
from ansible_collections.oidc.tokens.tests.unit.plugins.lookup import runtime_options

NAME = 'job1'
ISSUER = 'https://op.example.org/'

ENV_VARS = ('OIDC_CONFIG_DIR', 'XDG_RUNTIME_DIR', 'OIDC_TOKENS_ISSUER', 'OIDC_TOKENS_CLIENT_ID', 'OIDC_TOKENS_CLIENT_SECRET',
            'OIDC_TOKENS_CA_PATH', 'OIDC_TOKENS_VALIDATE_CERTS', 'OIDC_TOKENS_TIMEOUT', 'OIDC_TOKENS_RETRIES',
            'OIDC_TOKENS_ENCRYPTION_PASSWORD', 'OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE', 'OIDC_TOKENS_MIN_VALID_PERIOD',
            'OIDC_TOKENS_VERIFY', 'OIDC_TOKENS_CACHE', 'OIDC_TOKENS_CACHE_DIR', 'REQUESTS_CA_BUNDLE', 'OIDC_SOCK')


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def new_lookup():
    lookup = lookup_loader.get('oidc.tokens.oidc_token')
    assert lookup is not None, 'the lookup plugin was not found'
    return lookup


def write_account(config_dir, name=NAME, content=b'account v1'):
    """A stand-in account file (the fake never decrypts it); replaced atomically like the store does."""
    os.makedirs(config_dir, mode=0o700, exist_ok=True)
    path = os.path.join(config_dir, name)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as handle:
        handle.write(content)
    os.replace(tmp, path)
    return path


class FakeTokens(object):
    """Stands in for _tokens.access_token. Calls are appended to a file, so forked workers count too."""

    def __init__(self, log_path, lifetime=300, refresh=True, delay=0.0, warnings=None, expires=True):
        self.log_path = log_path
        self.lifetime = lifetime
        self.refresh = refresh
        self.delay = delay
        self.warnings = warnings or []
        self.expires = expires

    @property
    def calls(self):
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as handle:
            return [json.loads(line) for line in handle]

    def __call__(self, store, name, password, client_for, min_valid_period=0, scope=None, audience=None,
                 resource=None, force=False, claims=None, now=None):
        if not store.exists(name):
            raise AccountNotFoundError('No account %r: %s does not exist.' % (name, store.path(name)))
        if self.delay:
            time.sleep(self.delay)
        call = {'name': name, 'password': password, 'min_valid_period': min_valid_period, 'scope': scope,
                'audience': audience, 'resource': resource, 'force': force, 'claims': claims,
                'config_dir': store.config_dir, 'pid': os.getpid()}
        with open(self.log_path, 'a') as handle:
            handle.write(json.dumps(call) + '\n')
        number = len(self.calls)
        if self.refresh:
            write_account(store.config_dir, name, ('account v%d' % (number + 1)).encode())
        return {'access_token': 'at-%d' % number,
                'expires_at': int(time.time()) + self.lifetime if self.expires else None,
                'issuer': ISSUER, 'scope': list(scope or ['openid', 'offline_access']),
                'claims': {'sub': 'alice'} if claims else {}, 'refreshed': self.refresh, 'warnings': self.warnings}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A config_dir with an account file, a cache_dir, and the fake access_token."""
    config_dir = str(tmp_path / 'accounts')
    cache_dir = str(tmp_path / 'cache')
    write_account(config_dir)
    fake = FakeTokens(str(tmp_path / 'calls.jsonl'))
    monkeypatch.setattr(_tokens, 'access_token', fake)

    class Env(object):
        pass

    e = Env()
    e.config_dir, e.cache_dir, e.fake, e.tmp = config_dir, cache_dir, fake, tmp_path

    def run(*terms, **kwargs):
        kwargs.setdefault('config_dir', config_dir)
        kwargs.setdefault('cache_dir', cache_dir)
        kwargs.setdefault('encryption_password', 'pw')
        variables = kwargs.pop('variables', {})
        return new_lookup().run(list(terms or [NAME]), variables=variables, **kwargs)

    e.run = run
    e.entries = lambda: sorted(n for n in os.listdir(cache_dir) if n.endswith('.json')) if os.path.isdir(cache_dir) else []
    return e


# --- options -----------------------------------------------------------------------------------

def options_of(variables=None, **direct):
    lookup = new_lookup()
    lookup._set_lookup_options(variables, direct)
    return lookup


def test_option_defaults():
    lookup = options_of()
    assert lookup.get_option('min_valid_period') == 60
    assert lookup.get_option('cache') is True
    assert lookup.get_option('force') is False
    assert lookup.get_option('verify') is True
    assert lookup.get_option('validate_certs') is True
    assert lookup.get_option('timeout') == 10
    assert lookup.get_option('retries') == 3
    assert lookup.get_option('allow_insecure_http') is False
    for name in ('query', 'scope', 'audience', 'resource', 'cache_dir', 'config_dir', 'issuer', 'client_id',
                 'client_secret', 'encryption_password', 'encryption_password_file', 'encryption_password_env',
                 'encryption_password_command', 'ca_path', 'auth_method'):
        assert lookup.get_option(name) is None, name


def test_option_types_are_converted():
    lookup = options_of(min_valid_period='30', cache='no', force='yes', scope='openid,compute.read', timeout='5')
    assert lookup.get_option('min_valid_period') == 30
    assert lookup.get_option('cache') is False
    assert lookup.get_option('force') is True
    assert lookup.get_option('scope') == ['openid', 'compute.read']
    assert lookup.get_option('timeout') == 5


def test_option_precedence_direct_over_vars_over_env(monkeypatch):
    monkeypatch.setenv('OIDC_TOKENS_MIN_VALID_PERIOD', '5')
    assert options_of().get_option('min_valid_period') == 5
    variables = {'oidc_tokens_min_valid_period': 7}
    assert options_of(variables).get_option('min_valid_period') == 7
    assert options_of(variables, min_valid_period=9).get_option('min_valid_period') == 9


@pytest.mark.parametrize('option, env_name, value, expected', [
    ('config_dir', 'OIDC_CONFIG_DIR', '/srv/accounts', '/srv/accounts'),
    ('cache_dir', 'OIDC_TOKENS_CACHE_DIR', '/run/user/1000/tok', '/run/user/1000/tok'),
    ('cache', 'OIDC_TOKENS_CACHE', 'false', False),
    ('verify', 'OIDC_TOKENS_VERIFY', 'false', False),
    ('issuer', 'OIDC_TOKENS_ISSUER', ISSUER, ISSUER),
    ('client_id', 'OIDC_TOKENS_CLIENT_ID', 'job-runner', 'job-runner'),
    ('ca_path', 'OIDC_TOKENS_CA_PATH', '/etc/ssl/op.pem', '/etc/ssl/op.pem'),
    ('encryption_password_file', 'OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE', '/run/secrets/pw', '/run/secrets/pw'),
    ('timeout', 'OIDC_TOKENS_TIMEOUT', '3', 3),
])
def test_options_from_the_environment(monkeypatch, option, env_name, value, expected):
    monkeypatch.setenv(env_name, value)
    assert options_of().get_option(option) == expected


@pytest.mark.parametrize('option, env_name', [
    ('config_dir', 'OIDC_CONFIG_DIR'),
    ('ca_path', 'OIDC_TOKENS_CA_PATH'),
    ('encryption_password_file', 'OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE'),
    ('timeout', 'OIDC_TOKENS_TIMEOUT'),
])
def test_an_empty_environment_variable_counts_as_not_set(monkeypatch, option, env_name):
    # AWX's credential injectors set every variable they name, empty for a blank field: Ansible would make an empty
    # path the current directory (and trust it as a CA bundle).
    default = options_of().get_option(option)
    monkeypatch.setenv(env_name, '')
    assert options_of().get_option(option) == default
    assert os.environ[env_name] == ''


@pytest.mark.parametrize('option, var_name, value', [
    ('encryption_password', 'oidc_tokens_encryption_password', 'secret'),
    ('min_valid_period', 'oidc_tokens_min_valid_period', 600),
])
def test_options_a_host_may_set(option, var_name, value):
    assert options_of({var_name: value}).get_option(option) == value


# What a compromised managed host could set through the facts it returns (Ansible turns them into host
# variables): none of these may steer where the controller's credentials go, what TLS it trusts, which
# command it runs or which file it reads or writes.
TRUST_VARIABLES = [
    ('issuer', 'oidc_tokens_issuer', 'https://attacker.example.net/'),
    ('client_id', 'oidc_tokens_client_id', 'attacker'),
    ('client_secret', 'oidc_tokens_client_secret', 'client secret'),
    ('ca_path', 'oidc_tokens_ca_path', '/tmp/attacker-ca.pem'),
    ('validate_certs', 'oidc_tokens_validate_certs', False),
    ('allow_insecure_http', 'oidc_tokens_allow_insecure_http', True),
    ('config_dir', 'oidc_tokens_config_dir', '/tmp/attacker-accounts'),
    ('cache_dir', 'oidc_tokens_cache_dir', '/tmp/attacker-cache'),
    ('encryption_password_file', 'oidc_tokens_encryption_password_file', '/tmp/attacker-pw'),
    ('encryption_password_env', 'oidc_tokens_encryption_password_env', 'ATTACKER'),
    ('encryption_password_command', 'oidc_tokens_encryption_password_command', 'touch /tmp/pwned'),
    ('source', 'oidc_tokens_source', 'agent'),
    ('agent_socket', 'oidc_tokens_agent_socket', '/tmp/attacker.sock'),
    ('agent_socket', 'OIDC_SOCK', '/tmp/attacker.sock'),
]


@pytest.mark.parametrize('option, var_name, value', TRUST_VARIABLES)
def test_host_variables_set_no_trust_option(option, var_name, value):
    defaults = options_of()
    assert options_of({var_name: value}).get_option(option) == defaults.get_option(option)


def test_no_trust_option_has_a_variable_source():
    """The rule, for options added later too: only encryption_password and min_valid_period read variables."""
    from ansible import constants as C
    definitions = C.config.get_configuration_definitions('lookup', new_lookup()._load_name)
    assert 'issuer' in definitions
    with_vars = sorted(name for name, definition in definitions.items() if definition.get('vars'))
    assert with_vars == ['encryption_password', 'min_valid_period']


def test_runtime_options_are_the_documented_ones():
    """The definitions the plugin registers at import (so that no worker parses DOCUMENTATION and the doc
    fragments) are what Ansible's loader would make of DOCUMENTATION and the fragments."""
    documented = runtime_options.documented_options()
    assert len(documented) > 20 and all(definition.get('description') for definition in documented.values())
    assert json.loads(lookup_mod._OPTIONS_JSON) == documented, (
        'plugins/lookup/oidc_token.py: replace _OPTIONS_JSON with\n' + runtime_options.options_source(documented))


def test_the_loader_uses_the_documented_options():
    from ansible import constants as C
    definitions = C.config.get_configuration_definitions('lookup', new_lookup()._load_name)
    assert json.loads(json.dumps(definitions, sort_keys=True)) == runtime_options.documented_options()


def test_issuer_alias():
    assert options_of(issuer_url=ISSUER).get_option('issuer') == ISSUER


def test_invalid_choice_is_refused():
    with pytest.raises(AnsibleError, match='auth_method'):
        options_of(auth_method='private_key_jwt')


def test_option_vars_are_templated_and_filtered():
    """Only the variables that set options reach the config manager, and they are templated."""

    class Templar(object):
        def __init__(self):
            self.seen = []

        def template(self, value):
            self.seen.append(value)
            return value.replace('{{ base }}', '/srv')

    lookup = new_lookup()
    lookup._templar = Templar()
    out = lookup._option_vars({'oidc_tokens_min_valid_period': '{{ base }}', 'unrelated': '{{ boom }}',
                               'oidc_tokens_encryption_password': '{{ base }}/pw',
                               'oidc_tokens_config_dir': '{{ base }}/accounts'})
    assert out == {'oidc_tokens_min_valid_period': '/srv', 'oidc_tokens_encryption_password': '/srv/pw'}
    assert '{{ boom }}' not in lookup._templar.seen


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('XDG_RUNTIME_DIR', str(tmp_path))
    assert cache_files.default_cache_dir() == str(tmp_path / 'oidc-tokens')
    monkeypatch.setenv('XDG_RUNTIME_DIR', 'relative/not/allowed')
    assert cache_files.default_cache_dir() == os.path.join(os.path.expanduser('~'), '.cache', 'oidc-tokens')
    monkeypatch.delenv('XDG_RUNTIME_DIR')
    assert cache_files.default_cache_dir() == os.path.join(os.path.expanduser('~'), '.cache', 'oidc-tokens')


def test_lookup_uses_xdg_runtime_dir_by_default(env, monkeypatch, tmp_path):
    runtime = tmp_path / 'runtime'
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv('XDG_RUNTIME_DIR', str(runtime))
    env.run(cache_dir=None)
    entries = os.listdir(str(runtime / 'oidc-tokens'))
    assert len([n for n in entries if n.endswith('.json')]) == 1


# --- what the lookup returns ----------------------------------------------------------------------

def test_returns_the_access_token_per_term(env):
    write_account(env.config_dir, 'job2')
    assert env.run(NAME, 'job2') == ['at-1', 'at-2']
    call = env.fake.calls[0]
    assert call['name'] == NAME and call['password'] == 'pw' and call['min_valid_period'] == 60
    assert call['force'] is False and call['claims'] == 'decode'
    assert call['config_dir'] == env.config_dir


def test_passes_scope_audience_resource(env):
    env.run(scope=['openid', 'compute.read'], audience=['svc'], resource=['https://svc.example.org'],
            min_valid_period=30)
    call = env.fake.calls[0]
    assert call['scope'] == ['openid', 'compute.read']
    assert call['audience'] == ['svc']
    assert call['resource'] == ['https://svc.example.org']
    assert call['min_valid_period'] == 30


@pytest.mark.parametrize('query, expected', [
    ('access_token', 'at-1'),
    ('issuer', ISSUER),
    ('scope[0]', 'openid'),
    ('{iss: issuer, at: access_token}', {'iss': ISSUER, 'at': 'at-1'}),
])
def test_query(env, query, expected):
    assert env.run(query=query) == [expected]


def test_query_expires_at(env):
    before = int(time.time())
    expires_at = env.run(query='expires_at')[0]
    assert before + 299 <= expires_at <= int(time.time()) + 300


@pytest.mark.parametrize('query, needs', [
    ('access_token', False), ('expires_at', False), ('scope[0]', False), ('scope[*]', False),
    ('{a: access_token, e: expires_at}', False), ("scope[?@ == 'openid']", True),
    ('claims', True), ('claims.sub', True), ('{s: claims.sub}', True), ('@', True), ('*', True),
    ('keys(@)', True), ('[access_token, claims]', True),
])
def test_query_needs_claims(query, needs):
    import jmespath
    assert lookup_mod.query_needs_claims(jmespath.compile(query).parsed) is needs


def test_query_on_claims_verifies_them(env):
    assert env.run(query='claims.sub') == ['alice']
    assert env.fake.calls[-1]['claims'] == 'verify'
    # Verified claims serve a plain lookup and a decode-only query from the cache.
    env.run()
    env.run(query='claims', verify=False)
    assert len(env.fake.calls) == 1


def test_decoded_claims_do_not_serve_a_verifying_query(env):
    env.run(query='claims', verify=False)
    assert env.fake.calls[-1]['claims'] == 'decode'
    env.run(query='claims')
    assert [c['claims'] for c in env.fake.calls] == ['decode', 'verify']


def test_invalid_query(env):
    with pytest.raises(AnsibleError, match='not a valid JMESPath expression'):
        env.run(query='scope[')
    assert env.fake.calls == []


def test_terms_must_be_names(env):
    with pytest.raises(AnsibleError, match='account names'):
        env.run(None)


# --- the cache ----------------------------------------------------------------------------------

def test_second_call_is_a_hit(env):
    assert env.run() == ['at-1']
    assert env.run() == ['at-1']
    assert len(env.fake.calls) == 1
    assert len(env.entries()) == 1


def test_cache_files_and_modes(env):
    env.run()
    st = os.stat(env.cache_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700
    for name in os.listdir(env.cache_dir):
        assert stat.S_IMODE(os.stat(os.path.join(env.cache_dir, name)).st_mode) == 0o600, name
    assert not [n for n in os.listdir(env.cache_dir) if '.tmp-' in n]
    with open(os.path.join(env.cache_dir, env.entries()[0])) as handle:
        entry = json.load(handle)
    assert entry['access_token'] == 'at-1'
    assert entry['issuer'] == ISSUER
    assert entry['account'] == NAME and entry['config_dir'] == env.config_dir
    assert 'refresh_token' not in json.dumps(entry) and 'pw' not in entry.values()


def test_cache_dir_mode_is_tightened(env):
    os.makedirs(env.cache_dir, mode=0o755)
    os.chmod(env.cache_dir, 0o755)
    env.run()
    assert stat.S_IMODE(os.stat(env.cache_dir).st_mode) == 0o700


def test_cache_dir_symlink_is_refused(env):
    real = env.tmp / 'real-cache'
    real.mkdir(mode=0o700)
    os.symlink(str(real), env.cache_dir)
    with pytest.raises(AnsibleError, match='symbolic link'):
        env.run()


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to give the directory away')
def test_cache_dir_of_another_user_is_refused(env):
    os.makedirs(env.cache_dir, mode=0o700)
    os.chown(env.cache_dir, 65534, 65534)
    with pytest.raises(AnsibleError, match='belongs to uid 65534'):
        env.run()


def test_entry_with_loose_mode_is_ignored(env):
    env.run()
    path = os.path.join(env.cache_dir, env.entries()[0])
    os.chmod(path, 0o644)
    assert env.run() == ['at-2']
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_corrupt_entry_is_a_miss(env):
    env.run()
    path = os.path.join(env.cache_dir, env.entries()[0])
    with open(path, 'w') as handle:
        handle.write('{"truncated')
    assert env.run() == ['at-2']


def test_min_valid_period_decides_reuse(env):
    env.fake.lifetime = 100
    env.run(min_valid_period=60)
    assert env.run(min_valid_period=90) == ['at-1']     # 100 s left >= 90
    assert env.run(min_valid_period=150) == ['at-2']    # not enough left: a new token
    assert len(env.fake.calls) == 2


def test_scope_makes_its_own_entry_whatever_the_order(env):
    assert env.run() == ['at-1']
    assert env.run(scope=['openid', 'compute.read']) == ['at-2']
    assert env.run(scope=['compute.read', 'openid']) == ['at-2']
    assert env.run(scope=['openid']) == ['at-3']
    assert env.run() == ['at-1']
    assert len(env.entries()) == 3


@pytest.mark.parametrize('override', [{'audience': ['svc']}, {'resource': ['https://svc.example.org']},
                                      {'issuer': 'https://other.example.org'}, {'client_id': 'other-client'}])
def test_other_selectors_make_their_own_entry(env, override):
    env.run()
    assert env.run(**override) == ['at-2']
    assert env.run(**override) == ['at-2']
    assert len(env.entries()) == 2


def test_entry_keys_ignore_order_and_trailing_slash():
    assert cache_mod.entry_key(['b', 'a'], issuer=ISSUER) == cache_mod.entry_key(['a', 'b', 'a'], issuer=ISSUER.rstrip('/'))
    assert cache_mod.entry_key(['a']) != cache_mod.entry_key(None, ['a'])
    assert cache_files.account_id('/a', 'x') != cache_files.account_id('/b', 'x')


def test_force_bypasses_the_cache_and_replaces_the_entry(env):
    env.run()
    assert env.run(force=True) == ['at-2']
    assert env.fake.calls[-1]['force'] is True
    assert env.run() == ['at-2']
    assert len(env.fake.calls) == 2


def test_cache_false_writes_nothing(env):
    assert env.run(cache=False) == ['at-1']
    assert env.run(cache=False) == ['at-2']
    assert not os.path.exists(env.cache_dir)


def test_rewritten_account_invalidates_the_entry(env):
    env.run()
    write_account(env.config_dir, NAME, b'replaced by a new exchange')
    assert env.run() == ['at-2']


def test_deleted_account_is_not_served(env):
    env.run()
    os.unlink(os.path.join(env.config_dir, NAME))
    with pytest.raises(AnsibleError, match="No account 'job1'"):
        env.run()


def test_missing_account_creates_no_cache_directory_or_lock(env):
    with pytest.raises(AnsibleError, match="No account 'other'"):
        env.run('other')
    assert not os.path.exists(env.cache_dir)


def test_own_refresh_keeps_the_other_entries(env):
    """A refresh by the lookup rotates the refresh token (rewrites the account); the account's
    other entries came from the same grant and stay valid."""
    env.run()
    env.run(scope=['openid'])
    assert env.run() == ['at-1']
    assert env.run(scope=['openid']) == ['at-2']
    assert len(env.fake.calls) == 2


def test_kept_token_without_rewrite(env):
    env.fake.refresh = False
    env.run()
    assert env.run() == ['at-1']
    assert len(env.fake.calls) == 1


def test_token_without_expiry_is_not_cached(env):
    env.fake.expires = False
    assert env.run() == ['at-1']
    assert env.run() == ['at-2']
    assert env.entries() == []


def test_expired_entries_are_pruned(env):
    env.fake.lifetime = 1
    env.run(scope=['a'])
    time.sleep(1.1)
    env.fake.lifetime = 300
    env.run(scope=['b'])
    assert len(env.entries()) == 1


def test_invalid_account_name_goes_to_the_store(env, monkeypatch):
    names = []

    def invalid(store, name, *args, **kwargs):
        names.append(name)
        raise InvalidAccountNameError("Invalid account name %r: it contains a path separator." % name)

    monkeypatch.setattr(_tokens, 'access_token', invalid)
    with pytest.raises(AnsibleError, match='Invalid account name'):
        env.run('../x')
    assert names == ['../x']
    assert not os.path.exists(env.cache_dir)
    assert not cache_mod.cacheable_name('../x') and not cache_mod.cacheable_name('.hidden')
    assert cache_mod.cacheable_name('job1') and cache_mod.cacheable_name('user@iam:prod')


def _worker(run_kwargs, fake_log, queue):
    try:
        queue.put(new_lookup().run([NAME], variables={}, **run_kwargs))
    except Exception as exc:  # pragma: no cover - reported to the parent
        queue.put(repr(exc))


def test_concurrent_workers_make_one_call(env):
    """Forked workers missing at the same time: one fills the entry, the others wait and reuse it."""
    env.fake.delay = 0.3
    ctx = multiprocessing.get_context('fork')
    queue = ctx.Queue()
    kwargs = {'config_dir': env.config_dir, 'cache_dir': env.cache_dir, 'encryption_password': 'pw'}
    workers = [ctx.Process(target=_worker, args=(kwargs, env.fake.log_path, queue)) for _i in range(12)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _w in workers]
    for worker in workers:
        worker.join(30)
    assert results == [['at-1']] * 12
    assert len(env.fake.calls) == 1


# --- errors ---------------------------------------------------------------------------------------

def test_collection_errors_become_ansible_errors(env, monkeypatch):
    def failing(*args, **kwargs):
        raise _tokens.RefreshTokenRejectedError("The provider refused the refresh token of account 'job1': "
                                                "invalid_grant (grant request is invalid).")
    monkeypatch.setattr(_tokens, 'access_token', failing)
    with pytest.raises(AnsibleError) as info:
        env.run()
    assert "refused the refresh token of account 'job1'" in str(info.value)
    assert not isinstance(info.value, OidcTokensError)
    assert os.listdir(env.cache_dir) == []   # no entry, and no lock file either


def test_password_source_errors(env):
    with pytest.raises(AnsibleError, match='Give only one encryption password source'):
        env.run(encryption_password_file='/nonexistent')
    with pytest.raises(AnsibleError, match='No encryption password'):
        env.run(encryption_password=None)


def test_missing_requests(env, monkeypatch):
    monkeypatch.setattr(_oauth.REQUESTS, 'available', False)
    with pytest.raises(AnsibleError, match='Python library requests'):
        env.run()


def test_missing_pynacl(env, monkeypatch):
    monkeypatch.setattr(_account_file.NACL, 'available', False)
    with pytest.raises(AnsibleError, match='Python library PyNaCl'):
        env.run()


def test_warnings_are_shown(env, monkeypatch):
    shown = []
    monkeypatch.setattr(lookup_mod.display, 'warning', lambda msg, *a, **k: shown.append(msg))
    env.fake.warnings = ['The provider issues access tokens valid for 30 s, less than min_valid_period (60 s)']
    env.run()
    assert shown == env.fake.warnings


def test_cache_write_failure_is_a_warning(env, monkeypatch):
    shown = []
    monkeypatch.setattr(lookup_mod.display, 'warning', lambda msg, *a, **k: shown.append(msg))

    def full(self, account, key, entry):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(cache_mod.TokenCache, 'write', full)
    assert env.run() == ['at-1']
    assert len(shown) == 1 and 'No space left on device' in shown[0] and "'job1'" in shown[0]
    assert 'at-1' not in shown[0]


def _opened(path):
    """How many file descriptors of this process have ``path`` open."""
    count = 0
    for fd in os.listdir('/proc/self/fd'):
        try:
            count += os.readlink('/proc/self/fd/%s' % fd) == path
        except OSError:
            pass
    return count


def test_waiter_does_not_keep_a_removed_lock(env):
    """A holder that leaves no entry removes the lock file. A worker that was waiting on that file
    must lock the file now at the path, or a third worker could hold "the" lock at the same time."""
    cache = cache_mod.TokenCache(env.cache_dir)
    account = cache_files.account_id(env.config_dir, NAME)
    path = cache.lock_path(account)
    seen = []

    def waiter():
        with cache_mod.TokenCache(env.cache_dir).locked(account, NAME):
            seen.append(os.path.exists(path) and _opened(path) == 1)

    with cache.locked(account, NAME):
        thread = threading.Thread(target=waiter)
        thread.start()
        deadline = time.monotonic() + 10
        while _opened(path) < 2 and time.monotonic() < deadline:   # the waiter opened the same file
            time.sleep(0.01)
        assert _opened(path) == 2
    thread.join(10)
    assert seen == [True]
    assert not os.path.exists(path)


def test_entry_mode_is_the_mode_of_private_files():
    from ansible_collections.oidc.tokens.plugins.module_utils._private_files import FILE_MODE
    assert cache_mod.ENTRY_MODE == FILE_MODE


def test_lock_timeout(env):
    cache = cache_mod.TokenCache(env.cache_dir, lock_timeout=0.2)
    account = cache_files.account_id(env.config_dir, NAME)
    with cache.locked(account, NAME):
        other = cache_mod.TokenCache(env.cache_dir, lock_timeout=0.2)
        with pytest.raises(cache_mod.TokenCacheError, match="lock of account 'job1'"):
            with other.locked(account, NAME):
                pass


# --- the hit path stays cheap -------------------------------------------------------------------------

HEAVY = ('requests', 'urllib3', 'nacl', 'cryptography', 'jmespath')
OWN_HEAVY = tuple('ansible_collections.oidc.tokens.plugins.module_utils.%s' % m
                  for m in ('_oauth', '_account_store', '_account_file', '_passwords', '_tokens', '_options'))

CHILD = textwrap.dedent(r'''
    import json, sys
    root, config_dir, cache_dir, block = sys.argv[1:5]
    HEAVY = %r
    attempts = []

    class Blocker(object):
        """Refuses the heavy libraries (block=1), as on a controller that lacks them."""
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in HEAVY:
                attempts.append(name)
                raise ImportError('blocked: %%s' %% name)
            return None

    if block == '1':
        sys.meta_path.insert(0, Blocker())
    from ansible.plugins.loader import init_plugin_loader, lookup_loader
    init_plugin_loader([root])
    before = set(sys.modules)
    lookup = lookup_loader.get('oidc.tokens.oidc_token')
    out = {'hit': lookup.run(['job1'], variables={}, config_dir=config_dir, cache_dir=cache_dir)}
    out['new'] = sorted(set(sys.modules) - before)
    out['without_bytecode'] = [m for m in out['new'] if m.startswith('ansible_collections.oidc.')
                               and not hasattr(sys.modules[m], '__path__')
                               and type(sys.modules[m].__spec__.loader).__name__ != 'SourceFileLoader']
    try:
        lookup.run(['job1'], variables={}, config_dir=config_dir, cache_dir=cache_dir, encryption_password='pw',
                   force=True)
    except Exception as exc:
        out['miss_error'] = str(exc)
    print(json.dumps(out))
''') % (HEAVY,)


def _collections_root():
    path = os.path.abspath(lookup_mod.__file__)
    for _i in range(6):   # .../ansible_collections/oidc/tokens/plugins/lookup/oidc_token.py
        path = os.path.dirname(path)
    return path


@pytest.fixture
def filled_cache(env):
    env.run()
    return env


def hit_in_a_fresh_worker(env, tmp_path, block='0'):
    """What a fresh Python process saw when its lookup hit the filled cache (CHILD's report; ``block``: '1' hides
    requests from it)."""
    script = tmp_path / 'child.py'
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), _collections_root(), env.config_dir, env.cache_dir, block],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False,
                          env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=_collections_root()))
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out['hit'] == ['at-1']
    return out


@pytest.mark.parametrize('block', ['0', '1'])
def test_cache_hit_imports_nothing_heavy(filled_cache, tmp_path, block):
    out = hit_in_a_fresh_worker(filled_cache, tmp_path, block)
    heavy = [m for m in out['new'] if m.split('.')[0] in HEAVY or m in OWN_HEAVY]
    assert heavy == [], 'a cache hit imported %s' % heavy
    assert 'ansible_collections.oidc.tokens.plugins.plugin_utils._lookup_cache' in out['new']
    if block == '1':
        # Without requests the miss path fails with a message that names it.
        assert 'Python library requests' in out['miss_error']


def test_cache_hit_parses_no_documentation_and_loads_no_miss_path(filled_cache, tmp_path):
    """A worker that hits the cache neither imports the doc fragments (Ansible's loader parses them, with
    DOCUMENTATION, only for a plugin whose options it does not know yet) nor compiles the miss path."""
    out = hit_in_a_fresh_worker(filled_cache, tmp_path)
    prefix = 'ansible_collections.oidc.tokens.plugins.'
    assert [m for m in out['new'] if m.startswith(prefix + 'doc_fragments')] == []
    assert prefix + 'plugin_utils._lookup_miss' not in out['new']
    assert prefix + 'module_utils._private_files' not in out['new']
    assert prefix + 'lookup.oidc_token' in out['new']


def test_cache_hit_compiles_nothing_the_collection_loader_loads(filled_cache, tmp_path):
    """Ansible's collection loader compiles module_utils and plugin_utils from source in every worker and
    keeps no bytecode; the hit path's modules are loaded by path instead, like the plugin file, so Python
    keeps their bytecode. A module added to the hit path without that fails here."""
    out = hit_in_a_fresh_worker(filled_cache, tmp_path)
    assert out['without_bytecode'] == []


# -- source=agent -------------------------------------------------------------------------------------
# The agent's framing and answers: a real UNIX socket server (test_agent.Server); the real oidc-agent runs in
# tests/functional/test_agent_source.py.

def _jwt(claims):
    import base64

    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b'=').decode()
    return '%s.%s.%s' % (part({'alg': 'RS256', 'typ': 'at+jwt'}), part(claims), 'c2lnbmF0dXJl')


@pytest.fixture
def agent(tmp_path):
    from ansible_collections.oidc.tokens.tests.unit.plugins.module_utils.test_agent import Server
    tokens = {'default': _jwt({'sub': 'alice', 'exp': 2000000000, 'scope': 'openid storage.read:/'}),
              'scoped': _jwt({'sub': 'alice', 'exp': 2000000300, 'scope': 'storage.read:/'})}

    def reply(request):
        token = tokens['scoped'] if request.get('scope') or request.get('audience') else tokens['default']
        return json.dumps({'status': 'success', 'access_token': token, 'issuer': ISSUER,
                           'expires_at': 2000000000}).encode()

    server = Server(tmp_path / 'agent.sock', reply)
    server.tokens = tokens
    yield server
    server.stop()


def test_source_and_agent_socket_come_only_from_the_controller(monkeypatch):
    from ansible import constants as C
    definitions = C.config.get_configuration_definitions('lookup', new_lookup()._load_name)
    assert definitions['source'].get('default') == 'store'
    assert not any(definitions['source'].get(key) for key in ('vars', 'env', 'ini'))
    assert not definitions['agent_socket'].get('vars')
    monkeypatch.setenv('OIDC_SOCK', '/run/user/1000/oidc-agent.sock')
    assert options_of({'oidc_tokens_agent_socket': '/tmp/x', 'OIDC_SOCK': '/tmp/y'}).get_option('agent_socket') == \
        '/run/user/1000/oidc-agent.sock'
    with pytest.raises(AnsibleError, match='source'):
        options_of(source='keyring')


def test_source_agent_gives_the_agents_token_and_writes_nothing(agent, tmp_path, monkeypatch):
    monkeypatch.setattr(_tokens, 'access_token', lambda *a, **k: pytest.fail('the store was asked'))
    cache_dir = tmp_path / 'cache'
    config_dir = tmp_path / 'accounts'
    got = new_lookup().run(['wlcg'], variables={'oidc_tokens_min_valid_period': 120}, source='agent',
                           agent_socket=agent.path, cache_dir=str(cache_dir), config_dir=str(config_dir))
    assert got == [agent.tokens['default']]
    assert agent.requests == [{'request': 'access_token', 'account': 'wlcg', 'min_valid_period': 120,
                               'application_hint': 'oidc.tokens'}]
    assert not cache_dir.exists() and not config_dir.exists()
    assert sorted(os.listdir(str(tmp_path))) == ['agent.sock']


def test_source_agent_with_oidc_sock_scope_audience_and_query(agent, monkeypatch):
    monkeypatch.setenv('OIDC_SOCK', agent.path)
    got = new_lookup().run(['wlcg'], variables={}, source='agent', scope=['storage.read:/'], audience=['se'],
                           min_valid_period=30, verify=False,
                           query='{until: expires_at, iss: issuer, scope: scope, sub: claims.sub}')
    # The agent's expires_at is its default token's; a down-scoped token's own is its exp.
    assert got == [{'until': 2000000300, 'iss': ISSUER, 'scope': ['storage.read:/'], 'sub': 'alice'}]
    assert agent.requests[0]['scope'] == 'storage.read:/' and agent.requests[0]['audience'] == 'se'
    got = new_lookup().run(['wlcg'], variables={}, source='agent', query='[expires_at, scope]')
    assert got == [[2000000000, ['openid', 'storage.read:/']]]


def test_source_agent_force(agent):
    new_lookup().run(['wlcg'], variables={}, source='agent', agent_socket=agent.path, force=True)
    assert agent.requests[0]['min_valid_period'] == -1


def test_source_agent_errors_fail_the_lookup(tmp_path, monkeypatch):
    from ansible_collections.oidc.tokens.tests.unit.plugins.module_utils.test_agent import Server
    monkeypatch.delenv('OIDC_SOCK', raising=False)
    with pytest.raises(AnsibleError, match='OIDC_SOCK is not set'):
        new_lookup().run(['wlcg'], variables={}, source='agent')
    server = Server(tmp_path / 'a.sock', lambda request: b'{"status":"failure","error":"account not loaded"}')
    try:
        with pytest.raises(AnsibleError, match='run oidc-add wlcg'):
            new_lookup().run(['wlcg'], variables={}, source='agent', agent_socket=server.path)
        with pytest.raises(AnsibleError, match='Invalid account name'):
            new_lookup().run(['../wlcg'], variables={}, source='agent', agent_socket=server.path)
    finally:
        server.stop()


AGENT_CHILD = textwrap.dedent(r'''
    import json, sys
    root, socket_path = sys.argv[1:3]
    HEAVY = %r

    class Blocker(object):
        """Refuses the heavy libraries, as on a controller that lacks them."""
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in HEAVY:
                raise ImportError('blocked: %%s' %% name)
            return None

    sys.meta_path.insert(0, Blocker())
    from ansible.plugins.loader import init_plugin_loader, lookup_loader
    init_plugin_loader([root])
    before = set(sys.modules)
    lookup = lookup_loader.get('oidc.tokens.oidc_token')
    out = {'token': lookup.run(['wlcg'], variables={}, source='agent', agent_socket=socket_path, scope=['openid'])}
    out['new'] = sorted(set(sys.modules) - before)
    print(json.dumps(out))
''') % (HEAVY,)


def test_source_agent_needs_no_heavy_library(agent, tmp_path):
    """Without claims to verify, source=agent imports neither requests, PyNaCl, cryptography nor the store."""
    script = tmp_path / 'agent_child.py'
    script.write_text(AGENT_CHILD)
    proc = subprocess.run([sys.executable, str(script), _collections_root(), agent.path],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False,
                          env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=_collections_root()))
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out['token'] == [agent.tokens['scoped']]
    heavy = [m for m in out['new'] if m.split('.')[0] in HEAVY or m in OWN_HEAVY]
    assert heavy == [], 'source=agent imported %s' % heavy
    prefix = 'ansible_collections.oidc.tokens.plugins.'
    assert prefix + 'module_utils._agent' in out['new']
    assert [m for m in out['new'] if m.endswith(('._account_store', '._account_file', '._oauth', '._lookup_miss'))] == []
