# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _accounts.py with a fake OAuth client and an in-memory store: oidc_account's field plan, the
refresh-token probe (oidc_account's validation, oidc_account_info's check_active), replacing a grant
(oidc_account, oidc_token_exchange), and removing an account (oidc_account state absent; with the real store).
"""

from __future__ import annotations

import base64
import json

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _accounts, _tokens
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError, WrongPasswordError
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import DiscoveryError, ProviderError

ISSUER = 'https://op.example.org/realms/hpc'
NOW = 10000


class FakeClient(object):
    """Records every call; introspection and revocation answer from a script (a value or an exception)."""

    issuer = ISSUER
    client_id = 'job-runner'

    def __init__(self, introspection=None, revocation=None, metadata=None):
        self.introspection = introspection
        self.revocation = revocation
        self._metadata = {'introspection_endpoint': ISSUER + '/introspect'} if metadata is None else metadata
        self.calls = []

    @property
    def metadata(self):
        if isinstance(self._metadata, Exception):
            raise self._metadata
        return self._metadata

    def introspect(self, token, token_type_hint=None):
        self.calls.append(('introspect', token, token_type_hint))
        if isinstance(self.introspection, Exception):
            raise self.introspection
        return self.introspection

    def revoke(self, token, token_type_hint='refresh_token'):
        self.calls.append(('revoke', token, token_type_hint))
        if isinstance(self.revocation, Exception):
            raise self.revocation


class MemoryStore(object):
    """Just enough of AccountStore: one account, update() writes what fn returns, load() and save()."""

    def __init__(self, acc, unreadable=None):
        self.account = acc
        self.unreadable = unreadable
        self.writes = 0

    def load(self, name, password):
        if self.unreadable:
            raise self.unreadable
        return self.account.copy()

    def update(self, name, password, fn):
        updated, result = fn(self.load(name, password))
        if updated is not None:
            self.save(name, updated, password)
        return result

    def save(self, name, acc, password, overwrite=True):
        self.account = acc
        self.writes += 1


def account(**meta):
    """An account as oidc_account creates it."""
    options = {'issuer': ISSUER, 'client_id': 'job-runner', 'client_secret': 'secret', 'refresh_token': 'rt-0',
               'scope': ['openid', 'offline_access'], 'audience': None, 'resource': None, 'lifetime': 3600,
               'ca_path': None, 'auth_method': None}
    acc = _accounts.created_account('acct', options.get, None, 1000)
    acc.meta.update(meta)
    return acc


def options(**given):
    """oidc_account's options; only those given ask for anything."""
    return dict({'refresh_token': None, 'issuer': None, 'client_id': None, 'client_secret': None, 'ca_path': None,
                 'scope': None, 'audience': None, 'resource': None, 'lifetime': None}, **given).get


def jwt(claims):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b'=').decode()
    return '%s.%s.%s' % (part({'alg': 'HS512', 'typ': 'Refresh'}), part(claims), 'c2ln')


# -- the field plan ---------------------------------------------------------------------------------------

def test_created_account_takes_the_introspected_scope_only_without_a_scope_option():
    acc = account()
    assert acc['scope'] == 'openid offline_access' and acc.meta['lifetime_end'] == 4600
    assert acc.meta['refresh_token_set_at'] == 1000 and acc.meta['source'] == 'refresh_token'
    assert acc.meta[_accounts.META_RT_FINGERPRINT] == _accounts.fingerprint('rt-0')
    get = options(issuer=ISSUER, client_id='c', client_secret='s', refresh_token='rt', auth_method=None)
    assert _accounts.created_account('a', get, 'openid compute.read', 1000)['scope'] == 'openid compute.read'
    assert _accounts.created_account('a', get, None, 1000).meta['lifetime_end'] is None


def test_the_same_options_change_nothing():
    plan = _accounts.plan_update('acct', account(), options(
        issuer=ISSUER + '/', client_id='job-runner', client_secret='secret', refresh_token='rt-0',
        scope=['offline_access', 'openid'], lifetime=3600), NOW)
    assert plan == (None, []) and not plan.needs_validation


