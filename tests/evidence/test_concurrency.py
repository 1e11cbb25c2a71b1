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

3. Two processes spend one account's refresh token at the same moment through ``AccountStore.update``:
   the second spends the rotated token the first put on disk, and the grant stays alive. A control
   shows that the provider really revokes the grant on a replay, so these tests would catch one.

4. kill -9 of the store's own writers (update, save, a fast loop of locked writes), no provider, 60
   times: the file always decrypts (also with oidc-agent) to the last finished or the in-flight
   version, and at most one hidden temporary file is left, which the next writer removes.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from store_helpers import PW_ENV, OidcAgent, oidc_agent_missing, subprocess_env

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


# -- two processes refreshing at once through the store's lock (from tests/functional) -------------------

PAIR_ROUNDS = 4


def _refresh_under_the_lock(account):
    """Spend the refresh token on disk and keep the rotated one, every time (no kept-token check)."""
    rt_used = account['refresh_token']
    token = _options.oauth_client(client_options(), account).refresh(rt_used)
    assert token.refresh_token and token.refresh_token != rt_used, 'the provider did not rotate'
    account['refresh_token'] = token.refresh_token
    account.meta.update(access_token=token.access_token, access_token_expires_at=token.expires_at)
    return account, {'access_token': token.access_token, 'rt_used': rt_used, 'rt_new': token.refresh_token}


def _refresh_once(config_dir, name, barrier, results):
    try:
        store = AccountStore(config_dir)
        barrier.wait(30)
        started = time.time()
        result = store.update(name, PASSWORD, _refresh_under_the_lock)
        # The RT that goes with the AT just handed out is on disk already (or a later one).
        result.update(started=started, left=time.time(), rt_on_disk_after=store.load(name, PASSWORD)['refresh_token'])
        results.put(('ok', result))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(('error', '%s: %s' % (type(exc).__name__, exc)))


def test_two_processes_refresh_at_once_through_the_store_lock(op, tmp_path):
    """Unlike the 50 processes above, which mostly reuse the kept token, both processes refresh: the second
    must wait for the first's rotated refresh token on disk and spend that one."""
    config_dir = str(tmp_path / 'accounts')
    store = AccountStore(config_dir)
    for round_ in range(PAIR_ROUNDS):
        name = 'pair-%d' % round_
        exchange_account(op, config_dir, name, PASSWORD)
        rt0 = store.load(name, PASSWORD)['refresh_token']
        before = stat_counts(op)
        barrier, results = CTX.Barrier(2), CTX.Queue()
        procs = [CTX.Process(target=_refresh_once, args=(config_dir, name, barrier, results)) for _i in range(2)]
        for proc in procs:
            proc.start()
        out = [results.get(timeout=60) for _proc in procs]
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
        assert [status for status, _result in out] == ['ok', 'ok'], out
        pair = [result for _status, result in out]
        # They really ran at once: both had started before either had finished.
        assert max(r['started'] for r in pair) < min(r['left'] for r in pair)
        for r in pair:
            assert introspect(op, r['access_token'])['active'] is True
            assert r['rt_on_disk_after'] in {x['rt_new'] for x in pair}
        # No refresh token was sent twice: the second spent the one the first had put on disk; none was refused.
        first = next(r for r in pair if r['rt_used'] == rt0)
        assert sorted(r['rt_used'] for r in pair) == sorted([rt0, first['rt_new']])
        after = stat_counts(op)
        assert after['refresh_ok'] - before['refresh_ok'] == 2
        assert after['refresh_failed'] == before['refresh_failed']
        # The grant is alive: the RT on disk refreshes, through the same locked sequence.
        final = store.update(name, PASSWORD, _refresh_under_the_lock)
        assert introspect(op, final['access_token'])['active'] is True
        assert rt_active(op, store.load(name, PASSWORD)['refresh_token'])
        assert stat_counts(op)['refresh_failed'] == before['refresh_failed']
    LEDGER.add(SUITE, 'rounds of 2 processes refreshing at once', PAIR_ROUNDS)


def test_control_a_replayed_refresh_token_kills_the_grant(op, tmp_path):
    """What the lock prevents, and why the tests above would catch a replay: spending one RT twice makes the
    provider revoke the whole grant."""
    config_dir = str(tmp_path / 'accounts')
    exchange_account(op, config_dir, 'replayed', PASSWORD)
    account = AccountStore(config_dir).load('replayed', PASSWORD)
    oauth = _options.oauth_client(client_options(), account)
    first = oauth.refresh(account['refresh_token'])
    assert introspect(op, first.access_token)['active'] is True
    with pytest.raises(_oauth.ProviderError, match='invalid_grant'):
        oauth.refresh(account['refresh_token'])   # a second process without the lock
    # Reuse detection revoked the grant: even the first refresh's fresh tokens are dead now.
    assert not rt_active(op, first.refresh_token)
    assert introspect(op, first.access_token)['active'] is False
    LEDGER.add(SUITE, 'control: a replayed refresh token revoked the grant', 1)


# -- kill -9 of the store's own writers, no provider (from tests/functional) -------------------------------

STORE_WRITER_KILLS = int(os.environ.get('OIDC_EVIDENCE_STORE_WRITER_KILLS', '60'))

