# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules, the lookup and the on-host refresher do with an account.

The account store (_account_store.py) and the OAuth core (_oauth.py) together: exchange a subject
token into an account, hand out access tokens from it, revoke it. Every provider call that can
rotate the refresh token runs inside ``AccountStore.update``, so the new refresh token is on disk
before the new access token leaves this file.

Our own fields live in the account's ``oidc_tokens`` object (oidc-agent keeps unknown keys):
``created_at``, ``source``, ``lifetime_end``, ``audience``, ``resource``, ``refreshed_at`` and the
cached default access token (``access_token``, ``access_token_expires_at``, ``access_token_scope``),
encrypted with the rest of the file like oidc-agent keeps its own in memory.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import time

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError
from ansible_collections.oidc.tokens.plugins.module_utils._agent import concurrent_use_warning
from ansible_collections.oidc.tokens.plugins.module_utils._jwt import jwt_claims
from ansible_collections.oidc.tokens.plugins.module_utils._lists import as_list, space_separated
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import (
    ProviderError, TOKEN_TYPE_REFRESH, normalize_issuer, resolve_token_type)
from ansible_collections.oidc.tokens.plugins.module_utils._account_file import Account
from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from ansible_collections.oidc.tokens.plugins.module_utils._lookup_cache_files import drop_account_entries


class AccountExpiredError(OidcTokensError):
    """The account is past the lifetime it was given: it hands out no token."""


class RefreshTokenRejectedError(OidcTokensError):
    """The provider refused the account's refresh token (revoked, expired or already used)."""


class NoRefreshTokenError(OidcTokensError):
    """The exchange answer carried no refresh token."""


class RevocationError(OidcTokensError):
    """The refresh token could not be revoked; the account was kept."""


class ScopeNotGrantedError(OidcTokensError):
    """The provider answered a down-scoped refresh with a token that lacks a scope asked for."""


class ShortRefreshTokenError(OidcTokensError):
    """The provider's refresh token dies before the account's lifetime ends, and the user asked to fail then."""


def _utc(epoch):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))


def short_refresh_token(name, account):
    """What to tell the user when the refresh token dies before the account's lifetime ends, else None."""
    dies, end = account.meta.get('refresh_token_expires_at'), account.meta.get('lifetime_end')
    if not dies or (end and dies >= end):
        return None
    return ('The provider says the refresh token of account %r dies at %s, %s: from then on the account hands out '
            'no access token. Keycloak binds a refresh token from token exchange to the user\'s SSO session; its '
            'realm admin can raise SSO Session Max and SSO Session Idle (or the client\'s session settings). Other '
            'providers tie it to the subject token or to a client setting. Or give the account a shorter lifetime.'
            % (name, _utc(dies), 'before its lifetime ends at %s' % _utc(end) if end else
               'and the account has no lifetime limit'))


def account_issuer(account):
    """The account's issuer as its provider names it (oidc-agent's issuer_url always ends in a slash)."""
    return account.meta.get('issuer') or account.get('issuer_url') or ''


def account_facts(name, account, path):
    """What may be shown about an account: everything but its secrets."""
    meta = account.meta
    return {
        'name': name,
        'path': path,
        'issuer': account_issuer(account),
        'client_id': account.get('client_id') or '',
        'scope': as_list(account.get('scope')),
        'offline_access': meta.get('offline_access'),
        'refresh_token_expires_at': meta.get('refresh_token_expires_at'),
        'audience': as_list(meta.get('audience') or account.get('audience')),
        'resource': as_list(meta.get('resource')),
        'lifetime': meta.get('lifetime'),
        'lifetime_end': meta.get('lifetime_end'),
        'created_at': meta.get('created_at'),
        'source': meta.get('source'),
        'has_refresh_token': bool(account.get('refresh_token')),
    }


