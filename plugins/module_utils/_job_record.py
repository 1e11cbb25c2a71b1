# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's record of the jobs the role job_tokens started, so that they can be listed and torn
down without the inventory that started them (a crashed controller, an inventory that changed).

One JSON file of the controller user (default ``$XDG_STATE_HOME/oidc-tokens/jobs.json``, else
``~/.local/state/oidc-tokens/jobs.json``), 0600 in a 0700 directory, replaced atomically under a lock.
It holds no secret: per account and worker, the job user, issuer, client id, token file, end of the
lifetime, the job followed, when it started, how Ansible reached the worker (host, port, user,
connection, become method, Python) and the role's paths. What a worker reported (its token file, the
end of its lifetime) is shown, never used to reach or tear down anything.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import json
import os
import stat
import time

from ansible_collections.oidc.tokens.plugins.module_utils import _private_files
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError

RECORD_VERSION = 1
LOCK_SECONDS = 60
ENTRY_FIELDS = ('account', 'worker', 'job_user', 'issuer', 'client_id', 'token_file', 'lifetime_end', 'job',
                'started_at', 'connection', 'role')
CONNECTION_FIELDS = ('ansible_host', 'ansible_port', 'ansible_user', 'ansible_connection', 'ansible_become_method',
                     'ansible_python_interpreter')
ROLE_FIELDS = ('job_tokens_prefix', 'job_tokens_run_dir', 'job_tokens_config_dir', 'job_tokens_ca_path')


class JobRecordError(OidcTokensError):
    """The record cannot be read or written safely."""


def default_record_path(environ=None):
    environ = os.environ if environ is None else environ
    state = environ.get('XDG_STATE_HOME')
    if not state or not os.path.isabs(state):
        state = os.path.join(os.path.expanduser('~'), '.local', 'state')
    return os.path.join(state, 'oidc-tokens', 'jobs.json')


def entry_key(entry):
    return '%s@%s' % (entry['account'], entry['worker'])


def as_entry(given):
    """{'account', 'worker'} from such a dict or from a pair [account, worker]."""
    if isinstance(given, (list, tuple)) and len(given) == 2:
        given = {'account': given[0], 'worker': given[1]}
    if not isinstance(given, dict) or not given.get('account') or not given.get('worker'):
        raise JobRecordError('An entry of the job record is named by its account and worker, not by %r.' % (given,))
    return given


def clean_entry(entry):
    """The entry with only the fields a record holds (and only the connection and role settings it names)."""
    if not isinstance(entry, dict) or not entry.get('account') or not entry.get('worker'):
        raise JobRecordError('A job record entry needs an account and a worker.')
    kept = dict((field, entry.get(field)) for field in ENTRY_FIELDS)
    kept['connection'] = dict((k, v) for k, v in (entry.get('connection') or {}).items()
                              if k in CONNECTION_FIELDS and v not in (None, ''))
    kept['role'] = dict((k, v) for k, v in (entry.get('role') or {}).items() if k in ROLE_FIELDS and v not in (None, ''))
    kept['started_at'] = kept['started_at'] or int(time.time())
    # Times in seconds since the epoch. ansible-core before 2.19 templates a number inside a dict of a set_fact as text.
    for field in ('lifetime_end', 'started_at'):
        if isinstance(kept[field], str):
            try:
                kept[field] = int(kept[field])
            except ValueError:
                raise JobRecordError('The %s of a job record entry is a time in seconds, not %r.' % (field, kept[field])) from None
    return kept


def read_record(path):
    """The record's entries by key ({} when there is no record). Only a regular file of the running user is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise JobRecordError('Cannot read the job record %s: %s' % (path, exc.strerror or exc))
    with os.fdopen(fd, 'rb') as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise JobRecordError('The job record %s is not a private file of the running user (mode %04o, uid %d); '
                                 'it was left as it is.' % (path, stat.S_IMODE(st.st_mode), st.st_uid))
        try:
            data = json.loads(handle.read(16 * 1024 * 1024).decode('utf-8'))
        except ValueError as exc:
            raise JobRecordError('The job record %s is not valid JSON (%s); it was left as it is.' % (path, exc))
    if not isinstance(data, dict) or data.get('version') != RECORD_VERSION or not isinstance(data.get('jobs'), dict):
        raise JobRecordError('The job record %s is not a record of version %d; it was left as it is.'
                             % (path, RECORD_VERSION))
    return data['jobs']


def update_record(path, add=(), remove=(), check=False):
    """Add (or replace) and remove entries: (changed, entries before, entries after), keyed 'account@worker'.

    ``remove``: dicts with account and worker. Under the record's lock; written atomically, 0600 in a
    0700 directory; nothing is written in check mode or when nothing changes.
    """
    path = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    added = [clean_entry(entry) for entry in add]
    if check and not os.path.isdir(directory):
        before = {}
        after = dict((entry_key(e), e) for e in added)
        return bool(after), before, after
    try:
        _private_files.ensure_private_dir(directory, follow_links=False)
    except OidcTokensError as exc:
        raise JobRecordError('Cannot keep the job record in %s: %s' % (directory, exc))
    lock = _private_files.lock_file(path + '.lock', time.monotonic() + LOCK_SECONDS)
    if lock is None:
        raise JobRecordError('Another play held the lock of the job record %s for %d s.' % (path, LOCK_SECONDS))
    try:
        before = read_record(path)
        after = dict(before)
        for entry in remove:
            after.pop(entry_key(as_entry(entry)), None)
        for entry in added:
            previous = before.get(entry_key(entry))
            if previous and _same_start(previous, entry):
                entry['started_at'] = previous['started_at']     # started again: the record does not change
            after[entry_key(entry)] = entry
        changed = after != before
        if changed and not check:
            _private_files.write_secret_file(path, json.dumps({'version': RECORD_VERSION, 'jobs': after},
                                                              indent=1, sort_keys=True) + '\n')
    finally:
        os.close(lock)
    return changed, before, after


def _same_start(previous, entry):
    return dict(previous, started_at=None) == dict(entry, started_at=None)
