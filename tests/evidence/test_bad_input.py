"""A corpus of bad input, each case run the way a user runs it: one ansible-playbook with one task
(a module of the collection, or a play using the lookup), against the real test provider, a fake
provider (a proxy answering what a broken or hostile provider would), or damaged files.

Each case must end with a clear error (the failed task's message matches what went wrong), a
non-zero exit status of ansible-playbook, no secret in any output, and nothing written: the
account directory, the user's home and runtime directory (where the lookup keeps its cache) are
byte-identical before and after.

Secrets reach the playbooks through environment variables only (never the command line).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from evidence import (
    EXCHANGER, LEDGER, SCOPE, Ansible, exchange_account, oauth_client, play, proxied_provider, rt_active, snapshot,
    snapshot_diff)
from fault_proxy import FaultProxy

SUITE = 'bad_input'
PASSWORD = 'bad-input suite password'
TOKEN_POST = 'POST /token HTTP'
PARALLEL = int(os.environ.get('OIDC_EVIDENCE_PARALLEL', '3'))


def b64url(data):
    return base64.urlsafe_b64encode(data if isinstance(data, bytes) else json.dumps(data).encode()).rstrip(b'=').decode()


class Case(object):
    """One bad input. task: the task (dict) run in a play; expected: regex of the failure message.
    setup(case, world) may prepare files, environment variables and fake answers. bug: the case fails
    because of a known bug of the collection (reported in docs/evidence.md); the test is then an
    expected failure that turns into an error once the bug is fixed."""

    def __init__(self, cid, what, layer, expected, task=None, setup=None, account='good', bug=None, writes=None):
        self.id, self.what, self.layer, self.expected = cid, what, layer, expected
        self.task, self.setup, self.account, self.bug = task, setup, account, bug
        # writes: the one account file the case must change (an expired account is emptied of its revoked
        # refresh token); everything else must stay byte-identical.
        self.writes = writes
        self.env = {}
        self.secrets = [PASSWORD]
        self.dir = None


def module(module_name, **args):
    return {'name': 'case', module_name: args}


def lookup(term, **options):
    opts = ''.join(', %s=%s' % (k, v) for k, v in options.items())
    return {'name': 'case', 'ansible.builtin.set_fact': {
        'got': "{{ lookup('oidc.tokens.oidc_token', %s%s) | length > 0 }}" % (term, opts)}}


ENV = "{{ lookup('ansible.builtin.env', '%s') }}"
EXCHANGE_BASE = {'name': 'new', 'issuer': '{{ issuer }}', 'client_id': EXCHANGER, 'client_secret': ENV % 'EV_SECRET',
                 'subject_token': ENV % 'EV_SUBJECT', 'scope': SCOPE, 'config_dir': '{{ config_dir }}',
                 'encryption_password_env': 'EV_PW', 'timeout': 5, 'retries': 0}
TOKEN_BASE = {'name': 'good', 'config_dir': '{{ config_dir }}', 'encryption_password_env': 'EV_PW', 'timeout': 5,
              'retries': 0}
LOOKUP_BASE = {'config_dir': 'config_dir', 'encryption_password_env': "'EV_PW'", 'timeout': 5}


def exchange(**overrides):
    args = dict(EXCHANGE_BASE)
    for key, value in overrides.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = value
    return module('oidc.tokens.oidc_token_exchange', **args)


def token(**overrides):
    args = dict(TOKEN_BASE)
    args.update(overrides)
    return module('oidc.tokens.oidc_token', **args)


def revoke(**overrides):
    args = {'name': 'good', 'config_dir': '{{ config_dir }}', 'encryption_password_env': 'EV_PW', 'timeout': 5}
    args.update(overrides)
    return module('oidc.tokens.oidc_revoke', **args)


# -- the world the cases run in ---------------------------------------------------------------------

class World(object):
    def __init__(self, provider_factory, workdir):
        self.dir = str(workdir)
        self.op, self.proxy = proxied_provider(provider_factory)           # the real provider, behind a proxy
        self.issuer = self.proxy.url
        self.jwt_op, self.jwt_proxy = proxied_provider(provider_factory, access_token_format='jwt')
        self.jwt_issuer = self.jwt_proxy.url
        self.short_op = None
        self.fakes = []
        self.secret = self.op.client(EXCHANGER)['client_secret']
        # A pristine account directory that cases copy: 'good' (a live grant), 'other'.
        self.pristine = os.path.join(self.dir, 'pristine')
        exchange_account(self.op, self.pristine, 'good', PASSWORD)
        exchange_account(self.op, self.pristine, 'other', PASSWORD)
        self.pristine_rt = AccountStore(self.pristine).load('good', PASSWORD)['refresh_token']

    def fake(self, status, body, content_type='application/json', headers=()):
        """A fake provider: a proxy to nowhere that answers everything so. Returns its URL."""
        proxy = FaultProxy('http://127.0.0.1:9').start()
        proxy.respond_always(status, body if not callable(body) else body(proxy.url), content_type, headers)
        self.fakes.append(proxy)
        return proxy.url

    def stop(self):
        for proxy in [self.proxy, self.jwt_proxy] + self.fakes:
            proxy.stop()


def jwt_kid(op):
    return op.session.get(op.jwks_uri, timeout=10).json()['keys'][0]['kid']


def forged_jwt(op, alg):
    """A JWT that looks like one of op's access tokens: alg none, or RS256 signed with another key."""
    real = op.user_access_token()
    payload = real.split('.')[1]
    kid = jwt_kid(op)
    if alg == 'none':
        return '%s.%s.' % (b64url({'alg': 'none', 'typ': 'at+jwt', 'kid': kid}), payload)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    head = b64url({'alg': 'RS256', 'typ': 'at+jwt', 'kid': kid})
    signature = key.sign(('%s.%s' % (head, payload)).encode(), padding.PKCS1v15(), hashes.SHA256())
    return '%s.%s.%s' % (head, payload, b64url(signature))