def test_fields_change_in_the_reported_order_and_need_no_validation():
    plan = _accounts.plan_update('acct', account(), options(
        resource=['https://compute.example.org'], audience=['storage'], scope=['openid'], ca_path='/ca.pem',
        client_secret='rotated'), NOW)
    assert plan.changed == ['client_secret', 'ca_path', 'scope', 'audience', 'resource']
    assert not plan.needs_validation
    updated = plan.account
    assert updated['scope'] == 'openid' and updated['cert_path'] == '/ca.pem'
    assert updated['audience'] == 'storage' and updated.meta['audience'] == ['storage']
    assert updated.meta['resource'] == ['https://compute.example.org']
    assert updated.meta['lifetime_end'] == 4600   # no lifetime option: the end stays


def test_an_empty_list_clears_a_list_field():
    plan = _accounts.plan_update('acct', account(audience=['storage']), options(audience=[]), NOW)
    assert plan.changed == ['audience'] and plan.account.meta['audience'] == []


def test_a_new_client_secret_drops_the_kept_access_token_a_new_scope_does_not():
    kept = dict(access_token='at', access_token_expires_at=2000, access_token_scope='openid')
    assert 'access_token' not in _accounts.plan_update('acct', account(**kept), options(client_secret='x'),
                                                       NOW).account.meta
    assert _accounts.plan_update('acct', account(**kept), options(scope=['openid']),
                                 NOW).account.meta['access_token'] == 'at'


@pytest.mark.parametrize('given, words', [
    ({'client_id': 'other'}, "Account 'acct' belongs to client job-runner; its refresh token cannot be used with "
                             "client other. Give a refresh_token of that client"),
    ({'issuer': 'https://elsewhere.example.org/', 'client_id': 'other'},
     'belongs to issuer https://op.example.org/realms/hpc; its refresh token cannot be used with issuer '
     'https://elsewhere.example.org. Give a refresh_token of that issuer'),
])
def test_another_issuer_or_client_needs_a_new_refresh_token(given, words):
    with pytest.raises(_accounts.AccountRefreshTokenError) as info:
        _accounts.plan_update('acct', account(), options(**given), NOW)
    assert words in str(info.value)


def test_a_new_refresh_token_is_validated_and_restarts_the_lifetime():
    current = account(access_token='at', access_token_expires_at=2000, revoked_at=1500)
    plan = _accounts.plan_update('acct', current, options(refresh_token='rt-new', client_id='other',
                                                          client_secret='other-secret'), NOW)
    assert plan.changed == ['refresh_token', 'client_id', 'client_secret', 'lifetime']
    assert plan.needs_validation
    meta = plan.account.meta
    assert plan.account['refresh_token'] == 'rt-new' and plan.account['client_id'] == 'other'
    assert meta[_accounts.META_RT_FINGERPRINT] == _accounts.fingerprint('rt-new')
    assert meta['refresh_token_set_at'] == NOW and meta['lifetime_end'] == NOW + 3600 and meta['lifetime'] == 3600
    assert 'access_token' not in meta and 'access_token_expires_at' not in meta and 'revoked_at' not in meta
    assert current['refresh_token'] == 'rt-0'   # the current account is not touched


def test_the_token_given_before_is_no_change_after_the_provider_rotated_it():
    rotated = account()
    rotated['refresh_token'] = 'rt-rotated'
    assert _accounts.plan_update('acct', rotated, options(refresh_token='rt-0'), NOW) == (None, [])


def test_an_emptied_account_takes_the_token_given_before():
    emptied = account()
    emptied['refresh_token'] = ''
    assert _accounts.plan_update('acct', emptied, options(refresh_token='rt-0'), NOW).changed == \
        ['refresh_token', 'lifetime']


