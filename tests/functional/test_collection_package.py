"""The collection as users get it: built with ansible-galaxy, installed, documented, and its modules'
library checks on a host that lacks the libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import venv


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


def run_ansible(args, collections, **env):
    environment = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR='1', **env)
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=environment, check=False)


def test_tarball_holds_the_plugins_and_no_build_litter(built_collection):
    tarball, _collections = built_collection
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert 'plugins/module_utils/_oauth.py' in names and 'plugins/modules/oidc_token_exchange.py' in names
    assert not [n for n in names if n.startswith(('.venv', 'tests/output', '.git/')) or '/node_modules/' in n
                or n.startswith('tests/provider/node_modules')]


def test_installed_collection_lists_and_documents_its_modules(built_collection):
    _tarball, collections = built_collection
    listing = run_ansible([tool('ansible-doc'), '-l', 'oidc.tokens', '--json'], collections)
    assert listing.returncode == 0, listing.stderr
    modules = json.loads(listing.stdout)
    assert sorted(modules) == ['oidc.tokens.%s' % name for name in (
        'oidc_account', 'oidc_account_info', 'oidc_device_login', 'oidc_job_record', 'oidc_refresher', 'oidc_refresher_info', 'oidc_revoke',
        'oidc_token', 'oidc_token_exchange')]
    lookups = run_ansible([tool('ansible-doc'), '-t', 'lookup', '-l', 'oidc.tokens', '--json'], collections)
    assert list(json.loads(lookups.stdout)) == ['oidc.tokens.oidc_token']
    for args in [[name] for name in sorted(modules)] + [['-t', 'lookup', 'oidc.tokens.oidc_token']]:
        doc = run_ansible([tool('ansible-doc')] + args, collections)
        assert doc.returncode == 0 and 'EXAMPLES' in doc.stdout and 'RETURN' in doc.stdout, (args, doc.stderr)


def test_a_host_without_requests_gets_ansibles_missing_library_message(built_collection, tmp_path):
    _tarball, collections = built_collection
    bare = tmp_path / 'bare-python'
    venv.EnvBuilder(with_pip=False).create(bare)
    result = run_ansible(
        [tool('ansible'), 'localhost', '-m', 'oidc.tokens.oidc_token', '-a', 'name=job1 encryption_password_env=X',
         '-e', 'ansible_python_interpreter=%s' % (bare / 'bin' / 'python')], collections)
    assert result.returncode != 0
    assert 'Failed to import the required Python library (requests)' in result.stdout, result.stdout