# -- setups ---------------------------------------------------------------------------------------------

def subject(world, case):
    case.env['EV_SUBJECT'] = world.op.user_access_token()
    case.secrets.append(case.env['EV_SUBJECT'])


def canned_exchange(status, body, content_type='application/json', headers=()):
    def setup(world, case):
        subject(world, case)
        world.proxy.push_response(status, body, content_type, match=TOKEN_POST, request_body=case.env['EV_SUBJECT'],
                                  headers=headers)
    return setup


def fake_issuer(status, body, content_type='application/json', headers=()):
    def setup(world, case):
        subject(world, case)
        case.vars['issuer'] = world.fake(status, body, content_type, headers)
    return setup


def set_subject(value):
    def setup(world, case):
        case.env['EV_SUBJECT'] = value(world) if callable(value) else value
        if len(case.env['EV_SUBJECT']) > 8:
            case.secrets.append(case.env['EV_SUBJECT'])
    return setup


def expired_subject(world):
    if world.short_op is None:
        raise RuntimeError('short-lived provider missing')
    return world.short_subject


def revoked_subject(world):
    at = world.op.user_access_token()
    oauth_client(world.op, 'user-cli').revoke(at, 'access_token')
    return at


def with_issuer(issuer):
    def setup(world, case):
        subject(world, case)
        case.vars['issuer'] = issuer(world) if callable(issuer) else issuer
    return setup


def account_file(mutate):
    """Replace the 'good' account file of the case with mutate(original bytes)."""
    def setup(world, case):
        path = os.path.join(case.config_dir, 'good')
        with open(path, 'rb') as handle:
            data = handle.read()
        new = mutate(data)
        os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, 'wb') as handle:
            handle.write(new)
    return setup


