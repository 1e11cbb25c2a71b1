"""Concurrency and crashes against a provider that rotates refresh tokens and revokes the whole
grant when a spent one is replayed (node-oidc-provider: rotateRefreshToken + reuse detection).

1. 50 processes ask for an access token of one account at the same moment, 20 times in a row,
   through ``_tokens.access_token`` (what the module oidc_token, the lookup and the refresher call).
   Access tokens live 4 s and each process wants 2 s of validity, so the account's kept token keeps
   running out while the 50 wait for the account's lock. Checked: no process fails; every token
   handed out is active at the provider and has the validity asked for; every refresh was needed
   (the kept token had less than min_valid_period left when the refresh was decided, under the
   lock); the provider saw exactly those refreshes and refused none (no refresh token was ever
   replayed); after each round the refresh token on disk is the provider's current one.

2. kill -9 at random moments, 100 times: of processes refreshing (and so rewriting) an account in a
   loop, and of the on-host refresher's loop. After each kill the account file decrypts, and the
   refresh token on disk is the provider's current one, except when the kill fell between the
   provider's rotation and the rename of the new file: then the provider has rotated and the new
   refresh token died with the process. That window cannot be closed by any client; it is counted
   separately, and the test checks that it is the only way to lose the current refresh token.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _oauth, _options, _tokens
from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from evidence import LEDGER, RefresherJob, exchange_account, introspect, rt_active, stat_counts, tree_mode_violations

SUITE = 'concurrency'
PASSWORD = 'concurrency-suite password'
AT_TTL = 4
MIN_VALID = 2
PROCESSES = int(os.environ.get('OIDC_EVIDENCE_PROCESSES', '50'))
ROUNDS = int(os.environ.get('OIDC_EVIDENCE_ROUNDS', '20'))
WRITER_KILLS = int(os.environ.get('OIDC_EVIDENCE_WRITER_KILLS', '70'))
REFRESHER_KILLS = int(os.environ.get('OIDC_EVIDENCE_REFRESHER_KILLS', '30'))

CTX = multiprocessing.get_context('fork')
# node-oidc-provider's opaque access tokens: 43 base64url characters.
WHOLE_TOKEN = re.compile(r'^[A-Za-z0-9_-]{43}$')


@pytest.fixture(scope='module')
def op(provider_factory):
    return provider_factory(at_ttl=AT_TTL)


def client_options():
    return dict(issuer=None, client_id=None, client_secret=None, auth_method=None, ca_path=None,
                validate_certs=True, timeout=20, retries=3, allow_insecure_http=False).get


# -- 50 processes at once ----------------------------------------------------------------------------

def _ask(config_dir, name, barrier, results, rs):
    """One process: wait for the others, then ask for a token as oidc_token does."""
    decisions = []
    resource_server = _oauth.OAuthClient(rs['issuer'], rs['client_id'], rs['client_secret'], retries=3)

    def client_for(account):
        # Called under the account's lock only when a refresh was decided: record what it was decided on.
        decisions.append({'t': time.time(), 'kept_expires_at': account.meta.get('access_token_expires_at')})
        return _options.oauth_client(client_options(), account)

    try:
        store = AccountStore(config_dir)
        barrier.wait(60)
        started = time.time()
        result = _tokens.access_token(store, name, PASSWORD, client_for, min_valid_period=MIN_VALID)
        returned = time.time()
        # What a resource server would do with it, right away.
        active = resource_server.introspect(result['access_token'])['active']
        results.put({'ok': True, 'started': started, 'returned': returned, 'token': result['access_token'],
                     'expires_at': result['expires_at'], 'refreshed': result['refreshed'], 'decisions': decisions,
                     'kdf': store.kdf_count, 'active': active})
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put({'ok': False, 'error': '%s: %s' % (type(exc).__name__, exc), 'decisions': decisions})


def test_fifty_processes_twenty_times_one_account(op, tmp_path):
    config_dir = str(tmp_path / 'accounts')
    name = 'shared'
    exchange_account(op, config_dir, name, PASSWORD)
    store = AccountStore(config_dir)
    totals = {'calls': 0, 'failures': 0, 'refreshes_needed': 0, 'refreshes_at_provider': 0, 'refused_at_provider': 0,
              'unneeded_refreshes': 0, 'short_tokens': 0, 'inactive_tokens': 0, 'distinct_tokens': 0}
    round_seconds = []
    plain = op.client('plain-client')
    rs = {'issuer': op.issuer, 'client_id': plain['client_id'], 'client_secret': plain['client_secret']}
    for round_ in range(ROUNDS):
        before = stat_counts(op)
        barrier = CTX.Barrier(PROCESSES)
        results = CTX.Queue()
        procs = [CTX.Process(target=_ask, args=(config_dir, name, barrier, results, rs)) for _i in range(PROCESSES)]
        started = time.monotonic()
        for proc in procs:
            proc.start()
        out = [results.get(timeout=300) for _proc in procs]
        for proc in procs:
            proc.join(60)
        round_seconds.append(time.monotonic() - started)
        after = stat_counts(op)

        failures = [r['error'] for r in out if not r['ok']]
        decisions = [d for r in out for d in r['decisions']]
        unneeded = [d for d in decisions
                    if d['kept_expires_at'] is not None and d['kept_expires_at'] - d['t'] >= MIN_VALID]
        good = [r for r in out if r['ok']]
        short = [r for r in good if r['expires_at'] - r['returned'] < MIN_VALID - 1]
        tokens = set(r['token'] for r in good)
        inactive = [r for r in good if not r['active']]
        refreshes = after['refresh'] - before['refresh']
        totals['calls'] += len(out)
        totals['failures'] += len(failures)
        totals['refreshes_needed'] += len(decisions) - len(unneeded)
        totals['unneeded_refreshes'] += len(unneeded)
        totals['refreshes_at_provider'] += refreshes
        totals['refused_at_provider'] += after['refresh_failed'] - before['refresh_failed']
        totals['short_tokens'] += len(short)
        totals['inactive_tokens'] += len(inactive)
        totals['distinct_tokens'] += len(tokens)

        assert not failures, failures[:3]
        assert all(proc.exitcode == 0 for proc in procs)
        assert not unneeded, 'refreshed although the kept token was good enough: %s' % unneeded[:3]
        assert refreshes == len(decisions), 'the provider saw %d refreshes, the processes decided %d' % (
            refreshes, len(decisions))
        assert after['refresh_failed'] == before['refresh_failed'], 'a refresh token was refused (replayed?)'
        assert not short, 'handed out tokens with less than min_valid_period left'
        assert not inactive, 'handed out tokens the provider does not know'
        # Every token handed out after a refresh is a new one; the others are the kept one, reused.
        assert len(tokens) <= len(decisions) + 1
        # The grant is alive: the refresh token on disk is the provider's current one.
        assert rt_active(op, store.load(name, PASSWORD)['refresh_token'])
        assert tree_mode_violations(config_dir) == []
    LEDGER.add(SUITE, 'rounds of %d processes' % PROCESSES, ROUNDS)
    for key, value in totals.items():
        LEDGER.add(SUITE, 'round: %s' % key.replace('_', ' '), value)
    LEDGER.row(SUITE, test='%d processes x %d rounds, one account' % (PROCESSES, ROUNDS), at_ttl=AT_TTL,
               min_valid_period=MIN_VALID, median_round_seconds=round(sorted(round_seconds)[len(round_seconds) // 2], 2),
               **totals)
    LEDGER.note(SUITE, 'each of the %d processes derives the account key once, before it waits for the account '
                'lock, so the derivations of a round run side by side on every core' % PROCESSES)
    assert totals['refreshes_at_provider'] == totals['refreshes_needed'] > 0


# -- kill -9 of writers ------------------------------------------------------------------------------

def _writer(config_dir, name, marks):
    """Refresh (and so rewrite) the account in a loop, marking the steps on a pipe:
    R before the refresh request leaves, r when its answer is in, W when the new file is in place."""
    real_write = AccountStore._write_atomic

    def write(self, *args, **kwargs):
        result = real_write(self, *args, **kwargs)
        os.write(marks, b'W')
        return result
    AccountStore._write_atomic = write      # in this forked child only

    def client_for(account):
        client = _options.oauth_client(client_options(), account)
        real = client.refresh

        def refresh(*args, **kwargs):
            os.write(marks, b'R')
            try:
                return real(*args, **kwargs)
            finally:
                os.write(marks, b'r')
        client.refresh = refresh
        return client

    store = AccountStore(config_dir)
    while True:
        _tokens.access_token(store, name, PASSWORD, client_for, force=True)


PHASES = {b'': 'killed before the first refresh', b'R': 'killed with a request in flight',
          b'r': 'killed with the answer in, before the write', b'W': 'killed after a write'}


def phase(marks, counts):
    name = PHASES[marks[-1:]]
    counts[name] = counts.get(name, 0) + 1


def in_refresh_window(marks):
    """True when the last step marked was a refresh whose new file never got in place."""
    return marks[-1:] in (b'R', b'r')


def _drain(fd):
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b''.join(chunks)


def rt_lost_after_kill(op, account, marks, counts):
    """Count whether the RT on disk after a kill is the provider's current one. Not current is only acceptable
    when the kill fell after a refresh left and before its file was in place; True then (the grant is lost)."""
    if rt_active(op, account['refresh_token']):
        counts['rt_current'] += 1
        return False
    in_window = in_refresh_window(marks)
    counts['rt_lost_in_window' if in_window else 'rt_lost_outside_window'] += 1
    assert in_window, 'the RT on disk is not current, but the kill was not in the refresh window: %r' % marks[-10:]
    return True


def record_kills(op, refused_before, counts, label, test):
    """The ledger's counts of a kill -9 test, and what every such test asserts: no replayed refresh token, every
    file decrypts, refreshes happened between the kills."""
    refused = stat_counts(op)['refresh_failed'] - refused_before
    LEDGER.add(SUITE, label, counts['kills'])
    LEDGER.add(SUITE, 'kills: account file does not decrypt', counts['kills'] - counts['decrypts'])
    LEDGER.add(SUITE, 'kills: RT on disk is the provider\'s current one', counts['rt_current'])
    LEDGER.add(SUITE, 'kills: RT lost in the refresh window (inherent)', counts['rt_lost_in_window'])
    LEDGER.add(SUITE, 'kills: RT lost outside the refresh window', counts['rt_lost_outside_window'])
    LEDGER.add(SUITE, 'kills: refresh tokens replayed (refused by the provider)', refused)
    LEDGER.row(SUITE, test=test, **counts)
    assert refused == 0
    assert counts['decrypts'] == counts['kills']
    assert counts['refreshes_completed'] > 0


def test_kill_minus_9_of_writers(op, tmp_path):
    config_dir = str(tmp_path / 'accounts')
    store = AccountStore(config_dir)
    rng = random.Random(20261123)
    counts = {'kills': 0, 'decrypts': 0, 'rt_current': 0, 'rt_lost_in_window': 0, 'rt_lost_outside_window': 0,
              'temp_files_left_max': 0, 'refreshes_completed': 0}
    generation = 0
    name = 'writer-0'
    exchange_account(op, config_dir, name, PASSWORD)
    refused_before = stat_counts(op)['refresh_failed']
    for kill in range(WRITER_KILLS):
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        pid = os.fork()
        if pid == 0:   # the writer
            os.close(read_fd)
            code = 0
            try:
                _oauth._METADATA_CACHE.clear()
                _writer(config_dir, name, write_fd)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(write_fd)
        seen = b''
        if kill % 5:
            # Most kills land in the writer's steady loop: after its first refresh request left.
            deadline = time.monotonic() + 10
            while b'R' not in seen and time.monotonic() < deadline:
                seen += _drain(read_fd)
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.25))
        else:
            # The others anywhere from the start (key derivation, discovery, the first refresh).
            time.sleep(rng.uniform(0.02, 0.45))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        marks = seen + _drain(read_fd)
        os.close(read_fd)
        counts['kills'] += 1
        counts['refreshes_completed'] += marks.count(b'W')
        phase(marks, counts)

        account = store.load(name, PASSWORD)      # raises if the file does not decrypt
        counts['decrypts'] += 1
        temps = [n for n in os.listdir(config_dir) if n.startswith('.%s.tmp-' % name)]
        counts['temp_files_left_max'] = max(counts['temp_files_left_max'], len(temps))
        assert len(temps) <= 1
        if rt_lost_after_kill(op, account, marks, counts):
            generation += 1
            name = 'writer-%d' % generation
            exchange_account(op, config_dir, name, PASSWORD)
    record_kills(op, refused_before, counts, 'kill -9 of writers', 'kill -9 of writers (refresh loop)')
    # The kills fell in every phase: before the first refresh, with a request in flight, with an
    # answer in hand but no new file yet, and after a new file was in place.
    assert counts['killed after a write'] > 0 and counts['killed with a request in flight'] > 0


# -- kill -9 of the refresher ------------------------------------------------------------------------

def test_kill_minus_9_of_the_refresher(op, tmp_path):
    config_dir = str(tmp_path / 'accounts')
    store = AccountStore(config_dir)
    rng = random.Random(11232026)
    counts = {'kills': 0, 'decrypts': 0, 'rt_current': 0, 'rt_lost_in_window': 0, 'rt_lost_outside_window': 0,
              'token_file_absent': 0, 'token_file_fresh_and_active': 0, 'token_file_older_than_a_lifetime': 0,
              'refreshes_completed': 0}
    generation = 0
    name = 'refresher-0'
    exchange_account(op, config_dir, name, PASSWORD)
    refused_before = stat_counts(op)['refresh_failed']
    marks_file = str(tmp_path / 'marks')

    def new_job(generation):
        # min_valid_period near the tokens' lifetime: every pass refreshes, one pass about every 0.5 s.
        return RefresherJob(tmp_path / ('job-%d' % generation), config_dir, 'refresher-%d' % generation, PASSWORD,
                            min_valid_period=AT_TTL - 0.5, refresh_margin=1, retry_min=0.2, retry_max=0.5,
                            marks=marks_file)

    job = new_job(0)
    for kill in range(REFRESHER_KILLS):
        with open(marks_file, 'wb'):
            pass
        proc = job.start()
        if kill % 5:
            # Most kills land in the refresher's loop: after its first refresh request left.
            deadline = time.monotonic() + 15
            while os.path.getsize(marks_file) == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 1.0))
        else:
            # The others anywhere from the start (imports, configuration, key derivation).
            time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
        counts['kills'] += 1
        with open(marks_file, 'rb') as handle:
            marks = handle.read()
        counts['refreshes_completed'] += marks.count(b'W')
        phase(marks, counts)
        account = store.load(name, PASSWORD)
        counts['decrypts'] += 1
        # The bearer-token file is absent or holds a whole token; one written less than a lifetime ago is
        # active at the provider (a killed refresher cannot remove an older one: it just expires).
        token = job.token()
        if token is None:
            counts['token_file_absent'] += 1
        else:
            assert WHOLE_TOKEN.match(token), 'the bearer-token file holds a partial token'
            age = time.time() - os.stat(job.token_file).st_mtime
            if age < AT_TTL - 1:
                assert introspect(op, token)['active'], 'a fresh token in the bearer-token file is not active'
                counts['token_file_fresh_and_active'] += 1
            else:
                counts['token_file_older_than_a_lifetime'] += 1
        if rt_lost_after_kill(op, account, marks, counts):
            generation += 1
            name = 'refresher-%d' % generation
            exchange_account(op, config_dir, name, PASSWORD)
            job = new_job(generation)
    record_kills(op, refused_before, counts, 'kill -9 of the refresher', 'kill -9 of oidc-tokens-refresher run')