def test_the_lifetime_rule():
    same = _accounts.plan_update('acct', account(), options(lifetime=3600), NOW)
    assert same == (None, [])
    moved = _accounts.plan_update('acct', account(), options(lifetime=7200), NOW)
    assert moved.changed == ['lifetime'] and moved.account.meta['lifetime_end'] == NOW + 7200
    unlimited = _accounts.plan_update('acct', account(), options(lifetime=0), NOW)
    assert unlimited.account.meta['lifetime_end'] is None and unlimited.account.meta['lifetime'] is None
    # An account without a recorded lifetime (an exchanged one of an older release): derived from its creation.
    derived = account(lifetime=None)
    assert _tokens.stored_lifetime(derived) == 3600
    assert _accounts.plan_update('acct', derived, options(lifetime=3600), NOW) == (None, [])
    # A new token without a lifetime option restarts the end the account had; one without a limit stays so.
    assert _accounts.plan_update('acct', account(lifetime=None, lifetime_end=None), options(refresh_token='rt-9'),
                                 NOW).changed == ['refresh_token']


def test_negative_lifetime_is_refused():
    with pytest.raises(_accounts.AccountRefreshTokenError, match='lifetime must be 0'):
        _accounts.check_lifetime(-5)
    _accounts.check_lifetime(0)
    _accounts.check_lifetime(None)


def test_creating_needs_the_grant():
    with pytest.raises(_accounts.AccountRefreshTokenError,
                       match="Account 'acct' does not exist; creating it needs client_secret, refresh_token."):
        _accounts.check_create_options('acct', options(issuer=ISSUER, client_id='c'))


def test_is_expired():
    assert not _tokens.is_expired(account(), 4599) and _tokens.is_expired(account(), 4600)
    assert not _tokens.is_expired(account(lifetime_end=None), 10 ** 10)


# -- the refresh-token probe ------------------------------------------------------------------------------

def test_probe_active():
    client = FakeClient({'active': True, 'client_id': 'job-runner', 'scope': 'openid offline_access'})
    status = _accounts.probe_refresh_token(client, 'rt')
    assert status.state == _accounts.ACTIVE and status.active is True and status.scope == 'openid offline_access'
    assert client.calls == [('introspect', 'rt', 'refresh_token')]
    assert _accounts.validate_refresh_token(client, 'rt') == (True, 'openid offline_access')
    assert _accounts.refresh_token_activity(lambda acc: client, account()) == {'active': True}


def test_probe_inactive():
    client = FakeClient({'active': False})
    assert _accounts.probe_refresh_token(client, 'rt').state == _accounts.INACTIVE
    with pytest.raises(_accounts.AccountRefreshTokenError,
                       match='reports it as not active .revoked, expired, already used, or issued to another '
                             'client than job-runner.'):
        _accounts.validate_refresh_token(client, 'rt')
    assert _accounts.refresh_token_activity(lambda acc: client, account()) == {'active': False}


def test_probe_another_client():
    client = FakeClient({'active': True, 'client_id': 'someone-else'})
    status = _accounts.probe_refresh_token(client, 'rt')
    assert status.state == _accounts.OTHER_CLIENT and status.owner == 'someone-else'
    with pytest.raises(_accounts.AccountRefreshTokenError,
                       match='says it was issued to client someone-else, not to job-runner; only that client'):
        _accounts.validate_refresh_token(client, 'rt')
    # check_active reports the provider's answer as it is.
    assert _accounts.refresh_token_activity(lambda acc: client, account()) == {'active': True}


def test_probe_introspection_refused():
    refusal = ProviderError('The provider refused the introspection: invalid_client', error='invalid_client')
    client = FakeClient(refusal)
    status = _accounts.probe_refresh_token(client, 'rt')
    assert status.state == _accounts.NOT_ANSWERED and status.active is None and status.error is refusal
    with pytest.raises(_accounts.AccountRefreshTokenError,
                       match='introspecting it as client job-runner failed: The provider refused the introspection: '
                             'invalid_client .set validate: false'):
        _accounts.validate_refresh_token(client, 'rt')
    assert _accounts.refresh_token_activity(lambda acc: client, account()) == {
        'active': None, 'active_note': 'The provider could not be asked: The provider refused the introspection: '
                                       'invalid_client'}


