# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's only OAuth 2.0 / OpenID Connect client.

Discovery (OIDC and RFC 8414), token exchange (RFC 8693), refresh, revocation (RFC 7009),
introspection (RFC 7662), the device authorization grant (RFC 8628) and the provider's JWKS over HTTP. Modules, the lookup and the on-host
refresher all use this file; nothing else in the collection builds an HTTP request. JWTs are
decoded and verified in _jwt.py.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import random
import time
from urllib.parse import quote_plus, urlsplit, urlunsplit

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OAuthError
from ansible_collections.oidc.tokens.plugins.module_utils._imports import REQUESTS
from ansible_collections.oidc.tokens.plugins.module_utils._json import MAX_JSON_DEPTH, JsonTooDeep, load_json
from ansible_collections.oidc.tokens.plugins.module_utils._jwt import jwt_claims, verify_jwt
from ansible_collections.oidc.tokens.plugins.module_utils._lists import as_list, space_separated

# requests is imported on first use (_imports.REQUESTS): it costs a module run ~0.2 s, which
# tasks that never talk to the provider (listing accounts, local updates) should not pay.


TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code'
TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token'
TOKEN_TYPE_REFRESH = 'urn:ietf:params:oauth:token-type:refresh_token'
TOKEN_TYPE_ID = 'urn:ietf:params:oauth:token-type:id_token'
TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt'

# Short names users may give instead of the URNs (the same words oidc-agent and CI docs use).
TOKEN_TYPE_ALIASES = {
    'access_token': TOKEN_TYPE_ACCESS,
    'refresh_token': TOKEN_TYPE_REFRESH,
    'id_token': TOKEN_TYPE_ID,
    'jwt': TOKEN_TYPE_JWT,
}

AUTH_METHODS = ('client_secret_basic', 'client_secret_post')

# A token endpoint answers in a few KiB; anything far larger is not an OAuth response.
MAX_RESPONSE_BYTES = 1024 * 1024

# Statuses after which the provider did not process the request, so spending a credential again is safe.
# Not 502 or 504: a gateway sends those when the provider's answer came broken or too late, after the
# provider may have rotated the refresh token.
_NOT_PROCESSED_STATUSES = frozenset((503,))

# Discovery documents, per process, keyed by normalised issuer: one fetch per worker process.
_METADATA_CACHE = {}


class InsecureTransportError(OAuthError):
    """A plain http:// URL for a host that is not loopback, and insecure HTTP was not allowed."""


class TransportError(OAuthError):
    """The provider could not be reached, or did not answer in time, after the allowed retries.

    ``passing``: whether asking again later may work (a connection or timeout problem), not a TLS failure or a
    request that cannot be sent at all."""

    def __init__(self, message, passing=True):
        super(TransportError, self).__init__(message)
        self.passing = passing


class ResponseError(OAuthError):
    """The provider answered with something that is not a usable OAuth response."""

    def __init__(self, message, status=None):
        super(ResponseError, self).__init__(message)
        self.status = status


class ProviderError(OAuthError):
    """The provider refused the request with an OAuth error (e.g. invalid_grant)."""

    def __init__(self, message, error=None, error_description=None, status=None):
        super(ProviderError, self).__init__(message)
        self.error = error
        self.error_description = error_description
        self.status = status

    @property
    def client_not_authenticated(self):
        """The provider did not accept the client's credentials or their method: invalid_client (RFC 6749
        §5.2), or the HTTP 401 unauthorized_client that Keycloak answers instead."""
        return self.error == 'invalid_client' or (self.error == 'unauthorized_client' and self.status == 401)


class DeviceFlowError(OAuthError):
    """The device authorization grant ended without tokens: ``reason`` is 'access_denied' (the user said no),
    'expired_token' (the provider says the device code expired), 'timeout' (the client gave up at the code's
    expiry or at the caller's limit) or 'consent_race' (the provider refused an approved login because it had not
    saved the consent yet)."""

    def __init__(self, message, reason):
        super(DeviceFlowError, self).__init__(message)
        self.reason = reason


class DiscoveryError(OAuthError):
    """No usable discovery document for the issuer."""


class IssuerMismatchError(DiscoveryError):
    """The discovery document names another issuer than the one configured."""