def build_account(name, issuer, client_id, client_secret, refresh_token, scope, audience=None, resource=None,
                  lifetime=None, source='token_exchange', ca_path=None, auth_method=None, now=None):
    """A new account in oidc-agent's shape, with our own fields in ``oidc_tokens``."""
    now = int(now if now is not None else time.time())
    normalize_issuer(issuer)   # an http(s) URL, or DiscoveryError
    account = Account(
        name=name,
        client_name='oidc.tokens:%s' % name,
        issuer_url=issuer,   # the file keeps it with the trailing slash oidc-agent 4 needs
        client_id=client_id,
        client_secret=client_secret or '',
        refresh_token=refresh_token,
        cert_path=ca_path or '',
        scope=space_separated(scope),
        audience=space_separated(audience),
        redirect_uris=[],
        username='',
        password='',
    )
    if auth_method:
        # oidc-agent's own field: later calls (and oidc-agent 5) authenticate the way the client must.
        account['token_endpoint_auth_method'] = auth_method
    meta = {
        'issuer': issuer,   # as the provider names it (callers pass the discovery document's issuer)
        'created_at': now,
        'source': source,
    }
    meta.update(lifetime_fields(int(lifetime) if lifetime else None, now))
    meta.update({'audience': as_list(audience), 'resource': as_list(resource)})
    account.meta.update(meta)
    return account


OFFLINE_ACCESS = 'offline_access'
OFFLINE_ACCESS_CHOICES = ('auto', 'always', 'never')


def _refuses_offline_access(exc):
    """Whether a refused exchange was refused for its offline_access scope (Keycloak's standard exchange)."""
    return OFFLINE_ACCESS in (exc.error_description or '')


def exchange(client, subject_token, subject_token_type='access_token', requested_token_type='refresh_token',
             scope=None, audience=None, resource=None, actor_token=None, actor_token_type=None, offline_access='auto'):
    """Exchange the subject token; a refresh token must come back.

    ``offline_access``: INDIGO IAM issues a refresh token only when the scope holds offline_access, Keycloak's
    standard exchange refuses that scope. 'auto' asks with it and, when the provider refuses the exchange
    for it (a refused exchange consumed nothing), once more without; 'always' and 'never' ask only that way.
    The TokenResponse returned says in ``offline_access_requested`` which way it was obtained.
    """
    scope = as_list(scope)
    wants_refresh = resolve_token_type(requested_token_type) == TOKEN_TYPE_REFRESH
    with_offline = wants_refresh and offline_access != 'never' and OFFLINE_ACCESS not in scope

    def ask(offline):
        return client.token_exchange(
            subject_token, subject_token_type=subject_token_type, requested_token_type=requested_token_type,
            scope=scope + [OFFLINE_ACCESS] if offline else scope, audience=as_list(audience),
            resource=as_list(resource), actor_token=actor_token, actor_token_type=actor_token_type)

    try:
        try:
            token = ask(with_offline)
        except ProviderError as exc:
            if not (with_offline and offline_access == 'auto' and _refuses_offline_access(exc)):
                raise
            with_offline = False
            token = ask(False)
    except ProviderError as exc:
        raise _explained(exc, client, scope, audience)
    token.offline_access_requested = with_offline or OFFLINE_ACCESS in scope
    if not token.refresh_token:
        raise NoRefreshTokenError(
            'The provider %s answered the token exchange without a refresh token: it returned %s '
            '(issued_token_type %s, scope %r). The client %s must be allowed refresh tokens for exchanged '
            'tokens%s.'
            % (client.issuer, 'an access token' if token.access_token else 'no token',
               token.issued_token_type or 'not given', token.scope, client.client_id,
               '' if token.offline_access_requested else
               '; providers such as INDIGO IAM issue one only with offline_access in the scope (offline_access: '
               'auto or always)'))
    return token


# What the provider's admin (or the user) must change, for refusals whose own words do not say it.
_EXCHANGE_HINTS = (
    ('access_denied', 'audience',
     'The subject token must name the exchanging client {client} in its audience: the provider\'s admin adds it '
     '(Keycloak: an audience mapper on the client the user logs in with, included.client.audience={client}).'),
    ('invalid_client', 'audience not found',
     'Each audience asked for ({audience}) must be a client the provider knows (Keycloak: a client id of the '
     'realm); fix the audience option or ask the admin to create that client.'),
    ('invalid_request', 'requested_token_type unsupported',
     'The client {client} may not get refresh tokens from token exchange: the provider\'s admin must allow it '
     '(Keycloak: "Allow refresh token in Standard Token Exchange", standard.token.exchange.'
     'enableRefreshRequestedTokenType=SAME_SESSION).'),
    ('invalid_request', 'standard token exchange is not enabled',
     'The client {client} may not exchange tokens: the provider\'s admin must enable it (Keycloak: "Standard Token '
     'Exchange" in the client\'s capability config, standard.token.exchange.enabled=true).'),
    ('invalid_request', 'creating a new session',
     'Keycloak gives an exchanged refresh token only for a subject token of a normal login session, not of an '
     'offline or transient one: exchange an access token from an interactive login.'),
    (None, OFFLINE_ACCESS,
     'This provider refuses the offline_access scope for token exchange: remove it from the scope and use '
     'offline_access: auto or never.'),
)


