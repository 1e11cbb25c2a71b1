# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bundle the refresher and, verbatim, the collection's module_utils into one Python zip application.

Runs once per play on the controller (role job_tokens, install.yml); each worker then receives one
file instead of a directory tree (one copy task instead of one per file, the bulk of start's cost).

    python3 bundle_refresher.py REFRESHER MODULE_UTILS_DIR OUT.pyz

The zip is byte-for-byte the same for the same inputs (entries sorted and stored uncompressed, with
fixed times), so a second start finds the installed bundle unchanged.
"""

from __future__ import annotations

import os
import sys
import zipfile

PACKAGE = ('ansible_collections', 'oidc', 'tokens', 'plugins', 'module_utils')
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def add(archive, name, data):
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.external_attr = 0o644 << 16
    archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def build(refresher, module_utils, out):
    sources = sorted(name for name in os.listdir(module_utils) if name.endswith('.py'))
    tmp = out + '.tmp'
    with zipfile.ZipFile(tmp, 'w') as archive:
        with open(refresher, 'rb') as handle:
            add(archive, '__main__.py', handle.read())
        for depth in range(1, len(PACKAGE) + 1):
            add(archive, '/'.join(PACKAGE[:depth] + ('__init__.py',)), b'')
        for name in sources:
            if name == '__init__.py':
                continue
            with open(os.path.join(module_utils, name), 'rb') as handle:
                add(archive, '/'.join(PACKAGE + (name,)), handle.read())
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)


if __name__ == '__main__':
    if len(sys.argv) != 4:
        sys.exit('usage: bundle_refresher.py REFRESHER MODULE_UTILS_DIR OUT.pyz')
    build(*sys.argv[1:])