def normalize_issuer(issuer):
    """The issuer without trailing slashes, for comparing and building URLs.

    IAM issuers end in '/', Keycloak's do not; users type either.
    """
    if not issuer or not isinstance(issuer, str):
        raise DiscoveryError('No issuer URL was given.')
    issuer = issuer.strip()
    parts = urlsplit(issuer)
    if parts.scheme not in ('http', 'https') or not parts.netloc:
        raise DiscoveryError('The issuer %r is not an http(s) URL.' % issuer)
    if parts.query or parts.fragment:
        raise DiscoveryError('The issuer %r must not have a query or fragment.' % issuer)
    return issuer.rstrip('/')


def resolve_token_type(value):
    """Accept a token-type URN or one of the short names in TOKEN_TYPE_ALIASES."""
    if value is None:
        return None
    return TOKEN_TYPE_ALIASES.get(value, value)


def is_loopback_host(host):
    if not host:
        return False
    if host.lower() == 'localhost' or host.lower().endswith('.localhost'):
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


def check_url_transport(url, allow_insecure_http=False):
    """Refuse plain HTTP to anything but loopback: tokens and client secrets travel in the body."""
    parts = urlsplit(url)
    if parts.scheme == 'https':
        return
    if parts.scheme != 'http':
        raise InsecureTransportError('Refusing %s: only https:// (or http:// on loopback) URLs are used.' % url)
    if allow_insecure_http or is_loopback_host(parts.hostname):
        return
    raise InsecureTransportError(
        'Refusing plain http:// to %s: tokens and client secrets would cross the network unencrypted. '
        'Use https://, or set allow_insecure_http if this is really wanted.' % parts.hostname)


class TokenResponse(object):
    """A token endpoint's answer. Its repr shows no token."""

    def __init__(self, access_token=None, refresh_token=None, token_type=None, expires_in=None,
                 scope=None, issued_token_type=None, id_token=None, received_at=None, refresh_expires_in=None):
        self.access_token = access_token
        self.refresh_token = refresh_token
        self.token_type = token_type
        self.expires_in = expires_in
        self.refresh_expires_in = refresh_expires_in
        self.scope = scope
        self.issued_token_type = issued_token_type
        self.id_token = id_token
        self.received_at = received_at if received_at is not None else time.time()

    @property
    def expires_at(self):
        """Epoch seconds when the access token expires, or None when the provider did not say."""
        if self.expires_in is None:
            return None
        return int(self.received_at + self.expires_in)

    @property
    def refresh_token_expires_at(self):
        """Epoch seconds when the refresh token dies, as far as the provider tells, else None.

        Keycloak says refresh_expires_in (0 for a token without expiry); a JWT refresh token carries its
        exp (read, not verified: Keycloak signs them with a key of its own); an RFC 8693 answer that
        issued the refresh token in access_token gives its expires_in.
        """
        if self.refresh_expires_in:
            return int(self.received_at + self.refresh_expires_in)
        exp = (jwt_claims(self.refresh_token) or {}).get('exp') if self.refresh_token else None
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            return int(exp)
        return None

    @classmethod
    def from_json(cls, data, received_at=None):
        expires_in, refresh_expires_in = (_seconds(data, key) for key in ('expires_in', 'refresh_expires_in'))
        token = cls(
            access_token=data.get('access_token'),
            refresh_token=data.get('refresh_token'),
            token_type=data.get('token_type'),
            expires_in=expires_in,
            scope=data.get('scope'),
            issued_token_type=data.get('issued_token_type'),
            id_token=data.get('id_token'),
            received_at=received_at,
            refresh_expires_in=refresh_expires_in,
        )
        # RFC 8693 to the letter: the issued token is always in access_token and issued_token_type
        # says what it is. When that is a refresh token, move it to where callers look for it.
        if token.issued_token_type == TOKEN_TYPE_REFRESH and not token.refresh_token:
            token.refresh_token, token.access_token = token.access_token, None
            token.expires_in, token.refresh_expires_in = None, token.expires_in
        return token

    def __repr__(self):
        return ('TokenResponse(access_token=%s, refresh_token=%s, token_type=%r, expires_in=%r, scope=%r, '
                'issued_token_type=%r)' % ('<set>' if self.access_token else None,
                                           '<set>' if self.refresh_token else None,
                                           self.token_type, self.expires_in, self.scope, self.issued_token_type))


