# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the encrypted account store (oidc-agent account files).

Each Argon2id derivation costs 64 MiB and ~0.1 s, so the tests derive sparingly.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
import sys
import threading
import time

import pytest

nacl = pytest.importorskip('nacl')
import nacl.pwhash.argon2id  # noqa: E402
import nacl.secret  # noqa: E402

from ansible_collections.oidc.tokens.plugins.module_utils import (  # noqa: E402
    _account_file as file_mod, _account_store as store_mod, _passwords, _private_files)
from ansible_collections.oidc.tokens.plugins.module_utils._account_file import Account  # noqa: E402
from ansible_collections.oidc.tokens.plugins.module_utils._account_names import (  # noqa: E402
    default_config_dir, validate_name)
from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore  # noqa: E402
from ansible_collections.oidc.tokens.plugins.module_utils._errors import (  # noqa: E402
    AccountExistsError,
    AccountNotFoundError,
    CorruptAccountError,
    InvalidAccountNameError,
    LockTimeoutError,
    MissingDependencyError,
    OidcTokensError,
    PasswordSourceError,
    StorePermissionError,
    UnsupportedFormatError,
    WrongPasswordError,
)
from ansible_collections.oidc.tokens.plugins.module_utils._passwords import resolve_password  # noqa: E402

PASSWORD = 'correct horse battery staple'

# Written by Debian's oidc-agent 4.2.6 (`oidc-gen -u fixture --pw-env`, which decrypts and
# re-encrypts with oidc-agent's own code) with the password 'unit-test-password'.
OIDC_AGENT_426_FILE = (
    '385\nMrMxaazjTbc5KCmSRGtAhcy5FhZBxm+P\nCKViNWECzoHs+hItEhR5Vg==\n24:16:16:32:1:2:67108864:2\n'
    '7KnP8+dKR4RFUuFm31X+mbrZDYpDexJgvu3Nw6dJwErH93XI0UJzPXNn4Es42ZgEHfWUqFm7VCozaW08Q3MNAt1G6OxM4'
    '+t048MQQ8uMdDwFF5raUhQTeob2g0Tar1U8OpiG6WOFJUUozZLftwxPqkWivCe+5srQtfxjnilbMkMSzsTev+JR6fLvxg'
    'J6fIqdnOTa1Uo0pXjSulj5x+rgC+4UKZoXAmEFCdUA3FCUg3HWm+uZVVLMH5n71moya5nqo6QGDc2FME0Ij3yKWqj2vbm'
    'neCK7P743xoOfdCjRLZcGF+vZJ2mFcbHGv5rISYD8W4J19gmjGnVVEhFd0Hs4mTkoSZCe4BKNtbmhHg41DwQWHKil1J3'
    '4RaK4TZdBihfhcROMaYfzMWlqKKMjs21GyqKh0fkeMbvqSkTzFr+ADxiDigy5Rp7pkaOxo22lICZqTxH0B60vNnI17z5L'
    '24KybtH7hFSLjO/ZPzz/T/QkRnd+UCM9h6Bjw1OhCblSmuzLqw==\nuK4CR1vnkYxfOloNs4oD32b6zk+HMdXczk6Pmgnw'
    'dyI=\nGenerated using version: 4.2.6'
)
OIDC_AGENT_426_PASSWORD = 'unit-test-password'


def sample_account(**extra):
    data = {
        'issuer_url': 'https://issuer.example/',
        'client_id': 'client-1',
        'client_secret': 'client-secret-value',
        'refresh_token': 'refresh-token-value-1',
        'scope': 'openid offline_access',
        'audience': 'https://api.example',
        'oidc_tokens': {'created_at': 1700000000, 'source': 'token_exchange'},
    }
    data.update(extra)
    return data


@pytest.fixture
def store(tmp_path):
    return AccountStore(str(tmp_path / 'oidc-agent'), read_retries=0, lock_timeout=30)


@pytest.fixture(scope='module')
def saved_file(tmp_path_factory):
    """One file written by the store, shared by the read-only tests (saves derivations)."""
    base = tmp_path_factory.mktemp('shared')
    st = AccountStore(str(base / 'oidc-agent'), read_retries=0)
    st.save('shared', sample_account(), PASSWORD)
    with open(st.path('shared'), 'rb') as f:
        return f.read()


def put(store, name, content, mode=0o600):
    store.ensure_dir()
    path = os.path.join(store.config_dir, name)
    with open(path, 'wb') as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    os.chmod(path, mode)
    return path


