# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The job a refresher follows, and whether it still exists.

A job is a small dict kept in the refresher's configuration:

``{'kind': 'pid', 'id': '4242', 'start_time': 123456}``
    A process. ``start_time`` (clock ticks after boot, /proc/PID/stat) tells the process from a
    later one that got the same pid; ``describe_job`` reads it when the job is described.
``{'kind': 'slurm', 'id': '1234'}`` (optionally ``'slurm_conf': '/path/slurm.conf'``)
    A Slurm job, asked of the controller with ``squeue``.
``{'kind': 'systemd', 'id': 'job.service'}`` (optionally ``'scope': 'user'``)
    A systemd unit (``systemctl show``), of the system or of the running user.

``job_state(job)`` answers ``('running', detail)``, ``('ended', detail)`` or ``('unknown', detail)``.
Only a definite answer of the batch system or the kernel is 'ended'; a batch system that cannot be
asked (its controller down, a timeout) is 'unknown', and the refresher goes on refreshing: ending
the tokens of a job that still runs would break it. A new kind (HTCondor, PBS) is one more entry
in ``_PROBES`` and one more branch in ``describe_job``.

Internal to the oidc.tokens collection: no compatibility promise to anyone else.
"""

from __future__ import annotations

import os
import re
import subprocess

from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError

JOB_KINDS = ('pid', 'slurm', 'systemd')
COMMAND_TIMEOUT = 60

# squeue's states of a job that is over (man squeue, JOB STATE CODES). Every other state (PENDING,
# RUNNING, SUSPENDED, COMPLETING, REQUEUED, SPECIAL_EXIT, ...) may still run or run again.
SLURM_ENDED = frozenset(('BOOT_FAIL', 'CANCELLED', 'COMPLETED', 'DEADLINE', 'FAILED', 'NODE_FAIL', 'OUT_OF_MEMORY',
                         'PREEMPTED', 'REVOKED', 'TIMEOUT'))
# What squeue says of a job id the controller does not know (any more: it forgets ended jobs after MinJobAge).
SLURM_UNKNOWN_ID = 'Invalid job id specified'
SYSTEMD_ENDED = frozenset(('inactive', 'failed'))

_SLURM_ID = re.compile(r'^[0-9]+(_[0-9]+)?$')          # a job, or an element of an array job
_UNIT = re.compile(r'^[A-Za-z0-9:_.\\@-]+\.(service|scope|target)$')


class JobError(OidcTokensError):
    """A job that cannot be followed as described."""


def process_start_time(pid):
    """The start time of process ``pid`` (clock ticks after boot), or None when there is no such process."""
    try:
        with open('/proc/%d/stat' % int(pid), 'rb') as handle:
            data = handle.read().decode('ascii', 'replace')
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself.
    fields = data[data.rfind(')') + 2:].split()
    try:
        return int(fields[19])      # field 22 of the line, the 20th after the command name
    except (IndexError, ValueError):
        return None


def describe_job(kind, ident, slurm_conf=None, scope=None):
    """The job dict of ``kind`` and ``ident``, checked; for a process, with its start time now."""
    ident = str(ident if ident is not None else '').strip()
    if kind == 'pid':
        if not ident.isdigit() or int(ident) < 2:
            raise JobError('A job of kind pid needs a process id (a number above 1), not %r.' % ident)
        start_time = process_start_time(ident)
        if start_time is None:
            raise JobError('There is no process %s to follow.' % ident)
        return {'kind': 'pid', 'id': ident, 'start_time': start_time}
    if kind == 'slurm':
        if not _SLURM_ID.match(ident):
            raise JobError('A job of kind slurm needs a Slurm job id (1234, or 1234_5 for an array task), not %r.' % ident)
        job = {'kind': 'slurm', 'id': ident}
        if slurm_conf:
            if not os.path.isabs(slurm_conf):
                raise JobError('slurm_conf must be an absolute path, not %r.' % slurm_conf)
            job['slurm_conf'] = slurm_conf
        return job
    if kind == 'systemd':
        if not _UNIT.match(ident):
            raise JobError('A job of kind systemd needs a unit name (job.service, run-1234.scope), not %r.' % ident)
        if scope not in (None, 'system', 'user'):
            raise JobError('The scope of a systemd job is system or user, not %r.' % scope)
        return dict({'kind': 'systemd', 'id': ident}, **({'scope': scope} if scope == 'user' else {}))
    raise JobError('Unknown job kind %r (known: %s).' % (kind, ', '.join(JOB_KINDS)))


def job_label(job):
    return '%s job %s' % (job['kind'], job['id'])


def _run(argv, env=None):
    """(returncode, stdout, stderr) of a command, or None when it cannot be run (missing, timed out)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def _pid_state(job):
    start_time = process_start_time(job['id'])
    if start_time is None:
        return 'ended', 'process %s has exited' % job['id']
    if start_time != job.get('start_time'):
        return 'ended', 'process %s has exited (the pid now belongs to another process)' % job['id']
    return 'running', 'process %s runs' % job['id']


def _slurm_state(job):
    env = dict(os.environ)
    if job.get('slurm_conf'):
        env['SLURM_CONF'] = job['slurm_conf']
    done = _run(['squeue', '--noheader', '--states=all', '--jobs=%s' % job['id'], '--format=%T'], env=env)
    if done is None:
        return 'unknown', 'squeue could not be run'
    code, out, err = done
    if code != 0:
        if SLURM_UNKNOWN_ID in err:     # ended long enough ago for the controller to forget it
            return 'ended', 'Slurm no longer knows job %s' % job['id']
        return 'unknown', 'squeue failed: %s' % (err or out or 'exit status %d' % code)
    states = set(out.split())
    if not states:
        return 'ended', 'Slurm no longer lists job %s' % job['id']
    if states <= SLURM_ENDED:
        return 'ended', 'Slurm job %s is %s' % (job['id'], ', '.join(sorted(states)))
    return 'running', 'Slurm job %s is %s' % (job['id'], ', '.join(sorted(states)))


def _systemd_state(job):
    argv = ['systemctl'] + (['--user'] if job.get('scope') == 'user' else []) + [
        'show', '--property=ActiveState', '--value', job['id']]
    done = _run(argv)
    if done is None or done[0] != 0 or not done[1]:
        return 'unknown', 'systemctl could not tell: %s' % ((done and (done[2] or done[1])) or 'not run')
    if done[1] in SYSTEMD_ENDED:
        return 'ended', 'unit %s is %s' % (job['id'], done[1])
    return 'running', 'unit %s is %s' % (job['id'], done[1])


_PROBES = {'pid': _pid_state, 'slurm': _slurm_state, 'systemd': _systemd_state}


def job_state(job):
    """('running' | 'ended' | 'unknown', what was found), never raising."""
    probe = _PROBES.get((job or {}).get('kind'))
    if probe is None:
        return 'unknown', 'unknown job kind %r' % (job or {}).get('kind')
    try:
        return probe(job)
    except Exception as exc:   # a probe's own bug must not end a running job's tokens
        return 'unknown', '%s: %s' % (type(exc).__name__, exc)