class DeviceAuthorization(object):
    """A device authorization answer (RFC 8628 §3.2). Its repr shows no device code.

    ``device_code`` is the secret the client polls with; ``user_code``, ``verification_uri`` and
    ``verification_uri_complete`` (None when the provider sends none) are for the user; ``expires_in`` and
    ``interval`` (5 when the provider says nothing, §3.2) are seconds; ``received_at`` epoch seconds.
    """

    def __init__(self, device_code, user_code, verification_uri, expires_in, verification_uri_complete=None,
                 interval=None, received_at=None):
        self.device_code = device_code
        self.user_code = user_code
        self.verification_uri = verification_uri
        self.verification_uri_complete = verification_uri_complete
        self.expires_in = expires_in
        self.interval = DEFAULT_DEVICE_INTERVAL if interval is None else interval
        self.received_at = received_at if received_at is not None else time.time()

    @property
    def expires_at(self):
        return int(self.received_at + self.expires_in)

    @classmethod
    def from_json(cls, data, issuer, received_at=None):
        def text(key, required=True):
            value = data.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise ResponseError('The device authorization answer of %s has no %s.' % (issuer, key))
            return value

        expires_in, interval = _seconds(data, 'expires_in'), _seconds(data, 'interval')
        if not expires_in or expires_in < 1:
            raise ResponseError('The device authorization answer of %s has no positive expires_in.' % issuer)
        if interval is not None and interval < 1:
            interval = 1
        # Shown to a person, never requested here: only http(s) addresses are shown.
        uris = [text('verification_uri'), text('verification_uri_complete', required=False)]
        for uri in uris:
            if uri is not None and urlsplit(uri).scheme not in ('http', 'https'):
                raise ResponseError('The device authorization answer of %s names a verification URI that is not '
                                    'http(s).' % issuer)
        return cls(text('device_code'), text('user_code'), uris[0], expires_in, verification_uri_complete=uris[1],
                   interval=interval, received_at=received_at)

    def __repr__(self):
        return ('DeviceAuthorization(device_code=<set>, user_code=%r, verification_uri=%r, expires_in=%r, interval=%r)'
                % (self.user_code, self.verification_uri, self.expires_in, self.interval))


# RFC 8628 §3.2: the interval when the provider gives none; §3.5: what slow_down adds to it.
DEFAULT_DEVICE_INTERVAL = 5
SLOW_DOWN_SECONDS = 5


def _seconds(data, key):
    """A number of seconds of an answer, or None; a non-number is a ResponseError."""
    value = data.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ResponseError('The provider sent a non-numeric %s.' % key)