def flip_ciphertext(data):
    lines = data.split(b'\n')
    body = bytearray(base64.b64decode(lines[4]))
    body[len(body) // 2] ^= 0x01
    lines[4] = base64.b64encode(bytes(body))
    return b'\n'.join(lines)


def replace_line(index, value):
    def mutate(data):
        lines = data.split(b'\n')
        lines[index] = value
        return b'\n'.join(lines)
    return mutate


def symlinked(world, case):
    path = os.path.join(case.config_dir, 'good')
    os.unlink(path)
    os.symlink(os.path.join(case.config_dir, 'other'), path)


def account_with(**changes):
    """Rewrite the case's 'good' account with changed fields (a refresh token the provider refuses ...)."""
    def setup(world, case):
        store = AccountStore(case.config_dir)
        account = store.load('good', PASSWORD)
        for key, value in changes.items():
            if key == 'meta':
                account.meta.update(value(world) if callable(value) else value)
            else:
                account[key] = value(world) if callable(value) else value
        store.save('good', account, PASSWORD)
    return setup


def expired_account(world, case):
    """An account of its own (its refresh token is revoked by the case) whose lifetime ended."""
    exchange_account(world.op, case.config_dir, 'expired', PASSWORD)
    store = AccountStore(case.config_dir)
    account = store.load('expired', PASSWORD)
    account.meta['lifetime_end'] = 1700000000
    store.save('expired', account, PASSWORD)
    case.expired_rt = account['refresh_token']
    case.secrets.append(case.expired_rt)


def revoked_rt(world, case):
    name = 'revoked'
    exchange_account(world.op, case.config_dir, name, PASSWORD)
    rt = AccountStore(case.config_dir).load(name, PASSWORD)['refresh_token']
    oauth_client(world.op).revoke(rt)
    case.secrets.append(rt)


def jwt_account(alg):
    def setup(world, case):
        exchange_account(world.jwt_op, case.config_dir, 'jwt', PASSWORD)
        rt = AccountStore(case.config_dir).load('jwt', PASSWORD)['refresh_token']
        case.secrets.append(rt)
        forged = forged_jwt(world.jwt_op, alg)
        case.secrets.append(forged)
        answer = {'access_token': forged, 'token_type': 'Bearer', 'expires_in': 300, 'scope': 'openid'}
        world.jwt_proxy.push_response(200, answer, match=TOKEN_POST, request_body=rt)
    return setup


def chown_dir(world, case):
    os.chown(case.config_dir, 65534, 65534)


def env_password(value):
    def setup(world, case):
        case.env['EV_PW'] = value
    return setup


def unset_password(world, case):
    case.env.pop('EV_PW', None)


def password_file_missing(world, case):
    case.vars['missing_file'] = os.path.join(case.dir, 'no-such-password-file')


def readable_password_file(world, case):
    path = os.path.join(case.dir, 'readable-password')
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(PASSWORD + '\n')
    os.chmod(path, 0o644)
    case.vars['readable_file'] = path


def fifo_password_file(world, case):
    path = os.path.join(case.dir, 'fifo-password')
    os.mkfifo(path, 0o600)
    case.vars['fifo_file'] = path


def steps(*fns):
    def setup(world, case):
        for fn in fns:
            fn(world, case)
    return setup


# -- the corpus -----------------------------------------------------------------------------------------

CASES = [
    # subject tokens
    Case('subject-garbage', 'a subject token that is no token at all', 'oidc_token_exchange',
         r'refused the token exchange: invalid_request', exchange(), set_subject('not-a-token-at-all-0123456789')),
    Case('subject-expired', 'an expired subject token', 'oidc_token_exchange', r'invalid_request \(.*expired',
         exchange(), steps(with_issuer(lambda w: w.short_op.issuer), set_subject(expired_subject))),
    Case('subject-revoked', 'a revoked subject token', 'oidc_token_exchange', r'invalid_request',
         exchange(), set_subject(revoked_subject)),
    Case('subject-jwt-alg-none', "a JWT subject token with alg 'none'", 'oidc_token_exchange',
         r'invalid_request \(subject_token is not (a JWT|signed by this provider)',
         exchange(issuer='{{ jwt_issuer }}', subject_token_type='jwt'),
         set_subject(lambda w: forged_jwt(w.jwt_op, 'none'))),
    Case('subject-jwt-wrong-key', 'a JWT subject token signed with another key', 'oidc_token_exchange',
         r'invalid_request \(subject_token has an invalid signature',
         exchange(issuer='{{ jwt_issuer }}', subject_token_type='jwt'),
         set_subject(lambda w: forged_jwt(w.jwt_op, 'RS256'))),
    Case('subject-empty', 'an empty subject token', 'oidc_token_exchange', r'No subject token',
         exchange(subject_token=''), None),
    # clients
    Case('client-secret-wrong', 'a wrong client secret', 'oidc_token_exchange', r'invalid_client',
         exchange(client_secret=ENV % 'EV_WRONG_SECRET'),
         steps(subject, lambda w, c: c.env.update(EV_WRONG_SECRET='wrong-secret-value-123'))),
    Case('client-secret-empty', 'an empty client secret', 'oidc_token_exchange', r'invalid_client',
         exchange(client_secret=''), subject),
    Case('client-unknown', 'a client the provider does not know', 'oidc_token_exchange', r'invalid_client',
         exchange(client_id='no-such-client'), subject),
    # issuers and discovery
    Case('issuer-mismatch', 'an issuer that differs from the one the provider announces', 'oidc_token_exchange',
         r'names the issuer .*not the configured one', exchange(),
         with_issuer(lambda w: w.issuer.replace('127.0.0.1', 'localhost'))),
    Case('issuer-http-remote', 'http:// to an issuer that is not on loopback', 'oidc_token_exchange',
         r'Refusing plain http:// to iam\.example\.org', exchange(), with_issuer('http://iam.example.org/')),
    Case('issuer-not-url', 'an issuer that is not a URL', 'oidc_token_exchange', r'is not an http\(s\) URL',
         exchange(), with_issuer('iam.example.org')),
    Case('issuer-query', 'an issuer with a query string', 'oidc_token_exchange', r'must not have a query',
         exchange(), with_issuer(lambda w: w.issuer + '/?tenant=x')),
    Case('issuer-ftp', 'an ftp:// issuer', 'oidc_token_exchange', r'is not an http\(s\) URL',
         exchange(), with_issuer('ftp://127.0.0.1/')),
    Case('discovery-redirect', 'discovery redirects to another host', 'oidc_token_exchange',
         r'No discovery document.*redirect \(HTTP 302\) to https://evil\.example/.*not followed',
         exchange(), fake_issuer(302, b'moved', 'text/plain', [('Location', 'https://evil.example/.well-known/x')])),
    Case('discovery-html', 'discovery answers an HTML page', 'oidc_token_exchange',
         r'No discovery document.*HTTP 200 with text/html', exchange(),
         fake_issuer(200, b'<html><head><title>Login</title></head></html>', 'text/html')),
    Case('discovery-foreign-issuer', 'the discovery document names another issuer', 'oidc_token_exchange',
         r"names the issuer 'https://evil\.example/'", exchange(),
         fake_issuer(200, lambda url: {'issuer': 'https://evil.example/', 'token_endpoint': url + '/token'})),
    Case('discovery-no-token-endpoint', 'a discovery document without token_endpoint', 'oidc_token_exchange',
         r'has no token_endpoint', exchange(), fake_issuer(200, lambda url: {'issuer': url})),
    Case('discovery-http-endpoint', 'the token endpoint is http:// on another host', 'oidc_token_exchange',
         r'Refusing plain http:// to evil\.example', exchange(),
         fake_issuer(200, lambda url: {'issuer': url, 'token_endpoint': 'http://evil.example/token'})),
    Case('discovery-huge', 'a discovery document of 4 MiB', 'oidc_token_exchange', r'larger than 1048576 bytes',
         exchange(), fake_issuer(200, lambda url: {'issuer': url, 'pad': 'x' * (4 * 1024 * 1024)})),
    # token endpoint answers
    Case('token-redirect', 'the token endpoint redirects to another host', 'oidc_token_exchange',
         r'redirect \(HTTP 302\) to https://evil\.example/token.*not followed', exchange(),
         canned_exchange(302, b'', 'text/plain', [('Location', 'https://evil.example/token')])),
    Case('token-html', 'the token endpoint answers an HTML page', 'oidc_token_exchange',
         r'HTTP 200 with text/html instead of a JSON object \(an HTML page titled .Sign in', exchange(),
         canned_exchange(200, b'<html><head><title>Sign in</title></head></html>', 'text/html')),
    Case('token-text-400', 'a plain-text 400 answer', 'oidc_token_exchange', r'HTTP 400 with text/plain', exchange(),
         canned_exchange(400, b'Bad Request', 'text/plain')),
    Case('token-json-array', 'a JSON array instead of an object', 'oidc_token_exchange',
         r'instead of a JSON object', exchange(), canned_exchange(200, b'[]')),
    Case('token-json-cut', 'JSON cut off in the middle', 'oidc_token_exchange', r'instead of a JSON object',
         exchange(), canned_exchange(200, b'{"access_token": "abc", "refresh_tok')),
    Case('token-huge', 'a 4 MiB answer', 'oidc_token_exchange', r'larger than 1048576 bytes', exchange(),
         canned_exchange(200, {'refresh_token': 'x' * (4 * 1024 * 1024)})),
    Case('token-json-nested', 'JSON nested 100000 levels deep', 'oidc_token_exchange', r'nested too deeply',
         exchange(), canned_exchange(200, b'{"a": ' + b'[' * 100000 + b']' * 100000 + b'}')),
    Case('token-empty-object', 'an answer without any token', 'oidc_token_exchange',
         r'contains no token \(fields: none\)', exchange(), canned_exchange(200, b'{}')),
    Case('token-no-refresh-token', 'an access token but no refresh token', 'oidc_token_exchange',
         r'without a refresh token', exchange(),
         canned_exchange(200, {'access_token': 'an-access-token-only-0123456789', 'token_type': 'Bearer',
                               'expires_in': 60})),
    Case('token-error-not-string', 'an error answer without an OAuth error code', 'oidc_token_exchange',
         r'failed with HTTP 400 and no OAuth error code', exchange(), canned_exchange(400, {'error': 42})),
    Case('token-expires-in-text', 'expires_in that is not a number', 'oidc_token_exchange',
         r'non-numeric expires_in', exchange(),
         canned_exchange(200, {'refresh_token': 'rt-0123456789abcdef', 'access_token': 'at-0123456789abcdef',
                               'expires_in': 'soon'})),
    # options
    Case('exchange-wrong-token-type', 'requested_token_type access_token', 'oidc_token_exchange',
         r'requested_token_type must be a refresh token', exchange(requested_token_type='access_token'), subject),
    Case('exchange-unknown-option', 'an unknown option', 'oidc_token_exchange', r'Unsupported parameters.*bogus',
         exchange(bogus_option=1), subject),
    Case('exchange-lifetime-text', 'lifetime that is not a number', 'oidc_token_exchange',
         r'lifetime.*(int|integer)', exchange(lifetime='a week'), subject),
    Case('token-unknown-option', 'an unknown option', 'oidc_token', r'Unsupported parameters.*colour',
         token(colour='blue'), None),
    Case('token-min-valid-text', 'min_valid_period that is not a number', 'oidc_token',
         r'min_valid_period.*(int|integer)', token(min_valid_period='soon'), None),
    # names
    Case('name-traversal', "path traversal in the account name ('../x')", 'oidc_token_exchange',
         r"Invalid account name '\.\./x'", exchange(name='../x'), subject),
    Case('name-traversal-token', "path traversal in the account name ('../good')", 'oidc_token',
         r"Invalid account name '\.\./good'", token(name='../good'), None),
    Case('name-slash', "a name with a slash ('a/b')", 'oidc_token_exchange', r'path separator',
         exchange(name='a/b'), subject),
    Case('name-dotdot', "the name '..'", 'oidc_token', r"Invalid account name '\.\.'", token(name='..'), None),
    Case('name-hidden', "a hidden name ('.good.lock')", 'oidc_token', r"starts with '\.'", token(name='.good.lock'),
         None),
    Case('name-reserved-config', "oidc-agent's reserved name 'config'", 'oidc_token_exchange', r'reserves it',
         exchange(name='config'), subject),
    Case('name-reserved-issuer', "oidc-agent's reserved name 'issuer.config'", 'oidc_token_exchange', r'reserves it',
         exchange(name='issuer.config'), subject),
    Case('name-reserved-clientconfig', "a *.clientconfig name", 'oidc_token', r'reserves it',
         token(name='iam.clientconfig'), None),
    Case('name-too-long', 'a name of 129 characters', 'oidc_token_exchange', r'longer than 128',
         exchange(name='a' * 129), subject),
    Case('name-space', "a name with a space ('my job')", 'oidc_token', r'only letters, digits',
         token(name='my job'), None),
    Case('name-empty', 'an empty name', 'oidc_token', r'it is empty', token(name=''), None),
    Case('name-trailing-newline', "a name with a final newline ('good\\n')", 'oidc_token', r'Invalid account name',
         token(name='good\n'), None),
    # an account's own issuer and client
    Case('issuer-not-the-accounts', "another issuer than the account's", 'oidc_token',
         r'made with issuer .* but the task names issuer https://attacker\.example.*only ever sent to its own issuer',
         token(issuer='https://attacker.example', force=True), None),
    Case('client-not-the-accounts', "another client than the account's", 'oidc_revoke',
         r'made with client_id .* but the task names client_id attacker', revoke(client_id='attacker'), None),
    Case('lookup-issuer-not-the-accounts', "the lookup naming another issuer than the account's", 'lookup',
         r'only ever sent to its own issuer', lookup("'good'", issuer="'https://attacker.example'", **LOOKUP_BASE),
         None),
    # passwords
    Case('password-wrong', 'a wrong password', 'oidc_token', r'Wrong encryption password for account .good.',
         token(), env_password('not the password')),
    Case('password-empty', 'an empty password', 'oidc_token', r'(is empty|password)', token(), env_password('')),
    Case('password-env-unset', 'the password variable is not set', 'oidc_token', r'EV_PW .*is not set', token(),
         unset_password),
    Case('password-file-missing', 'a password file that does not exist', 'oidc_token',
         r'Cannot read the password file', token(encryption_password_env=None,
                                                 encryption_password_file='{{ missing_file }}'),
         password_file_missing),
    Case('password-file-readable', 'a password file others can read (mode 0644)', 'oidc_token',
         r'Refusing the password file .*group or others have access to it \(mode 0644\)',
         token(encryption_password_env=None, encryption_password_file='{{ readable_file }}'), readable_password_file),
    Case('password-file-fifo', 'a FIFO where the password file should be', 'oidc_token',
         r'Refusing the password file .*not a regular file',
         token(encryption_password_env=None, encryption_password_file='{{ fifo_file }}'), fifo_password_file),
    Case('password-command-fails', 'a password command that fails', 'oidc_token',
         r'password_command false failed with exit status 1',
         token(encryption_password_env=None, encryption_password_command='false'), None),
    Case('password-two-sources', 'two password sources', 'oidc_token',
         r'(only one encryption password source|mutually exclusive)',
         token(encryption_password_command='false'), None),
    Case('password-wrong-revoke', 'a wrong password for revoke (the account is kept)', 'oidc_revoke',
         r'Wrong encryption password', revoke(), env_password('not the password')),
    Case('password-empty-exchange', 'an empty password for the new account', 'oidc_token_exchange',
         r'(is empty|password)', exchange(), steps(subject, env_password(''))),
    # files
    Case('file-missing', 'an account that does not exist', 'oidc_token', r"No account 'absent'",
         token(name='absent'), None),
    Case('file-truncated', 'a truncated account file', 'oidc_token', r'corrupt or truncated.*left as it is', token(),
         account_file(lambda d: b'\n'.join(d.split(b'\n')[:3]))),
    Case('file-empty', 'an empty account file', 'oidc_token', r'the file is empty', token(), account_file(lambda d: b'')),
    Case('file-corrupt', 'one bit flipped in the ciphertext', 'oidc_token', r'failed authentication', token(),
         account_file(flip_ciphertext)),
    Case('file-length-mismatch', 'a ciphertext length that does not match', 'oidc_token', r'line 1 says',
         token(), account_file(replace_line(0, b'12345'))),
    Case('file-pgp', 'a GPG-encrypted account file', 'oidc_token', r'GPG-encrypted', token(),
         account_file(lambda d: b'-----BEGIN PGP MESSAGE-----\n\nhQEMA...\n-----END PGP MESSAGE-----\n')),
    Case('file-hex-format', 'the hex format of oidc-agent before 2.1', 'oidc_token', r'hex format', token(),
         account_file(lambda d: b'64:0a1b2c:3d4e5f:6a7b8c')),
    Case('file-crlf', 'CRLF line ends', 'oidc_token', r'CRLF', token(), account_file(lambda d: d.replace(b'\n', b'\r\n'))),
    Case('file-other-params', 'other crypto parameters on line 4', 'oidc_token', r'crypto parameters', token(),
         account_file(replace_line(3, b'24:16:16:32:1:4:33554432:2'))),
    Case('file-plain-json', 'a plaintext JSON account (not encrypted)', 'oidc_token', r'corrupt or truncated', token(),
         account_file(lambda d: json.dumps({'name': 'good', 'refresh_token': 'x'}).encode())),
    Case('file-old-version', 'a file that says it was written by oidc-agent 2.0.3', 'oidc_token',
         r'files from before 2\.1\.0', token(), account_file(replace_line(6, b'Generated using version: 2.0.3'))),
    Case('file-symlink', 'the account file is a symbolic link', 'oidc_token', r'symbolic link', token(), symlinked),
    Case('dir-other-owner', 'the account directory belongs to another user', 'oidc_token', r'belongs to uid 65534',
         token(), chown_dir),
    # refresh tokens and access tokens
    Case('rt-revoked', 'an account whose refresh token was revoked', 'oidc_token',
         r'refused the refresh token of account .revoked.*exchange a fresh subject token', token(name='revoked'),
         revoked_rt),
    Case('rt-garbage', 'an account whose refresh token is garbage', 'oidc_token',
         r'refused the refresh token.*invalid_grant', token(), account_with(refresh_token='garbage-refresh-token-0123')),
    Case('account-expired', 'an account past its lifetime (its refresh token is revoked first)', 'oidc_token',
         r'reached the end of its lifetime.*revoked at the provider', token(name='expired'), expired_account,
         writes='expired'),
    Case('at-jwt-alg-none', "the provider's answer carries a JWT access token with alg 'none'", 'oidc_token',
         r"signed with 'none', which is not accepted", token(name='jwt', verify=True), jwt_account('none')),
    Case('at-jwt-wrong-key', "the provider's answer carries a JWT signed with another key", 'oidc_token',
         r'signature does not verify', token(name='jwt', verify=True), jwt_account('RS256')),
    # the lookup
    Case('lookup-traversal', "the lookup with '../x'", 'lookup', r"Invalid account name '\.\./x'",
         lookup("'../x'", **LOOKUP_BASE), None),
    Case('lookup-reserved', "the lookup with the reserved name 'config'", 'lookup', r'reserves it',
         lookup("'config'", **LOOKUP_BASE), None),
    Case('lookup-unknown-option', 'the lookup with an unknown option', 'lookup', r'bogus',
         lookup("'good'", bogus=1, **LOOKUP_BASE), None),
    Case('lookup-wrong-password', 'the lookup with a wrong password', 'lookup', r'Wrong encryption password',
         lookup("'good'", **LOOKUP_BASE), env_password('not the password')),
    Case('lookup-missing', 'the lookup for an account that does not exist', 'lookup', r"No account 'absent'",
         lookup("'absent'", **LOOKUP_BASE), None),
    Case('lookup-bad-query', 'the lookup with a query that is not JMESPath', 'lookup', r'not a valid JMESPath',
         lookup("'good'", query="'claims.[['", **LOOKUP_BASE), None),
    Case('lookup-corrupt', 'the lookup on a corrupt account file', 'lookup', r'failed authentication',
         lookup("'good'", **LOOKUP_BASE), account_file(flip_ciphertext)),
    Case('lookup-not-a-string', 'the lookup with a number as the account name', 'lookup', r'takes account names',
         lookup('42', **LOOKUP_BASE), None),
]


# -- running them ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def world(provider_factory, tmp_path_factory):
    w = World(provider_factory, tmp_path_factory.mktemp('bad-input'))
    w.short_op = provider_factory(at_ttl=1)
    w.short_subject = w.short_op.user_access_token()
    time.sleep(2.2)   # the short provider's access token expires
    yield w
    w.stop()


def prepare(world, case, base):
    case.world = world
    case.dir = os.path.join(base, case.id)
    os.makedirs(case.dir)
    case.config_dir = os.path.join(case.dir, 'accounts')
    shutil.copytree(world.pristine, case.config_dir)
    os.chmod(case.config_dir, 0o700)
    case.ansible = Ansible(os.path.join(case.dir, 'ansible'))
    case.env = {'EV_PW': PASSWORD, 'EV_SECRET': world.secret}
    case.secrets = [PASSWORD, world.secret, world.pristine_rt]
    case.vars = {'issuer': world.issuer, 'jwt_issuer': world.jwt_issuer, 'config_dir': case.config_dir}
    if case.setup is not None:
        case.setup(world, case)
    case.roots = [case.config_dir, case.ansible.home, case.ansible.runtime]
    case.before = snapshot(*case.roots)


def run(case):
    case.result = case.ansible.playbook(play([case.task]), extra_vars=case.vars, env=case.env, timeout=300)
    case.after = snapshot(*case.roots)
    return case


@pytest.fixture(scope='module')
def outcomes(world, tmp_path_factory, request):
    # Only the cases this session runs (pytest -k ...), at PARALLEL at a time.
    selected = set()
    for item in request.session.items:
        param = getattr(getattr(item, 'callspec', None), 'params', {}).get('case')
        if param is not None:
            selected.add(param.id)
    cases = [case for case in CASES if case.id in selected]
    base = str(tmp_path_factory.mktemp('cases'))
    for case in cases:
        prepare(world, case, base)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(run, cases))
    return dict((case.id, case) for case in cases)