def snapshot(path):
    st = os.stat(path)
    with open(path, 'rb') as f:
        return f.read(), st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode)


def temp_files(store):
    return [e for e in os.listdir(store.config_dir) if '.tmp-' in e]


def derive(password, salt):
    out = nacl.pwhash.argon2id.kdf(64, password.encode(), salt, opslimit=2, memlimit=67108864)
    return out[:32], out[32:]


# --- format --------------------------------------------------------------------------------

def test_round_trip(store):
    path = store.save('work', sample_account(), PASSWORD)
    assert path == os.path.join(store.config_dir, 'work')
    account = store.load('work', PASSWORD)
    assert isinstance(account, Account)
    assert account['name'] == 'work'
    assert account['refresh_token'] == 'refresh-token-value-1'
    assert account['scope'] == account['auth_scope'] == 'openid offline_access'
    assert account['oidc_tokens'] == {'created_at': 1700000000, 'source': 'token_exchange'}
    for key in file_mod.ACCOUNT_FIELDS:
        assert key in account
    assert account['redirect_uris'] == []
    assert account['issuer_url'] == 'https://issuer.example/'
    assert store.kdf_count == 2
    assert store.last_kdf_seconds > 0


def test_exact_line_layout(saved_file):
    text = saved_file.decode('ascii')
    assert not text.endswith('\n')
    lines = text.split('\n')
    assert len(lines) == 7
    assert lines[3] == '24:16:16:32:1:2:67108864:2'
    assert lines[6] == 'Generated using version: ' + file_mod.FORMAT_VERSION
    nonce = base64.b64decode(lines[1], validate=True)
    salt = base64.b64decode(lines[2], validate=True)
    ciphertext = base64.b64decode(lines[4], validate=True)
    hash_key = base64.b64decode(lines[5], validate=True)
    assert (len(nonce), len(salt), len(hash_key)) == (24, 16, 32)
    assert base64.b64encode(nonce).decode() == lines[1]  # standard alphabet, padded
    # Independent decryption with PyNaCl primitives: bytes 0-31 key, 32-63 hash key.
    key, expected_hash_key = derive(PASSWORD, salt)
    assert hash_key == expected_hash_key
    plaintext = nacl.secret.SecretBox(key).decrypt(ciphertext, nonce)
    assert int(lines[0]) == len(ciphertext) == len(plaintext) + 16
    data = json.loads(plaintext)
    assert data['scope'] == data['auth_scope']
    assert set(file_mod.ACCOUNT_FIELDS) <= set(data)


def test_reads_file_written_by_oidc_agent_426(store):
    put(store, 'fixture', OIDC_AGENT_426_FILE)
    account = store.load('fixture', OIDC_AGENT_426_PASSWORD)
    assert account['client_id'] == 'fixture-client'
    assert account['refresh_token'] == 'fixture-rt'
    assert account['oidc_tokens'] == {'created_at': 1700000000, 'source': 'fixture'}


def test_reads_oidc_agent_5_json_and_keeps_unknown_keys(store):
    salt = os.urandom(16)
    key = file_mod._Key(salt, *derive(PASSWORD, salt))
    v5 = {'name': 'v5', 'client_name': 'x', 'issuer': 'https://five.example/',
          'mytoken_url': '', 'config_endpoint': '', 'client_id': 'c5', 'client_secret': 's5',
          'refresh_token': 'rt5', 'cert_path': '', 'auth_scope': 'openid profile',
          'refresh_scope': 'openid', 'audience': '', 'oauth': 0, 'uses_pub_client': 0,
          'mytoken_profile': {}, 'redirect_uris': ['http://localhost:4242'],
          'username': '', 'password': '', 'future_key': [1, 2, 3]}
    content = file_mod.encrypt_account_bytes(json.dumps(v5).encode(), key)
    content = content.replace(b'version: 4.2.6', b'version: 5.2.3')
    put(store, 'v5', content)
    account = store.load('v5', PASSWORD)
    assert account['issuer_url'] == 'https://five.example/'
    assert account['scope'] == account['auth_scope'] == 'openid profile'

    def rotate(acc):
        acc['refresh_token'] = 'rt5-rotated'
        return acc, 'done'

    assert store.update('v5', PASSWORD, rotate) == 'done'
    with open(store.path('v5'), 'rb') as f:
        lines = f.read().decode().split('\n')
    _k, _h = derive(PASSWORD, base64.b64decode(lines[2]))
    plaintext = nacl.secret.SecretBox(_k).decrypt(base64.b64decode(lines[4]), base64.b64decode(lines[1]))
    data = json.loads(plaintext)
    assert data['refresh_token'] == 'rt5-rotated'
    for key_name in ('future_key', 'refresh_scope', 'mytoken_profile', 'issuer', 'oauth'):
        assert data[key_name] == v5[key_name]
    assert data['scope'] == data['auth_scope'] == 'openid profile'