class OAuthClient(object):
    """A confidential OAuth client of one provider."""

    def __init__(self, issuer, client_id, client_secret=None, auth_method=None, ca_path=None,
                 validate_certs=True, timeout=10, retries=3, backoff=0.5, allow_insecure_http=False,
                 user_agent='oidc.tokens'):
        requests = REQUESTS.require(OAuthError, 'on this host')
        if auth_method is not None and auth_method not in AUTH_METHODS:
            raise OAuthError('Unknown client authentication method %r; use one of %s.'
                             % (auth_method, ', '.join(AUTH_METHODS)))
        if not client_id:
            raise OAuthError('No client_id was given.')
        self.issuer = normalize_issuer(issuer)
        check_url_transport(self.issuer, allow_insecure_http)
        self.client_id = client_id
        self._client_secret = client_secret
        self._auth_method = auth_method
        self._chosen_method = bool(auth_method)   # the user's choice is never second-guessed
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.allow_insecure_http = allow_insecure_http
        self._session = requests.Session()
        # No ambient credentials (.netrc) may ride along to the provider; proxies from the
        # environment are still honoured, explicitly, in _send().
        self._session.trust_env = False
        self._session.headers['User-Agent'] = user_agent
        self._session.headers['Accept'] = 'application/json'

    def __repr__(self):
        return 'OAuthClient(issuer=%r, client_id=%r)' % (self.issuer, self.client_id)

    # -- discovery -------------------------------------------------------------------------------

    def _discovery_urls(self):
        parts = urlsplit(self.issuer)
        oidc_url = self.issuer + '/.well-known/openid-configuration'
        # RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path.
        oauth_url = urlunsplit((parts.scheme, parts.netloc,
                                '/.well-known/oauth-authorization-server' + parts.path, '', ''))
        return [oidc_url, oauth_url]

    @property
    def metadata(self):
        """The provider's discovery document, fetched once per process and issuer."""
        cached = _METADATA_CACHE.get(self.issuer)
        if cached is not None:
            return cached
        failures = []
        document = None
        for url in self._discovery_urls():
            try:
                document = self._request_json('GET', url, idempotent=True, what='discovery')
                break
            except (ProviderError, ResponseError) as exc:
                failures.append('%s: %s' % (url, exc))
        if document is None:
            raise DiscoveryError('No discovery document for issuer %s. Tried %s'
                                 % (self.issuer, '; '.join(failures)))
        announced = document.get('issuer')
        if not isinstance(announced, str) or normalize_issuer(announced) != self.issuer:
            raise IssuerMismatchError(
                'The discovery document of %s names the issuer %r, not the configured one. '
                'Configure the issuer exactly as the provider announces it.' % (self.issuer, announced))
        if not isinstance(document.get('token_endpoint'), str):
            raise DiscoveryError('The discovery document of %s has no token_endpoint.' % self.issuer)
        _METADATA_CACHE[self.issuer] = document
        return document

    @property
    def announced_issuer(self):
        """The issuer exactly as the provider names it (with or without its trailing slash)."""
        return self.metadata['issuer']

    def endpoint(self, name):
        """The URL of a named endpoint from discovery, e.g. 'revocation_endpoint'."""
        url = self.metadata.get(name)
        if not isinstance(url, str) or not url:
            raise DiscoveryError('The provider %s announces no %s.' % (self.issuer, name))
        check_url_transport(url, self.allow_insecure_http)
        return url

    @property
    def auth_method(self):
        if self._auth_method:
            return self._auth_method
        supported = self.metadata.get('token_endpoint_auth_methods_supported') or ['client_secret_basic']
        for method in AUTH_METHODS:
            if method in supported:
                return method
        raise OAuthError('The provider %s supports none of the client authentication methods %s (it offers %s).'
                         % (self.issuer, ', '.join(AUTH_METHODS), ', '.join(supported)))

    # -- grants ----------------------------------------------------------------------------------

    def token_exchange(self, subject_token, subject_token_type=TOKEN_TYPE_ACCESS,
                       requested_token_type=TOKEN_TYPE_REFRESH, scope=None, audience=None, resource=None,
                       actor_token=None, actor_token_type=None):
        """RFC 8693 token exchange: trade subject_token for a token of requested_token_type."""
        if not subject_token:
            raise OAuthError('No subject token was given for the token exchange.')
        form = [
            ('grant_type', TOKEN_EXCHANGE_GRANT),
            ('subject_token', subject_token),
            ('subject_token_type', resolve_token_type(subject_token_type)),
        ]
        if requested_token_type:
            form.append(('requested_token_type', resolve_token_type(requested_token_type)))
        scope = space_separated(scope)
        if scope:
            form.append(('scope', scope))
        form.extend(('audience', a) for a in as_list(audience))
        form.extend(('resource', r) for r in as_list(resource))
        if actor_token:
            if not actor_token_type:
                raise OAuthError('actor_token_type is required with an actor_token (RFC 8693 §2.1).')
            form.append(('actor_token', actor_token))
            form.append(('actor_token_type', resolve_token_type(actor_token_type)))
        return self._token_request(form, what='token exchange')

    def refresh(self, refresh_token, scope=None, audience=None, resource=None):
        """Refresh grant; scope may narrow what the refresh token covers (down-scoping)."""
        if not refresh_token:
            raise OAuthError('No refresh token was given.')
        form = [('grant_type', 'refresh_token'), ('refresh_token', refresh_token)]
        scope = space_separated(scope)
        if scope:
            form.append(('scope', scope))
        form.extend(('audience', a) for a in as_list(audience))
        form.extend(('resource', r) for r in as_list(resource))
        return self._token_request(form, what='refresh')

    def revoke(self, token, token_type_hint='refresh_token'):
        """RFC 7009 revocation. An unknown or already revoked token is not an error (RFC 7009 §2.2)."""
        if not token:
            raise OAuthError('No token was given to revoke.')
        form = [('token', token)]
        if token_type_hint:
            form.append(('token_type_hint', token_type_hint))
        # RFC 7009 §2.2: success is HTTP 200 and the client ignores the body; some providers answer
        # "OK" in text/plain. Any 2xx that is not an HTML page (a login or proxy page) is success.
        self._request_json('POST', self.endpoint('revocation_endpoint'), form=form, authenticate=True,
                           idempotent=True, what='revocation', any_success_body=True)

    def introspect(self, token, token_type_hint=None):
        """RFC 7662 introspection; returns the provider's JSON (at least {'active': bool})."""
        if not token:
            raise OAuthError('No token was given to introspect.')
        form = [('token', token)]
        if token_type_hint:
            form.append(('token_type_hint', token_type_hint))
        data = self._request_json('POST', self.endpoint('introspection_endpoint'), form=form, authenticate=True,
                                  idempotent=True, what='introspection')
        if not isinstance(data.get('active'), bool):
            raise ResponseError('The introspection answer of %s has no boolean "active".' % self.issuer)
        return data

    def device_authorization(self, scope=None, resource=None):
        """RFC 8628 §3.1: start a device authorization; returns a DeviceAuthorization.

        The client authenticates as at the token endpoint (a public client sends its client_id). Asking again
        spends nothing, so a failed request is retried like a read.
        """
        form = []
        scope = space_separated(scope)
        if scope:
            form.append(('scope', scope))
        form.extend(('resource', r) for r in as_list(resource))
        data = self._request_json('POST', self.endpoint('device_authorization_endpoint'), form=form,
                                  authenticate=True, idempotent=True, what='device authorization')
        return DeviceAuthorization.from_json(data, self.issuer)

    def device_token(self, device_code):
        """One poll of the token endpoint with the device code (RFC 8628 §3.4): a TokenResponse, or the
        ProviderError the provider answered (authorization_pending, slow_down, access_denied, expired_token ...).

        A successful answer consumes the device code, so a poll is never repeated once it may have reached the
        provider (like a refresh)."""
        if not device_code:
            raise OAuthError('No device code was given.')
        return self._token_request([('grant_type', DEVICE_CODE_GRANT), ('device_code', device_code)],
                                   what='device token request')

    def poll_device_token(self, device_code, interval, deadline, sleep=time.sleep, clock=time.time):
        """Poll for the tokens of a device authorization until the user approves (a TokenResponse), denies, or the
        time is up (DeviceFlowError).

        ``interval``: the provider's polling interval in seconds; every slow_down adds 5 seconds to it for this
        and all later polls, and a poll that failed on the way (connection, timeout) doubles it (RFC 8628 §3.5).
        ``deadline``: epoch seconds (``clock``) after which no poll is made, at the latest the device code's
        expiry. A poll is made only when the whole interval fits before it.
        """
        interval = max(1, int(interval))
        lost = None
        while True:
            if clock() + interval > deadline:
                raise DeviceFlowError(
                    'Nobody approved the device login at %s in time: the wait ended at %s (the user code\'s expiry or '
                    'the limit that was set), so the user code is no longer polled.%s'
                    % (self.issuer, _utc(deadline), ' The last poll failed: %s' % lost if lost else ''), 'timeout')
            sleep(interval)
            try:
                return self.device_token(device_code)
            except TransportError as exc:
                # A poll lost on the way: poll less often (§3.5). Had the provider answered it with the tokens,
                # the next poll says the device code is spent (invalid_grant), and nothing is kept.
                if not exc.passing:
                    raise
                lost = exc
                interval *= 2
                continue
            except ProviderError as exc:
                if exc.error == 'authorization_pending':
                    continue
                if exc.error == 'slow_down':
                    interval += SLOW_DOWN_SECONDS
                    continue
                if exc.error == 'access_denied':
                    raise DeviceFlowError('The user denied the device login at %s (access_denied): no token was '
                                          'issued.' % self.issuer, 'access_denied')
                if exc.error == 'expired_token':
                    raise DeviceFlowError('The user code of the device login at %s expired before anybody approved it '
                                          '(expired_token). Start the login again.' % self.issuer, 'expired_token')
                if exc.error == 'invalid_scope' and 'consent' in (exc.error_description or ''):
                    # Keycloak marks the code approved before it commits the consent; a poll in between is refused
                    # for a client with "Consent required" on, and the device code is spent.
                    raise DeviceFlowError(
                        '%s The user approved, but the provider had not yet saved the consent when this poll came (a '
                        'race in Keycloak for clients with "Consent required" on): start the login again. The '
                        'provider\'s admin can turn "Consent required" off for the device client; Keycloak still asks '
                        'for consent at every device login.' % exc, 'consent_race')
                raise

    def jwks(self):
        """The provider's JSON Web Key Set (fetched on every call: keys rotate)."""
        data = self._request_json('GET', self.endpoint('jwks_uri'), idempotent=True, what='JWKS download')
        if not isinstance(data.get('keys'), list):
            raise ResponseError('The JWKS of %s has no "keys" list.' % self.issuer)
        return data

    def verify_jwt(self, token, now=None, audience=None):
        """The claims of a JWT access token issued by this provider, after checking its signature
        against the provider's JWKS, its issuer and its expiry (exp is required), and, when audience
        (a string or a list of strings) is given, that its aud names at least one of them."""
        return verify_jwt(token, self.jwks(), self.issuer, now=now, audience=audience)

    def _token_request(self, form, what):
        data = self._request_json('POST', self.endpoint('token_endpoint'), form=form, authenticate=True,
                                  idempotent=False, what=what)
        token = TokenResponse.from_json(data)
        if not token.access_token and not token.refresh_token:
            raise ResponseError('The %s answer of %s contains no token (fields: %s).'
                                % (what, self.issuer, ', '.join(sorted(data)) or 'none'))
        return token

    # -- HTTP ------------------------------------------------------------------------------------

    def _client_auth(self, form, headers, auth_method):
        if self._client_secret is None:
            form.append(('client_id', self.client_id))
            return
        if auth_method == 'client_secret_post':
            form.append(('client_id', self.client_id))
            form.append(('client_secret', self._client_secret))
        else:
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined and base64-encoded.
            pair = '%s:%s' % (quote_plus(self.client_id), quote_plus(self._client_secret))
            headers['Authorization'] = 'Basic ' + base64.b64encode(pair.encode('utf-8')).decode('ascii')

    def _request_json(self, method, url, form=None, authenticate=False, idempotent=True, what='request',
                      any_success_body=False):
        check_url_transport(url, self.allow_insecure_http)
        auth_method = self.auth_method if authenticate and self._client_secret is not None else None
        try:
            return self._authenticated_request(method, url, form, authenticate, auth_method, idempotent, what,
                                               any_success_body)
        except ProviderError as exc:
            other = self._other_auth_method(exc, authenticate)
            if other is None:
                raise
            # The provider rejected how the client authenticated, before it processed
            # anything, so asking once more with the other method spends no credential.
            data = self._authenticated_request(method, url, form, authenticate, other, idempotent, what,
                                               any_success_body)
            self._auth_method = other
            return data

    def _other_auth_method(self, exc, authenticate):
        """The method to try after a client authentication failure, when the user chose none and a secret is in use."""
        if not exc.client_not_authenticated or not authenticate or self._client_secret is None or self._chosen_method:
            return None
        return [m for m in AUTH_METHODS if m != self.auth_method][0]

    def _authenticated_request(self, method, url, form, authenticate, auth_method, idempotent, what,
                               any_success_body):
        headers = {}
        if form is not None:
            form = list(form)
            if authenticate:
                self._client_auth(form, headers, auth_method)
        response, body = self._send(method, url, form, headers, idempotent, what)
        if any_success_body and 200 <= response.status_code < 300 and not _is_html(response, body):
            return {}
        return self._parse(response, body, url, what)

    def _verify(self):
        if not self.validate_certs:
            return False
        # The ecosystem's CA variables, as requests itself would read them with trust_env.
        return self.ca_path or os.environ.get('REQUESTS_CA_BUNDLE') or os.environ.get('CURL_CA_BUNDLE') or True

    def _send(self, method, url, form, headers, idempotent, what):
        requests = REQUESTS.module
        verify = self._verify()
        proxies = requests.utils.get_environ_proxies(url)
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = self._session.request(
                    method, url, data=form, headers=headers, timeout=self.timeout, verify=verify,
                    proxies=proxies, allow_redirects=False, stream=True)
                body = self._read_limited(response, url, what)
                status = response.status_code
                retryable = status >= 500 and (idempotent or status in _NOT_PROCESSED_STATUSES)
                if not retryable or attempt > self.retries:
                    return response, body
                retry_after = _retry_after_seconds(response)
            except requests.exceptions.SSLError as exc:
                raise TransportError('TLS verification of %s failed for the %s: %s. Set ca_path to the CA bundle '
                                     'that signed the provider, or validate_certs=false only for testing.'
                                     % (url, what, _short_reason(exc)), passing=False)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
                reached = not _is_connect_failure(exc)
                if attempt > self.retries or (reached and not idempotent):
                    hint = ''
                    if reached and not idempotent:
                        hint = (' The request may have reached the provider, so it was not repeated: a repeated '
                                'refresh token can make the provider revoke the whole grant.')
                    raise TransportError('The %s at %s failed after %d attempt(s): %s.%s'
                                         % (what, url, attempt, _short_reason(exc), hint))
            except requests.exceptions.RequestException as exc:
                raise TransportError('The %s at %s failed: %s.' % (what, url, _short_reason(exc)), passing=False)
            delay = self.backoff * (2 ** (attempt - 1)) * (1 + random.random() / 2)
            time.sleep(min(retry_after if retry_after is not None else delay, 30))

    @staticmethod
    def _read_limited(response, url, what):
        chunks = []
        size = 0
        try:
            for chunk in response.iter_content(65536):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ResponseError('The %s answer from %s is larger than %d bytes: not an OAuth response.'
                                        % (what, url, MAX_RESPONSE_BYTES), status=response.status_code)
                chunks.append(chunk)
        finally:
            response.close()
        return b''.join(chunks)

    def _parse(self, response, body, url, what):
        status = response.status_code
        if 300 <= status < 400:
            raise ResponseError('The %s at %s was answered with a redirect (HTTP %d) to %s; redirects are not '
                                'followed.' % (what, url, status, response.headers.get('Location', '?')),
                                status=status)
        try:
            data = load_json(body.decode('utf-8'))
        except JsonTooDeep:
            raise ResponseError('The %s answer from %s (HTTP %d) is nested too deeply to be JSON we accept '
                                '(more than %d levels).' % (what, url, status, MAX_JSON_DEPTH), status=status)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            kind = (response.headers.get('Content-Type') or 'no content type').split(';')[0]
            raise ResponseError('The %s at %s answered HTTP %d with %s instead of a JSON object%s.'
                                % (what, url, status, kind, _body_hint(body)), status=status)
        if status >= 400 or 'error' in data:
            error = data.get('error')
            description = data.get('error_description')
            if not isinstance(error, str):
                raise ResponseError('The %s at %s failed with HTTP %d and no OAuth error code.'
                                    % (what, url, status), status=status)
            message = 'The provider %s refused the %s: %s' % (self.issuer, what, error)
            if isinstance(description, str) and description:
                message += ' (%s)' % description
            message += ' [HTTP %d]' % status
            refusal = ProviderError(message, error=error,
                                    error_description=description if isinstance(description, str) else None,
                                    status=status)
            # 401 only: Keycloak also answers invalid_client, with 400, for an unknown audience.
            if refusal.client_not_authenticated and status == 401:
                refusal.args = (message + ': the client was not authenticated; check client_id, client_secret and '
                                'auth_method against its registration',)
            raise refusal
        return data


