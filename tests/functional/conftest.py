"""Shared set-up for the functional tests.

- Makes this repository importable as ``ansible_collections.oidc.tokens`` (a symlink in a temporary
  directory put first on sys.path, unless the checkout already sits in such a tree).
- Puts tests/support on sys.path (``from provider import Provider``, ``from fault_proxy import ...``).
- Fixtures:
    provider          the session's default test provider (HTTP, opaque access tokens)
    built_collection  (tarball, collections path): the collection built from this checkout with ansible-galaxy
                      and installed from that tarball into a private collections path, as users get it
    provider_factory  provider_factory(**switches) -> a started Provider; every one of them is stopped
                      at the end of the session. Switches: see tests/support/provider.py (tls,
                      access_token_format, at_ttl, rt_ttl, exchange_shape, discovery, issuer_host,
                      issuer, config, ...).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUPPORT_DIR = os.path.join(REPO_ROOT, 'tests', 'support')


def _make_collection_importable():
    parts = REPO_ROOT.split(os.sep)
    if parts[-3:-1] == ['ansible_collections', 'oidc'] and parts[-1] == 'tokens':
        # Already inside .../ansible_collections/oidc/tokens (e.g. ansible-test's copy).
        root = os.sep.join(parts[:-3]) or os.sep
    else:
        root = tempfile.mkdtemp(prefix='oidc-tokens-collection-')
        namespace = os.path.join(root, 'ansible_collections', 'oidc')
        os.makedirs(namespace)
        os.symlink(REPO_ROOT, os.path.join(namespace, 'tokens'))
        atexit.register(shutil.rmtree, root, True)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)


_make_collection_importable()
if SUPPORT_DIR not in sys.path:
    sys.path.insert(0, SUPPORT_DIR)

from provider import Provider  # noqa: E402  (needs SUPPORT_DIR on sys.path)
from store_helpers import oidc_agent_missing  # noqa: E402


@pytest.fixture(scope='module')
def needs_oidc_agent():
    """Debian's oidc-agent, which scripts/setup installs: without it the module's tests fail, never skip."""
    why = oidc_agent_missing()
    if why:
        pytest.fail(why)


@pytest.fixture(scope='session')
def provider_factory(tmp_path_factory):
    """Start extra providers with switches; all are stopped when the session ends."""
    started = []

    def factory(**switches):
        switches.setdefault('workdir', str(tmp_path_factory.mktemp('provider')))
        instance = Provider(**switches).start()
        started.append(instance)
        return instance

    yield factory
    for instance in reversed(started):
        instance.stop()


@pytest.fixture(scope='session')
def provider(provider_factory):
    """The default provider: HTTP on 127.0.0.1, opaque access tokens, common exchange shape."""
    return provider_factory()


@pytest.fixture(scope='session')
def built_collection(tmp_path_factory):
    base = tmp_path_factory.mktemp('galaxy')
    galaxy = os.path.join(os.path.dirname(sys.executable), 'ansible-galaxy')
    subprocess.run([galaxy, 'collection', 'build', '--output-path', str(base), REPO_ROOT],
                   check=True, capture_output=True, text=True, timeout=120)
    (tarball,) = base.glob('oidc-tokens-*.tar.gz')
    subprocess.run([galaxy, 'collection', 'install', '-p', str(base / 'collections'), str(tarball)],
                   check=True, capture_output=True, text=True, timeout=120)
    return tarball, base / 'collections'
