"""A job that uses its bearer token every second, as a long-running job would, and checks each use.

It finds the token the way WLCG Bearer Token Discovery says ($BEARER_TOKEN, then the file
$BEARER_TOKEN_FILE, then $XDG_RUNTIME_DIR/bt_u<uid>, then /tmp/bt_u<uid>), reads it anew every
--interval seconds for --duration seconds, and has it checked as a resource server would:

  --check introspect   POST it to the provider's introspection endpoint (RFC 7662) with the resource
                       server's client credentials (--client-id, secret in $PROBE_CLIENT_SECRET);
                       "active": false counts as invalid.
  --check jwt          verify the JWT's signature against the provider's JWKS, its issuer and its expiry.

Prints (and with --summary writes as JSON) calls made, invalid tokens seen, distinct tokens seen,
and the least validity left on a token when it was used. Never prints a token. Exit status 1 when
any use saw no valid token.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
from urllib.parse import quote_plus

import requests


def discover_token():
    """(token, where) by WLCG Bearer Token Discovery, or (None, where it looked last)."""
    value = os.environ.get('BEARER_TOKEN', '').strip()
    if value:
        return value, '$BEARER_TOKEN'
    candidates = []
    if os.environ.get('BEARER_TOKEN_FILE'):
        candidates.append(os.environ['BEARER_TOKEN_FILE'])
    if os.environ.get('XDG_RUNTIME_DIR'):
        candidates.append(os.path.join(os.environ['XDG_RUNTIME_DIR'], 'bt_u%d' % os.geteuid()))
    candidates.append('/tmp/bt_u%d' % os.geteuid())
    for path in candidates:
        try:
            with open(path, encoding='utf-8') as handle:
                value = handle.read().strip()
        except OSError:
            continue
        if value:
            return value, path
    return None, candidates[-1]


def b64url(text):
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


class JwtChecker(object):
    def __init__(self, jwks_url, issuer, verify):
        self.jwks_url, self.issuer, self.verify = jwks_url, issuer.rstrip('/'), verify
        self.keys = {}

    def _key(self, kid):
        if kid not in self.keys:
            from cryptography.hazmat.primitives.asymmetric import rsa
            for jwk in requests.get(self.jwks_url, verify=self.verify, timeout=10).json()['keys']:
                if jwk.get('kty') == 'RSA':
                    numbers = rsa.RSAPublicNumbers(int.from_bytes(b64url(jwk['e']), 'big'),
                                                   int.from_bytes(b64url(jwk['n']), 'big'))
                    self.keys[jwk.get('kid')] = numbers.public_key()
        return self.keys.get(kid)

    def __call__(self, token):
        """(valid, seconds left)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
        try:
            head, payload, signature = token.split('.')
            header, claims = json.loads(b64url(head)), json.loads(b64url(payload))
        except ValueError:
            return False, None
        key = self._key(header.get('kid'))
        if header.get('alg') != 'RS256' or key is None:
            return False, None
        try:
            key.verify(b64url(signature), ('%s.%s' % (head, payload)).encode('ascii'), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature:
            return False, None
        left = claims.get('exp', 0) - time.time()
        return str(claims.get('iss', '')).rstrip('/') == self.issuer and left > 0, left


class Introspector(object):
    def __init__(self, url, client_id, client_secret, verify):
        self.url, self.verify = url, verify
        pair = '%s:%s' % (quote_plus(client_id), quote_plus(client_secret))
        self.headers = {'Authorization': 'Basic ' + base64.b64encode(pair.encode('utf-8')).decode('ascii')}

    def __call__(self, token):
        answer = requests.post(self.url, data={'token': token}, headers=self.headers, verify=self.verify, timeout=10)
        answer.raise_for_status()
        data = answer.json()
        left = data['exp'] - time.time() if data.get('active') and 'exp' in data else None
        return data.get('active') is True, left


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', choices=('introspect', 'jwt'), required=True)
    parser.add_argument('--duration', type=float, default=20)
    parser.add_argument('--interval', type=float, default=1)
    parser.add_argument('--ca', help='CA bundle of the provider')
    parser.add_argument('--introspection-url')
    parser.add_argument('--client-id')
    parser.add_argument('--jwks-url')
    parser.add_argument('--issuer')
    parser.add_argument('--summary', help='write the summary as JSON to this file')
    parser.add_argument('--label', default=os.environ.get('OIDC_TOKENS_ACCOUNT', 'job'))
    args = parser.parse_args()
    verify = args.ca or True
    if args.check == 'introspect':
        check = Introspector(args.introspection_url, args.client_id, os.environ['PROBE_CLIENT_SECRET'], verify)
    else:
        check = JwtChecker(args.jwks_url, args.issuer, verify)

    calls = invalid = missing = errors = 0
    digests = set()
    least_left = None
    where = None
    start = time.monotonic()
    step = 0
    while True:
        token, where = discover_token()
        calls += 1
        if token is None:
            missing += 1
            invalid += 1
        else:
            digests.add(hashlib.sha256(token.encode('utf-8')).hexdigest())
            try:
                valid, left = check(token)
            except (requests.RequestException, ValueError, KeyError) as exc:
                errors += 1
                valid, left = False, None
                sys.stderr.write('probe: check failed: %s\n' % type(exc).__name__)
            if not valid:
                invalid += 1
            if left is not None:
                least_left = left if least_left is None else min(least_left, left)
        step += 1
        if step * args.interval > args.duration:
            break
        time.sleep(max(0.0, start + step * args.interval - time.monotonic()))
    summary = {'label': args.label, 'calls': calls, 'invalid': invalid, 'missing': missing, 'errors': errors,
               'distinct_tokens': len(digests), 'least_seconds_left': None if least_left is None else round(least_left, 1),
               'seconds': round(time.monotonic() - start, 1), 'token_file': where, 'uid': os.geteuid()}
    print('%s: %d calls in %.0f s, %d invalid, %d distinct tokens, least validity left when used %s s (%s)'
          % (args.label, calls, summary['seconds'], invalid, len(digests), summary['least_seconds_left'], where))
    if args.summary:
        with open(args.summary, 'w', encoding='utf-8') as handle:
            json.dump(summary, handle)
    return 1 if invalid else 0


if __name__ == '__main__':
    sys.exit(main())