def test_probe_without_an_introspection_endpoint():
    client = FakeClient(metadata={'token_endpoint': ISSUER + '/token'})
    assert _accounts.probe_refresh_token(client, 'rt').state == _accounts.NO_INTROSPECTION
    assert _accounts.validate_refresh_token(client, 'rt') == (False, None)
    assert client.calls == []
    assert _accounts.refresh_token_activity(lambda acc: client, account()) == {
        'active': None, 'active_note': 'The provider %s announces no introspection endpoint.' % ISSUER}


def test_probe_when_discovery_fails():
    client = FakeClient(metadata=DiscoveryError('No discovery document for issuer x.'))
    with pytest.raises(DiscoveryError):
        _accounts.probe_refresh_token(client, 'rt')
    with pytest.raises(_accounts.AccountRefreshTokenError,
                       match='^The refresh token was not written: No discovery document for issuer x.$'):
        _accounts.validate_refresh_token(client, 'rt')
    assert _accounts.refresh_token_activity(lambda acc: client, account()) == {
        'active': None, 'active_note': 'The provider could not be asked: No discovery document for issuer x.'}


def test_activity_of_an_account_without_a_refresh_token_or_a_client():
    emptied = account()
    emptied['refresh_token'] = ''
    assert _accounts.refresh_token_activity(lambda acc: pytest.fail('no client needed'), emptied) == {
        'active': False, 'active_note': 'The account holds no refresh token.'}

    def no_client(acc):
        raise OidcTokensError('Account was made with issuer a, but the task names issuer b.')
    assert _accounts.refresh_token_activity(no_client, account())['active_note'] == \
        'The provider could not be asked: Account was made with issuer a, but the task names issuer b.'


# -- replacing the grant ----------------------------------------------------------------------------------

def with_token(token):
    acc = account()
    acc['refresh_token'] = token
    return acc


def test_replace_grant_writes_the_new_account_then_revokes_the_old_token():
    store, client = MemoryStore(account()), FakeClient()
    seen = []

    def client_for(old):
        seen.append(old['refresh_token'])
        return client
    outcome = _accounts.replace_grant(store, 'acct', 'pw', lambda current: with_token('rt-new'), client_for)
    assert store.account['refresh_token'] == 'rt-new' and store.writes == 1
    assert client.calls == [('revoke', 'rt-0', 'refresh_token')] and seen == ['rt-0']
    assert outcome['revoke'] is True and outcome['warnings'] == []
    assert outcome['old']['refresh_token'] == 'rt-0' and outcome['new']['refresh_token'] == 'rt-new'


def test_replace_grant_does_not_revoke_a_token_of_the_same_session():
    old, new = jwt({'sid': 'session-1', 'jti': 'a'}), jwt({'sid': 'session-1', 'jti': 'b'})
    store, client = MemoryStore(with_token(old)), FakeClient()
    outcome = _accounts.replace_grant(store, 'acct', 'pw', lambda current: with_token(new), lambda acc: client)
    assert client.calls == [] and store.account['refresh_token'] == new
    assert outcome['warnings'] == [_tokens.SAME_SESSION_NOTE % 'acct'] and outcome['revoke'] is True
    # Another session's token is revoked.
    store, client = MemoryStore(with_token(old)), FakeClient()
    _accounts.replace_grant(store, 'acct', 'pw', lambda current: with_token(jwt({'sid': 'session-2'})),
                            lambda acc: client)
    assert client.calls == [('revoke', old, 'refresh_token')]


def test_a_failed_revocation_is_a_warning_and_the_new_account_stays():
    refusal = ProviderError('The provider refused the revocation: invalid_client', error='invalid_client')
    store = MemoryStore(account())
    outcome = _accounts.replace_grant(store, 'acct', 'pw', lambda current: with_token('rt-new'),
                                      lambda acc: FakeClient(revocation=refusal))
    assert store.account['refresh_token'] == 'rt-new'
    assert outcome['warnings'] == ["The replaced refresh token of account 'acct' was not revoked: The provider "
                                   "refused the revocation: invalid_client"]
    assert outcome['revoke'] is True


