# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print what the account store costs: one Argon2id derivation (time, peak memory) and
encryptions/decryptions per second. A script that prints figures, not a test.

    python3 tests/benchmarks/bench_store.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _import_store():
    try:
        from ansible_collections.oidc.tokens.plugins.module_utils import _account_store
        return _account_store
    except ImportError:
        pass
    root = tempfile.mkdtemp(prefix='bench-colls-')
    os.makedirs(os.path.join(root, 'ansible_collections', 'oidc'))
    os.symlink(REPO, os.path.join(root, 'ansible_collections', 'oidc', 'tokens'))
    sys.path.insert(0, root)
    from ansible_collections.oidc.tokens.plugins.module_utils import _account_store
    return _account_store


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--rounds', type=int, default=10, help='derivations to time')
    args = parser.parse_args()

    store_mod = _import_store()
    import nacl
    password = b'benchmark password'

    print('python %s, PyNaCl %s, %s, %d CPUs'
          % (platform.python_version(), nacl.__version__, platform.machine(), os.cpu_count()))
    print('Argon2id13 opslimit=%d memlimit=%d (%d MiB), 64 bytes of output'
          % (store_mod.OPSLIMIT, store_mod.MEMLIMIT, store_mod.MEMLIMIT // (1024 * 1024)))

    # The first derivation in a fresh process shows the real peak-memory increase.
    rss_before = maxrss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    key = store_mod.derive_key(password, os.urandom(store_mod.SALT_BYTES))
    first = time.perf_counter() - start
    _cur, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = maxrss_mib()
    print('first derivation: %.1f ms; peak RSS %.1f -> %.1f MiB (+%.1f MiB, libsodium memory); '
          'tracemalloc peak %.1f KiB (Python objects only)'
          % (first * 1000, rss_before, rss_after, rss_after - rss_before, py_peak / 1024.0))

    times = []
    for _round in range(args.rounds):
        start = time.perf_counter()
        store_mod.derive_key(password, os.urandom(store_mod.SALT_BYTES))
        times.append(time.perf_counter() - start)
    print('derivation over %d rounds: median %.1f ms, min %.1f ms, max %.1f ms'
          % (args.rounds, statistics.median(times) * 1000, min(times) * 1000,
             max(times) * 1000))

    account = store_mod.Account({'issuer_url': 'https://issuer.example/', 'client_id': 'c',
                                 'client_secret': 's' * 40, 'refresh_token': 'r' * 900,
                                 'scope': 'openid offline_access'})
    plaintext = store_mod._plaintext_from_account(account, 'bench')
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        content = store_mod.encrypt_account_bytes(plaintext, key)
        n += 1
    enc_rate = n / (time.perf_counter() - start)
    parsed = store_mod.parse_account_file(content)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        store_mod.decrypt_parsed(parsed, key)
        n += 1
    dec_rate = n / (time.perf_counter() - start)
    print('with a derived key (%d-byte account JSON): %.0f encryptions/s, %.0f decryptions/s'
          % (len(plaintext), enc_rate, dec_rate))

    with tempfile.TemporaryDirectory() as d:
        st = store_mod.AccountStore(os.path.join(d, 'oidc-agent'))
        st.save('bench', account, password)
        rounds = 5
        start = time.perf_counter()
        for _round in range(rounds):
            st.load('bench', password)
        load = (time.perf_counter() - start) / rounds
        start = time.perf_counter()
        for _round in range(rounds):
            st.update('bench', password, lambda a: (a, None))
        update = (time.perf_counter() - start) / rounds
        print('store: load %.1f ms, update (read + rotate + atomic write, one derivation) '
              '%.1f ms' % (load * 1000, update * 1000))


if __name__ == '__main__':
    main()