def _explained(exc, client, scope, audience):
    """The provider's refusal with what to do about it, when we know."""
    description = (exc.error_description or '').lower()
    for error, words, hint in _EXCHANGE_HINTS:
        if (error is None or exc.error == error) and words in description:
            return ProviderError('%s %s' % (exc, hint.format(client=client.client_id,
                                                             audience=', '.join(as_list(audience)) or 'none')),
                                 error=exc.error, error_description=exc.error_description, status=exc.status)
    return exc


def same_session(refresh_token, other):
    """Whether two refresh tokens belong to one provider session (JWT refresh tokens naming the same sid).

    Keycloak gives every refresh token a client gets by exchange from one login session the same client
    session: revoking one of them ends them all. Such a replaced token must not be revoked.
    """
    sid = (jwt_claims(refresh_token) or {}).get('sid')
    return bool(sid) and sid == (jwt_claims(other) or {}).get('sid')


SAME_SESSION_NOTE = ('The replaced refresh token of account %r was not revoked: it belongs to the same provider '
                     'session as the new one (Keycloak would end both); it ends with that session.')


def account_is_usable(account, issuer=None, client_id=None, now=None):
    """Why an existing account cannot be kept as it is, or None when it can."""
    now = now if now is not None else time.time()
    if not account.get('refresh_token'):
        return 'it holds no refresh token'
    if is_expired(account, now):
        return 'its lifetime ended'
    if issuer and normalize_issuer(account.get('issuer_url') or 'https://none') != normalize_issuer(issuer):
        return 'it belongs to another issuer'
    if client_id and account.get('client_id') != client_id:
        return 'it belongs to another client'
    return None


# The account's lifetime: ``lifetime`` (seconds) and ``lifetime_end`` (epoch seconds) in its oidc_tokens
# object; past the end it hands out no token.

def lifetime_fields(lifetime, now):
    """The lifetime fields of an account given ``lifetime`` seconds from ``now``; 0 or None: no limit."""
    return {'lifetime': lifetime or None, 'lifetime_end': now + lifetime if lifetime else None}


def stored_lifetime(account):
    """The lifetime (seconds) the account's end was set from: as recorded, else derived from its creation."""
    meta = account.meta
    if meta.get('lifetime') is not None:
        return meta['lifetime']
    end, created = meta.get('lifetime_end'), meta.get('created_at')
    if end and created:
        return int(end) - int(created)
    return None


def is_expired(account, now):
    """Whether the account's lifetime ended at ``now``."""
    end = account.meta.get('lifetime_end')
    return bool(end and now >= end)


def expired_error(name, account, revocation):
    return AccountExpiredError('Account %r reached the end of its lifetime at %s; it hands out no more tokens. %s '
                               'Exchange a new subject token into the account.'
                               % (name, _utc(account.meta['lifetime_end']), revocation))


def _revoke_expired(account, client_for):
    """Revoke the refresh token of an account past its lifetime (best effort).

    The lifetime is only a bound if the provider enforces it too: a refresh token left alive would keep
    working for anyone holding the account file and its password. Returns (the account to write or None,
    what happened, for the error message).
    """
    token = account.get('refresh_token')
    if not token:
        return None, 'It holds no refresh token any more.'
    try:
        client_for(account).revoke(token, 'refresh_token')
    except OidcTokensError as exc:
        return None, 'Its refresh token could not be revoked at the provider (%s); revoke it with oidc_revoke.' % exc
    return _emptied(account), 'Its refresh token was revoked at the provider and removed from the account.'


def _emptied(account):
    """The account without its refresh token and kept access token, marked revoked."""
    emptied = account.copy()
    emptied['refresh_token'] = ''
    for key in ('access_token', 'access_token_expires_at', 'access_token_scope'):
        emptied.meta.pop(key, None)
    emptied.meta['revoked_at'] = int(time.time())
    return emptied