def test_trailing_newline_is_accepted(store, saved_file):
    put(store, 'nl', saved_file + b'\n')
    assert store.load('nl', PASSWORD)['client_id'] == 'client-1'


def test_scope_and_auth_scope_stay_one_value():
    account = Account(sample_account())
    account['auth_scope'] = 'openid'
    assert account['scope'] == 'openid'
    account['scope'] = ['openid', 'email']
    assert account['auth_scope'] == 'openid email'
    data = account._to_file_json('x')
    assert data['scope'] == data['auth_scope'] == 'openid email'


def test_issuer_url_is_written_with_trailing_slash():
    # oidc-agent 4.2.6 builds ISSUER_URL + '.well-known/openid-configuration'.
    for given, written in (('https://kc.example/realms/x', 'https://kc.example/realms/x/'),
                           ('https://iam.example/', 'https://iam.example/'), ('', '')):
        assert Account(issuer_url=given)._to_file_json('x')['issuer_url'] == written


def test_repr_hides_secrets():
    account = Account(sample_account(password='op-password', access_token='at-value'))
    for text in (repr(account), str(account)):
        for secret in ('client-secret-value', 'refresh-token-value-1', 'op-password',
                       'at-value'):
            assert secret not in text
        assert 'client-1' in text
        assert 'refresh_token=<set>' in text


# --- errors never touch the file -----------------------------------------------------------

def test_wrong_password(store, saved_file):
    path = put(store, 'acct', saved_file)
    before = snapshot(path)
    with pytest.raises(WrongPasswordError) as exc:
        store.load('acct', 'not the password')
    msg = str(exc.value)
    assert "'acct'" in msg and path in msg and 'not the password' not in msg
    assert exc.value.account == 'acct' and exc.value.path == path
    assert isinstance(exc.value, OidcTokensError)
    with pytest.raises(WrongPasswordError):
        store.update('acct', 'not the password', lambda a: pytest.fail('callback ran'))
    assert snapshot(path) == before
    assert temp_files(store) == []