def test_replace_grant_without_revoke_or_without_a_replaced_token_revokes_nothing():
    client = FakeClient()
    outcome = _accounts.replace_grant(MemoryStore(account()), 'acct', 'pw', lambda current: with_token('rt-new'),
                                      lambda acc: client, revoke=False)
    assert outcome['revoke'] is False and client.calls == []
    outcome = _accounts.replace_grant(MemoryStore(with_token('')), 'acct', 'pw', lambda current: with_token('rt-new'),
                                      lambda acc: client)
    assert outcome['revoke'] is False and client.calls == []
    # The new account keeps the token (another field changed): nothing was replaced.
    outcome = _accounts.replace_grant(MemoryStore(account()), 'acct', 'pw', lambda current: account(),
                                      lambda acc: client)
    assert outcome['revoke'] is False and client.calls == []


def test_replace_grant_with_nothing_to_change_writes_nothing():
    store = MemoryStore(account())
    outcome = _accounts.replace_grant(store, 'acct', 'pw', lambda current: None, lambda acc: pytest.fail('no client'))
    assert store.writes == 0 and outcome['new'] is None and outcome['old']['refresh_token'] == 'rt-0'


def test_replace_grant_in_check_mode_writes_and_revokes_nothing_but_says_it_would():
    store, client = MemoryStore(account()), FakeClient()
    outcome = _accounts.replace_grant(store, 'acct', 'pw', lambda current: with_token('rt-new'), lambda acc: client,
                                      check_mode=True)
    assert store.writes == 0 and client.calls == [] and store.account['refresh_token'] == 'rt-0'
    assert outcome['revoke'] is True and outcome['new']['refresh_token'] == 'rt-new' and outcome['warnings'] == []


def test_what_the_replacement_raises_leaves_the_account():
    store = MemoryStore(account())

    def refuse(current):
        raise _accounts.AccountRefreshTokenError('not active')
    with pytest.raises(_accounts.AccountRefreshTokenError):
        _accounts.replace_grant(store, 'acct', 'pw', refuse, lambda acc: pytest.fail('no client'))
    assert store.writes == 0


def test_an_unreadable_account_is_overwritten_only_when_asked():
    wrong = WrongPasswordError("Wrong encryption password for account 'acct'")
    with pytest.raises(WrongPasswordError):
        _accounts.replace_grant(MemoryStore(account(), unreadable=wrong), 'acct', 'pw',
                                lambda current: with_token('rt-new'), lambda acc: pytest.fail('no client'))
    store = MemoryStore(account(), unreadable=wrong)
    outcome = _accounts.replace_grant(store, 'acct', 'pw', lambda current: with_token('rt-new'),
                                      lambda acc: pytest.fail('no client'), overwrite_unreadable=True)
    assert store.account['refresh_token'] == 'rt-new' and outcome['old'] is None
    assert outcome['warnings'] == ["The replaced account 'acct' could not be read, so its refresh token was not "
                                   "revoked: Wrong encryption password for account 'acct'"]


# -- which client revokes a replaced token ----------------------------------------------------------------

def test_the_replaced_token_is_revoked_by_the_task_client_unless_the_account_moved():
    old = account()
    get = options(client_secret='rotated', validate_certs=True, timeout=10, retries=0, allow_insecure_http=False,
                  auth_method=None)
    kept = _accounts.replaced_token_client(get, old)
    assert kept.client_id == 'job-runner' and kept._client_secret == 'rotated'
    moved = _accounts.replaced_token_client(
        options(client_id='other', client_secret='other-secret', validate_certs=True, timeout=10, retries=0,
                allow_insecure_http=False, auth_method=None), old)
    assert moved.client_id == 'job-runner' and moved._client_secret == 'secret'


