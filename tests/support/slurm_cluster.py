# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A one-node Slurm cluster on this machine, for the tests: Debian's munge, slurmctld and slurmd, as root.

    python3 slurm_cluster.py start --dir DIR     prints {"slurm_conf": ..., "node": ..., "dir": ...} once the node is idle
    python3 slurm_cluster.py stop --dir DIR      stops the three daemons

Everything lives in DIR (created 0755: the job users' jobs read slurm.conf and reach munge's socket there):
its own munge key and socket, slurm.conf (clients find it through SLURM_CONF), state, spool and logs. No
systemd: the daemons are started directly and stopped by their pid files. Ports are chosen free, so the
cluster does not meet a Slurm of the machine. Jobs run as their users (slurmd runs as root); the node's
process tracking is proctrack/linuxproc, since no cgroup hierarchy is ours to use here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

DAEMONS = ('slurmd', 'slurmctld', 'munged')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def slurm_conf(directory, node, cpus):
    def path(*parts):
        return os.path.join(directory, *parts)
    return '\n'.join([
        '# A one-node test cluster of oidc.tokens (tests/support/slurm_cluster.py).',
        'ClusterName=oidctokens',
        'SlurmctldHost=%s' % node,
        'SlurmUser=root',
        'SlurmdUser=root',
        'AuthType=auth/munge',
        'CredType=cred/munge',
        'AuthInfo=socket=%s' % path('munge', 'munge.socket'),
        'SlurmctldPort=%d' % free_port(),
        'SlurmdPort=%d' % free_port(),
        'StateSaveLocation=%s' % path('state'),
        'SlurmdSpoolDir=%s' % path('spool'),
        'SlurmctldPidFile=%s' % path('slurmctld.pid'),
        'SlurmdPidFile=%s' % path('slurmd.pid'),
        'SlurmctldLogFile=%s' % path('log', 'slurmctld.log'),
        'SlurmdLogFile=%s' % path('log', 'slurmd.log'),
        'ProctrackType=proctrack/linuxproc',
        'TaskPlugin=task/none',
        'JobAcctGatherType=jobacct_gather/none',
        'SwitchType=switch/none',
        'MpiDefault=none',
        'SchedulerType=sched/builtin',
        'SelectType=select/cons_tres',
        'SelectTypeParameters=CR_Core',
        'ReturnToService=2',
        # Ended jobs stay listed for 30 s (squeue --states=all shows their end state), then are forgotten.
        'MinJobAge=30',
        'NodeName=%s CPUs=%d State=UNKNOWN' % (node, cpus),
        'PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP',
        '',
    ])


def run(argv, env=None):
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=120)
    if done.returncode != 0:
        raise SystemExit('slurm_cluster: %s failed: %s' % (' '.join(argv), (done.stderr or done.stdout).strip()))
    return done.stdout


def start(directory):
    directory = os.path.abspath(directory)
    for sub in ('', 'state', 'spool', 'log'):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
        os.chmod(os.path.join(directory, sub), 0o755)
    munge_dir = os.path.join(directory, 'munge')
    os.makedirs(munge_dir, mode=0o755, exist_ok=True)
    key = os.path.join(munge_dir, 'munge.key')
    if not os.path.exists(key):
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'wb') as handle:
            handle.write(os.urandom(1024))
    run(['munged', '--force', '--socket=%s' % os.path.join(munge_dir, 'munge.socket'), '--key-file=%s' % key,
         '--log-file=%s' % os.path.join(directory, 'log', 'munged.log'),
         '--pid-file=%s' % os.path.join(directory, 'munged.pid'), '--seed-file=%s' % os.path.join(munge_dir, 'seed')])
    node = socket.gethostname().split('.')[0]
    conf = os.path.join(directory, 'slurm.conf')
    with open(conf, 'w', encoding='utf-8') as handle:
        handle.write(slurm_conf(directory, node, os.cpu_count() or 1))
    os.chmod(conf, 0o644)
    env = dict(os.environ, SLURM_CONF=conf)
    run(['slurmctld', '-f', conf], env)
    run(['slurmd', '-f', conf], env)
    deadline = time.monotonic() + 60
    state = ''
    while time.monotonic() < deadline:
        done = subprocess.run(['sinfo', '--noheader', '--format=%T'], capture_output=True, text=True, env=env,
                              check=False)
        state = done.stdout.strip()
        if done.returncode == 0 and state in ('idle', 'mixed', 'allocated'):
            return {'slurm_conf': conf, 'node': node, 'dir': directory}
        time.sleep(0.5)
    stop(directory)
    raise SystemExit('slurm_cluster: the node did not become idle in 60 s (sinfo says %r); see %s'
                     % (state, os.path.join(directory, 'log')))


def stop(directory):
    for daemon in DAEMONS:
        pid_file = os.path.join(os.path.abspath(directory), '%s.pid' % daemon)
        try:
            with open(pid_file, encoding='ascii') as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('command', choices=('start', 'stop'))
    parser.add_argument('--dir', required=True)
    args = parser.parse_args(argv)
    if args.command == 'start':
        print(json.dumps(start(args.dir)))
    else:
        stop(args.dir)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
