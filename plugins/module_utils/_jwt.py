# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JWTs: decoding (for display and for the session id) and verification against a JWKS.

No HTTP: the provider's keys come from the caller (_oauth.OAuthClient.verify_jwt fetches them).
cryptography is imported on first verification (_imports.CRYPTOGRAPHY).

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import base64
import binascii
import math
import time

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OAuthError, TokenVerificationError
from ansible_collections.oidc.tokens.plugins.module_utils._imports import CRYPTOGRAPHY
from ansible_collections.oidc.tokens.plugins.module_utils._json import MAX_JSON_DEPTH, JsonTooDeep, load_json

_JWT_HASHES = {'256': 'SHA256', '384': 'SHA384', '512': 'SHA512'}
_EC_CURVES = {'P-256': 'SECP256R1', 'P-384': 'SECP384R1', 'P-521': 'SECP521R1'}


def _b64url(text):
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def _b64url_int(text):
    return int.from_bytes(_b64url(text), 'big')


def _jwt_decode(token):
    """(parts, None) where parts is what jwt_parts returns, or (None, why) with why a short reason
    without the token: 'not a JWT' or 'nested too deeply'."""
    if not isinstance(token, str) or token.count('.') != 2:
        return None, 'not a JWT'
    head, payload, signature = token.split('.')
    try:
        header = load_json(_b64url(head))
        claims = load_json(_b64url(payload))
        raw_signature = _b64url(signature)
    except JsonTooDeep:
        return None, 'nested too deeply'
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        return None, 'not a JWT'
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None, 'not a JWT'
    return (header, claims, ('%s.%s' % (head, payload)).encode('ascii'), raw_signature), None


def jwt_parts(token):
    """(header, claims, signing input, signature) of a compact JWS, or None when it is not a JWT
    (also when its header or payload is JSON nested too deeply to accept)."""
    return _jwt_decode(token)[0]


def jwt_claims(token):
    """The claims of a JWT without checking anything (for display), or None for an opaque token."""
    parts = jwt_parts(token)
    return parts[1] if parts else None


def _audience_list(value):
    """A string or a list of strings as a list of strings; anything else as None."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _show_audiences(audiences):
    return (', '.join(repr(a) for a in audiences) or 'none')[:300]


def verify_jwt(token, jwks, issuer, now=None, leeway=0, audience=None):
    """Verify a JWT's signature with a JWKS (RS*, PS*, ES*), its issuer and its time claims (exp is
    required). When audience (a string or a list of strings) is given, the token's aud must name at
    least one of them. Trailing slashes of the issuer do not count (IAM's issuers have one)."""
    expected_audiences = None
    if audience is not None:
        expected_audiences = _audience_list(audience)
        if not expected_audiences or not all(expected_audiences):
            raise OAuthError('audience must be a non-empty string or a non-empty list of them, to check the JWT\'s aud '
                             'against.')
    CRYPTOGRAPHY.require(OAuthError, 'to verify JWTs')
    # Imported by CRYPTOGRAPHY.require: these only name what is loaded.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    parts, why = _jwt_decode(token)
    if why == 'nested too deeply':
        raise TokenVerificationError('The JWT\'s header or payload is nested too deeply to be JSON we accept '
                                     '(more than %d levels).' % MAX_JSON_DEPTH)
    if parts is None:
        raise TokenVerificationError('The token is not a JWT, so it cannot be verified (an opaque token).')
    header, claims, signing_input, signature = parts
    alg = header.get('alg')
    if not isinstance(alg, str) or alg[:2] not in ('RS', 'PS', 'ES') or alg[2:] not in _JWT_HASHES:
        raise TokenVerificationError('The JWT is signed with %r, which is not accepted (RS*, PS*, ES* only).' % alg)
    keys = [k for k in jwks.get('keys', []) if isinstance(k, dict) and k.get('use', 'sig') == 'sig']
    if header.get('kid') is not None:
        keys = [k for k in keys if k.get('kid') == header['kid']]
    keys = [k for k in keys if k.get('kty') == ('EC' if alg.startswith('ES') else 'RSA')]
    if not keys:
        raise TokenVerificationError('The provider publishes no %s key with the JWT\'s kid %r.'
                                     % (alg, header.get('kid')))
    digest = getattr(hashes, _JWT_HASHES[alg[2:]])()
    verified = False
    for jwk in keys:
        try:
            if alg.startswith('ES'):
                curve = getattr(ec, _EC_CURVES[jwk['crv']])()
                key = ec.EllipticCurvePublicNumbers(_b64url_int(jwk['x']), _b64url_int(jwk['y']), curve).public_key()
                half = len(signature) // 2
                der = encode_dss_signature(int.from_bytes(signature[:half], 'big'),
                                           int.from_bytes(signature[half:], 'big'))
                key.verify(der, signing_input, ec.ECDSA(digest))
            else:
                key = rsa.RSAPublicNumbers(_b64url_int(jwk['e']), _b64url_int(jwk['n'])).public_key()
                pad = (padding.PKCS1v15() if alg.startswith('RS')
                       else padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.DIGEST_LENGTH))
                key.verify(signature, signing_input, pad, digest)
            verified = True
            break
        except (InvalidSignature, KeyError, ValueError, TypeError):
            continue
    if not verified:
        raise TokenVerificationError('The JWT\'s signature does not verify with the provider\'s keys.')
    if not isinstance(claims.get('iss'), str) or claims['iss'].rstrip('/') != issuer.strip().rstrip('/'):
        raise TokenVerificationError('The JWT was issued by %r, not by %s.' % (claims.get('iss'), issuer))
    now = time.time() if now is None else now
    exp = claims.get('exp')
    if exp is None:
        raise TokenVerificationError('The JWT has no exp claim: a token that never expires is not accepted.')
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not math.isfinite(exp):
        raise TokenVerificationError('The JWT\'s exp claim is not a finite number of seconds (it is a %s).'
                                     % type(exp).__name__)
    if now > exp + leeway:
        raise TokenVerificationError('The JWT expired at %d.' % exp)
    if isinstance(claims.get('nbf'), (int, float)) and now + leeway < claims['nbf']:
        raise TokenVerificationError('The JWT is not valid before %d.' % claims['nbf'])
    if expected_audiences is not None:
        found = claims.get('aud')
        found_audiences = [] if found is None else _audience_list(found)
        if found_audiences is None:
            raise TokenVerificationError('The JWT\'s aud claim is neither a string nor a list of strings; expected '
                                         'one of the audiences %s.' % _show_audiences(expected_audiences))
        if not found_audiences:
            raise TokenVerificationError('The JWT has no aud claim; expected one of the audiences %s.'
                                         % _show_audiences(expected_audiences))
        if not set(found_audiences) & set(expected_audiences):
            raise TokenVerificationError('The JWT is meant for the audience(s) %s, not for any of the expected %s.'
                                         % (_show_audiences(found_audiences), _show_audiences(expected_audiences)))
    return claims