STORE_WRITER = r'''
import os, sys
from ansible_collections.oidc.tokens.plugins.module_utils import _account_store as m

config_dir, name, mode = sys.argv[1:4]
password = os.environ['OIDC_ENCRYPTION_PW']
store = m.AccountStore(config_dir)
out = sys.stdout


def note(word, seq):
    out.write('%s %d\n' % (word, seq))
    out.flush()


def bump(account):
    seq = account.meta.get('seq', 0) + 1
    account.meta['seq'] = seq
    account['refresh_token'] = 'rt-%d-' % seq + 'x' * (seq % 97)   # the length varies
    return seq


if mode == 'update':
    while True:
        def fn(account):
            seq = bump(account)
            note('start', seq)
            return account, seq
        note('done', store.update(name, password, fn))
elif mode == 'save':
    while True:
        account = store.load(name, password)
        seq = bump(account)
        note('start', seq)
        store.save(name, account, password)
        note('done', seq)
else:  # 'fast': one derivation, then locked atomic writes with that key, as update() does
    account, key, _parsed = store._load(name, password)
    while True:
        with store.locked(name):
            seq = bump(account)
            note('start', seq)
            store._write_atomic(name, store._encrypt_for(name, account, key))
        note('done', seq)
'''


def _last(lines, word):
    values = [int(line.split()[1]) for line in lines if line.startswith(word + ' ')]
    return values[-1] if values else None


def test_kill_minus_9_of_store_writers(tmp_path):
    """A writer rewrites one account in a loop three ways: update (re-encrypts with the same key), save (a fresh
    salt and key) and a fast loop of locked atomic writes that spends nearly all its time writing."""
    config_dir = str(tmp_path / 'oidc-agent')
    store = AccountStore(config_dir, read_retries=0)
    store.save('crashy', {'issuer_url': 'https://issuer.example/', 'client_id': 'c',
                          'client_secret': 's', 'refresh_token': 'rt-0-initial', 'scope': 'openid',
                          'oidc_tokens': {'seq': 0}}, PASSWORD)
    script = tmp_path / 'writer.py'
    script.write_text(STORE_WRITER)
    env = subprocess_env(**{PW_ENV: PASSWORD})
    agent = OidcAgent(tmp_path / 'agent') if oidc_agent_missing() is None else None
    if agent:
        agent.config_dir = config_dir   # oidc-gen -p needs no running agent

    rng = random.Random(int(os.environ.get('STORE_CRASH_SEED', time.time())))
    on_disk = 0
    stats = {'rounds': 0, 'killed_mid_write': 0, 'stale_temp_seen': 0, 'writes': 0, 'read_by_oidc_agent': 0}
    for i in range(STORE_WRITER_KILLS):
        mode = ('update', 'save', 'fast')[i % 3]
        log = tmp_path / ('writer-%d.log' % i)
        with open(str(log), 'wb') as out:
            proc = subprocess.Popen([sys.executable, str(script), config_dir, 'crashy', mode],
                                    stdout=out, stderr=subprocess.PIPE, env=env,
                                    stdin=subprocess.DEVNULL)
        if i % 5:
            # Most kills land in the writer's loop, after its first version started: start-up (~0.2 s idle, far
            # more on a loaded machine) must not eat the time in which the writes happen. Each update or save
            # then costs ~0.1 s.
            deadline = time.monotonic() + 15
            while 'start ' not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.6))
        else:
            # The others anywhere from the start (imports, key derivation, the first write).
            time.sleep(rng.uniform(0.15, 0.75))
        if proc.poll() is not None:
            pytest.fail('writer died on its own: %s' % proc.stderr.read().decode())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()

        lines = log.read_text().splitlines()
        started, done = _last(lines, 'start'), _last(lines, 'done')
        low = done if done is not None else on_disk
        high = started if started is not None else on_disk

        # The file exists and decrypts to the last finished version or the one being written.
        assert os.path.isfile(store.path('crashy')), 'round %d: account file missing' % i
        account = store.load('crashy', PASSWORD)
        seq = account['oidc_tokens']['seq']
        assert low <= seq <= high, ('round %d (%s): file has version %d, writer finished %s and '
                                    'started %s' % (i, mode, seq, done, started))
        assert account['refresh_token'].startswith('rt-%d-' % seq)
        on_disk = seq

        leftovers = [e for e in os.listdir(config_dir) if e not in ('crashy', '.crashy.lock')]
        assert all(e.startswith('.crashy.tmp-') for e in leftovers), leftovers
        assert len(leftovers) <= 1, leftovers   # each writer removes its predecessors' leftovers
        assert store.list() == ['crashy']

        if agent and i % 6 == 0:
            printed = agent.run(['oidc-gen', '-p', 'crashy', '--pw-env'], password=PASSWORD)
            assert '"rt-%d-' % seq in printed.out
            stats['read_by_oidc_agent'] += 1

        stats['rounds'] += 1
        stats['writes'] += len([line for line in lines if line.startswith('done')])
        stats['killed_mid_write'] += int(started is not None and started != done)
        stats['stale_temp_seen'] += int(bool(leftovers))

    # The next writer cleans up whatever the last kill left; nothing stray remains.
    store.update('crashy', PASSWORD, lambda acc: (acc, None))
    assert sorted(os.listdir(config_dir)) == ['.crashy.lock', 'crashy']
    LEDGER.add(SUITE, 'kill -9 of store writers (no provider)', stats['rounds'])
    LEDGER.add(SUITE, 'store writer kills: inside a write', stats['killed_mid_write'])
    LEDGER.add(SUITE, 'store writer kills: read by oidc-agent afterwards', stats['read_by_oidc_agent'])
    LEDGER.row(SUITE, test="kill -9 of the store's writers (update, save, fast loop)", **stats)
    assert stats['rounds'] == STORE_WRITER_KILLS
    assert stats['writes'] >= STORE_WRITER_KILLS   # the writers did write between the kills
    assert stats['killed_mid_write'] >= 5   # and were often killed inside a write


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
