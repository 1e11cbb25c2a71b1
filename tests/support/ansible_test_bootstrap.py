# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip script that ansible-test downloads to bootstrap pip.

Why: ansible-test creates its virtual environments (``--venv`` and every sanity test's own)
without pip, then bootstraps pip with a get-pip script that it downloads from a web host once and
caches as ``~/.ansible/test/cache/get_pip_<pip version with _ for .>.py``. That host is not
reachable from the machines this project is tested on; PyPI is.

How ansible-test uses the cached file (ansible_test/_util/target/setup/requirements.py,
``bootstrap()``, and quiet_pip.py): when the cache file exists it skips the download and runs,
with the new environment's interpreter,

    python quiet_pip.py --disable-pip-version-check pip==<version> --no-setuptools --no-wheel

with ``GET_PIP=<cache file>`` in the environment; quiet_pip.py then runs the cache file as
``__main__`` through ``runpy``, with those arguments in ``sys.argv[1:]``.

What this file does with them, standing in for get-pip:
1. installs the pip wheel bundled with this Python with the standard library's ``ensurepip``
   (``python -m ensurepip --upgrade --default-pip``: no network);
2. runs that pip as ``pip install --upgrade <arguments>`` to get the pip version ansible-test
   asked for, from the package index pip is configured with;
3. honours ``--no-setuptools`` / ``--no-wheel`` as get-pip does: setuptools that ``ensurepip``
   brings along (Python < 3.12) is removed again; without those flags setuptools and wheel are
   installed as get-pip would.

scripts/test copies this file to that cache path before running ansible-test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

# scripts/test looks for this line to tell its own stand-in from a real get-pip script.
STAND_IN_MARKER = 'oidc.tokens offline get-pip stand-in (ensurepip)'


def _run(*command: str) -> None:
    """Run a command quietly; on failure show its output and stop with its exit code."""
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, universal_newlines=True)
    if result.returncode:
        sys.stderr.write(result.stdout)
        sys.stderr.write('%s: command failed with exit code %d: %s\n' % (STAND_IN_MARKER, result.returncode, ' '.join(command)))
        sys.exit(result.returncode)


def _has_setuptools() -> bool:
    """Return True when setuptools can be imported in this environment now."""
    importlib.invalidate_caches()
    return importlib.util.find_spec('setuptools') is not None


def main(argv: list[str]) -> None:
    """Bootstrap pip into the running interpreter's environment, offline first, then from the index."""
    want_setuptools = '--no-setuptools' not in argv
    want_wheel = '--no-wheel' not in argv
    install_args = [arg for arg in argv if arg not in ('--no-setuptools', '--no-wheel')]
    had_setuptools = _has_setuptools()
    if importlib.util.find_spec('ensurepip') is None:
        sys.stderr.write('%s: this Python has no ensurepip module (on Debian: apt-get install python3-venv)\n' % STAND_IN_MARKER)
        sys.exit(1)

    # In a child process: ensurepip removes every PIP_* variable from the environment and sets
    # PIP_CONFIG_FILE=/dev/null, which must not reach the pip run below (it needs the machine's
    # pip configuration: index, certificates).
    _run(sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip')

    packages = [_name(arg) for arg in install_args if not arg.startswith('-')]
    if want_setuptools and 'setuptools' not in packages:
        install_args.append('setuptools')
    if want_wheel and 'wheel' not in packages:
        install_args.append('wheel')
    if any(not arg.startswith('-') for arg in install_args):
        _run(sys.executable, '-m', 'pip', 'install', '--quiet', '--upgrade', *install_args)

    if not want_setuptools and not had_setuptools and _has_setuptools():
        _run(sys.executable, '-m', 'pip', 'uninstall', '--disable-pip-version-check', '--yes', '--quiet', 'setuptools')

    sys.stdout.write('%s: pip bundled with Python %d.%d, then pip install %s\n' % (
        STAND_IN_MARKER, sys.version_info[0], sys.version_info[1], ' '.join(install_args)))


def _name(requirement: str) -> str:
    """Return the lower-case project name of a requirement such as ``pip==24.2``."""
    for separator in '=<>!~;[ @':
        requirement = requirement.split(separator, 1)[0]
    return requirement.strip().lower().replace('_', '-')


if __name__ == '__main__':
    main(sys.argv[1:])
