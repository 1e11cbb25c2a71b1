# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print what the account store costs, measured in this one process: one Argon2id derivation (time,
peak memory), encryptions/decryptions per second, load and update. A script that prints figures, not
a test; bench_store_runs.py takes medians of the same measurement over fresh processes.

    python3 tests/benchmarks/bench_store.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_store_runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--rounds', type=int, default=10, help='derivations to time')
    args = parser.parse_args()

    r = bench_store_runs.one_run(args.rounds)
    import nacl
    print('python %s, PyNaCl %s, %s, %d CPUs'
          % (platform.python_version(), nacl.__version__, platform.machine(), os.cpu_count()))
    print('Argon2id13 opslimit=%d memlimit=%d (%d MiB), 64 bytes of output'
          % (r['opslimit'], r['memlimit'], r['memlimit'] // (1024 * 1024)))
    print('first derivation: %.1f ms; peak RSS +%.1f MiB (libsodium memory); tracemalloc peak %.1f KiB '
          '(Python objects only)' % (r['first_derivation_s'] * 1000, r['derivation_peak_rss_mib'],
                                     r['derivation_python_peak_kib']))
    print('derivation over %d rounds: median %.1f ms' % (r['derivations_timed'], r['derivation_s'] * 1000))
    print('with a derived key (%d-byte account JSON): %.0f encryptions/s, %.0f decryptions/s'
          % (r['plaintext_bytes'], r['encrypt_per_s'], r['decrypt_per_s']))
    print('store: load %.1f ms, update (read + rotate + atomic write, one derivation) %.1f ms (medians)'
          % (r['load_s'] * 1000, r['update_s'] * 1000))


if __name__ == '__main__':
    main()
