# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The oidc-agent account file: its format, its cryptography and the account it holds.

An account file is what oidc-agent (>= 2.1 through 5.x) reads and writes: seven lines joined by
``\\n`` and no trailing newline::

    1 ciphertext length in decimal (= plaintext bytes + 16)
    2 24-byte nonce, standard base64 with padding
    3 16-byte salt, same base64
    4 24:16:16:32:1:2:67108864:2   (nonce:salt:mac:key lengths:base64 variant:opslimit:memlimit:alg)
    5 crypto_secretbox_easy(plaintext, nonce, key), base64 (XSalsa20-Poly1305, MAC first)
    6 "hash key", base64
    7 Generated using version: X.Y.Z

``crypto_pwhash`` (Argon2id13, opslimit 2, memlimit 64 MiB) turns the password and salt into 64
bytes: bytes 0-31 are the secretbox key, bytes 32-63 are line 6 and identify a wrong password
before decryption. PyNaCl does all of the cryptography. The plaintext is the account JSON
(``Account``). Bytes in, bytes out: reading and writing files is the store's (_account_store.py).

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets

from collections.abc import MutableMapping

from ansible_collections.oidc.tokens.plugins.module_utils._errors import (
    AccountStoreError, CorruptAccountError, MissingDependencyError, UnsupportedFormatError, WrongPasswordError)
from ansible_collections.oidc.tokens.plugins.module_utils._imports import NACL

# PyNaCl is imported on first use (_imports.NACL), not here: code that imports the store but
# never encrypts or decrypts does not load it, and where it is missing the caller says so plainly.

# --- the format ------------------------------------------------------------------------------

NONCE_BYTES = 24
SALT_BYTES = 16
MAC_BYTES = 16
KEY_BYTES = 32
BASE64_VARIANT_ORIGINAL = 1
OPSLIMIT = 2                # crypto_pwhash_OPSLIMIT_INTERACTIVE (Argon2id)
MEMLIMIT = 67108864         # crypto_pwhash_MEMLIMIT_INTERACTIVE (Argon2id), 64 MiB
ALG_ARGON2ID13 = 2          # crypto_pwhash_ALG_ARGON2ID13 (= crypto_pwhash_ALG_DEFAULT)
PARAMS_LINE = '%d:%d:%d:%d:%d:%d:%d:%d' % (NONCE_BYTES, SALT_BYTES, MAC_BYTES, KEY_BYTES,
                                           BASE64_VARIANT_ORIGINAL, OPSLIMIT, MEMLIMIT,
                                           ALG_ARGON2ID13)
VERSION_PREFIX = 'Generated using version: '
# The version written on line 7. oidc-agent reads this line only to tell the current format from
# the hex format of versions before 2.1.0; 4.2.6 is the oldest oidc-agent the collection is tested
# against, and every oidc-agent from 2.1.0 on reads the file.
FORMAT_VERSION = '4.2.6'
MIN_VERSION = (2, 1, 0)

# Fields oidc-agent's account JSON has; they are always written (empty when unknown).
ACCOUNT_FIELDS = ('name', 'client_name', 'issuer_url', 'client_id', 'client_secret',
                  'refresh_token', 'cert_path', 'scope', 'auth_scope', 'audience',
                  'redirect_uris', 'username', 'password')
# Our own fields live in one extra object; oidc-agent keeps unknown keys when it rewrites a file.
META_KEY = 'oidc_tokens'
SECRET_FIELDS = frozenset(('client_secret', 'refresh_token', 'password', 'access_token',
                           'id_token'))

_VERSION_RE = re.compile(r'^Generated using version: ([0-9]+)\.([0-9]+)\.([0-9]+)\S*$')


def require_nacl():
    """The nacl package; MissingDependencyError when PyNaCl does not import."""
    return NACL.require(MissingDependencyError, 'for the oidc.tokens account store on the host where it runs')


# --- the account -----------------------------------------------------------------------------

