# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Optional libraries (requests, PyNaCl, cryptography), imported on first use.

Importing them costs a module run a tenth of a second or more, which code that never needs them
(listing accounts, the lookup's cache hit) should not pay; and where one is missing, the caller says
so in one message that names the library and the package to install. Standard library only.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import importlib
import traceback


class OptionalLibrary(object):
    """A library the collection imports only when a task needs it.

    ``name`` is the library as users know it (also the name ``missing_required_lib`` shows),
    ``modules`` what to import (submodules too: importing them makes them attributes of the top
    package), ``package`` what to install.
    """

    def __init__(self, name, modules, package=None):
        self.name = name
        self.modules = tuple(modules)
        self.package = package or name
        self.module = None          # the top-level package, once imported
        self.available = None       # None: not tried yet; then True or False
        self.error = None           # the import's traceback when it failed

    def import_error(self):
        """None when the library imports, else the import's traceback. Imports it on the first call."""
        if self.available is None:
            try:
                for name in self.modules:
                    importlib.import_module(name)
                self.module = importlib.import_module(self.modules[0].split('.')[0])
                self.available = True
            except ImportError:
                self.available = False
                self.error = traceback.format_exc()
        return None if self.available else (self.error or '%s could not be imported.' % self.name)

    def message(self, purpose):
        """The one message for a missing library; purpose says what needs it ('to verify JWTs')."""
        message = 'The Python library %s is required %s (pip install %s).' % (self.name, purpose, self.package)
        reason = (self.error or '').strip().splitlines()
        if reason:
            # The import's last line (e.g. a missing libsodium) tells a broken install from an absent one.
            message += ' Importing it failed: %s' % reason[-1]
        return message

    def require(self, error_class, purpose):
        """The top-level package, or error_class(message) when it does not import."""
        if self.import_error() is not None:
            raise error_class(self.message(purpose))
        return self.module


REQUESTS = OptionalLibrary('requests', ('requests',))
NACL = OptionalLibrary('PyNaCl', ('nacl.exceptions', 'nacl.pwhash.argon2id', 'nacl.secret'))
CRYPTOGRAPHY = OptionalLibrary('cryptography', (
    'cryptography.exceptions', 'cryptography.hazmat.primitives.hashes',
    'cryptography.hazmat.primitives.asymmetric.ec', 'cryptography.hazmat.primitives.asymmetric.padding',
    'cryptography.hazmat.primitives.asymmetric.rsa', 'cryptography.hazmat.primitives.asymmetric.utils'))