def _mutations(content):
    text = content.decode()
    lines = text.split('\n')
    ct = bytearray(base64.b64decode(lines[4]))
    ct[20] ^= 1
    tampered = lines[:4] + [base64.b64encode(bytes(ct)).decode()] + lines[5:]
    return {
        'empty': (b'', CorruptAccountError),
        'truncated-1': (content[:1], CorruptAccountError),
        'truncated-half': (content[:len(content) // 2], CorruptAccountError),
        'truncated-last-line': (content[:-5], CorruptAccountError),
        'no-version-line': ('\n'.join(lines[:6]).encode(), CorruptAccountError),
        'eight-lines': ((text + '\nextra').encode(), CorruptAccountError),
        'bad-base64': ('\n'.join(lines[:1] + ['!!!notbase64!!!'] + lines[2:]).encode(),
                       CorruptAccountError),
        'length-mismatch': ('\n'.join(['999'] + lines[1:]).encode(), CorruptAccountError),
        'binary': (b'\x00\xff' * 50, CorruptAccountError),
        'tampered-ciphertext': ('\n'.join(tampered).encode(), CorruptAccountError),
        'crlf': (text.replace('\n', '\r\n').encode(), UnsupportedFormatError),
        'old-version': (text.replace('version: 4.2.6', 'version: 2.0.9').encode(),
                        UnsupportedFormatError),
        'other-params': (text.replace('24:16:16:32:1:2:67108864:2',
                                      '24:16:16:32:1:3:268435456:2').encode(),
                         UnsupportedFormatError),
        'hex-format': (b'56:aabbcc:ddeeff:00112233', UnsupportedFormatError),
        'gpg': (b'-----BEGIN PGP MESSAGE-----\n\nhQEMA...\n-----END PGP MESSAGE-----\n',
                UnsupportedFormatError),
    }


MUTATIONS = ['empty', 'truncated-1', 'truncated-half', 'truncated-last-line', 'no-version-line',
             'eight-lines', 'bad-base64', 'length-mismatch', 'binary', 'tampered-ciphertext',
             'crlf', 'old-version', 'other-params', 'hex-format', 'gpg']


@pytest.mark.parametrize('case', MUTATIONS)
def test_corrupt_truncated_and_foreign_files(store, saved_file, case):
    content, error = _mutations(saved_file)[case]
    path = put(store, 'broken', content)
    before = snapshot(path)
    with pytest.raises(error) as exc:
        store.load('broken', PASSWORD)
    assert "'broken'" in str(exc.value) and path in str(exc.value)
    assert PASSWORD not in str(exc.value)
    with pytest.raises(error):
        store.update('broken', PASSWORD, lambda a: (a, None))
    assert snapshot(path) == before
    assert temp_files(store) == []
    # Structural damage is found before the 64 MiB derivation.
    assert store.kdf_count == (2 if case == 'tampered-ciphertext' else 0)


def test_plaintext_not_an_object(store):
    salt = os.urandom(16)
    key = file_mod._Key(salt, *derive(PASSWORD, salt))
    for i, plaintext in enumerate((b'[1, 2]', b'not json at all')):
        put(store, 'odd%d' % i, file_mod.encrypt_account_bytes(plaintext, key))
        with pytest.raises(CorruptAccountError, match='JSON'):
            store.load('odd%d' % i, PASSWORD)


def test_missing_account(store):
    with pytest.raises(AccountNotFoundError, match="'nope'"):
        store.load('nope', PASSWORD)
    with pytest.raises(AccountNotFoundError):
        store.update('nope', PASSWORD, lambda a: (a, None))
    assert not os.path.exists(store.config_dir)  # a failed update creates nothing
    assert store.exists('nope') is False
    assert store.delete('nope') is False


def test_symlinked_account_file_is_refused(store, saved_file, tmp_path):
    target = tmp_path / 'elsewhere'
    target.write_bytes(saved_file)
    store.ensure_dir()
    os.symlink(str(target), store.path('link'))
    with pytest.raises(StorePermissionError, match='symbolic link'):
        store.load('link', PASSWORD)


def test_retry_reads_file_rewritten_in_place(tmp_path, saved_file):
    # oidc-agent rewrites in place (truncate + write) without our lock.
    st = AccountStore(str(tmp_path / 'd'), read_retries=4)
    path = put(st, 'inplace', saved_file[:30])

    def finish():
        time.sleep(0.12)
        with open(path, 'wb') as f:
            f.write(saved_file)

    t = threading.Thread(target=finish)
    t.start()
    try:
        assert st.load('inplace', PASSWORD)['client_id'] == 'client-1'
    finally:
        t.join()


# --- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize('name', [
    '', '.', '..', '../x', 'a/b', '/etc/passwd', 'x/../y', '.hidden', 'a\x00b', 'a\\b',
    'issuer.config', 'pubclients.config', 'any.config', 'config', 'x.clientconfig',
    'x.clientconfig12', 'x.clientconfig.bak', 'x.stats', 'x.log', 'a' * 129, 'sp ace',
    'new\nline', 'a..b', 'job1\n', 'job1\r\n', '\njob1',
])
def test_invalid_names(store, name):
    with pytest.raises(InvalidAccountNameError):
        validate_name(name)
    with pytest.raises(InvalidAccountNameError):
        store.path(name)
    with pytest.raises(InvalidAccountNameError):
        store.load(name, PASSWORD)
    with pytest.raises(InvalidAccountNameError):
        store.save(name, sample_account(), PASSWORD)
    with pytest.raises(InvalidAccountNameError):
        store.delete(name)
    with pytest.raises(InvalidAccountNameError):
        with store.locked(name):
            pass
    assert not os.path.exists(store.config_dir) or os.listdir(store.config_dir) == []


@pytest.mark.parametrize('name', ['work', 'user@iam.example', 'a.b-c_d', 'x' * 128, 'A1',
                                  'configs', 'x.configx', 'x.lock'])
def test_valid_names(name):
    assert validate_name(name) == name


def test_invalid_name_type():
    with pytest.raises(InvalidAccountNameError):
        validate_name(None)


# --- modes, directory, atomic writes -------------------------------------------------------

@pytest.mark.parametrize('umask', [0o000, 0o022, 0o077])
def test_modes_under_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        st = AccountStore(str(tmp_path / 'a' / 'b' / 'oidc-agent'))
        st.save('m', sample_account(), PASSWORD)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(st.config_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(st.path('m')).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(st._lock_path('m')).st_mode) == 0o600
    assert os.stat(st.path('m')).st_uid == os.geteuid()
    assert st.dir_changed is True


