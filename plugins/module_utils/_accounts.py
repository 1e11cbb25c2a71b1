# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An account kept from a refresh token: its field plan, what the provider says of its refresh token, and
replacing its grant.

- The field plan (``FIELDS``, ``plan_update``, ``created_account``): which option of oidc_account sets which
  account field and how it is compared, which fields name the grant (a new refresh token is needed to change
  them), which changes the provider must confirm before they are written (``VALIDATED``), and when the
  lifetime's end moves.
- One probe of a refresh token (``probe_refresh_token``, RFC 7662 introspection as the account's client), read
  by oidc_account before it writes a token (``validate_refresh_token``) and by oidc_account_info
  (``refresh_token_activity``).
- ``replace_grant``: write an account over the one it replaces, under its lock, then revoke the refresh token
  it replaced; used by oidc_account and oidc_token_exchange.
- ``remove_account``: oidc_account's state absent (revoke, then delete; check mode; force).
- ``start_device_login`` and ``finish_device_login``: oidc_device_login's two runs (RFC 8628): the device
  authorization, then the polling and the account kept like ``exchange_account`` keeps one.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import hashlib
import operator
import time
from collections import namedtuple

from ansible_collections.oidc.tokens.plugins.module_utils._agent import concurrent_use_warning
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError
from ansible_collections.oidc.tokens.plugins.module_utils._lists import as_list, same_items, space_separated
from ansible_collections.oidc.tokens.plugins.module_utils._lookup_cache_files import drop_account_entries
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import DiscoveryError, normalize_issuer
from ansible_collections.oidc.tokens.plugins.module_utils._options import (
    PASSWORD_SOURCES, account_client, encryption_password, oauth_client)
from ansible_collections.oidc.tokens.plugins.module_utils._tokens import (
    OFFLINE_ACCESS, SAME_SESSION_NOTE, NoRefreshTokenError, ShortRefreshTokenError, account_facts, account_is_usable,
    build_account, exchange, lifetime_fields, revoke_account, same_session, short_refresh_token, stored_lifetime)

# Our own fields in the account's oidc_tokens object, next to those _tokens.py keeps.
META_RT_FINGERPRINT = 'refresh_token_given_sha256'   # SHA-256 of the token oidc_account was last given
META_RT_SET_AT = 'refresh_token_set_at'              # when oidc_account last gave the account a refresh token
_KEPT_ACCESS_TOKEN = ('access_token', 'access_token_expires_at', 'access_token_scope')


class AccountRefreshTokenError(OidcTokensError):
    """The refresh token given to oidc_account cannot be used."""


def fingerprint(token):
    return hashlib.sha256(token.encode('utf-8')).hexdigest()


def facts_of(name, account, path):
    """account_facts with the lifetime the end was set from and when the account was last given a refresh token."""
    facts = account_facts(name, account, path)
    facts['lifetime'] = stored_lifetime(account)
    facts['refresh_token_set_at'] = account.meta.get(META_RT_SET_AT)
    return facts


def check_lifetime(lifetime):
    if lifetime is not None and lifetime < 0:
        raise AccountRefreshTokenError('lifetime must be 0 (no limit) or a number of seconds, not %d.' % lifetime)


# -- the field plan ---------------------------------------------------------------------------------------

def _same_issuer(value, stored):
    return normalize_issuer(value) == normalize_issuer(stored)


def _not_none(value):
    return value is not None


def _stored(key):
    return lambda account: account.get(key)


def _set(key, convert=lambda value: value):
    def write(account, value):
        account[key] = convert(value)
    return write


def _set_issuer(account, value):
    account['issuer_url'] = account.meta['issuer'] = value


def _set_audience(account, value):
    account['audience'] = space_separated(value)
    account.meta['audience'] = as_list(value)


def _set_resource(account, value):
    account.meta['resource'] = as_list(value)


class Field(namedtuple('Field', 'name read write given same grant drops_access_token',
                       defaults=(bool, operator.eq, None, False))):
    """One option of oidc_account and the account field it sets.

    ``name``: the option, and the name in changed_fields. ``read(account)``: the stored value. ``write(account,
    value)``. ``given(value)``: whether the option asks for anything (default: a non-empty value).
    ``same(value, stored)``. ``grant``: for a field that names the grant a refresh token belongs to ('issuer',
    'client'): changing it needs a new refresh token. ``drops_access_token``: the kept access token goes when
    the field changes.
    """


FIELDS = (   # in the order changed_fields reports them, after refresh_token and before lifetime
    Field('issuer', lambda a: a.get('issuer_url') or a.get('issuer') or 'https://none', _set_issuer,
          same=_same_issuer, grant='issuer', drops_access_token=True),
    Field('client_id', _stored('client_id'), _set('client_id'), grant='client', drops_access_token=True),
    Field('client_secret', _stored('client_secret'), _set('client_secret'), drops_access_token=True),
    Field('ca_path', _stored('cert_path'), _set('cert_path')),
    Field('scope', _stored('scope'), _set('scope', space_separated), given=_not_none,
          same=same_items),
    Field('audience', lambda a: a.meta.get('audience') or a.get('audience'), _set_audience, given=_not_none,
          same=same_items),
    Field('resource', lambda a: a.meta.get('resource'), _set_resource, given=_not_none, same=same_items),
)

# Changes the provider must confirm (validate) before they are written: a new refresh token.
VALIDATED = ('refresh_token',)


class Plan(namedtuple('Plan', 'account changed')):
    """The updated account (None when nothing changes) and the changed field names, in the order reported."""

    @property
    def needs_validation(self):
        return any(name in VALIDATED for name in self.changed)


def is_new_refresh_token(account, token):
    """Whether ``token`` replaces the account's refresh token.

    The token given last time may have been rotated since: its fingerprint still matches. An account emptied by
    oidc_revoke (remove: false) takes any token given, and validation then says if it is alive.
    """
    return bool(token) and (not account.get('refresh_token') or (
        token != account.get('refresh_token') and fingerprint(token) != account.meta.get(META_RT_FINGERPRINT)))


def _grant_error(name, field, value, stored):
    show = normalize_issuer if field.grant == 'issuer' else (lambda v: v)
    return AccountRefreshTokenError(
        'Account %r belongs to %s %s; its refresh token cannot be used with %s %s. Give a refresh_token of that %s '
        'to replace it, or use another account name.'
        % (name, field.grant, show(stored), field.grant, show(value), field.grant))


def _give_refresh_token(account, token, now):
    account['refresh_token'] = token
    account.meta[META_RT_FINGERPRINT] = fingerprint(token)
    account.meta[META_RT_SET_AT] = now
    _drop_access_token(account)   # the kept access token belongs to the old grant
    account.meta.pop('revoked_at', None)


def _drop_access_token(account):
    for key in _KEPT_ACCESS_TOKEN:
        account.meta.pop(key, None)


def _move_lifetime(account, lifetime, now, restart):
    """A new lifetime moves the end to ``now`` + lifetime; a new refresh token (``restart``) restarts it."""
    if lifetime is None:
        if not restart or not account.meta.get('lifetime_end'):
            return
        lifetime = stored_lifetime(account)
        if not lifetime:
            return
    account.meta.update(lifetime_fields(lifetime, now))


def plan_update(name, current, get, now):
    """What oidc_account's options (``get``) change in the existing account ``current``: a Plan.

    Raises AccountRefreshTokenError when the options move the account to another issuer or client without a
    new refresh token.
    """
    token = get('refresh_token')
    new_token = is_new_refresh_token(current, token)
    updated = current.copy()
    changed = []
    for field in FIELDS:
        value = get(field.name)
        if not field.given(value) or field.same(value, field.read(current)):
            continue
        if field.grant and not new_token:
            raise _grant_error(name, field, value, field.read(current))
        field.write(updated, value)
        changed.append(field.name)
    if new_token:
        _give_refresh_token(updated, token, now)
        changed.insert(0, 'refresh_token')
    elif current.meta.get('access_token') and any(f.drops_access_token and f.name in changed for f in FIELDS):
        _drop_access_token(updated)
    # The same lifetime keeps the end it set before (idempotent); another value or a new token moves it.
    lifetime = get('lifetime')
    if (lifetime is not None and (lifetime or None) != stored_lifetime(current)) or new_token:
        _move_lifetime(updated, lifetime, now, restart=new_token)
        if (updated.meta.get('lifetime_end') != current.meta.get('lifetime_end')
                or updated.meta.get('lifetime') != current.meta.get('lifetime')):
            changed.append('lifetime')
    return Plan(updated if changed else None, changed)


CREATE_NEEDS = ('issuer', 'client_id', 'client_secret', 'refresh_token')


def check_create_options(name, get):
    missing = [option for option in CREATE_NEEDS if not get(option)]
    if missing:
        raise AccountRefreshTokenError('Account %r does not exist; creating it needs %s.' % (name, ', '.join(missing)))


def created_account(name, get, introspected_scope, now):
    """The account oidc_account creates from its options; without a scope option, the introspected scope."""
    scope = get('scope')
    if scope is None:
        scope = as_list(introspected_scope)
    account = build_account(name, get('issuer'), get('client_id'), get('client_secret'), get('refresh_token'), scope,
                            get('audience'), get('resource'), get('lifetime'), source='refresh_token',
                            ca_path=get('ca_path'), auth_method=get('auth_method'), now=now)
    account.meta[META_RT_FINGERPRINT] = fingerprint(get('refresh_token'))
    account.meta[META_RT_SET_AT] = now
    return account


# -- what the provider says of a refresh token ------------------------------------------------------------

ACTIVE, INACTIVE, OTHER_CLIENT, NO_INTROSPECTION, NOT_ANSWERED = (
    'active', 'inactive', 'other_client', 'no_introspection', 'not_answered')

RefreshTokenStatus = namedtuple('RefreshTokenStatus', 'state active owner scope error')


def probe_refresh_token(client, token):
    """Ask the provider about a refresh token: RFC 7662 introspection as ``client``, when announced.

    Returns a RefreshTokenStatus: ``state`` ACTIVE; INACTIVE; OTHER_CLIENT (active, but the provider names
    another client, ``owner``, that alone can use it: many providers let any confidential client introspect any
    token); NO_INTROSPECTION (the provider announces no introspection endpoint); NOT_ANSWERED (the introspection
    failed: ``error``). ``active``: the provider's answer, None when it was not asked or did not answer.
    ``scope``: the scope it reports for an active token. Errors of discovery propagate (nothing was asked).
    """
    if not client.metadata.get('introspection_endpoint'):
        return RefreshTokenStatus(NO_INTROSPECTION, None, None, None, None)
    try:
        answer = client.introspect(token, 'refresh_token')
    except OidcTokensError as exc:
        return RefreshTokenStatus(NOT_ANSWERED, None, None, None, exc)
    if not answer['active']:
        return RefreshTokenStatus(INACTIVE, False, None, None, None)
    owner = answer.get('client_id')
    if isinstance(owner, str) and owner and owner != client.client_id:
        return RefreshTokenStatus(OTHER_CLIENT, True, owner, answer.get('scope'), None)
    return RefreshTokenStatus(ACTIVE, True, owner, answer.get('scope'), None)


def validate_refresh_token(client, token):
    """Discovery, then introspection when announced. Returns (validated, introspected scope).

    Raises AccountRefreshTokenError unless the provider confirms the token as active and the client's.
    """
    try:
        status = probe_refresh_token(client, token)
    except DiscoveryError as exc:
        raise AccountRefreshTokenError('The refresh token was not written: %s' % exc)
    if status.state == NO_INTROSPECTION:
        return False, None
    if status.state == NOT_ANSWERED:
        raise AccountRefreshTokenError(
            'The refresh token was not written: introspecting it as client %s failed: %s (set validate: false for '
            'a provider that does not let the client introspect its tokens)' % (client.client_id, status.error))
    if status.state == INACTIVE:
        raise AccountRefreshTokenError(
            'The refresh token was not written: the provider %s reports it as not active (revoked, expired, '
            'already used, or issued to another client than %s).' % (client.issuer, client.client_id))
    if status.state == OTHER_CLIENT:
        raise AccountRefreshTokenError(
            'The refresh token was not written: the provider %s says it was issued to client %s, not to %s; '
            'only that client can use it.' % (client.issuer, status.owner, client.client_id))
    return True, status.scope


def refresh_token_activity(client_for, account):
    """{'active': bool or None[, 'active_note': why]} for a decrypted account; never raises an OidcTokensError.

    ``active`` is the provider's introspection answer as it is (a token it names another client's owner of
    counts as active).
    """
    token = account.get('refresh_token')
    if not token:
        return {'active': False, 'active_note': 'The account holds no refresh token.'}
    try:
        client = client_for(account)   # discovery is fetched once per process and issuer
        status = probe_refresh_token(client, token)
    except OidcTokensError as exc:
        return {'active': None, 'active_note': 'The provider could not be asked: %s' % exc}
    if status.state == NO_INTROSPECTION:
        return {'active': None, 'active_note': 'The provider %s announces no introspection endpoint.' % client.issuer}
    if status.state == NOT_ANSWERED:
        return {'active': None, 'active_note': 'The provider could not be asked: %s' % status.error}
    return {'active': status.active}


# -- replacing the grant ----------------------------------------------------------------------------------

def replaced_token_client(get, old):
    """The client to revoke an account's replaced refresh token with.

    As for the account (the task's provider options apply) while the task keeps its issuer and client; the
    replaced account's own when the task moved the account to another issuer or client.
    """
    same_issuer = not get('issuer') or normalize_issuer(get('issuer')) == normalize_issuer(
        old.get('issuer_url') or 'https://none')
    if same_issuer and (not get('client_id') or get('client_id') == old.get('client_id')):
        return oauth_client(get, old)
    return account_client(get, old)


def replace_grant(store, name, password, replacement, client_for, revoke=True, check_mode=False,
                  overwrite_unreadable=False):
    """Put the account ``replacement(current)`` returns in place of account ``name``, then revoke the refresh
    token it replaced.

    ``replacement(current)`` runs under the account's lock and returns the account to write, or None to keep
    the current one; what it raises propagates and nothing is written. Once the new account is on disk, the
    refresh token it replaced (one the new account does not hold) is revoked with ``client_for(old)`` when
    ``revoke``, except one of the same provider session as the new one (same_session): revoking it would end
    the new one too. A failed revocation is a warning, never the loss of the new account. In check mode the
    account is read and nothing is written or revoked.

    ``overwrite_unreadable``: when the current account cannot be read (wrong password, damaged file), write
    ``replacement(None)`` all the same, with a warning that the old refresh token was not revoked.

    Returns a dict: ``old`` (the account before, None when unreadable), ``new`` (the account written or, in
    check mode, planned; None when nothing changes), ``revoke`` (whether a replaced refresh token was due to be
    revoked, whatever happened then: the warnings say when it was not), ``warnings``.
    """
    outcome = {'old': None, 'new': None, 'revoke': False, 'warnings': []}

    def swap(current):
        new = replacement(current)
        old_token = current.get('refresh_token')
        outcome.update(old=current, new=new, revoke=bool(
            revoke and new is not None and old_token and new.get('refresh_token') != old_token))
        return (None if check_mode else new), None

    if check_mode:
        swap(store.load(name, password))
        return outcome
    try:
        store.update(name, password, swap)
    except OidcTokensError as exc:
        if not overwrite_unreadable:
            raise
        outcome['new'] = replacement(None)
        store.save(name, outcome['new'], password)
        outcome['warnings'].append('The replaced account %r could not be read, so its refresh token was not '
                                   'revoked: %s' % (name, exc))
        return outcome
    if outcome['revoke']:
        outcome['warnings'].extend(_revoke_replaced(name, outcome['old'], outcome['new'], client_for))
    if outcome['new'] is not None:
        shared = concurrent_use_warning(getattr(store, 'config_dir', None), name)
        if shared:
            outcome['warnings'].append(shared)
    return outcome


def _revoke_replaced(name, old, new, client_for):
    """Revoke old's refresh token, which new replaced; returns the warnings."""
    if same_session(old['refresh_token'], new['refresh_token']):
        return [SAME_SESSION_NOTE % name]
    try:
        client_for(old).revoke(old['refresh_token'])
    except OidcTokensError as exc:
        return ['The replaced refresh token of account %r was not revoked: %s' % (name, exc)]
    return []


def exchange_account(store, name, password, client, get, check_mode=False):
    """oidc_token_exchange and oidc_refresher: exchange the subject token for a refresh token and keep it as account
    ``name`` (``get('persist')`` false: return it), unless the account exists and is usable (``get('force')`` false).

    ``get`` reads the exchange options (subject_token, scope, audience, lifetime, ...); ``client`` is the
    exchanging client. Returns the module result: changed, exchanged, account (facts), diff, warnings.
    """
    path = store.path(name)
    before, replace_reason = None, 'no account of that name exists'
    if get('persist'):
        before, replace_reason = _existing_is_usable(store, name, password, client, get, path)
        if replace_reason is None:
            return {'changed': False, 'exchanged': False, 'account': before,
                    'diff': {'before': before, 'after': before}}

    result = {'changed': True, 'exchanged': True, 'msg': 'Exchanged because %s.' % replace_reason}
    if check_mode:
        planned = build_account(name, get('issuer'), client.client_id, None, None, get('scope'),
                                get('audience'), get('resource'), get('lifetime'), ca_path=get('ca_path'))
        result['account'] = account_facts(name, planned, path)
        result['diff'] = {'before': before or {}, 'after': result['account']}
        return result

    token = exchange(client, get('subject_token'), get('subject_token_type'), get('requested_token_type'),
                     get('scope'), get('audience'), get('resource'), get('actor_token'),
                     get('actor_token_type'), offline_access=get('offline_access'))
    # The issuer as the provider names it, and the client authentication that worked (a provider may
    # accept only the method the client was registered with).
    account = build_account(name, client.announced_issuer, client.client_id, get('client_secret'),
                            token.refresh_token, token.scope or get('scope'), get('audience'),
                            get('resource'), get('lifetime'), ca_path=get('ca_path'),
                            auth_method=client.auth_method)
    _granted(account, token, token.offline_access_requested)
    warnings = []
    short = short_refresh_token(name, account)
    if short and get('short_refresh_token') == 'fail':
        # Nothing is kept. The refresh token is not revoked: on Keycloak that would end every refresh token of
        # the user's session for this client, those of jobs already running included; held by nobody, it
        # dies with that session.
        raise ShortRefreshTokenError(short + ' Nothing was kept (short_refresh_token: fail).')
    if short:
        warnings.append(short)
    if not get('persist'):
        result['refresh_token'] = token.refresh_token
    else:
        warnings.extend(_keep(store, name, password, account, get))
    if get('return_access_token') and token.access_token:
        result['access_token'] = token.access_token
        result['expires_at'] = token.expires_at
    result['account'] = account_facts(name, account, path)
    result['diff'] = {'before': before or {}, 'after': result['account']}
    result['warnings'] = warnings
    return result


def _granted(account, token, offline_access):
    """What the token response tells the account: how it was asked for, when the refresh token dies, and the
    access token that came with it (kept, encrypted, for the next access token request)."""
    account.meta.update({'offline_access': offline_access, 'refresh_token_expires_at': token.refresh_token_expires_at})
    if token.access_token and token.expires_at:
        account.meta.update({'access_token': token.access_token, 'access_token_expires_at': token.expires_at,
                             'access_token_scope': token.scope})


def _keep(store, name, password, account, get):
    """Write a new account, over the one of that name if there is one; returns the warnings."""
    if not store.exists(name):
        store.save(name, account, password)
        return []
    # Readers never see the account missing; a failure to revoke the old token costs a warning, not the new
    # account. Only with force can the old file be unreadable: then its token cannot be revoked.
    replaced = replace_grant(store, name, password, lambda current: account,
                             lambda old: account_client(get, old), overwrite_unreadable=True)
    return replaced['warnings']


def _existing_is_usable(store, name, password, client, get, path):
    """(facts before, why a new account is needed or None when the existing one is usable and force is not set)."""
    if not store.exists(name):
        return None, 'no account of that name exists'
    if get('force'):
        return _facts_if_readable(store, name, password, path), 'force is set'
    existing = store.load(name, password)
    return account_facts(name, existing, path), account_is_usable(existing, client.issuer, client.client_id)


# -- the device flow (RFC 8628) -----------------------------------------------------------------------------

def device_login_scope(scope):
    """The scope a device login asks for: the given one (openid when none) with offline_access."""
    scope = as_list(scope) or ['openid']
    return scope if OFFLINE_ACCESS in scope else scope + [OFFLINE_ACCESS]


def start_device_login(store, name, password, client, get, check_mode=False, now=None):
    """oidc_device_login's first run: unless account ``name`` exists and is usable (``get('force')`` false), start
    a device authorization (RFC 8628 §3.1) for ``device_login_scope(get('scope'))``.

    Returns the module result: ``changed``, ``account`` (the facts before, or planned), ``diff``, ``msg``; when a
    login started, also ``device_login`` (``user_code``, ``verification_uri``, ``verification_uri_complete``,
    ``expires_in``, ``interval``, ``deadline``: epoch seconds when the polling ends, the code's expiry or
    ``get('login_timeout')`` seconds from now, whichever comes first) and ``device_code``, the secret the second
    run polls with. In check mode no request is made.
    """
    path = store.path(name)
    before, reason = _existing_is_usable(store, name, password, client, get, path)
    if reason is None:
        return {'changed': False, 'logged_in': False, 'account': before, 'diff': {'before': before, 'after': before},
                'msg': 'Account %r exists and is usable; no login needed (force: true logs in again).' % name}
    scope = device_login_scope(get('scope'))
    if check_mode:
        planned = build_account(name, get('issuer'), client.client_id, None, None, scope, lifetime=get('lifetime'),
                                source='device_flow', ca_path=get('ca_path'))
        facts = account_facts(name, planned, path)
        return {'changed': True, 'logged_in': True, 'account': facts, 'diff': {'before': before or {}, 'after': facts},
                'msg': 'A device login at %s would start because %s: the user would be shown a verification URI and '
                       'a user code, and account %r written once the user approved.' % (client.issuer, reason, name)}
    authorization = client.device_authorization(scope=scope)
    now = time.time() if now is None else now
    deadline = authorization.expires_at
    if get('login_timeout'):
        deadline = min(deadline, int(now + get('login_timeout')))
    return {
        'changed': False,
        'account': before or {},
        'msg': 'Device login started because %s.' % reason,
        'device_login': {
            'user_code': authorization.user_code,
            'verification_uri': authorization.verification_uri,
            'verification_uri_complete': authorization.verification_uri_complete,
            'expires_in': authorization.expires_in,
            'interval': authorization.interval,
            'deadline': deadline,
        },
        'device_code': authorization.device_code,
    }


def finish_device_login(store, name, password, client, get):
    """oidc_device_login's second run: poll with ``get('device_code')`` every ``get('device_interval')`` seconds
    until ``get('device_deadline')``, and keep the refresh token as account ``name``, made and stored the way
    ``exchange_account`` makes and stores one (an existing account is replaced and its refresh token revoked).

    Raises DeviceFlowError (denied, expired, timed out, refused for a consent not yet saved) or NoRefreshTokenError;
    nothing is written then.
    Returns the module result: changed, account (facts, no secret), diff, msg, warnings.
    """
    path = store.path(name)
    before = _facts_if_readable(store, name, password, path) if store.exists(name) else None
    scope = device_login_scope(get('scope'))
    token = client.poll_device_token(get('device_code'), get('device_interval'), get('device_deadline'))
    if not token.refresh_token:
        raise NoRefreshTokenError(
            'The provider %s answered the device login without a refresh token (scope %r). The client %s must be '
            'allowed the refresh_token grant, and the offline_access scope that was asked for.'
            % (client.issuer, token.scope, client.client_id))
    account = build_account(name, client.announced_issuer, client.client_id, get('client_secret'),
                            token.refresh_token, token.scope or scope, lifetime=get('lifetime'),
                            source='device_flow', ca_path=get('ca_path'),
                            auth_method=client.auth_method if get('client_secret') else None)
    _granted(account, token, True)
    warnings = []
    short = short_refresh_token(name, account)
    if short:
        warnings.append(short)
    warnings.extend(_keep(store, name, password, account, get))
    facts = account_facts(name, account, path)
    return {'changed': True, 'logged_in': True, 'account': facts, 'diff': {'before': before or {}, 'after': facts},
            'msg': 'The user approved the device login; account %r was written.' % name, 'warnings': warnings}


def _facts_if_readable(store, name, password, path):
    try:
        return account_facts(name, store.load(name, password), path)
    except OidcTokensError:
        return None


# -- removing the account -----------------------------------------------------------------------------------

def remove_account(store, name, get, client_for, revoke=True, force=False, check_mode=False):
    """oidc_account's state absent: revoke the account's refresh token (``revoke``) with ``client_for(account)``,
    then delete the account and the lookup's cached tokens of it.

    The password (from ``get``'s password options) is needed to revoke, or, without revoke, only to show the
    account's facts. ``force``: an account that cannot be read or whose token cannot be revoked is removed all the
    same, with a warning. In check mode nothing is revoked or deleted; the result says what would be.

    Returns the module's result: ``changed``, ``account`` (the facts before), ``changed_fields``, ``revoked``,
    ``diff``, ``warnings``, and ``msg`` when there was no account.
    """
    result = {'changed': False, 'account': {}, 'changed_fields': [], 'revoked': False}
    if not store.exists(name):
        result['msg'] = 'Account %r does not exist.' % name
        return result
    has_password = any(get(source) is not None for source in PASSWORD_SOURCES)
    before = {'name': name, 'path': store.path(name)}
    warnings = []
    password = None
    if revoke or has_password:
        try:
            password = encryption_password(get)
            # With revoke (and not in check mode) revoke_account reads the account under its lock.
            if check_mode or not revoke:
                before = facts_of(name, store.load(name, password), store.path(name))
        except OidcTokensError as exc:
            if not force:
                raise
            if check_mode or not revoke:
                warnings.append('Account %r could not be read (%s); it is removed without revoking its refresh '
                                'token because force is set.' % (name, exc))
            password = None
    result.update(changed=True, changed_fields=['account'], warnings=warnings)
    if check_mode:
        result.update(account=before, revoked=bool(revoke and before.get('has_refresh_token')),
                      diff={'before': before, 'after': {}})
        return result
    if revoke:
        outcome = revoke_account(store, name, password, client_for, remove=True, force=force)
        before = dict(outcome['facts'] or before)
        result.update(revoked=outcome['revoked'], changed=outcome['changed'])
        warnings.extend(outcome['warnings'])
    else:
        result['changed'] = store.delete(name)
        drop_account_entries(store.config_dir, name)
    result.update(account=before, diff={'before': before, 'after': {}})
    return result
