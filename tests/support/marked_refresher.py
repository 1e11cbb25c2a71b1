"""Run oidc-tokens-refresher with step marks, for the crash tests (tests/evidence/test_concurrency.py).

    OIDC_EVIDENCE_MARKS=FILE python marked_refresher.py REFRESHER [refresher arguments]

Appends to FILE: ``R`` when a refresh request is about to leave, ``r`` when its answer (or error)
is in, ``W`` when a new account file is in place (renamed and the directory fsynced). The refresher
itself is not changed: the marks come from wrapping two of the collection's methods in this process.
"""

from __future__ import annotations

import os
import runpy
import sys


def main():
    refresher = sys.argv[1]
    marks = os.open(os.environ['OIDC_EVIDENCE_MARKS'], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sys.path.insert(0, os.environ['OIDC_TOKENS_LIB'])
    from ansible_collections.oidc.tokens.plugins.module_utils import _account_store, _oauth

    real_refresh = _oauth.OAuthClient.refresh
    real_write = _account_store.AccountStore._write_atomic

    def refresh(self, *args, **kwargs):
        os.write(marks, b'R')
        try:
            return real_refresh(self, *args, **kwargs)
        finally:
            os.write(marks, b'r')

    def write(self, *args, **kwargs):
        result = real_write(self, *args, **kwargs)
        os.write(marks, b'W')
        return result

    _oauth.OAuthClient.refresh = refresh
    _account_store.AccountStore._write_atomic = write
    sys.argv = [refresher] + sys.argv[2:]
    runpy.run_path(refresher, run_name='__main__')


if __name__ == '__main__':
    main()
