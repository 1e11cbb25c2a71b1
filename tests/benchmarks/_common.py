"""What the evidence benchmarks share: the collection made importable, tests/support on the path,
medians, the machine and versions recorded with every figure, and JSON output.

Benchmarks print their figures; with ``--out FILE`` they also write them as JSON (scripts/evidence
collects those into docs/evidence/ and docs/evidence.md). They are not tests: nothing is asserted
about time.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUPPORT = os.path.join(REPO, 'tests', 'support')
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)


def collections_root():
    """A directory holding ansible_collections/oidc/tokens -> this checkout; importable at once."""
    parts = REPO.split(os.sep)
    if parts[-3:] == ['ansible_collections', 'oidc', 'tokens']:
        root = os.sep.join(parts[:-3]) or os.sep
    else:
        root = tempfile.mkdtemp(prefix='oidc-bench-colls-')
        atexit.register(shutil.rmtree, root, True)
        os.makedirs(os.path.join(root, 'ansible_collections', 'oidc'))
        os.symlink(REPO, os.path.join(root, 'ansible_collections', 'oidc', 'tokens'))
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


def in_fork(fn):
    """fn() in a forked child, as Ansible runs a lookup for a host; returns what fn returns (JSON)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            data = json.dumps(fn()).encode()
        except BaseException as exc:  # reported to the parent
            data = json.dumps({'error': repr(exc)}).encode()
        os.write(write_fd, data)
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    result = json.loads(b''.join(chunks))
    if isinstance(result, dict) and 'error' in result:
        raise RuntimeError(result['error'])
    return result


def median(values):
    return statistics.median(values) if values else None


def summary(values, scale=1.0, digits=2):
    """{'median', 'min', 'max', 'runs', 'values'} of a list of numbers (scaled, rounded)."""
    if not values:
        return {'median': None, 'min': None, 'max': None, 'runs': 0, 'values': []}
    scaled = [v * scale for v in values]
    return {'median': round(statistics.median(scaled), digits), 'min': round(min(scaled), digits),
            'max': round(max(scaled), digits), 'runs': len(scaled), 'values': [round(v, digits) for v in scaled]}


def ratio(a, b, digits=1):
    if not a or not b:
        return None
    return round(a / b, digits)


def machine():
    from evidence import machine_info
    return machine_info()


def write(out, name, data, quiet=False):
    data = dict(data)
    data.setdefault('benchmark', name)
    data.setdefault('machine', machine())
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)) or '.', exist_ok=True)
        with open(out + '.tmp', 'w', encoding='utf-8') as handle:
            json.dump(data, handle, indent=1, sort_keys=True, default=str)
            handle.write('\n')
        os.replace(out + '.tmp', out)
        if not quiet:
            print('figures written to %s' % out)
    return data


def line(label, stats, unit):
    if stats.get('median') is None:
        print('  %-58s (not measured)' % label)
        return
    print('  %-58s median %9.2f %s  (min %.2f, max %.2f, %d runs)' % (
        label, stats['median'], unit, stats['min'], stats['max'], stats['runs']))


class Deadline(object):
    """A time budget: benchmarks stop adding runs (never below min_runs) once it is spent."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds if seconds else None

    def left(self):
        return None if self.end is None else self.end - time.monotonic()

    def spent(self):
        return self.end is not None and time.monotonic() >= self.end


KDF_HOOK = r'''
# Written by tests/benchmarks/_common.py: counts Argon2id derivations (PyNaCl's argon2id.kdf calls)
# of every Python process started with this directory on PYTHONPATH, one byte per call appended to
# $OIDC_EVIDENCE_KDF_COUNT. Installs an import hook only; nothing is imported eagerly.
import os
import sys

_path = os.environ.get('OIDC_EVIDENCE_KDF_COUNT')
if _path:
    import importlib.util

    class _CountArgon2id(object):
        def find_spec(self, name, path=None, target=None):
            if name != 'nacl.pwhash.argon2id':
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                real_kdf = module.kdf

                def kdf(*args, **kwargs):
                    fd = os.open(_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    try:
                        os.write(fd, b'k')
                    finally:
                        os.close(fd)
                    return real_kdf(*args, **kwargs)
                module.kdf = kdf
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _CountArgon2id())
'''


def kdf_hook_dir(workdir):
    """A directory with a sitecustomize.py that counts Argon2id derivations (see KDF_HOOK)."""
    path = os.path.join(workdir, 'kdf-hook')
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'sitecustomize.py'), 'w', encoding='utf-8') as handle:
        handle.write(KDF_HOOK)
    return path


def kdf_count(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