def _utc(epoch):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))


def _retry_after_seconds(response):
    """Retry-After in seconds when the provider gave a plain number (RFC 9110 §10.2.3), else None."""
    value = response.headers.get('Retry-After', '').strip()
    return int(value) if value.isdigit() else None


def _is_connect_failure(exc):
    """True when the request never reached the provider (refused, DNS, connect timeout)."""
    requests = REQUESTS.module
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return False
    text = repr(exc)
    return any(marker in text for marker in (
        'NewConnectionError', 'Connection refused', 'Name or service not known', 'nodename nor servname',
        'Temporary failure in name resolution', 'No route to host', 'Network is unreachable'))


def _short_reason(exc):
    """A one-line reason without URLs' query strings or bodies: safe to show."""
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text[:300]


def _is_html(response, body):
    kind = (response.headers.get('Content-Type') or '').split(';')[0].strip().lower()
    return kind in ('text/html', 'application/xhtml+xml') or body[:512].lstrip().lower().startswith((b'<!doctype',
                                                                                                     b'<html'))


def _body_hint(body):
    """A short, printable beginning of a non-JSON body, to recognise an HTML error page or a proxy's answer.

    Only the start of the page's title, never more: the body of a failed token request could echo input.
    """
    text = body[:4096].decode('utf-8', 'replace')
    lower = text.lower()
    start = lower.find('<title>')
    if start >= 0:
        end = lower.find('</title>', start)
        title = ' '.join(text[start + 7:end if end > 0 else start + 107].split())[:100]
        return ' (an HTML page titled %r)' % title
    if lower.lstrip().startswith('<'):
        return ' (an HTML page)'
    if not text.strip():
        return ' (an empty body)'
    return ''