def is_empty_lock(path, snap):
    """An empty lock file (.NAME.lock) or the lookup's cache directory holding only such files."""
    entry = snap.get(path)
    if entry is None:
        return False
    if entry[0] == 'file':
        return os.path.basename(path).startswith('.') and path.endswith('.lock') and entry[3] == EMPTY_SHA
    if entry[0] == 'dir' and os.path.basename(path) == 'oidc-tokens':
        inside = [p for p in snap if p.startswith(path + os.sep)]
        return all(is_empty_lock(p, snap) for p in inside)
    return False


EMPTY_SHA = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'


def written(case):
    """(what the run wrote, empty lock files it left), apart from Ansible's own directory (~/.ansible)."""
    diff = snapshot_diff(case.before, case.after)
    own = os.path.join(case.ansible.home, '.ansible')
    changes = dict((k, [p for p in v if not p.startswith(own)]) for k, v in diff.items())
    locks = [p for p in changes['added'] if is_empty_lock(p, case.after)]
    changes['added'] = [p for p in changes['added'] if p not in locks]
    return changes, locks


def test_the_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40
    assert len(set(c.id for c in CASES)) == len(CASES)


def params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason='known bug: ' + case.bug)] if case.bug else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize('case', list(params()))
def test_bad_input(outcomes, case):
    case = outcomes[case.id]
    result = case.result
    failed = [r for r in result.results if r['status'] == 'failed']
    message = failed[-1].get('msg', '') if failed else ''
    output = result.stdout + result.stderr
    leaks = [s for s in case.secrets if s and (s in output or s in message)]
    changes, locks = written(case)
    if case.writes:
        # The one write this case must make: the account emptied of its refresh token, which the provider
        # no longer honours.
        account_path = os.path.join(case.config_dir, case.writes)
        assert changes['changed'] == [account_path] and not changes['added'] and not changes['removed'], changes
        assert not AccountStore(case.config_dir).load(case.writes, PASSWORD)['refresh_token']
        assert not rt_active(case.world.op, case.expired_rt), 'the expired account\'s refresh token is alive'
        LEDGER.add(SUITE, 'cases that revoked an expired account at the provider', 1)
        changes = dict((k, []) for k in changes)
    nothing_written = not any(changes.values())
    lock_files = [p for p in locks if case.after[p][0] == 'file']
    if lock_files:
        LEDGER.add(SUITE, 'cases that left only an empty lock file', 1)
        for path in lock_files:
            where = ('the lookup\'s cache directory ($XDG_RUNTIME_DIR/oidc-tokens)' if '/run/oidc-tokens' in path
                     else 'the account directory (.NAME.lock)')
            LEDGER.note(SUITE, 'a failed call can leave an empty lock file in %s' % where)
    elif locks:
        LEDGER.add(SUITE, 'cases that left only an empty cache directory', 1)
    if case.bug:
        LEDGER.add(SUITE, 'cases failing because of a known bug', 1)
    clear = bool(failed) and re.search(case.expected, message, re.S) is not None
    LEDGER.add(SUITE, 'cases')
    LEDGER.add(SUITE, 'cases with a clear error', int(clear))
    LEDGER.add(SUITE, 'cases with a non-zero exit', int(result.rc != 0))
    LEDGER.add(SUITE, 'cases that wrote nothing', int(nothing_written))
    LEDGER.add(SUITE, 'secrets in output', len(leaks))
    LEDGER.row(SUITE, case=case.id, what=case.what, layer=case.layer, rc=result.rc, message=message[:400],
               clear=clear, nothing_written=nothing_written, written=sum(len(v) for v in changes.values()),
               empty_locks_left=len(locks), known_bug=case.bug)
    assert result.rc != 0, 'exit status 0:\n%s' % output[-2000:]
    assert failed, 'no failed task:\n%s' % output[-2000:]
    assert clear, 'unclear message for %s: %r (want /%s/)' % (case.what, message, case.expected)
    assert not leaks, 'a secret reached the output'
    assert nothing_written, changes