def test_existing_loose_dir_is_tightened_and_reported(tmp_path):
    d = tmp_path / 'loose'
    d.mkdir()
    os.chmod(str(d), 0o755)
    st = AccountStore(str(d))
    assert st.ensure_dir() is True
    assert st.dir_changed is True
    assert 'from 0755 to 0700' in st.dir_messages[0]
    assert stat.S_IMODE(os.stat(str(d)).st_mode) == 0o700
    st2 = AccountStore(str(d))
    assert st2.ensure_dir() is False
    assert st2.dir_changed is False


def test_file_mode_is_0600_even_if_existing_file_was_0644(store, saved_file):
    path = put(store, 'loose', saved_file, mode=0o644)
    store.update('loose', PASSWORD, lambda a: (None, None))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # no write, untouched
    store.update('loose', PASSWORD, lambda a: (a, 'rewritten'))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to chown')
def test_directory_of_another_user_is_refused(tmp_path):
    d = tmp_path / 'theirs'
    d.mkdir(mode=0o700)
    os.chown(str(d), 4242, 4242)
    st = AccountStore(str(d))
    with pytest.raises(StorePermissionError, match='uid 4242'):
        st.save('x', sample_account(), PASSWORD)
    assert os.listdir(str(d)) == []


def test_atomic_write_leaves_no_temp_and_cleans_stale_ones(store):
    store.save('a', sample_account(), PASSWORD)
    assert temp_files(store) == []
    stale = os.path.join(store.config_dir, '.a.tmp-0123456789abcdef')
    other = os.path.join(store.config_dir, '.a.tmp-0123456789abcdef.tmp-0123456789abcdef')
    foreign = os.path.join(store.config_dir, '.b.tmp-0123456789abcdef')
    for p in (stale, other, foreign):
        with open(p, 'w') as f:
            f.write('half')
    assert store.list() == ['a']  # temp files are never listed
    store.update('a', PASSWORD, lambda acc: (acc, None))
    assert not os.path.exists(stale)
    assert os.path.exists(other) and os.path.exists(foreign)  # not account a's
    assert sorted(temp_files(store)) == sorted(os.path.basename(p) for p in (other, foreign))


def test_failed_rename_keeps_old_file_and_no_temp(store, monkeypatch):
    store.save('a', sample_account(), PASSWORD)
    before = snapshot(store.path('a'))

    def boom(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'replace', boom)
    with pytest.raises(StorePermissionError) as info:
        store.update('a', PASSWORD, lambda acc: (acc, 'x'))
    assert "Account 'a' was not written" in str(info.value) and 'No space left on device' in str(info.value)
    monkeypatch.undo()
    assert snapshot(store.path('a')) == before
    assert temp_files(store) == []


def test_fsync_of_file_and_directory(store, monkeypatch):
    calls = []
    real = os.fsync

    def spy(fd):
        calls.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, 'fsync', spy)
    store.save('a', sample_account(), PASSWORD)
    assert calls == [False, True]


def test_list_and_delete(store, saved_file):
    store.save('one', sample_account(), PASSWORD)
    put(store, 'two', saved_file)
    put(store, 'issuer.config', b'https://x/ one\n')
    put(store, 'foo.clientconfig', b'{}')
    put(store, 'x.log', b'')
    os.mkdir(os.path.join(store.config_dir, 'adir'))
    assert store.list() == ['one', 'two']
    assert store.exists('one') and not store.exists('adir')
    assert store.delete('one') is True
    assert not os.path.exists(store.path('one'))
    assert not os.path.exists(store._lock_path('one'))
    assert store.list() == ['two']


def test_save_overwrite_false(store):
    store.save('a', sample_account(), PASSWORD)
    with pytest.raises(AccountExistsError):
        store.save('a', sample_account(), PASSWORD, overwrite=False)


# --- update --------------------------------------------------------------------------------

def test_update_derives_once_reuses_salt_and_fresh_nonce(store):
    store.save('a', sample_account(), PASSWORD)
    with open(store.path('a'), 'rb') as f:
        old = f.read().split(b'\n')
    store.kdf_count = 0
    seen = []

    def rotate(account):
        seen.append(repr(account))
        account['refresh_token'] = 'refresh-token-value-2'
        account.meta['refreshed_at'] = 1700000100
        # The new RT is on disk before the caller gets the result: checked by the caller below.
        return account, 'new-access-token'

    assert store.update('a', PASSWORD, rotate) == 'new-access-token'
    assert store.kdf_count == 1
    with open(store.path('a'), 'rb') as f:
        new = f.read().split(b'\n')
    assert new[2] == old[2] and new[5] == old[5]   # same salt and hash key
    assert new[1] != old[1]                        # fresh nonce
    account = store.load('a', PASSWORD)
    assert account['refresh_token'] == 'refresh-token-value-2'
    assert account['oidc_tokens'] == {'created_at': 1700000000, 'source': 'token_exchange',
                                      'refreshed_at': 1700000100}
    assert 'refresh-token-value-1' not in seen[0]