class Account(MutableMapping):
    """An account's JSON object, dict-like. ``repr`` and ``str`` never show a secret.

    ``scope`` and ``auth_scope`` are one value (oidc-agent 4.x reads ``scope``, 5.2+ prefers
    ``auth_scope``): setting either sets both. ``issuer_url`` is read from ``issuer`` when only
    that is present, and written with a trailing ``/`` (oidc-agent 4.x needs it; compare issuers
    without trailing slashes). Unknown keys are kept as they are.
    """

    _SCOPE_KEYS = ('scope', 'auth_scope')

    def __init__(self, data=None, **kwargs):
        self._data = {}
        if data is not None:
            if isinstance(data, Account):
                data = data.to_dict()
            for key, value in dict(data).items():
                self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    @classmethod
    def _from_file_json(cls, data):
        """Normalise an object read from a file (5.x writes only auth_scope, may write issuer)."""
        account = cls()
        account._data = dict(data)
        scope = data.get('auth_scope') or data.get('scope') or ''
        account._data['scope'] = scope
        account._data['auth_scope'] = scope
        if not data.get('issuer_url') and data.get('issuer'):
            account._data['issuer_url'] = data['issuer']
        return account

    def __getitem__(self, key):
        return self._data[key]

    def __setitem__(self, key, value):
        if key in self._SCOPE_KEYS:
            if isinstance(value, (list, tuple)):
                value = ' '.join(value)
            self._data['scope'] = value
            self._data['auth_scope'] = value
        else:
            self._data[key] = value

    def __delitem__(self, key):
        if key in self._SCOPE_KEYS:
            del self._data['scope']
            self._data.pop('auth_scope', None)
        else:
            del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        shown = []
        for key in ('name', 'issuer_url', 'client_id', 'scope'):
            if key in self._data:
                shown.append('%s=%r' % (key, self._data[key]))
        for key in sorted(self._data):
            if _is_secret_key(key):
                shown.append('%s=<%s>' % (key, 'set' if self._data[key] else 'empty'))
        others = sorted(k for k in self._data
                        if k not in ('name', 'issuer_url', 'client_id', 'scope')
                        and not _is_secret_key(k))
        if others:
            shown.append('other_keys=%s' % ','.join(others))
        return 'Account(%s)' % ', '.join(shown)

    __str__ = __repr__

    def copy(self):
        return Account(json.loads(json.dumps(self._data)))

    def to_dict(self):
        """A plain deep copy (secrets included: do not log it)."""
        return json.loads(json.dumps(self._data))

    @property
    def meta(self):
        """The collection's own fields (an object under ``oidc_tokens``), created on demand."""
        value = self._data.get(META_KEY)
        if not isinstance(value, dict):
            value = {}
            self._data[META_KEY] = value
        return value

    def _to_file_json(self, name):
        data = dict(self._data)
        data['name'] = name
        for key in ACCOUNT_FIELDS:
            if data.get(key) is None:
                data[key] = [] if key == 'redirect_uris' else ''
        scope = data.get('auth_scope') or data.get('scope') or ''
        data['scope'] = scope
        data['auth_scope'] = scope
        issuer = data.get('issuer_url')
        if isinstance(issuer, str) and issuer and not issuer.endswith('/'):
            # oidc-agent 4.x appends '.well-known/openid-configuration' to issuer_url as it is,
            # so it needs the trailing slash; oidc-gen writes it that way too.
            data['issuer_url'] = issuer + '/'
        return data


def _is_secret_key(key):
    low = str(key).lower()
    return (key in SECRET_FIELDS or 'secret' in low or 'token' in low or 'password' in low) \
        and key != META_KEY


# --- encryption ------------------------------------------------------------------------------

class _Key(object):
    """The result of one Argon2id derivation: salt, secretbox key, hash key."""

    __slots__ = ('salt', 'key', 'hash_key')

    def __init__(self, salt, key, hash_key):
        self.salt = salt
        self.key = key
        self.hash_key = hash_key


class _Parsed(object):
    __slots__ = ('nonce', 'salt', 'ciphertext', 'hash_key', 'version')

    def __init__(self, nonce, salt, ciphertext, hash_key, version):
        self.nonce = nonce
        self.salt = salt
        self.ciphertext = ciphertext
        self.hash_key = hash_key
        self.version = version


def _b64(data):
    return base64.b64encode(data).decode('ascii')


def _unb64(text, what, expected_len, fail):
    try:
        raw = base64.b64decode(text.encode('ascii'), validate=True)
    except (binascii.Error, ValueError, UnicodeError):
        raise fail('%s is not valid base64' % what)
    if expected_len is not None and len(raw) != expected_len:
        raise fail('%s has %d bytes, expected %d' % (what, len(raw), expected_len))
    return raw


