# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kill -9 of a writer at random moments never leaves a missing or undecryptable account file.

A writer subprocess rewrites one account in a loop (three ways: ``update``, which re-encrypts
with the same key, ``save``, which derives a fresh salt and key, and a fast loop of locked
atomic writes that spends nearly all its time writing); the test kills it with SIGKILL after a
random delay, 60 times. After every kill the file exists, decrypts (with our store and, every few
rounds, with oidc-agent's ``oidc-gen -p``) to one of the versions the writer produced - the last
one it finished or the one it was writing - and at most one stale temporary file of that writer
is left, hidden from oidc-agent, and removed by the next writer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore

from store_helpers import PW_ENV, OidcAgent, oidc_agent_missing, subprocess_env

PASSWORD = 'crash-test-password'
ROUNDS = 60

WRITER = r'''
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


def test_kill_9_never_leaves_a_missing_or_undecryptable_file(tmp_path):
    config_dir = str(tmp_path / 'oidc-agent')
    store = AccountStore(config_dir, read_retries=0)
    store.save('crashy', {'issuer_url': 'https://issuer.example/', 'client_id': 'c',
                          'client_secret': 's', 'refresh_token': 'rt-0-initial', 'scope': 'openid',
                          'oidc_tokens': {'seq': 0}}, PASSWORD)
    script = tmp_path / 'writer.py'
    script.write_text(WRITER)
    env = subprocess_env(**{PW_ENV: PASSWORD})
    use_oidc_agent = oidc_agent_missing() is None
    agent = OidcAgent(tmp_path / 'agent') if use_oidc_agent else None
    if agent:
        agent.config_dir = config_dir   # oidc-gen -p needs no running agent

    rng = random.Random(int(os.environ.get('STORE_CRASH_SEED', time.time())))
    on_disk = 0
    stats = {'rounds': 0, 'killed_mid_write': 0, 'stale_temp_seen': 0, 'writes': 0}
    for i in range(ROUNDS):
        mode = ('update', 'save', 'fast')[i % 3]
        log = tmp_path / ('writer-%d.log' % i)
        with open(str(log), 'wb') as out:
            proc = subprocess.Popen([sys.executable, str(script), config_dir, 'crashy', mode],
                                    stdout=out, stderr=subprocess.PIPE, env=env,
                                    stdin=subprocess.DEVNULL)
        # Python start-up and imports take ~0.2 s; each update/save then costs ~0.1 s.
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

        stats['rounds'] += 1
        stats['writes'] += len([line for line in lines if line.startswith('done')])
        stats['killed_mid_write'] += int(started is not None and started != done)
        stats['stale_temp_seen'] += int(bool(leftovers))

    # The next writer cleans up whatever the last kill left; nothing stray remains.
    store.update('crashy', PASSWORD, lambda acc: (acc, None))
    assert sorted(os.listdir(config_dir)) == ['.crashy.lock', 'crashy']
    print('kill -9 loop: %r' % stats)
    assert stats['rounds'] == ROUNDS
    assert stats['writes'] >= ROUNDS   # the writers did write between the kills
    assert stats['killed_mid_write'] >= 5   # and were often killed inside a write
