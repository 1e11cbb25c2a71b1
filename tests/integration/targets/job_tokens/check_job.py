"""Check what job_run.yml did on the local workers, after it ended (run as root).

    python check_job.py [--brief] [--no-job] [--no-counts] PROVIDER_JSON COUNTS_JSON TOKENS_JSON RESULTS_DIR DURATION
                        ACCOUNT USER...

PROVIDER_JSON is what the provider's helper (tests/support/provider.py or keycloak.py) wrote at `start`,
COUNTS_JSON what its `counts` printed after the teardown.

--brief prints one line per worker and the failed checks only (scripts/demo uses it). --no-job: the workers ran
no job that used the token (a job cancelled before it did); --no-counts: the provider served more than this job
(its counts are not checked).

- every worker's job used its bearer-token file every second for the whole job and never saw an
  invalid token, and the token was refreshed several times (the job outlived several lifetimes);
- every refresh token the workers held introspects inactive: the teardown revoked the last one;
- the provider saw one exchange per worker, a revocation per worker, no refused refresh;
- nothing is left: no account, bearer-token file, password file, refresher configuration or state,
  cron entry, systemd unit, or refresher process.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

from ansible_collections.oidc.tokens.plugins.module_utils._oauth import OAuthClient

FAILURES = []
BRIEF = False
NO_JOB = False
NO_COUNTS = False


def check(condition, message):
    if not condition or not BRIEF:
        print('%s %s' % ('ok  ' if condition else 'FAIL', message))
    if not condition:
        FAILURES.append(message)


def say(message):
    if not BRIEF:
        print(message)


def refresher_processes(uid, account):
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                argv = handle.read().split(b'\0')
            with open('/proc/%s/status' % pid, encoding='ascii', errors='replace') as handle:
                status = handle.read()
        except OSError:
            continue
        owner = [line.split()[1] for line in status.splitlines() if line.startswith('Uid:')]
        state = [line.split()[1] for line in status.splitlines() if line.startswith('State:')]
        if (owner == [str(uid)] and state != ['Z'] and any(b'oidc-tokens-refresher' in a for a in argv)
                and account.encode() in argv):
            found.append(int(pid))
    return found


def main(provider_json, counts_json, tokens_json, results_dir, duration, account, users):
    with open(provider_json, encoding='utf-8') as handle:
        op = json.load(handle)
    counts = {}
    if not NO_COUNTS:
        with open(counts_json, encoding='utf-8') as handle:
            counts = json.load(handle)
    with open(tokens_json, encoding='utf-8') as handle:
        tokens = json.load(handle)
    # Refresh tokens are introspected as the client they were issued to: Keycloak shows them to no other.
    owner = op['clients']['oidc-tokens-exchanger']
    exchanger = OAuthClient(op['issuer'], owner['client_id'], owner['client_secret'], ca_path=op['ca_path'])
    duration = float(duration)

    for user in users:
        entry = pwd.getpwnam(user)
        uid, home = entry.pw_uid, entry.pw_dir
        say('--- %s (uid %d)' % (user, uid))
        job = {}
        try:
            if not NO_JOB:
                with open(os.path.join(results_dir, '%s.json' % user), encoding='utf-8') as handle:
                    job = json.load(handle)
        except OSError as exc:
            check(False, '%s: the job left no summary: %s' % (user, exc))
        if job:
            say('     job: %(calls)d calls in %(seconds)s s, %(invalid)d invalid, %(distinct_tokens)d distinct '
                'tokens, least validity left when used %(least_seconds_left)s s, file %(token_file)s' % job)
            check(job['uid'] == uid, '%s: the job ran as the job user' % user)
            check(job['calls'] >= duration, '%s: the job used its token every second (%d calls in %s s)'
                  % (user, job['calls'], duration))
            check(job['invalid'] == 0, '%s: the job never saw an invalid token (%d invalid, %d missing, %d errors)'
                  % (user, job['invalid'], job['missing'], job['errors']))
            check(job['distinct_tokens'] >= 3, '%s: the token was refreshed while the job ran (%d distinct tokens)'
                  % (user, job['distinct_tokens']))
            # No runtime directory here: the job user's private directory under /run/oidc-tokens, never /tmp.
            check(job['token_file'] == '/run/oidc-tokens/%d/bt_u%d-%s' % (uid, uid, account),
                  '%s: the job found the account\'s own token file in its private directory /run/oidc-tokens/%d (%s)'
                  % (user, uid, job['token_file']))

        held = tokens.get(user) or {}
        check(held.get('seen_account') and held.get('last'), '%s: the watcher saw the account and its refresh token'
              % user)
        check(held.get('cron_while_running') is True, '%s: the cron entry was installed while the job ran' % user)
        seen = held.get('all') or []
        active = [i for i, token in enumerate(seen) if exchanger.introspect(token, 'refresh_token')['active']]
        check(seen and not active, '%s: all %d refresh tokens the worker held introspect inactive (the last one revoked, '
              'the others rotated)%s' % (user, len(seen), ' - active: %s' % active if active else ''))

        left = [path for path in (
            os.path.join(home, '.config', 'oidc-agent', account),
            '/tmp/bt_u%d' % uid,
            '/run/user/%d/bt_u%d-%s' % (uid, uid, account),
            '/run/oidc-tokens/%d/bt_u%d-%s' % (uid, uid, account),
            '/run/oidc-tokens/%d/%s.password' % (uid, account),
            os.path.join(home, '.config', 'oidc-tokens', 'refresher', account + '.json'),
            os.path.join(home, '.config', 'oidc-tokens', 'refresher', account + '.password'),
            os.path.join(home, '.local', 'state', 'oidc-tokens', account + '.pid'),
            os.path.join(home, '.local', 'state', 'oidc-tokens', account + '.state.json'),
            '/etc/systemd/system/oidc-tokens-refresher-%s-%s.service' % (user, account),
            '/etc/systemd/system/oidc-tokens-refresher-%s-%s.timer' % (user, account),
        ) if os.path.lexists(path)]
        check(not left, '%s: no account, token file, password, configuration, state or unit left %s'
              % (user, left or ''))
        agent_dir = os.path.join(home, '.config', 'oidc-agent')
        stray = [n for n in os.listdir(agent_dir) if n.startswith('.' + account)] if os.path.isdir(agent_dir) else []
        check(not stray, '%s: no lock or temporary file of the account left %s' % (user, stray or ''))
        listing = subprocess.run(['crontab', '-l', '-u', user], capture_output=True, text=True, check=False)
        check('oidc-tokens-refresher' not in listing.stdout, '%s: no cron entry left' % user)
        check(not refresher_processes(uid, account), '%s: no refresher process left' % user)
        if BRIEF:
            print('   %s: the job used its token %s times in %s s, %s invalid, %s distinct tokens; %d refresh tokens '
                  'held, all inactive now; nothing left on the worker'
                  % (user, job.get('calls'), job.get('seconds'), job.get('invalid'), job.get('distinct_tokens'),
                     len(seen)))

    if NO_COUNTS:
        return finish()
    requests, failed = counts['requests'], counts['failed']
    print('%s%s: %d exchanges, %d refreshes (%d refused), %d revocations, %d introspections'
          % ('   ' if BRIEF else '--- ', op.get('kind', 'provider'), requests['exchange'], requests['refresh'],
             failed['refresh'], requests['revocation'], requests['introspection']))
    check(requests['exchange'] - failed['exchange'] == len(users), 'the provider saw exactly one exchange per worker')
    # offline_access: auto asks with offline_access first; a provider that refuses it (Keycloak) is asked once more.
    refused = 0 if op.get('wants_offline_access', True) else len(users)
    check(failed['exchange'] == refused, 'the provider refused %d exchange(s), %d expected (offline_access asked for)'
          % (failed['exchange'], refused))
    check(not failed['refresh'], 'the provider refused no refresh (no refresh token was replayed)')
    check(requests['revocation'] - failed['revocation'] >= len(users), 'the provider saw a revocation per worker')
    return finish()


def finish():
    if FAILURES:
        print('%d check(s) failed' % len(FAILURES))
        return 1
    print('%sall checks passed' % ('   ' if BRIEF else ''))
    return 0


if __name__ == '__main__':
    argv = sys.argv[1:]
    while argv and argv[0] in ('--brief', '--no-job', '--no-counts'):
        BRIEF, NO_JOB, NO_COUNTS = BRIEF or argv[0] == '--brief', NO_JOB or argv[0] == '--no-job', \
            NO_COUNTS or argv[0] == '--no-counts'
        argv = argv[1:]
    sys.exit(main(argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], argv[6:]))
