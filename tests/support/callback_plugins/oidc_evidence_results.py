# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only callback: one JSON line per task result, for the evidence suites (tests/evidence).

Enabled by tests/support/evidence.py (ANSIBLE_CALLBACKS_ENABLED=oidc_evidence_results); writes to the
file named by $OIDC_EVIDENCE_RESULTS. Keeps only what the suites assert on (status, msg, a few
non-secret return values), never a token: the file is itself searched for secrets by the
security scan.
"""

from __future__ import annotations

DOCUMENTATION = """
    name: oidc_evidence_results
    type: notification
    short_description: JSON lines of task results for the oidc.tokens evidence suites (test only)
    description: Writes status, msg and a few non-secret return values of every task to $OIDC_EVIDENCE_RESULTS.
"""

import json
import os

from ansible.plugins.callback import CallbackBase

KEEP = ('changed', 'failed', 'skipped', 'msg', 'rc', 'refreshed', 'revoked', 'removed', 'exchanged', 'expires_at',
        'issuer', 'scope', 'has_refresh_token', 'warnings', 'unreachable', 'censored')


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'notification'
    CALLBACK_NAME = 'oidc_evidence_results'
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = os.environ.get('OIDC_EVIDENCE_RESULTS')
        if not path:
            return
        data = getattr(result, 'result', None)
        if data is None:
            data = result._result
        entry = {'host': result.host.get_name(), 'task': result.task.get_name(), 'status': status,
                 'action': result.task.action}
        for key in KEEP:
            if key in data:
                value = data[key]
                entry[key] = value if isinstance(value, (str, int, float, bool, list, type(None))) else str(value)
        if 'msg' in entry and not isinstance(entry['msg'], str):
            entry['msg'] = str(entry['msg'])
        with open(path, 'a', encoding='utf-8') as handle:
            handle.write(json.dumps(entry, sort_keys=True, default=str) + '\n')

    def v2_runner_on_ok(self, result):
        self._record(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, 'ignored' if ignore_errors else 'failed')

    def v2_runner_on_skipped(self, result):
        self._record(result, 'skipped')

    def v2_runner_on_unreachable(self, result):
        self._record(result, 'unreachable')
