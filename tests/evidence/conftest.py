"""Set-up of the evidence suites (faults, concurrency and crashes, security scan, bad input).

Reuses tests/functional/conftest.py: the collection made importable, tests/support on sys.path,
and its fixtures ``provider`` and ``provider_factory`` (real node-oidc-provider processes on
127.0.0.1, stopped at the end of the session).

Every suite counts what it did in ``evidence.LEDGER`` (faults injected, operations tried,
configs lost or corrupted, leaks, cases ...). At the end of the session the counts are printed as
a table, and, when $OIDC_EVIDENCE_OUT names a directory (scripts/evidence sets it), written there
as ``<suite>.json`` together with the machine, the versions and the date.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_FUNCTIONAL_CONFTEST = os.path.join(os.path.dirname(_HERE), 'functional', 'conftest.py')

_spec = importlib.util.spec_from_file_location('oidc_tokens_functional_conftest', _FUNCTIONAL_CONFTEST)
_functional = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_functional)

# The fixtures, as tests/functional has them.
provider_factory = _functional.provider_factory
provider = _functional.provider

from evidence import LEDGER, machine_info  # noqa: E402  (tests/support is on sys.path now)

SUITE_OF_MODULE = {
    'test_faults': 'faults',
    'test_concurrency': 'concurrency',
    'test_security_scan': 'security',
    'test_bad_input': 'bad_input',
}

_RESULTS = {}
_STARTED = {}


@pytest.fixture(scope='module', autouse=True)
def _suite_clock(request):
    suite = SUITE_OF_MODULE.get(request.module.__name__.rsplit('.', 1)[-1])
    started = time.monotonic()
    yield
    if suite:
        LEDGER.add(suite, 'seconds', round(time.monotonic() - started, 1))


def pytest_runtest_logreport(report):
    suite = SUITE_OF_MODULE.get(os.path.splitext(os.path.basename(report.fspath))[0])
    if suite is None:
        return
    outcome = _RESULTS.setdefault(suite, {'passed': 0, 'failed': 0, 'skipped': 0, 'failures': []})
    if report.when == 'call' or (report.when == 'setup' and not report.passed):
        key = 'passed' if report.passed else ('skipped' if report.skipped else 'failed')
        outcome[key] += 1
        if report.failed:
            outcome['failures'].append(report.nodeid)


def pytest_sessionstart(session):
    _STARTED['time'] = time.time()


def _table(terminalreporter, suite, counts):
    terminalreporter.write_line('  %s' % suite)
    for key in sorted(counts):
        terminalreporter.write_line('    %-44s %s' % (key, counts[key]))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    suites = sorted(set(LEDGER.suites()) | set(_RESULTS))
    if not suites:
        return
    terminalreporter.section('oidc.tokens evidence: what was counted')
    for suite in suites:
        counts = dict(LEDGER.counts[suite])
        outcome = _RESULTS.get(suite, {})
        counts.update({'tests passed': outcome.get('passed', 0), 'tests failed': outcome.get('failed', 0)})
        _table(terminalreporter, suite, counts)
        for note in LEDGER.notes[suite]:
            terminalreporter.write_line('    note: %s' % note)


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get('OIDC_EVIDENCE_OUT')
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    info = machine_info()
    for suite in sorted(set(LEDGER.suites()) | set(_RESULTS)):
        data = LEDGER.as_dict(suite)
        data.update({'suite': suite, 'tests': _RESULTS.get(suite, {}), 'machine': info,
                     'session_seconds': round(time.time() - _STARTED.get('time', time.time()), 1)})
        path = os.path.join(out, '%s.json' % suite)
        with open(path + '.tmp', 'w', encoding='utf-8') as handle:
            json.dump(data, handle, indent=1, sort_keys=True, default=str)
            handle.write('\n')
        os.replace(path + '.tmp', path)
