"""The refresher as oidc.tokens.oidc_refresher installs it on a worker: the zip application, built by the
module's own code (_refresher_host.program_bundle) from the checkout, once per test process.

The directory is 0755 and the file 0644, so that the job users of the security scan can run it too.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_PATH = []


def path():
    if not _PATH:
        from ansible_collections.oidc.tokens.plugins.module_utils._refresher_host import program_bundle

        directory = tempfile.mkdtemp(prefix='oidc-tokens-refresher.')
        atexit.register(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        program = os.path.join(directory, 'oidc-tokens-refresher.pyz')
        with open(program, 'wb') as handle:
            handle.write(program_bundle())
        os.chmod(program, 0o644)
        _PATH.append(program)
    return _PATH[0]