# -- removing the account (oidc_account state absent), with the real store -------------------------------------

PASSWORD = 'account-password'


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """A real account store holding account 'acct', and one cached lookup token of it."""
    from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
    from ansible_collections.oidc.tokens.plugins.module_utils._lookup_cache_files import account_id

    store = AccountStore(config_dir=str(tmp_path / 'accounts'))
    store.save('acct', account(), PASSWORD)
    cache = tmp_path / 'cache'
    cache.mkdir(mode=0o700)
    monkeypatch.setenv('OIDC_TOKENS_CACHE_DIR', str(cache))
    store.cached = cache / ('%s-entry.json' % account_id(store.config_dir, 'acct'))
    store.cached.write_text('{}')
    return store


def remove(store, client=None, password=PASSWORD, **flags):
    client = client or FakeClient()
    return _accounts.remove_account(store, 'acct', {'encryption_password': password}.get, lambda acc: client, **flags)


def test_remove_revokes_then_deletes_the_account_and_its_cached_tokens(disk):
    client = FakeClient()
    result = remove(disk, client)
    assert client.calls == [('revoke', 'rt-0', 'refresh_token')]
    assert not disk.exists('acct') and not disk.cached.exists()
    assert result['changed'] and result['revoked'] and result['changed_fields'] == ['account']
    assert result['account']['has_refresh_token'] and result['account']['client_id'] == 'job-runner'
    assert result['diff'] == {'before': result['account'], 'after': {}} and result['warnings'] == []


def test_remove_of_a_missing_account_changes_nothing(disk):
    client = FakeClient()
    result = _accounts.remove_account(disk, 'other', {}.get, lambda acc: client)
    assert result == {'changed': False, 'account': {}, 'changed_fields': [], 'revoked': False,
                      'msg': "Account 'other' does not exist."}
    assert client.calls == [] and disk.exists('acct')


def test_remove_in_check_mode_says_what_it_would_do_and_does_nothing(disk):
    client = FakeClient()
    result = remove(disk, client, check_mode=True)
    assert result['changed'] and result['revoked'] and result['account']['has_refresh_token']
    assert client.calls == [] and disk.exists('acct') and disk.cached.exists()


def test_remove_keeps_the_account_when_revocation_fails_unless_forced(disk):
    refused = FakeClient(revocation=ProviderError('The provider refused the revocation', error='server_error'))
    with pytest.raises(OidcTokensError, match="refresh token of account 'acct' was not revoked"):
        remove(disk, refused)
    assert disk.exists('acct')
    result = remove(disk, refused, force=True)
    assert not disk.exists('acct') and result['changed'] and not result['revoked']
    assert result['warnings'] and 'could not be revoked' in result['warnings'][0]


def test_remove_of_an_unreadable_account_needs_force(disk):
    client, wrong = FakeClient(), 'not-the-password-42'
    with pytest.raises(WrongPasswordError):
        remove(disk, client, password=wrong)
    assert disk.exists('acct')
    checked = remove(disk, client, password=wrong, force=True, check_mode=True)
    assert checked['account'] == {'name': 'acct', 'path': disk.path('acct')} and not checked['revoked']
    assert 'could not be read' in checked['warnings'][0] and disk.exists('acct')
    result = remove(disk, client, password=wrong, force=True)
    assert not disk.exists('acct') and result['changed'] and not result['revoked'] and client.calls == []
    assert 'could not be read' in result['warnings'][0]
    assert not any(wrong in warning for warning in checked['warnings'] + result['warnings'])


def test_remove_without_revoke_deletes_and_shows_the_facts_only_with_a_password(disk):
    client = FakeClient()
    result = remove(disk, client, password=None, revoke=False)
    assert result['account'] == {'name': 'acct', 'path': disk.path('acct')} and result['changed']
    assert not disk.exists('acct') and not disk.cached.exists() and client.calls == []
    disk.save('acct', account(), PASSWORD)
    assert remove(disk, client, revoke=False)['account']['has_refresh_token'] and client.calls == []
