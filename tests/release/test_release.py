"""What a release of oidc.tokens must pass before it is uploaded: its changelog fragments lint clean with
antsibull-changelog, and galaxy-importer (what Galaxy runs on an uploaded collection) imports the built
tarball with no warning. Run by `scripts/test release` with .venv-release (tests/release/requirements.txt)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
IMPORTER_CONFIG = os.path.join(REPO_ROOT, 'tests', 'release', 'galaxy-importer.cfg')


def run(args, cwd, **env):
    environment = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get('PATH', ''), ANSIBLE_NOCOLOR='1', **env)
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600, check=False)


def build(source, out):
    result = run([os.path.join(BIN, 'ansible-galaxy'), 'collection', 'build', '--output-path', str(out), source], cwd=str(out))
    assert result.returncode == 0, result.stderr
    (tarball,) = out.glob('oidc-tokens-*.tar.gz')
    return tarball


def galaxy_import(tarball):
    """galaxy-importer's console output (its warnings and errors are the lines 'WARNING: ...', 'ERROR: ...')
    and its result, as Galaxy would store it."""
    result = run([sys.executable, '-m', 'galaxy_importer.main', str(tarball)], cwd=str(tarball.parent),
                 GALAXY_IMPORTER_CONFIG=IMPORTER_CONFIG)
    output = result.stdout + result.stderr
    problems = [line for line in output.splitlines() if line.startswith(('WARNING:', 'ERROR:'))]
    data = None
    if os.path.exists(tarball.parent / 'importer_result.json'):
        with open(tarball.parent / 'importer_result.json', encoding='utf-8') as handle:
            data = json.load(handle)
    return result.returncode, output, problems, data


def test_changelog_fragments_lint_clean():
    lint = run([os.path.join(BIN, 'antsibull-changelog'), 'lint'], cwd=REPO_ROOT)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
    changes = run([os.path.join(BIN, 'antsibull-changelog'), 'lint-changelog-yaml', 'changelogs/changelog.yaml'], cwd=REPO_ROOT)
    assert changes.returncode == 0 and not changes.stdout.strip(), changes.stdout + changes.stderr


def test_changelog_lint_names_a_fragment_in_an_unknown_section(tmp_path):
    shutil.copytree(os.path.join(REPO_ROOT, 'changelogs'), tmp_path / 'changelogs')
    shutil.copy(os.path.join(REPO_ROOT, 'galaxy.yml'), tmp_path / 'galaxy.yml')
    (tmp_path / 'changelogs' / 'fragments' / 'misfiled.yml').write_text('---\nnew_things:\n  - a change.\n', encoding='utf-8')
    lint = run([os.path.join(BIN, 'antsibull-changelog'), 'lint'], cwd=str(tmp_path))
    assert lint.returncode != 0 and 'misfiled.yml' in lint.stdout and 'new_things' in lint.stdout, lint.stdout + lint.stderr


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
    tarball = build(REPO_ROOT, tmp_path_factory.mktemp('release'))
    return galaxy_import(tarball)


def test_galaxy_importer_imports_the_tarball_with_no_warning(imported):
    returncode, output, problems, data = imported
    assert returncode == 0 and 'Importer processing completed successfully' in output, output[-3000:]
    assert not problems, problems
    with open(os.path.join(REPO_ROOT, 'meta', 'runtime.yml'), encoding='utf-8') as handle:
        assert data['requires_ansible'] == yaml.safe_load(handle)['requires_ansible']


def test_galaxy_shows_every_plugin_documented_and_links_the_project(imported):
    _returncode, _output, _problems, data = imported
    plugins = os.path.join(REPO_ROOT, 'plugins')
    expected = sorted(('module' if kind == 'modules' else 'lookup', name[:-3])
                      for kind in ('modules', 'lookup') for name in os.listdir(os.path.join(plugins, kind))
                      if name.endswith('.py') and not name.startswith('_'))
    shown = sorted((entry['content_type'], entry['content_name']) for entry in data['docs_blob']['contents']
                   if entry['content_type'] in ('module', 'lookup') and entry['doc_strings'])
    assert shown == expected
    metadata = data['metadata']
    for key in ('repository', 'documentation', 'issues', 'homepage'):
        assert (metadata[key] or '').startswith('https://'), (key, metadata[key])
    assert ('role', 'job_tokens') in [(entry['content_type'], entry['content_name']) for entry in data['docs_blob']['contents']]


def test_galaxy_importer_warns_about_a_collection_without_changelog(tmp_path):
    """The check above can fail: the same tarball without its changelog gets a warning."""
    source = tmp_path / 'src'
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        '.git', '.venv*', 'node_modules', '.node', '.dist', 'output', '.ansible', '__pycache__', 'changelogs', '*.tar.gz'))
    returncode, output, problems, _data = galaxy_import(build(str(source), tmp_path))
    assert returncode == 0, output[-3000:]
    assert any('changelog' in problem.lower() for problem in problems), output[-3000:]
