"""A stand-in for a CI system's OIDC issuer (GitLab's id_tokens, GitHub Actions' OIDC token).

It holds its own RSA key pair, writes its public keys as a JWKS file (what the test provider's
``--trusted-ci-issuer ISSUER=JWKS_PATH`` reads; a real provider would fetch ISSUER's jwks_uri) and
mints JWTs shaped like GitLab's id_tokens::

    from ci_issuer import CIIssuer
    ci = CIIssuer('https://gitlab.example.org', directory)   # writes directory/ci-jwks.json
    token = ci.id_token(aud='https://op.example.org/ci')      # str, a signed JWT

Each token: iss, aud, sub ``project_path:GROUP/PROJECT:ref_type:branch:ref:REF``, iat, nbf, exp, jti
(random), and GitLab's claims (namespace_path, project_path, project_id, pipeline_id, job_id, ref,
ref_type, ref_protected, user_login, runner_environment, ...). Standard library and cryptography only.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def _b64url_uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, 'big'))


class CIIssuer:
    """One CI issuer: a key pair of its own and the issuer URL its tokens name."""

    def __init__(self, issuer, directory, project_path='ci-group/ci-project', ref='main'):
        self.issuer = issuer
        self.project_path = project_path
        self.ref = ref
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self.jwks_path = os.path.join(directory, 'ci-jwks.json')
        numbers = self._key.public_key().public_numbers()
        jwks = {'keys': [{'kty': 'RSA', 'kid': self.kid, 'use': 'sig', 'alg': 'RS256',
                          'n': _b64url_uint(numbers.n), 'e': _b64url_uint(numbers.e)}]}
        with open(self.jwks_path, 'w', encoding='utf-8') as handle:
            json.dump(jwks, handle)

    @property
    def subject(self):
        """The sub of this issuer's tokens: GitLab's form for a branch pipeline."""
        return 'project_path:%s:ref_type:branch:ref:%s' % (self.project_path, self.ref)

    def claims(self, aud, lifetime=300, **overrides):
        now = int(time.time())
        namespace = self.project_path.rsplit('/', 1)[0]
        claims = {
            'iss': self.issuer, 'aud': aud, 'sub': self.subject,
            'iat': now, 'nbf': now - 1, 'exp': now + lifetime, 'jti': secrets.token_hex(16),
            'namespace_id': '72', 'namespace_path': namespace,
            'project_id': '4711', 'project_path': self.project_path,
            'user_id': '42', 'user_login': 'ci-bot', 'user_email': 'ci-bot@example.org',
            'pipeline_id': '1001', 'pipeline_source': 'push', 'job_id': '5001',
            'ref': self.ref, 'ref_type': 'branch', 'ref_path': 'refs/heads/%s' % self.ref, 'ref_protected': 'true',
            'runner_id': 1, 'runner_environment': 'self-hosted', 'sha': '0' * 40,
        }
        claims.update(overrides)
        return claims

    def sign(self, claims, kid=None):
        header = {'alg': 'RS256', 'typ': 'JWT', 'kid': kid or self.kid}
        signing_input = '%s.%s' % (_b64url(json.dumps(header, separators=(',', ':')).encode()),
                                   _b64url(json.dumps(claims, separators=(',', ':')).encode()))
        signature = self._key.sign(signing_input.encode('ascii'), padding.PKCS1v15(), hashes.SHA256())
        return '%s.%s' % (signing_input, _b64url(signature))

    def id_token(self, aud, lifetime=300, **overrides):
        """A signed GitLab-like id_token for ``aud`` (str or list), valid for ``lifetime`` seconds."""
        return self.sign(self.claims(aud, lifetime, **overrides))