def test_update_without_change_does_not_write(store):
    store.save('a', sample_account(), PASSWORD)
    before = snapshot(store.path('a'))
    assert store.update('a', PASSWORD, lambda acc: (None, 42)) == 42
    assert snapshot(store.path('a')) == before


def test_update_can_delete_under_the_lock(store):
    store.save('a', sample_account(), PASSWORD)
    seen = []
    assert store.update('a', PASSWORD, lambda acc: (AccountStore.DELETE, seen.append(acc['refresh_token']))) is None
    assert seen == ['refresh-token-value-1']
    assert not store.exists('a') and store.list() == [] and temp_files(store) == []
    assert not os.path.exists(store._lock_path('a'))


def test_update_callback_error_writes_nothing_and_releases_lock(store):
    store.save('a', sample_account(), PASSWORD)
    before = snapshot(store.path('a'))

    class Boom(Exception):
        pass

    def fail(account):
        account['refresh_token'] = 'changed'
        raise Boom('provider said no')

    with pytest.raises(Boom):
        store.update('a', PASSWORD, fail)
    assert snapshot(store.path('a')) == before
    with store.locked('a', timeout=0.5):
        pass


def test_update_of_a_missing_account_leaves_no_lock_file(store):
    store.ensure_dir()
    with pytest.raises(AccountNotFoundError):
        store.update('gone', PASSWORD, lambda acc: (acc, None))
    assert os.listdir(store.config_dir) == []


def _update_in_thread(config_dir, name, password, fn):
    """Run AccountStore.update in a thread: (thread, store, outcome dict)."""
    other = AccountStore(config_dir=config_dir)
    outcome = {}

    def run():
        try:
            outcome['result'] = other.update(name, password, fn)
        except Exception as e:   # reported to the test through outcome
            outcome['error'] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, other, outcome