def _rejected(name, exc):
    return RefreshTokenRejectedError(
        'The provider refused the refresh token of account %r: %s (%s). The token was revoked, expired or '
        'already used; exchange a fresh subject token into the account.'
        % (name, exc.error, exc.error_description or 'no description'))


def cached_access_token(account, min_valid_period=0, now=None):
    """The default access token kept in the account, when it has min_valid_period seconds left."""
    now = time.time() if now is None else now
    meta = account.meta
    token, expires_at = meta.get('access_token'), meta.get('access_token_expires_at')
    if token and expires_at and expires_at - now >= min_valid_period:
        return _token_result(account, token, expires_at, meta.get('access_token_scope'), False, [])
    return None


def access_token(store, name, password, client_for, min_valid_period=0, scope=None, audience=None, resource=None,
                 force=False, claims=None, now=None):
    """An access token of account ``name`` with at least ``min_valid_period`` seconds left.

    ``client_for(account)`` returns the OAuthClient to use (options may override the account's
    issuer and client). The default token (no scope, audience or resource asked) is kept in the
    account file and reused while it is valid long enough; a down-scoped or audience-bound one is
    always fresh (oidc-agent does the same). ``claims``: 'verify' checks a JWT access token against
    the provider's JWKS and returns its claims, 'decode' only decodes them, None skips them.
    Returns a dict: access_token, expires_at, issuer, scope, claims, refreshed, warnings.
    """
    scope, audience, resource = as_list(scope), as_list(audience), as_list(resource)
    default = not (scope or audience or resource)

    def under_lock(account):
        current = time.time() if now is None else now
        if is_expired(account, current):
            emptied, revocation = _revoke_expired(account, client_for)
            return emptied, (expired_error(name, account, revocation), None)
        kept = cached_access_token(account, min_valid_period, current) if default and not force else None
        if kept is not None:
            return None, (kept, account)
        client = client_for(account)
        updated, result = _refresh(name, account, client, scope, audience, resource, default, min_valid_period,
                                   current)
        if isinstance(result, ScopeNotGrantedError):
            return updated, (result, updated)   # the rotated refresh token is written all the same
        if claims == 'verify' and jwt_claims(result['access_token']) is not None:
            # Before anything is written: an answer whose token fails verification is not trusted for its
            # refresh token either, and a token that failed must never be kept and handed out later.
            result['claims'] = client.verify_jwt(result['access_token'], audience=audience or None)
        return updated, (result, updated)

    result, account = store.update(name, password, under_lock)
    if isinstance(result, AccountExpiredError):
        drop_account_entries(store.config_dir, name)
    if isinstance(result, OidcTokensError):
        raise result
    shared = concurrent_use_warning(getattr(store, 'config_dir', None), name)
    if shared:
        result['warnings'] = list(result.get('warnings') or []) + [shared]
    # A kept token's claims are checked after the lock is released: no JWKS download holds up other workers.
    if claims and not result['claims'] and jwt_claims(result['access_token']) is not None:
        result['claims'] = (client_for(account).verify_jwt(result['access_token'], audience=audience or None)
                            if claims == 'verify'
                            else jwt_claims(result['access_token']))
    return result


