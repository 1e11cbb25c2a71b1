# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The account store's cost, as medians over fresh processes: one Argon2id derivation (time and peak
memory), encryptions and decryptions per second with a derived key, load and update of an account.

    python3 tests/benchmarks/bench_store_runs.py [--runs 5] [--out FILE.json]

Each run is a fresh Python process (so that the peak-memory figure is the derivation's own); within
a run, 10 derivations are timed. A script that prints figures, not a test. (bench_store.py prints the
figures of one such process.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def one_run(rounds=10):
    """The figures of one process (call it in a fresh one: the peak-memory figure is its first derivation's)."""
    _common.collections_root()
    from ansible_collections.oidc.tokens.plugins.module_utils import _account_file as file_mod, _account_store as store_mod
    file_mod.NACL.import_error()   # PyNaCl imported before measuring: its import is not the derivation's memory
    password = b'benchmark password'
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    key = file_mod.derive_key(password, os.urandom(file_mod.SALT_BYTES))
    first = time.perf_counter() - start
    _current, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _i in range(rounds):
        start = time.perf_counter()
        file_mod.derive_key(password, os.urandom(file_mod.SALT_BYTES))
        times.append(time.perf_counter() - start)
    account = file_mod.Account({'issuer_url': 'https://issuer.example/', 'client_id': 'c', 'client_secret': 's' * 40,
                                'refresh_token': 'r' * 900, 'scope': 'openid offline_access'})
    plaintext = file_mod.plaintext_from_account(account, 'bench')
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        content = file_mod.encrypt_account_bytes(plaintext, key)
        n += 1
    encrypt = n / (time.perf_counter() - start)
    parsed = file_mod.parse_account_file(content)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        file_mod.decrypt_parsed(parsed, key)
        n += 1
    decrypt = n / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as directory:
        store = store_mod.AccountStore(os.path.join(directory, 'accounts'))
        store.save('bench', account, password)
        loads, updates = [], []
        for _i in range(5):
            start = time.perf_counter()
            store.load('bench', password)
            loads.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.update('bench', password, lambda a: (a, None))
            updates.append(time.perf_counter() - start)
    return {'first_derivation_s': first, 'derivation_s': statistics.median(times),
            'derivation_peak_rss_mib': (after - before) / 1024.0, 'derivation_python_peak_kib': python_peak / 1024.0,
            'derivations_timed': rounds, 'encrypt_per_s': encrypt, 'decrypt_per_s': decrypt,
            'load_s': statistics.median(loads), 'update_s': statistics.median(updates),
            'plaintext_bytes': len(plaintext), 'opslimit': file_mod.OPSLIMIT, 'memlimit': file_mod.MEMLIMIT}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--out')
    parser.add_argument('--one', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run()))
        return 0
    runs = []
    for _i in range(args.runs):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), '--one'], capture_output=True, text=True,
                             check=True, timeout=600)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    figures = {
        'derivation_ms': _common.summary([r['derivation_s'] for r in runs], 1000, 1),
        'first_derivation_ms': _common.summary([r['first_derivation_s'] for r in runs], 1000, 1),
        'derivation_peak_rss_mib': _common.summary([r['derivation_peak_rss_mib'] for r in runs], 1, 1),
        'encrypt_per_s': _common.summary([r['encrypt_per_s'] for r in runs], 1, 0),
        'decrypt_per_s': _common.summary([r['decrypt_per_s'] for r in runs], 1, 0),
        'load_ms': _common.summary([r['load_s'] for r in runs], 1000, 1),
        'update_ms': _common.summary([r['update_s'] for r in runs], 1000, 1),
    }
    params = {'argon2id_opslimit': runs[0]['opslimit'], 'argon2id_memlimit_mib': runs[0]['memlimit'] // (1024 * 1024),
              'account_json_bytes': runs[0]['plaintext_bytes'], 'derivations_per_run': 10}
    print('account store, %d fresh processes (Argon2id opslimit %d, memlimit %d MiB; %d-byte account JSON)' % (
        args.runs, params['argon2id_opslimit'], params['argon2id_memlimit_mib'], params['account_json_bytes']))
    _common.line('one Argon2id derivation', figures['derivation_ms'], 'ms')
    _common.line('first derivation in a fresh process', figures['first_derivation_ms'], 'ms')
    _common.line('peak RSS added by the first derivation', figures['derivation_peak_rss_mib'], 'MiB')
    _common.line('encryptions per second (derived key)', figures['encrypt_per_s'], '/s')
    _common.line('decryptions per second (derived key)', figures['decrypt_per_s'], '/s')
    _common.line('store.load (one derivation)', figures['load_ms'], 'ms')
    _common.line('store.update (one derivation, atomic write)', figures['update_ms'], 'ms')
    _common.write(args.out, 'store', {'figures': figures, 'parameters': params})
    return 0


if __name__ == '__main__':
    sys.exit(main())