def _wait_for(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_update_derives_its_key_while_another_process_holds_the_lock(store):
    """Concurrent updates do not queue behind each other's Argon2id: the key is derived before the lock."""
    store.save('a', sample_account(), PASSWORD)

    def rotate(account):
        account['refresh_token'] = 'refresh-token-value-2'
        return account, 'done'

    with store.locked('a'):
        thread, other, outcome = _update_in_thread(store.config_dir, 'a', PASSWORD, rotate)
        assert _wait_for(lambda: other.kdf_count == 1)
        time.sleep(0.2)
        assert outcome == {} and thread.is_alive()     # derived, and now waiting for the lock
    thread.join(30)
    assert outcome == {'result': 'done'} and other.kdf_count == 1
    assert store.load('a', PASSWORD)['refresh_token'] == 'refresh-token-value-2'


def test_update_derives_again_when_the_file_got_a_new_salt_meanwhile(store):
    store.save('a', sample_account(), PASSWORD)

    def rotate(account):
        account['refresh_token'] = 'refresh-token-value-3'
        return account, account['client_id']

    with store.locked('a'):
        thread, other, outcome = _update_in_thread(store.config_dir, 'a', PASSWORD, rotate)
        assert _wait_for(lambda: other.kdf_count == 1)
        # What oidc-agent or a save() does: the whole file anew, under a fresh salt and other content.
        account = sample_account()
        account['client_id'] = 'client-2'
        salt = os.urandom(file_mod.SALT_BYTES)
        store._write_atomic('a', file_mod.encrypt_account_bytes(
            file_mod.plaintext_from_account(account, 'a'), file_mod.derive_key(PASSWORD.encode(), salt)))
    thread.join(30)
    assert outcome == {'result': 'client-2'} and other.kdf_count == 2
    reloaded = store.load('a', PASSWORD)
    assert reloaded['refresh_token'] == 'refresh-token-value-3' and reloaded['client_id'] == 'client-2'
    with open(store.path('a'), 'rb') as f:
        assert base64.b64decode(f.read().split(b'\n')[2]) == salt


def test_update_with_a_wrong_password_fails_before_taking_the_lock(store):
    store.save('a', sample_account(), PASSWORD)
    before = snapshot(store.path('a'))
    with store.locked('a'):
        thread, other, outcome = _update_in_thread(store.config_dir, 'a', 'not the password', lambda acc: (acc, 1))
        thread.join(30)
        assert isinstance(outcome.get('error'), WrongPasswordError)
    assert snapshot(store.path('a')) == before


def test_change_password(store):
    store.save('a', sample_account(), PASSWORD)
    store.change_password('a', PASSWORD, 'new password')
    with pytest.raises(WrongPasswordError):
        store.load('a', PASSWORD)
    assert store.load('a', 'new password')['client_id'] == 'client-1'


# --- locking across processes --------------------------------------------------------------

def _hold_lock(config_dir, name, seconds, ready):
    st = AccountStore(config_dir)
    with st.locked(name):
        ready.set()
        time.sleep(seconds)


def _increment(config_dir, name, times, errors):
    try:
        st = AccountStore(config_dir)

        def bump(account):
            account.meta['counter'] = account.meta.get('counter', 0) + 1
            time.sleep(0.01)  # widen the read-modify-write window
            return account, None

        for _round in range(times):
            st.update(name, PASSWORD, bump)
    except BaseException as e:  # pragma: no cover - reported to the parent
        errors.put(repr(e))


def _ctx():
    return multiprocessing.get_context('fork')


def test_lock_serialises_two_processes(store):
    store.save('c', sample_account(), PASSWORD)
    ctx = _ctx()
    errors = ctx.Queue()
    procs = [ctx.Process(target=_increment, args=(store.config_dir, 'c', 4, errors))
             for _round in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert errors.empty()
    assert store.load('c', PASSWORD).meta['counter'] == 8   # no lost update
    assert temp_files(store) == []


def test_lock_waits_and_times_out(store):
    store.ensure_dir()
    ctx = _ctx()
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(store.config_dir, 'w', 1.0, ready))
    p.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        with pytest.raises(LockTimeoutError, match="'w'"):
            with store.locked('w', timeout=0.2):
                pass
        assert time.monotonic() - start < 0.9
        with store.locked('w', timeout=10):
            waited = time.monotonic() - start
        assert waited >= 0.5
    finally:
        p.join(10)


def _hold_then_unlink(config_dir, name, seconds, ready):
    st = AccountStore(config_dir)
    with st.locked(name) as lock_path:
        ready.set()
        time.sleep(seconds)
        os.unlink(lock_path)   # what delete() does before it releases the lock


def test_waiter_retakes_a_lock_file_deleted_meanwhile(store):
    import fcntl
    store.ensure_dir()
    ctx = _ctx()
    ready = ctx.Event()
    p = ctx.Process(target=_hold_then_unlink, args=(store.config_dir, 'd', 0.4, ready))
    p.start()
    assert ready.wait(10)
    with store.locked('d', timeout=10) as lock_path:
        # We hold the lock of the file now at the path, not of the deleted one.
        fd = os.open(lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    p.join(10)
    assert p.exitcode == 0


def test_delete_waits_for_the_lock_holder(store):
    store.save('d', sample_account(), PASSWORD)
    ctx = _ctx()
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(store.config_dir, 'd', 0.5, ready))
    p.start()
    assert ready.wait(10)
    start = time.monotonic()
    assert store.delete('d') is True
    assert time.monotonic() - start >= 0.3
    p.join(10)
    assert store.list() == [] and os.listdir(store.config_dir) == []


# --- passwords -----------------------------------------------------------------------------

def test_password_sources(tmp_path, monkeypatch):
    assert resolve_password(password='direct') == 'direct'
    pw_file = tmp_path / 'pw'
    pw_file.write_bytes(b'from file\nsecond line\n')
    pw_file.chmod(0o600)
    assert resolve_password(password_file=str(pw_file)) == 'from file'
    monkeypatch.setenv('MY_PW', 'from env')
    assert resolve_password(password_env='MY_PW') == 'from env'
    assert resolve_password(password_command="printf 'from cmd\\n'") == 'from cmd'
    assert resolve_password(password_command="printf 'two\\n\\n'") == 'two\n'  # one newline
    assert resolve_password(password_command=['printf', '%s', 'list form']) == 'list form'
    # No shell: $HOME is not expanded.
    assert resolve_password(password_command='echo $HOME') == '$HOME'


def test_password_source_errors(tmp_path, monkeypatch):
    with pytest.raises(PasswordSourceError, match='No encryption password'):
        resolve_password()
    with pytest.raises(PasswordSourceError, match='only one'):
        resolve_password(password='a', password_env='B')
    with pytest.raises(PasswordSourceError, match='empty'):
        resolve_password(password='')
    with pytest.raises(PasswordSourceError, match='NUL'):
        resolve_password(password='a\x00b')
    monkeypatch.delenv('UNSET_PW_VAR', raising=False)
    with pytest.raises(PasswordSourceError, match='UNSET_PW_VAR'):
        resolve_password(password_env='UNSET_PW_VAR')
    with pytest.raises(PasswordSourceError, match='Cannot read'):
        resolve_password(password_file=str(tmp_path / 'missing'))
    with pytest.raises(PasswordSourceError, match='Cannot run'):
        resolve_password(password_command='/nonexistent/binary')
    with pytest.raises(PasswordSourceError) as exc:
        resolve_password(password_command="sh -c 'echo leaked-secret; echo leaked-err >&2; exit 3'")
    assert 'exit status 3' in str(exc.value)
    assert 'leaked' not in str(exc.value)
    with pytest.raises(PasswordSourceError, match='empty'):
        resolve_password(password_command='true')


def test_password_file_others_can_read_is_refused(tmp_path):
    """A password kept where group or others can read it protects nothing: refused, not used."""
    pw_file = tmp_path / 'pw'
    pw_file.write_bytes(b'exposed password\n')
    for mode in (0o644, 0o640, 0o604, 0o620):
        pw_file.chmod(mode)
        with pytest.raises(PasswordSourceError, match='mode %04o' % mode) as exc:
            resolve_password(password_file=str(pw_file))
        assert 'exposed' not in str(exc.value)


def test_password_file_planted_as_fifo_fails_without_blocking(tmp_path):
    fifo = tmp_path / 'pw'
    os.mkfifo(str(fifo), 0o600)
    start = time.monotonic()
    with pytest.raises(PasswordSourceError, match='not a regular file'):
        resolve_password(password_file=str(fifo))
    assert time.monotonic() - start < 5


@pytest.mark.skipif(os.geteuid() != 0, reason='making a file of another user needs root')
def test_password_file_of_another_user_is_refused(tmp_path):
    pw_file = tmp_path / 'pw'
    pw_file.write_bytes(b'planted password\n')
    pw_file.chmod(0o600)
    os.chown(str(pw_file), 65534, 65534)
    with pytest.raises(PasswordSourceError, match='belongs to uid 65534'):
        resolve_password(password_file=str(pw_file))


def test_password_is_never_in_error_messages(store):
    store.save('a', sample_account(), PASSWORD)
    with pytest.raises(WrongPasswordError) as exc:
        store.load('a', 'hunter2-typo')
    assert 'hunter2' not in str(exc.value)
    with pytest.raises(PasswordSourceError):
        store.load('a', '')


def test_vault_like_password_object(store):
    class VaultText(object):
        def __str__(self):
            return PASSWORD

    store.save('a', sample_account(), VaultText())
    assert store.load('a', PASSWORD.encode())['client_id'] == 'client-1'


# --- directory choice and dependency ---------------------------------------------------------

def test_default_config_dir_order(tmp_path, monkeypatch):
    home = tmp_path / 'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setenv('OIDC_CONFIG_DIR', str(tmp_path / 'envdir'))
    assert default_config_dir(str(tmp_path / 'opt')) == str(tmp_path / 'opt')
    assert default_config_dir() == str(tmp_path / 'envdir')
    monkeypatch.delenv('OIDC_CONFIG_DIR')
    assert default_config_dir() == str(home / '.config' / 'oidc-agent')
    (home / '.oidc-agent').mkdir()
    assert default_config_dir() == str(home / '.oidc-agent')
    (home / '.config' / 'oidc-agent').mkdir(parents=True)
    assert default_config_dir() == str(home / '.config' / 'oidc-agent')
    assert AccountStore().config_dir == str(home / '.config' / 'oidc-agent')


def test_missing_pynacl_is_a_clear_error(store, monkeypatch):
    monkeypatch.setattr(file_mod.NACL, 'available', False)
    monkeypatch.setattr(file_mod.NACL, 'error', 'ImportError: No module named nacl')
    with pytest.raises(MissingDependencyError, match='PyNaCl'):
        store.save('a', sample_account(), PASSWORD)
    assert not os.path.exists(store.config_dir) or store.list() == []


@pytest.mark.parametrize('module', [store_mod, file_mod, _passwords, _private_files], ids=lambda m: m.__name__)
def test_module_has_no_http(module):
    with open(module.__file__) as f:
        source = f.read()
    assert '_oauth' not in source and 'requests' not in source and 'urllib' not in source
    assert sys.version_info >= (3, 6)