def parse_account_file(content, account=None, path=None):
    """Check the layout of an account file (bytes) and return its parts; no key derivation.

    Raises CorruptAccountError or UnsupportedFormatError naming ``account`` and ``path``.
    """
    where = 'account %r (%s)' % (account, path)

    def corrupt(why):
        return CorruptAccountError('The account file of %s is corrupt or truncated: %s. '
                                   'The file was left as it is.' % (where, why),
                                   account=account, path=path)

    def unsupported(why):
        return UnsupportedFormatError('The account file of %s is in a format the store does not '
                                      'read: %s. The file was left as it is.' % (where, why),
                                      account=account, path=path)

    if not content:
        raise corrupt('the file is empty')
    if content.lstrip().startswith(b'-----BEGIN PGP'):
        raise unsupported('it is GPG-encrypted (oidc-gen --pw-gpg); only password-encrypted '
                          'files are supported')
    try:
        text = content.decode('ascii')
    except UnicodeError:
        raise corrupt('it contains non-ASCII bytes')
    if '\r' in text:
        raise unsupported('it has CRLF line ends, which oidc-agent rejects too; convert it '
                          'with dos2unix')
    if text.endswith('\n'):
        text = text[:-1]   # oidc-agent reads a file with one trailing newline the same way
    lines = text.split('\n')
    if len(lines) == 1:
        if re.match(r'^[0-9]+:[0-9a-fA-F]+:[0-9a-fA-F]+:[0-9a-fA-F]+$', lines[0]):
            raise unsupported('it is the hex format of oidc-agent before 2.1.0; convert it '
                              'with oidc-gen -u')
        raise corrupt('it has 1 line, expected 7')
    if len(lines) != 7:
        raise corrupt('it has %d lines, expected 7' % len(lines))
    m = _VERSION_RE.match(lines[6])
    if not m:
        raise corrupt("line 7 is not 'Generated using version: X.Y.Z'")
    version = tuple(int(x) for x in m.groups())
    if version < MIN_VERSION:
        raise unsupported('it says oidc-agent %d.%d.%d wrote it; files from before 2.1.0 use a '
                          'hex format' % version)
    if lines[3] != PARAMS_LINE:
        raise unsupported('its crypto parameters are %r, the store reads only %r'
                          % (lines[3][:80], PARAMS_LINE))
    if not re.match(r'^[0-9]{1,9}$', lines[0]):
        raise corrupt('line 1 is not a ciphertext length')
    cipher_len = int(lines[0])
    nonce = _unb64(lines[1], 'the nonce (line 2)', NONCE_BYTES, corrupt)
    salt = _unb64(lines[2], 'the salt (line 3)', SALT_BYTES, corrupt)
    ciphertext = _unb64(lines[4], 'the ciphertext (line 5)', None, corrupt)
    hash_key = _unb64(lines[5], 'the hash key (line 6)', KEY_BYTES, corrupt)
    if len(ciphertext) != cipher_len:
        raise corrupt('the ciphertext has %d bytes but line 1 says %d'
                      % (len(ciphertext), cipher_len))
    if cipher_len <= MAC_BYTES:
        raise corrupt('the ciphertext is too short')
    return _Parsed(nonce, salt, ciphertext, hash_key, '%d.%d.%d' % version)


def derive_key(password, salt):
    """One Argon2id13 derivation (opslimit 2, memlimit 64 MiB, 64 bytes) -> _Key."""
    nacl = require_nacl()
    out = nacl.pwhash.argon2id.kdf(2 * KEY_BYTES, password, salt,
                                   opslimit=OPSLIMIT, memlimit=MEMLIMIT)
    return _Key(salt, out[:KEY_BYTES], out[KEY_BYTES:])


def encrypt_account_bytes(plaintext, key):
    """The seven-line file for ``plaintext`` (bytes) under a derived key, with a fresh nonce."""
    nacl = require_nacl()
    if b'\x00' in plaintext:
        raise ValueError('plaintext must not contain NUL bytes (oidc-agent uses C strings)')
    nonce = secrets.token_bytes(NONCE_BYTES)
    box = nacl.secret.SecretBox(key.key)
    ciphertext = box.encrypt(plaintext, nonce).ciphertext   # MAC first, as crypto_secretbox_easy
    lines = [str(len(ciphertext)), _b64(nonce), _b64(key.salt), PARAMS_LINE, _b64(ciphertext),
             _b64(key.hash_key), VERSION_PREFIX + FORMAT_VERSION]
    return '\n'.join(lines).encode('ascii')


def decrypt_parsed(parsed, key, account=None, path=None):
    """Plaintext bytes of a parsed file, or WrongPasswordError / CorruptAccountError."""
    nacl = require_nacl()
    if not hmac.compare_digest(key.hash_key, parsed.hash_key):
        raise WrongPasswordError('Wrong encryption password for account %r (%s). The file was '
                                 'left as it is.' % (account, path), account=account, path=path)
    box = nacl.secret.SecretBox(key.key)
    try:
        return box.decrypt(parsed.ciphertext, parsed.nonce)
    except nacl.exceptions.CryptoError:
        raise CorruptAccountError('The account file of account %r (%s) failed authentication: '
                                  'the password is right but the ciphertext was changed or '
                                  'damaged. The file was left as it is.' % (account, path),
                                  account=account, path=path)


def account_from_plaintext(plaintext, account=None, path=None):
    """The Account in decrypted bytes, or CorruptAccountError."""
    try:
        data = json.loads(plaintext.decode('utf-8'))
    except (UnicodeError, ValueError):
        raise CorruptAccountError('The account file of account %r (%s) decrypts, but not to '
                                  'JSON. The file was left as it is.' % (account, path),
                                  account=account, path=path)
    if not isinstance(data, dict):
        raise CorruptAccountError('The account file of account %r (%s) decrypts, but not to a '
                                  'JSON object. The file was left as it is.' % (account, path),
                                  account=account, path=path)
    return Account._from_file_json(data)


def plaintext_from_account(account, name):
    """The bytes to encrypt for ``account`` (a mapping) saved as ``name``."""
    if not isinstance(account, Account):
        if not isinstance(account, MutableMapping) and not isinstance(account, dict):
            raise TypeError('account must be a mapping')
        account = Account(account)
    data = account._to_file_json(name)
    try:
        return json.dumps(data, ensure_ascii=False, separators=(',', ':')).encode('utf-8')
    except (TypeError, ValueError) as e:
        raise AccountStoreError('Account %r cannot be written: a value is not JSON '
                                'serialisable (%s).' % (name, type(e).__name__), account=name)