def _refresh(name, account, client, scope, audience, resource, default, min_valid_period, now):
    """Refresh; returns (the account to write, the token result). Runs under the account's lock."""
    if not account.get('refresh_token'):
        raise RefreshTokenRejectedError('Account %r holds no refresh token (it was revoked).' % name)
    stored_scope = as_list(account.get('scope'))
    if scope and OFFLINE_ACCESS in stored_scope and OFFLINE_ACCESS not in scope:
        scope = scope + [OFFLINE_ACCESS]   # a provider may end the offline grant for a refresh without it
    try:
        # As oidc-agent does: the account's own scope (and audience) unless a narrower one is asked for.
        token = client.refresh(account['refresh_token'], scope=scope or stored_scope,
                               audience=audience or as_list(account.meta.get('audience')), resource=resource)
    except ProviderError as exc:
        if exc.error in ('invalid_grant', 'invalid_request'):
            # Some providers refuse a dead refresh token with invalid_request instead of invalid_grant.
            raise _rejected(name, exc)
        raise
    if not token.access_token:
        raise RefreshTokenRejectedError('The provider answered the refresh of account %r without an access token.'
                                        % name)
    updated = account.copy()
    if token.refresh_token:
        updated['refresh_token'] = token.refresh_token
    if token.refresh_token or token.refresh_expires_in:
        updated.meta['refresh_token_expires_at'] = token.refresh_token_expires_at
    updated.meta['refreshed_at'] = int(now)
    if default:
        updated.meta.update({'access_token': token.access_token, 'access_token_expires_at': token.expires_at,
                             'access_token_scope': token.scope})
    # RFC 6749 3.3: a provider may grant less than asked. Keycloak drops, without an error, a scope a refresh
    # cannot have; a token without the scope the user asked for would only be refused where it is used.
    not_granted = [s for s in scope if s != OFFLINE_ACCESS and s not in as_list(token.scope)] if token.scope else []
    if not_granted:
        held = ' '.join(stored_scope) or 'none recorded'
        return updated, ScopeNotGrantedError(
            'The provider %s did not grant %s for account %r: the token it issued covers %s. It was not handed out; '
            'ask for scopes the account holds (%s).' % (client.issuer, ' '.join(not_granted), name, token.scope, held))
    warnings = []
    if token.expires_in is not None and min_valid_period and token.expires_in <= min_valid_period:
        # oidc-agent #410: users asked for more validity than the provider gives and never knew.
        warnings.append('The provider issues access tokens valid for %d s, not more than min_valid_period (%d s): '
                        'every request will refresh.' % (token.expires_in, min_valid_period))
    return updated, _token_result(updated, token.access_token, token.expires_at,
                                  token.scope or scope or account.get('scope'), True, warnings)


def _token_result(account, token, expires_at, scope, refreshed, warnings):
    return {
        'access_token': token,
        'expires_at': expires_at,
        'issuer': account_issuer(account),
        'scope': as_list(scope),
        'claims': {},
        'refreshed': refreshed,
        'lifetime_end': account.meta.get('lifetime_end'),
        'refresh_token_expires_at': account.meta.get('refresh_token_expires_at'),
        'warnings': warnings,
    }


def revoke_account(store, name, password, client_for, remove=True, force=False):
    """Revoke the refresh token on disk (the current one, under the lock) and remove the account.

    Returns {'existed', 'changed', 'revoked', 'removed', 'facts' (of the account before, or None
    when it could not be read), 'warnings'}. When revocation fails the account is kept and
    RevocationError raised, unless ``force``: then it is removed (or emptied) all the same.
    """
    result = {'existed': store.exists(name), 'changed': False, 'revoked': False, 'removed': False, 'facts': None,
              'warnings': []}
    if not result['existed']:
        return result

    def fn(account):
        result['facts'] = account_facts(name, account, store.path(name))
        token = account.get('refresh_token')
        if token:
            try:
                client_for(account).revoke(token, 'refresh_token')
                result['revoked'] = True
            except OidcTokensError as exc:
                if not force:
                    raise RevocationError('The refresh token of account %r was not revoked, so the account was kept: '
                                          '%s' % (name, exc))
                result['warnings'].append('The refresh token of account %r could not be revoked (%s); the account '
                                          'was %s anyway because force is set.'
                                          % (name, exc, 'removed' if remove else 'emptied'))
        if remove:
            result['removed'] = result['changed'] = True
            return AccountStore.DELETE, None
        if not token:
            return None, None
        result['changed'] = True
        return _emptied(account), None

    try:
        store.update(name, password, fn)
    except OidcTokensError as exc:
        if not force or isinstance(exc, RevocationError):
            raise
        # Forced teardown of an account that cannot even be read (wrong password, corrupt file).
        result['warnings'].append('Account %r could not be read (%s); it was removed without revoking its refresh '
                                  'token because force is set.' % (name, exc))
        result['removed'] = result['changed'] = store.delete(name)
    # The lookup's cached access tokens of the account go with it (on the controller; elsewhere there are none).
    drop_account_entries(store.config_dir, name)
    shared = concurrent_use_warning(getattr(store, 'config_dir', None), name)
    if shared:
        result['warnings'].append(shared)
    return result
