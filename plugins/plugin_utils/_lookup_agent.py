# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lookup ``oidc.tokens.oidc_token`` with ``source=agent``: a token of an account loaded in the user's
running oidc-agent (``_agent.AgentClient``), shaped like the store's (access_token, expires_at, issuer,
scope, claims).

No cache and no file: the agent keeps the account's default token itself, and a token that went into
the lookup's cache would outlive what the agent decides (an account removed from the agent, a lock).
Imported by the lookup only for ``source=agent``; the OAuth client only when claims must be verified.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

from ansible_collections.oidc.tokens.plugins.module_utils._account_names import validate_name
from ansible_collections.oidc.tokens.plugins.module_utils._agent import AgentClient
from ansible_collections.oidc.tokens.plugins.module_utils._jwt import jwt_claims
from ansible_collections.oidc.tokens.plugins.module_utils._lists import as_list


def agent_token(get_option, name, claims=None):
    """The token dict of account ``name`` from the oidc-agent at the lookup's ``agent_socket`` ($OIDC_SOCK).

    ``claims``: None, 'decode' or 'verify' (against the JWKS of the issuer the agent names).
    """
    validate_name(name)
    scope, audience = as_list(get_option('scope')), as_list(get_option('audience'))
    client = AgentClient(get_option('agent_socket'))
    got = client.access_token(name, get_option('min_valid_period'), scope, audience, force=get_option('force'))
    token = got['access_token']
    decoded = jwt_claims(token) or {}
    expires_at = got['expires_at']
    if scope or audience:
        # The agent reports the expiry of the account's default token; a down-scoped or audience-bound token
        # is another one: its own exp, when it is a JWT, else unknown.
        exp = decoded.get('exp')
        expires_at = int(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
    token_scope = scope
    if not token_scope and isinstance(decoded.get('scope'), (str, list)):
        token_scope = as_list(decoded.get('scope'))
    result = {'access_token': token, 'expires_at': expires_at, 'issuer': got['issuer'] or '',
              'scope': list(token_scope or []), 'claims': {}}
    if claims and decoded:
        if claims == 'verify':
            result['claims'] = _verify(get_option, got['issuer'], token, audience)
        else:
            result['claims'] = decoded
    return result


def _verify(get_option, issuer, token, audience):
    from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError
    from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient

    if not issuer:
        raise OidcTokensError('oidc-agent named no issuer for the token, so its claims cannot be verified; '
                              'set verify=false to only decode them.')
    # Only discovery and the JWKS are fetched: no client credential is sent anywhere.
    client = OAuthClient(issuer, 'oidc.tokens-agent', ca_path=get_option('ca_path'),
                         validate_certs=get_option('validate_certs'), timeout=get_option('timeout'),
                         retries=get_option('retries'), allow_insecure_http=get_option('allow_insecure_http'))
    return client.verify_jwt(token, audience=audience or None)
