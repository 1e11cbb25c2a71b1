# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _jwt.py (decoding, and verification against a JWKS: signature, exp, aud) and of the
OAuth client's verify_jwt, which hands _jwt the provider's keys. No network."""

from __future__ import annotations

import base64
import json
import traceback

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OAuthError, TokenVerificationError
from ansible_collections.oidc.tokens.plugins.module_utils._jwt import jwt_claims, verify_jwt
from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient

ISSUER = 'https://iam.example.org'
CLIENT_SECRET = 'hunter2-client-secret'
DEEP_ARRAY = b'[' * 100000 + b']' * 100000                      # beyond what json.loads can recurse into


def full_traceback(exc):
    return ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _b64(data):
    if not isinstance(data, bytes):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


@pytest.fixture(scope='module')
def signer():
    """sign(claims) -> an RS256 JWT, and the JWKS that verifies it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()

    def as_b64(number):
        return _b64(number.to_bytes((number.bit_length() + 7) // 8, 'big'))
    jwks = {'keys': [{'kty': 'RSA', 'kid': 'k1', 'use': 'sig', 'alg': 'RS256', 'n': as_b64(numbers.n), 'e': as_b64(numbers.e)}]}

    def sign(claims):
        signing_input = '%s.%s' % (_b64({'alg': 'RS256', 'kid': 'k1', 'typ': 'JWT'}), _b64(claims))
        signature = key.sign(signing_input.encode('ascii'), padding.PKCS1v15(), hashes.SHA256())
        return '%s.%s' % (signing_input, _b64(signature))
    sign.jwks = jwks
    return sign


def claims(**extra):
    return dict({'iss': ISSUER, 'sub': 'alice', 'iat': 1000, 'exp': 2000}, **extra)


NOW = 1500


@pytest.mark.parametrize('nested', [DEEP_ARRAY, b'{"sub": "alice", "x": ' + b'[' * 100 + b']' * 100 + b'}'],
                         ids=['recursion-limit', 'depth-cap'])
@pytest.mark.parametrize('where', ['payload', 'header'])
def test_deeply_nested_jwt_is_not_decoded(nested, where):
    header = _b64({'alg': 'RS256'})
    token = '%s.%s.c2ln' % ((_b64(nested), _b64(claims())) if where == 'header' else (header, _b64(nested)))
    assert jwt_claims(token) is None
    with pytest.raises(TokenVerificationError) as info:
        verify_jwt(token, {'keys': []}, ISSUER, now=NOW)
    assert 'nested too deeply' in str(info.value) and token not in str(info.value)
    assert 'RecursionError' not in full_traceback(info.value)


def test_jwt_claims_still_decodes_a_jwt(signer):
    assert jwt_claims(signer(claims(realm_access={'roles': ['a']})))['realm_access'] == {'roles': ['a']}


def test_valid_jwt_verifies(signer):
    assert verify_jwt(signer(claims()), signer.jwks, ISSUER, now=NOW)['sub'] == 'alice'


def test_expired_jwt_is_still_refused(signer):
    with pytest.raises(TokenVerificationError, match='expired'):
        verify_jwt(signer(claims()), signer.jwks, ISSUER, now=3000)


def test_jwt_without_exp_is_refused(signer):
    token = signer({'iss': ISSUER, 'sub': 'alice'})
    with pytest.raises(TokenVerificationError) as info:
        verify_jwt(token, signer.jwks, ISSUER, now=NOW)
    assert 'has no exp claim' in str(info.value) and token not in str(info.value)


@pytest.mark.parametrize('exp', ['2000', None, True, [2000]])
def test_jwt_with_unusable_exp_is_refused(signer, exp):
    with pytest.raises(TokenVerificationError, match='exp claim'):
        verify_jwt(signer(claims(exp=exp)), signer.jwks, ISSUER, now=NOW)


def test_client_verify_jwt_requires_exp(monkeypatch, signer):
    client = OAuthClient(ISSUER, 'client', CLIENT_SECRET)
    monkeypatch.setattr(client, 'jwks', lambda: signer.jwks)
    with pytest.raises(TokenVerificationError, match='has no exp claim'):
        client.verify_jwt(signer({'iss': ISSUER, 'sub': 'alice'}), now=NOW)


@pytest.mark.parametrize('aud, audience', [
    ('storage', 'compute'),
    (['storage', 'web'], 'compute'),
    ('storage', ['compute', 'web']),
    (None, 'compute'),
])
def test_jwt_for_another_audience_is_refused(signer, aud, audience):
    token = signer(claims(aud=aud) if aud is not None else claims())
    with pytest.raises(TokenVerificationError) as info:
        verify_jwt(token, signer.jwks, ISSUER, now=NOW, audience=audience)
    message = str(info.value)
    assert 'compute' in message and token not in message
    if aud is None:
        assert 'no aud claim' in message
    else:
        assert 'storage' in message


@pytest.mark.parametrize('aud, audience', [
    ('compute', 'compute'),
    (['storage', 'compute'], 'compute'),
    ('compute', ['web', 'compute']),
    (['storage', 'compute'], ['compute']),
])
def test_jwt_for_an_expected_audience_is_accepted(signer, aud, audience):
    assert verify_jwt(signer(claims(aud=aud)), signer.jwks, ISSUER, now=NOW, audience=audience)['aud'] == aud


@pytest.mark.parametrize('aud', ['storage', ['storage', 'web'], None])
def test_no_audience_leaves_aud_unchecked(signer, aud):
    token = signer(claims(aud=aud) if aud is not None else claims())
    assert verify_jwt(token, signer.jwks, ISSUER, now=NOW, audience=None)['sub'] == 'alice'


def test_client_verify_jwt_passes_the_audience(monkeypatch, signer):
    client = OAuthClient(ISSUER, 'client', CLIENT_SECRET)
    monkeypatch.setattr(client, 'jwks', lambda: signer.jwks)
    token = signer(claims(aud=['storage']))
    assert client.verify_jwt(token, now=NOW, audience=None)['aud'] == ['storage']
    assert client.verify_jwt(token, now=NOW, audience='storage')['aud'] == ['storage']
    with pytest.raises(TokenVerificationError, match="'compute'"):
        client.verify_jwt(token, now=NOW, audience='compute')


@pytest.mark.parametrize('audience', [[], '', ['compute', ''], 42])
def test_unusable_audience_argument_is_refused(signer, audience):
    with pytest.raises(OAuthError, match='audience must be'):
        verify_jwt(signer(claims(aud='compute')), signer.jwks, ISSUER, now=NOW, audience=audience)
