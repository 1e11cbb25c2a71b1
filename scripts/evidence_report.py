"""Write docs/evidence.md (and its SVG plots) from the JSON figures scripts/evidence collects.

    python3 scripts/evidence_report.py JSON_DIR docs/evidence.md

JSON_DIR holds what the suites (faults.json, concurrency.json, security.json, bad_input.json,
suites.json) and the benchmarks (bench-*.json) wrote. Missing files leave their section saying so.
The plots go next to the JSON files when JSON_DIR is docs/evidence (else into docs/evidence too).
Standard library only.
"""

from __future__ import annotations

import ast
import html
import json
import math
import os
import sys

FINDINGS = [
    ('fixed', 'A JWT access token that fails verification is kept in the account',
     'plugins/module_utils/_tokens.py, access_token(): store.update() writes the refreshed '
     'account, including the new default access token in oidc_tokens.access_token, before verify_jwt() '
     'runs after the lock is released. When verification fails (alg none, another key: bad-input cases '
     'at-jwt-alg-none, at-jwt-wrong-key) the module fails, but the account file was rewritten and keeps '
     'the forged token: the next oidc_token with verify: false, the lookup without query, and the '
     'refresher hand it out from the account.',
     'plugins/module_utils/_tokens.py: with verify, a refreshed JWT is now checked inside the account '
     'lock, before anything is written; an answer whose token fails verification changes nothing '
     '(bad-input cases at-jwt-alg-none, at-jwt-wrong-key assert that).'),
    ('fixed', 'The lookup ignores options it does not know',
     'plugins/lookup/oidc_token.py, LookupModule.run(): set_options(direct=kwargs) drops unknown'
     ' keyword arguments, so lookup(..., min_valid_perod=600) (a typo) silently uses the default 60 s '
     '(bad-input case lookup-unknown-option).',
     'plugins/lookup/oidc_token.py: unknown keyword options now fail, naming them (bad-input case '
     'lookup-unknown-option).'),
    ('fixed', 'A refresh is replayed after a 502 or 504, which a gateway sends after the provider acted',
     'plugins/module_utils/_oauth.py, _NOT_PROCESSED_STATUSES (then 502, 503, 504) and OAuthClient._send(): a '
     'request that spends a credential is retried after 502 and 504 as if the provider had not processed '
     "it (also docs/architecture.md, section Retries). A reverse proxy answers 504 when the provider's answer came"
     ' too late and 502 when it came broken: the provider may have rotated the refresh token. The retry '
     'replays the spent token, a provider with reuse detection revokes the grant, and the access token a '
     'job is still using dies with it (fault tests '
     'test_a_gateway_error_after_the_provider_acted_is_not_replayed[502/504], a fault kind "gateway:N" of '
     'the proxy: forward, then answer N).',
     'plugins/module_utils/_oauth.py: a request that spends a credential is now repeated only after a 503;'
     ' after a 502 or 504 it fails with the "may have reached the provider" message (fault tests '
     'test_a_gateway_error_after_the_provider_acted_is_not_replayed[502/504]).'),
    ('fixed', 'Asking for an account that does not exist leaves a lock file',
     'plugins/module_utils/_account_store.py, AccountStore.update(): the lock .NAME.lock is created before '
     "_load() finds no account file; the empty lock file stays in the user's oidc-agent directory "
     '(bad-input case file-missing). The lookup likewise creates its cache directory and a lock file before '
     'it reads the account (plugins/lookup/oidc_token.py, token()).',
     'update() now reads and decrypts the file before it takes the lock, so a missing account, a wrong '
     'password or a damaged file leaves no lock file; the lookup asks the store directly when there is no '
     'account file, before it makes a cache directory or lock (unit tests '
     'test_update_of_a_missing_account_leaves_no_lock_file, '
     'test_missing_account_creates_no_cache_directory_or_lock). For an account file that exists but does not'
     ' open (wrong password, damaged), the lookup removes its cache lock again when it leaves no entry of the'
     ' account; a worker that was waiting on the removed file locks the one now at the path (bad-input cases'
     ' lookup-wrong-password, lookup-corrupt; unit tests test_collection_errors_become_ansible_errors, '
     'test_waiter_does_not_keep_a_removed_lock). Only the empty cache directory (0700) stays.'),
    ('fixed-benchmark', "Starting a job copied the refresher's library to each worker file by file (performance)",
     'roles/job_tokens/tasks/install.yml: every start made five package directories, wrote five __init__.py '
     'files and copied the six module_utils files to each worker with one copy task per file (each a stat, a '
     'transfer and a module run, through su): about 29 module runs per worker for the install alone. A profile '
     'of job_start.yml on 10 workers (wall time per task) put 50 of its 98 s into those tasks. Teardown looked '
     'for crontab in three places and for systemd units on hosts without systemd (7 more module runs).',
     'The role bundles the refresher and the module_utils, verbatim, into one zip application, built once per '
     'play on the controller (roles/job_tokens/files/bundle_refresher.py; byte-identical for the same sources, '
     'so a second start reports no change, which integration target job_tokens checks), and installs that one '
     'file: 6 module runs per worker instead of 29. Teardown removes the cron entry directly (a worker without '
     'crontab has none) and looks for units only where systemd runs or was chosen. Before (commit b61031a, 1 run '
     'each): 82.8 s start / 49.2 s teardown for 10 workers, 425 / 224 s for 50, 1849 / 1001 s for 200; now: '
     'the provisioning table. What remains is Ansible\'s own cost per task and host (about 0.2 s of wall time '
     'on 2 cores, about 30 module runs per worker over start and teardown). The bundle was later replaced by '
     'oidc.tokens.oidc_refresher: see the next finding.'),
    ('fixed-benchmark', 'Starting a job ran 23 module runs per worker, and its teardown 15 (performance)',
     'roles/job_tokens/tasks (start.yml, context.yml, install.yml, teardown.yml): start ran about 40 tasks per '
     'worker (14 set_fact, 6 stat; the paths computed in Jinja and again in the refresher; the refresher\'s '
     'internal files known to the role), 23 of them module runs, and teardown 15; a module run as the job user '
     'costs about 0.12 s per worker on 2 cores, so job_start.yml took 14x the wall time of a floor play of one '
     'oidc_token_exchange per worker (42 s against 2.8 s for 10 workers) and job_teardown.yml 10x its floor of '
     'one oidc_revoke (issue 13).',
     'The module oidc.tokens.oidc_refresher (plugins/module_utils/_refresher_host.py) owns the refresher\'s paths, '
     'the program (built from the module\'s own payload, byte-identical for the same collection), the password '
     'file, the exchange (as the job user, through _accounts.exchange_account, which oidc_token_exchange calls '
     'too), the configuration, the schedule, the start and the wait, and on absent the stop, the revocation and '
     'the purge. Start is one module run per worker, teardown one: the provisioning table gives both beside their '
     'floors.'),
    ('fixed', 'Every token request derived the account key under the account lock (performance)',
     'plugins/module_utils/_account_store.py, update(): _load() (one Argon2id derivation, about 80 ms and '
     '64 MiB) ran while the lock was held, so N processes asking for one account at once took N x 80 ms one '
     'after another, even when they all reused the kept access token (the 50-process test: about 4-6 s per '
     'round; only one core worked).',
     'update() derives the key before the lock from the salt the file has, then reads the file again under '
     'the lock and reuses the key while the salt is unchanged (it derives again only when another writer, '
     'e.g. oidc-agent or change_password, gave the file a new salt). The price: N callers at once now hold N x'
     ' 64 MiB for the ~0.1 s of their derivations, where the lock used to allow one at a time (the lookup '
     'still derives once per account, under its cache lock). Unit tests '
     'test_update_derives_its_key_while_another_process_holds_the_lock, '
     'test_update_derives_again_when_the_file_got_a_new_salt_meanwhile.'),
    ('limit', 'A refresh whose answer is lost costs the grant',
     'When the provider rotated the refresh token but the answer never arrived (connection reset after the'
     ' provider acted, an answer cut off, a request that stalled past the client timeout and was processed'
     " later, or the process killed between the provider's answer and the rename of the new file), the "
     'account keeps the spent refresh token. The collection does not replay it blindly (it is not '
     'retried), but the next use does, and a provider with reuse detection then revokes the grant. No '
     'client can avoid this; providers with a reuse grace period (Keycloak) or without reuse detection do '
     'not punish the replay.',
     'Documented. The message on the next use says to exchange a fresh subject token. The kill -9 counts '
     'show how rare the window is (a few per cent of random kills of a process refreshing in a tight '
     'loop).'),
]


def load(directory, name):
    try:
        with open(os.path.join(directory, name), encoding='utf-8') as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def fmt(value, digits=None):
    if value is None:
        return '–'
    if isinstance(value, float):
        if digits is not None:
            return ('%%.%df' % digits) % value
        if abs(value) >= 100:
            return '%.0f' % value
        if abs(value) >= 10:
            return '%.1f' % value
        return '%.2f' % value
    return str(value)


def stat(entry, unit='', digits=None):
    """'median unit (min–max, n runs)' of a summary dict."""
    if not entry or entry.get('median') is None:
        return '–'
    if entry['runs'] == 1:
        return '%s%s (1 run)' % (fmt(entry['median'], digits), unit)
    return '%s%s (%s–%s, %d runs)' % (fmt(entry['median'], digits), unit, fmt(entry['min'], digits),
                                      fmt(entry['max'], digits), entry['runs'])


def table(headers, rows):
    out = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join(' --- ' for _h in headers) + '|']
    for row in rows:
        out.append('| ' + ' | '.join(str(c).replace('|', '\\|').replace('\n', ' ') for c in row) + ' |')
    return '\n'.join(out)


def machine_line(data):
    m = (data or {}).get('machine') or {}
    if not m:
        return ''
    versions = m.get('versions') or {}
    parts = ['%s (%s CPUs%s, %s MiB)' % (m.get('cpu_model', m.get('machine', '?')), m.get('cpus'),
                                         ', load %s when recorded' % m['load_avg_1m'] if 'load_avg_1m' in m else '',
                                         m.get('mem_total_mib', '?')),
             m.get('os', ''), 'Linux %s' % m.get('kernel', '?'), 'Python %s' % m.get('python')]
    parts += [v if str(v).startswith(k) else '%s %s' % (k, v) for k, v in sorted(versions.items()) if v]
    commit = m.get('git_commit')
    if commit:
        parts.append('commit %s%s' % (commit, ' + local changes' if m.get('git_dirty') else ''))
    return '%s — %s' % (m.get('date_utc', '?'), ', '.join(p for p in parts if p))


# -- SVG, by hand -----------------------------------------------------------------------------------

def bar_svg(path, title, bars, unit, log=False, width=760):
    """A horizontal bar chart: bars = [(label, value, colour)]."""
    bars = [b for b in bars if b[1] is not None and b[1] > 0]
    if not bars:
        return False
    row, left, right, top = 30, 330, 110, 40
    height = top + row * len(bars) + 30
    values = [b[1] for b in bars]
    span = width - left - right
    if log:
        low = 10 ** math.floor(math.log10(min(values)))
        high = 10 ** math.ceil(math.log10(max(values)))
        if high <= low:
            high = low * 10

        def scale(v):
            return span * (math.log10(v) - math.log10(low)) / (math.log10(high) - math.log10(low))
    else:
        high = max(values) * 1.05

        def scale(v):
            return span * v / high
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
             'font-size="13">' % (width, height),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="10" y="22" font-size="15" font-weight="bold">%s</text>' % html.escape(title)]
    if log:
        decade = low
        while decade <= high * 1.0001:
            x = left + scale(decade)
            parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (x, top - 5, x, height - 25))
            parts.append('<text x="%.1f" y="%d" fill="#666" text-anchor="middle" font-size="11">%s %s</text>'
                         % (x, height - 10, fmt(float(decade)), unit))
            decade *= 10
    for i, (label, value, colour) in enumerate(bars):
        y = top + i * row
        w = max(1.0, scale(value))
        parts.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (left - 8, y + 18, html.escape(label)))
        parts.append('<rect x="%d" y="%d" width="%.1f" height="20" fill="%s"/>' % (left, y + 4, w, colour))
        parts.append('<text x="%.1f" y="%d">%s %s</text>' % (left + w + 6, y + 18, fmt(value), unit))
    parts.append('</svg>')
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write('\n'.join(parts) + '\n')
    return True


# -- sections ---------------------------------------------------------------------------------------

def tests_line(data):
    """'Tests: N passed, M failed (...)' of a suite's JSON."""
    tests = (data or {}).get('tests') or {}
    if not tests:
        return ''
    line = 'Tests of this suite in this run: %d passed, %d failed' % (tests.get('passed', 0), tests.get('failed', 0))
    if tests.get('failures'):
        line += ' (%s)' % ', '.join('`%s`' % f.split('::', 1)[-1] for f in tests['failures'])
    return line + '.\n\n'


def measured_line(data, shared):
    """'Measured on: ...' for a benchmark recorded on another occasion than the one named at the top."""
    line = machine_line(data)
    return 'Measured on: %s.\n\n' % line if line and line != shared else ''


def counts_table(data, keys):
    counts = (data or {}).get('counts', {})
    rows = [(label, fmt(counts.get(key, 0))) for key, label in keys if key in counts or not key.startswith('?')]
    return table(['what', 'count'], rows)


LAYERS = [('python', 'refresh', 'refresh'), ('python', 'exchange', 'exchange'), ('python', 'revoke', 'revoke'),
          ('ansible-playbook', 'oidc_token module', 'module oidc_token'), ('ansible-playbook', 'lookup', 'lookup'),
          ('ansible-playbook', 'exchange', 'module oidc_token_exchange'),
          ('ansible-playbook', 'revoke', 'module oidc_revoke'),
          ('refresher', 'once', 'refresher once')]


def faults_section(data):
    if not data:
        return '_Not run: no faults.json._\n'
    counts = data['counts']
    out = ['Every fault is injected by a real TCP/HTTP proxy between the collection and the real provider '
           '(`tests/support/fault_proxy.py`); the provider restart stops the provider and starts a new one on '
           'the same port, without any of the old grants.', '',
           table(['what', 'count'], [
               ('faults injected', fmt(counts.get('faults injected'))),
               ('operations tried', fmt(counts.get('operations tried'))),
               ('**account files lost or corrupted**', '**%s**' % fmt(counts.get('configs lost or corrupted', 0))),
               ('account files checked to decrypt, and modes checked (0700/0600)', fmt(counts.get('mode checks'))),
               ('mode violations', fmt(counts.get('mode violations', 0))),
               ('grants lost: the provider acted, its answer was lost (inherent, see Findings)',
                fmt(counts.get('grants lost (provider acted, answer lost)', 0))),
               ('orphan grants: an exchange was answered, the answer was lost',
                fmt(counts.get('orphan grants (exchange answered, answer lost)', 0))),
               ('provider restarts that lost every grant', fmt(counts.get('provider restarts', 0))),
               ('refresh tokens replayed after a 502/504 from a gateway (fixed, see Findings)',
                fmt(counts.get('refresh tokens replayed after a gateway 502', 0)
                    + counts.get('refresh tokens replayed after a gateway 504', 0))),
           ]), '',
           'Outcome of each operation under each fault (**ok**: succeeded after safe retries; **fails**: a '
           'clear error, the account file byte-identical; then *RT kept*: the provider never saw the request and '
           'the next refresh works, *grant lost*: the provider acted, the next refresh fails with "exchange a '
           'fresh subject token"). Requests that spend a credential (refresh, exchange) are retried only when '
           'they cannot have reached the provider; revocation is idempotent and is retried.', '']
    cells = {}
    for row in data.get('rows', []):
        key = (row['kind'], row['layer'], row['operation'])
        if row['outcome'] == 'ok':
            cell = 'ok'
        else:
            cell = 'fails'
            if row.get('grant') == 'alive':
                cell += ', RT kept'
            elif row.get('grant') == 'lost':
                cell += ', grant lost'
            elif row.get('grant') == 'orphan':
                cell += ', orphan grant'
        cells[key] = cell
    kinds = []
    for row in data.get('rows', []):
        if row['kind'] not in kinds and not row['kind'].startswith('sequence'):
            kinds.append(row['kind'])
    rows = []
    for kind in kinds:
        rows.append([kind] + [cells.get((kind, layer, op), '–') for layer, op, _label in LAYERS])
    out.append(table(['fault'] + [label for _l, _o, label in LAYERS], rows))
    out.append('')
    examples = []
    for kind in kinds:
        for row in data['rows']:
            if row['kind'] == kind and row['layer'] == 'ansible-playbook' and row['outcome'] != 'ok':
                examples.append((kind, '`%s`' % row['message'][:260]))
                break
    if examples:
        out += ['What the user sees (the module\'s failure message, from ansible-playbook):', '',
                table(['fault', 'message'], examples), '']
    loop = [r for r in data.get('rows', []) if r['kind'].startswith('sequence')]
    if loop:
        out += ['The refresher\'s loop against 8-second access tokens while 8 faults hit one refresh after another '
                '(503 twice, 502 twice, a reset, an HTML page, a 3-s stall, a 500, a 4 MiB answer, a redirect), a '
                'job reading the bearer-token file every 0.25 s and introspecting it: %s.' % loop[0]['message'], '']
    return '\n'.join(out)


def concurrency_section(data):
    if not data:
        return '_Not run: no concurrency.json._\n'
    c = data['counts']
    out = [table(['what', 'count'], [
        ('rounds of 50 processes asking for one account\'s token at once', fmt(c.get('rounds of 50 processes'))),
        ('token requests', fmt(c.get('round: calls'))),
        ('**failures**', '**%s**' % fmt(c.get('round: failures', 0))),
        ('tokens handed out inactive at the provider, or with less validity than asked',
         fmt(c.get('round: inactive tokens', 0) + c.get('round: short tokens', 0))),
        ('refreshes needed (the kept token had less than min_valid_period left, decided under the lock)',
         fmt(c.get('round: refreshes needed'))),
        ('refreshes at the provider', fmt(c.get('round: refreshes at provider'))),
        ('refreshes not needed', fmt(c.get('round: unneeded refreshes', 0))),
        ('refresh tokens refused by the provider (a replay would be)', fmt(c.get('round: refused at provider', 0))),
        ('grant alive after every round (RT on disk = the provider\'s current one)',
         'yes' if data.get('tests', {}).get('failed', 1) == 0 else 'see failures'),
        ('kill -9 of processes refreshing in a loop', fmt(c.get('kill -9 of writers'))),
        ('kill -9 of the refresher\'s loop', fmt(c.get('kill -9 of the refresher'))),
        ('**account files that did not decrypt after a kill**', '**%s**' % fmt(
            c.get('kills: account file does not decrypt', 0))),
        ('RT on disk = the provider\'s current one after the kill', fmt(
            c.get("kills: RT on disk is the provider's current one"))),
        ('RT lost because the kill fell between the provider\'s rotation and the rename (inherent)',
         fmt(c.get('kills: RT lost in the refresh window (inherent)', 0))),
        ('**RT lost otherwise**', '**%s**' % fmt(c.get('kills: RT lost outside the refresh window', 0))),
        ('refresh tokens replayed after a kill', fmt(c.get('kills: refresh tokens replayed (refused by the provider)',
                                                           0))),
    ])]
    for row in data.get('rows', []):
        if 'median_round_seconds' in row:
            out.append('')
            out.append('Access tokens lived %s s and every process wanted %s s of validity, so the kept token kept '
                       'running out during the rounds; a round took %s s (median). Each kill\'s moment is recorded: '
                       % (row['at_ttl'], row['min_valid_period'], row['median_round_seconds']))
        elif row.get('test', '').startswith('kill'):
            phases = ', '.join('%s: %s' % (k, v) for k, v in sorted(row.items()) if k.startswith('killed'))
            out.append('- %s: %s.' % (row['test'], phases))
    for note in data.get('notes', []):
        out.append('')
        out.append('Note: %s.' % note)
    return '\n'.join(out) + '\n'


def security_section(data):
    if not data:
        return '_Not run: no security.json._\n'
    c = data['counts']
    design = [(k[len('hits by design: '):], v) for k, v in sorted(c.items()) if k.startswith('hits by design')]
    kinds = ', '.join('%s %s' % (v, k.split(': ', 1)[1]) for k, v in sorted(c.items())
                      if k.startswith('secret values searched for: '))
    out = [table(['what', 'count'], [
        ('playbook runs at -vvvv (with ANSIBLE_LOG_PATH)', fmt(c.get('playbook runs at -vvvv'))),
        ('of them under umask 000', fmt(c.get('runs under umask 000'))),
        ('tasks run', fmt(c.get('tasks run'))),
        ('secret values searched for', '%s (%s)' % (fmt(c.get('secret values searched for')), kinds)),
        ('files scanned after the runs', fmt(c.get('files scanned'))),
        ('copies of the job user\'s files taken while the job ran', fmt(c.get('file copies scanned while running'))),
        ('bytes scanned', fmt(c.get('bytes scanned'))),
        ('hits in the bearer-token file (access tokens: allowed)', fmt(c.get('hits allowed (bearer-token file)', 0))),
    ] + [('hits in %s (by design, documented)' % k, fmt(v)) for k, v in design] + [
        ('**leaks**', '**%s**' % fmt(c.get('leaks', 0))),
        ('file mode and owner checks', fmt(c.get('mode checks'))),
        ('**mode violations (also under umask 000)**', '**%s**' % fmt(c.get('mode violations', 0))),
        ('control: planted secrets found by the scanner', fmt(c.get('control: planted secrets found'))),
    ])]
    for note in data.get('notes', []):
        out += ['', 'Note: %s.' % note]
    return '\n'.join(out) + '\n'


def bad_input_section(data):
    if not data:
        return '_Not run: no bad_input.json._\n'
    c = data['counts']
    out = [table(['what', 'count'], [
        ('cases', fmt(c.get('cases'))),
        ('a clear error (the message names what is wrong)', fmt(c.get('cases with a clear error'))),
        ('exit status of ansible-playbook not 0', fmt(c.get('cases with a non-zero exit'))),
        ('nothing written (account directory, home, runtime directory byte-identical)',
         fmt(c.get('cases that wrote nothing'))),
        ('of them leaving an empty lock file (see Findings)', fmt(c.get('cases that left only an empty lock file', 0))),
        ('of them leaving only the empty cache directory of the lookup (0700)',
         fmt(c.get('cases that left only an empty cache directory', 0))),
        ('secrets in the output', fmt(c.get('secrets in output', 0))),
        ('cases failing because of a known bug (see Findings)', fmt(c.get('cases failing because of a known bug', 0))),
    ]), '']
    rows = []
    for row in data.get('rows', []):
        verdict = 'pass' if row['clear'] and row['rc'] and row['nothing_written'] else 'FAIL'
        if row.get('known_bug'):
            verdict = 'known bug'
        rows.append((row['case'], row['what'], row['layer'], row['rc'], verdict, '`%s`' % row['message'][:160]))
    out.append('<details><summary>All %d cases</summary>\n' % len(rows))
    out.append(table(['case', 'input', 'run through', 'exit', 'result', 'message (start)'], rows))
    out.append('\n</details>')
    return '\n'.join(out) + '\n'


def store_section(data):
    if not data:
        return '_Not measured: no bench-store.json._\n'
    f, p = data['figures'], data['parameters']
    return table(['figure', 'median (min–max, runs)'], [
        ('one Argon2id derivation (opslimit %s, %s MiB)' % (p['argon2id_opslimit'], p['argon2id_memlimit_mib']),
         stat(f['derivation_ms'], ' ms')),
        ('peak memory added by a derivation (RSS)', stat(f['derivation_peak_rss_mib'], ' MiB')),
        ('encryptions per second with a derived key (%s-byte account)' % p['account_json_bytes'],
         stat(f['encrypt_per_s'], '/s')),
        ('decryptions per second with a derived key', stat(f['decrypt_per_s'], '/s')),
        ('store.load (one derivation)', stat(f['load_ms'], ' ms')),
        ('store.update (one derivation, atomic write with fsync)', stat(f['update_ms'], ' ms')),
    ]) + '\n'


def calls_section(data, plots):
    if not data:
        return '_Not measured: no bench-calls.json._\n'
    f, r, p = data['figures'], data['ratios'], data['parameters']
    out = [table(['per call', 'median (min–max, runs)', 'vs oidc-token'], [
        ('`oidc-token NAME` in a bash loop (oidc-agent, account loaded)', stat(f['oidc_token_per_call_ms'], ' ms'),
         '1'),
        ('lookup, once the worker has loaded it (cache hit)', stat(f['lookup_loaded_per_call_ms'], ' ms'),
         fmt(r.get('lookup_loaded_vs_oidc_token'))),
        ('lookup in a play, per evaluation (%s in one task loop, minus the loop without it)' % p.get('play_calls'),
         stat(f['lookup_in_play_per_call_ms'], ' ms'), fmt(r.get('lookup_in_play_vs_oidc_token'))),
        ('lookup, first call in a fresh worker (each host of a play), cache hit',
         stat(f['lookup_fresh_worker_cache_hit_ms'], ' ms'), fmt(r.get('lookup_fresh_worker_hit_vs_oidc_token'))),
        ('lookup, first call in a fresh worker, without the cache (one derivation)',
         stat(f['lookup_fresh_worker_no_cache_ms'], ' ms'), fmt(r.get('lookup_no_cache_vs_oidc_token'))),
        ('`ansible localhost -m debug -a "msg={{ lookup(...) }}"` in a bash loop',
         stat(f['ansible_adhoc_lookup_per_call_ms'], ' ms'), fmt(r.get('ansible_adhoc_vs_oidc_token'))),
    ])]
    if plots.get('calls'):
        out += ['', '![Per-call time, log scale](evidence/%s)' % plots['calls']]
    for note in data.get('notes', []):
        out += ['', 'Note: %s' % note]
    return '\n'.join(out) + '\n'


def option_count():
    """How many options the lookup resolves in every worker (its registered definitions, less the terms)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'plugins', 'lookup', 'oidc_token.py')
    with open(path, encoding='utf-8') as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['_OPTIONS_JSON']:
            return len(set(json.loads(ast.literal_eval(node.value))) - {'_terms'})
    return '?'


def hosts_section(data, plots, before=None):
    if not data:
        return '_Not measured: no bench-hosts.json._\n'
    f, p = data['figures'], data['parameters']
    if 'play_env_lookup_s' not in f:      # figures of the older benchmark, without the env lookup
        return '_Measured before the env lookup was played beside ours: run the benchmark again._\n'
    cpu, ratios = f['play_cpu_s'], data.get('ratios', {})
    out = ['The lookup\'s goal (issue 13): its per-host overhead within 2x that of `lookup(\'ansible.builtin.env\', '
           '...)` over %s hosts, still one refresh per access-token lifetime. Each run plays four plays side by side, '
           'in a rotating order: no lookup (the **floor**), `ansible.builtin.env`, the cheapest collection lookup '
           '(`bench.trivial.constant`) and `oidc.tokens.oidc_token` '
           '(account %s; token cache %s, so every run includes the one refresh and the one Argon2id derivation). '
           'A lookup\'s overhead is its play minus the floor of the same run, in wall time and in CPU time '
           '(ansible-playbook and all its workers). `ansible_connection: local`, forks %s, one task of `%s`.'
           % (p['hosts'], p.get('account', '?'), p.get('cache', '?'), p['forks'], p['module']), '',
           table(['figure', 'median (min–max, runs)'], [
               ('play without a lookup (**floor**)', stat(f['play_without_lookup_s'], ' s')),
               ('play with `lookup(\'ansible.builtin.env\', ...)`', stat(f['play_env_lookup_s'], ' s')),
               ('play with `lookup(\'oidc.tokens.oidc_token\', ...)`', stat(f['play_with_lookup_s'], ' s')),
               ('per-host overhead, wall / CPU time, the cheapest collection lookup (`bench.trivial.constant`, returns '
                'its terms)', '%s / %s' % (stat(f['trivial_collection_overhead_per_host_ms'], ' ms'),
                                           stat(f['trivial_collection_cpu_overhead_per_host_ms'], ' ms'))
                if 'trivial_collection_overhead_per_host_ms' in f else '_not measured_'),
               ('per-host overhead, wall time, `ansible.builtin.env`', stat(f['env_overhead_per_host_ms'], ' ms')),
               ('per-host overhead, wall time, `oidc.tokens.oidc_token`', stat(f['overhead_per_host_ms'], ' ms')),
               ('**ratio oidc_token / env, wall time** (per run)', stat(f['overhead_ratio_ours_vs_env_per_run'])),
               ('CPU time of the play: floor / env / oidc_token', '%s / %s / %s' % (
                   stat(cpu['floor'], ' s'), stat(cpu['env'], ' s'), stat(cpu['ours'], ' s'))),
               ('per-host overhead, CPU time, `ansible.builtin.env`', stat(f['env_cpu_overhead_per_host_ms'], ' ms')),
               ('per-host overhead, CPU time, `oidc.tokens.oidc_token`', stat(f['cpu_overhead_per_host_ms'], ' ms')),
               ('**ratio oidc_token / env, CPU time** (per run)', stat(f['cpu_overhead_ratio_ours_vs_env_per_run'])),
               ('ratios of the medians, wall / CPU',
                '%s / %s' % (fmt(ratios.get('overhead_ours_vs_env'), 3), fmt(ratios.get('cpu_overhead_ours_vs_env'), 3))),
               ('refreshes at the provider per run', stat(f['provider_refreshes_per_run'])),
               ('requests to the token endpoint per run', stat(f['provider_token_requests_per_run'])),
               ('Argon2id derivations per run, with the lookup', stat(f['argon2id_derivations_per_run'])),
           ])]
    wall_ratio = ratios.get('overhead_ours_vs_env')
    if wall_ratio is not None and wall_ratio > 2:
        out += ['', '**The 2x goal is not reached** (%sx in wall time, %sx in CPU time). What ours pays beyond '
                '`ansible.builtin.env` in every worker: being found and loaded as a collection plugin (see the '
                'trivial lookup below); loading its four hit-path modules (by path, so that Python reads their '
                'bytecode, where Ansible\'s collection loader would compile them from source in every worker); '
                'resolving its %s options from the task, the host\'s variables, '
                'the environment and `ansible.cfg` (`set_options`); one `stat` of the account file and one read of '
                'the cache entry. Each run also holds the one refresh and the one Argon2id derivation, during which '
                'the other workers wait for the account\'s lock.' % (
                    fmt(wall_ratio, 3), fmt(ratios.get('cpu_overhead_ours_vs_env'), 3), option_count())]
        if 'trivial_collection_overhead_per_host_ms' in f:
            out[-1] += (' The cheapest lookup a collection can have (`bench.trivial.constant`, which only returns '
                        'its terms) costs %s of wall time and %s of CPU time per host in the same runs, already '
                        'more than `ansible.builtin.env`.' % (
                            fmt(f['trivial_collection_overhead_per_host_ms']['median']) + ' ms',
                            fmt(f['trivial_collection_cpu_overhead_per_host_ms']['median']) + ' ms'))
        if p.get('bytecode'):
            out[-1] += (' Python wrote and read bytecode in these runs, as on a user\'s controller; with '
                        '`PYTHONDONTWRITEBYTECODE` set (as on this machine, and in the runs of '
                        '`bench-hosts-before.json`) every plugin file is compiled in every worker as well.')
    elif wall_ratio is not None:
        per_run = f['overhead_ratio_ours_vs_env_per_run']
        above = sum(1 for value in per_run.get('values', ()) if value > 2)
        out += ['', '**The 2x goal is reached** in the medians of %d runs (%sx in wall time, %sx in CPU time). The '
                'overheads are a few milliseconds per host, differences between plays of about %s s whose floor '
                'alone varies by %s s from run to run: single runs scatter (the wall-time ratio of a run is above 2 '
                'in %d of the %d runs with a positive `ansible.builtin.env` overhead, and that overhead is not '
                'positive in %d runs), so only a median of many runs says anything, and the benchmark runs the four '
                'plays side by side in every run.' % (
                    f['play_without_lookup_s']['runs'], fmt(wall_ratio, 3), fmt(ratios.get('cpu_overhead_ours_vs_env'), 3),
                    fmt(f['play_without_lookup_s']['median']),
                    fmt(f['play_without_lookup_s']['max'] - f['play_without_lookup_s']['min']),
                    above, per_run['runs'], f['env_overhead_per_host_ms']['runs'] - per_run['runs'])]
    if before and 'cpu_overhead_per_host_ms' in before.get('figures', {}):
        b = before['figures']
        out += ['', 'Before the lookup registered its options and split its miss path (issue 13; '
                '`docs/evidence/bench-hosts-before.json`, %s): per-host overhead %s (wall) and %s (CPU) for '
                '`oidc.tokens.oidc_token`, %s and %s for `ansible.builtin.env` (on the same machine busy with other '
                'work, load about 7: compare the ratios, not the milliseconds).'
                % (before.get('machine', {}).get('git_commit') or 'commit 6d8a23d', stat(b['overhead_per_host_ms'], ' ms'),
                   stat(b['cpu_overhead_per_host_ms'], ' ms'), stat(b['env_overhead_per_host_ms'], ' ms'),
                   stat(b['env_cpu_overhead_per_host_ms'], ' ms'))]
    if plots.get('hosts'):
        out += ['', '![Play wall time](evidence/%s)' % plots['hosts']]
    return '\n'.join(out) + '\n'


def provisioning_section(data, plots):
    if not data:
        return '_Not measured: no bench-provisioning.json._\n'
    rows = []
    for size, e in sorted(data['figures'].items(), key=lambda kv: int(kv[0])):
        if 'start_floor_ratio' not in e:
            continue    # runs of the benchmark before it played the floors
        rows.append((size, stat(e['start_s'], ' s'), stat(e['floor_start_s'], ' s'), stat(e['start_floor_ratio'], 'x'),
                     fmt(e['module_runs_per_worker_start']['median']), stat(e['teardown_s'], ' s'),
                     stat(e['floor_teardown_s'], ' s'), stat(e['teardown_floor_ratio'], 'x'),
                     fmt(e['module_runs_per_worker_teardown']['median']), fmt(e['exchanges_per_worker']['median']),
                     fmt(e['revocations_per_worker']['median']), fmt(e['refreshes_per_worker_at_start']['median'])))
    p = data['parameters']
    become = 'sudo with pipelining' if p.get('pipelining') else p.get('become_method', 'su')
    values = (p['forks'], become, p['scheduler'], p.get('runs_wanted', '?'), fmt(p.get('budget_minutes')))
    measured = data.get('runs_measured') or {}
    when = ''
    if measured.get('first'):
        commits = measured.get('commits') or ['?']
        when = (' The runs were made from %s to %s, of commit%s %s; runs of the same code and parameters add up over '
                'sessions (`--resume`).' % (measured['first'], measured['last'], 's' if len(commits) > 1 else '',
                                            ', '.join(commits)))
    out = ['`job_start.yml` then `job_teardown.yml` at forks %s; each worker is a local inventory host with its own '
           'Unix job user (become via %s) and its own refresher (scheduler: %s), serving a valid token when start '
           'returns. Each run plays the **floors** beside them: one `oidc_token_exchange` per worker as the job user '
           '(start\'s), one `oidc_revoke` per worker (teardown\'s); the goals (issue 13) are start within 3x and '
           'teardown within 2x of their floors. Module runs per worker count the tasks that ran a module on the '
           'worker. The physical limit is one exchange and one revocation per worker. Runs per size: %s wanted, as '
           'many as a time budget of %s minutes allowed (at least one; each figure says how many). A size with no run '
           'of the current code has no row.' % values + when, '',
           table(['workers', 'start', 'its floor', '**start / floor**', 'module runs / worker', 'teardown',
                  'its floor', '**teardown / floor**', 'module runs / worker', 'exchanges / worker',
                  'revocations / worker', 'refreshes / worker at start'], rows)]
    if plots.get('provisioning'):
        out += ['', '![Provisioning wall time](evidence/%s)' % plots['provisioning']]
    return '\n'.join(out) + '\n'


def plots_for(figures_dir, calls, hosts, provisioning):
    os.makedirs(figures_dir, exist_ok=True)
    plots = {}
    if calls:
        f = calls['figures']
        bars = [('oidc-token NAME (oidc-agent)', f['oidc_token_per_call_ms']['median'], '#4c72b0'),
                ('lookup, loaded, cache hit', f['lookup_loaded_per_call_ms']['median'], '#55a868'),
                ('lookup in a play, per evaluation', f['lookup_in_play_per_call_ms']['median'], '#55a868'),
                ('lookup, fresh worker, cache hit', f['lookup_fresh_worker_cache_hit_ms']['median'], '#55a868'),
                ('lookup, fresh worker, no cache', f['lookup_fresh_worker_no_cache_ms']['median'], '#dd8452'),
                ('ansible -m debug with the lookup', f['ansible_adhoc_lookup_per_call_ms']['median'], '#c44e52')]
        if bar_svg(os.path.join(figures_dir, 'token-calls.svg'), 'Access token, time per call (median, log scale)',
                   bars, 'ms', log=True):
            plots['calls'] = 'token-calls.svg'
    if hosts:
        f = hosts['figures']
        n = hosts['parameters']['hosts']
        if bar_svg(os.path.join(figures_dir, 'play-hosts.svg'), 'A play over %d hosts, wall time (median)' % n,
                   [('with oidc.tokens.oidc_token', f['play_with_lookup_s']['median'], '#55a868'),
                    ('with ansible.builtin.env', f.get('play_env_lookup_s', {}).get('median'), '#dd8452'),
                    ('without a lookup (floor)', f['play_without_lookup_s']['median'], '#4c72b0')], 's'):
            plots['hosts'] = 'play-hosts.svg'
    if provisioning:
        bars = []
        for size, e in sorted(provisioning['figures'].items(), key=lambda kv: int(kv[0])):
            bars.append(('%s workers: start' % size, e['start_s']['median'], '#55a868'))
            if 'floor_start_s' in e:
                bars.append(('%s workers: its floor' % size, e['floor_start_s']['median'], '#8fbc8f'))
            bars.append(('%s workers: teardown' % size, e['teardown_s']['median'], '#4c72b0'))
            if 'floor_teardown_s' in e:
                bars.append(('%s workers: its floor' % size, e['floor_teardown_s']['median'], '#9db4d6'))
        if bar_svg(os.path.join(figures_dir, 'provisioning.svg'), 'job_tokens at forks 20, wall time (median)', bars,
                   's'):
            plots['provisioning'] = 'provisioning.svg'
    return plots


def main(json_dir, md_path):
    suites = load(json_dir, 'suites.json')
    faults, concurrency = load(json_dir, 'faults.json'), load(json_dir, 'concurrency.json')
    security, bad = load(json_dir, 'security.json'), load(json_dir, 'bad_input.json')
    store, calls = load(json_dir, 'bench-store.json'), load(json_dir, 'bench-calls.json')
    hosts, provisioning = load(json_dir, 'bench-hosts.json'), load(json_dir, 'bench-provisioning.json')
    figures_dir = os.path.join(os.path.dirname(os.path.abspath(md_path)), 'evidence')
    plots = plots_for(figures_dir, calls, hosts, provisioning)
    any_suite = faults or concurrency or security or bad
    machine = machine_line(faults or concurrency or security or bad or store)
    bench_machine = machine_line(store or calls or hosts or provisioning)

    out = ['# Evidence: reliability, security, performance', '',
           '<!-- Generated by scripts/evidence_report.py from docs/evidence/*.json; run scripts/evidence. -->',
           '',
           'What users of a credential tool should not have to take on trust, measured against a real '
           'node-oidc-provider on 127.0.0.1 (rotating refresh tokens with reuse detection), Debian\'s oidc-agent '
           'and the collection driven the way users drive it: `ansible-playbook`, the lookup in a play, the '
           'role\'s on-host refresher, and the Python layer the modules call.', '',
           '## Reproduce', '',
           '```sh',
           'scripts/evidence           # suites + benchmarks; rewrites docs/evidence/*.json and this page',
           'scripts/evidence --ci      # the CI subset: faults, concurrency and crashes, security scan, bad input',
           'scripts/evidence --report  # this page again from docs/evidence/*.json',
           '```', '',
           'The CI subset is part of `scripts/test`, the test command CI runs (`scripts/test evidence` runs it '
           'alone); the benchmarks are not.', '',
           'Needs what `scripts/setup` installs and root (the security scan and the provisioning benchmark create '
           'Unix job users and remove them). The suites live in `tests/evidence/` (pytest; they reuse the fixtures '
           'of `tests/functional/`), the benchmarks in `tests/benchmarks/`. Each suite prints its counts at the end '
           '(`.venv/bin/python -m pytest tests/evidence -q`). No test asserts a time; the benchmarks assert nothing.',
           '',
           table(['file', 'what it shows', 'alone'], [
               ('`tests/evidence/test_faults.py`', 'faults between client and provider, for every path',
                '`.venv/bin/python -m pytest tests/evidence/test_faults.py`'),
               ('`tests/evidence/test_concurrency.py`', '50 processes x 20 rounds; kill -9 of writers and of the '
                'refresher', '`... tests/evidence/test_concurrency.py`'),
               ('`tests/evidence/test_security_scan.py`', 'secrets in outputs and files at -vvvv; modes under umask '
                '000', '`... tests/evidence/test_security_scan.py` (root)'),
               ('`tests/evidence/test_bad_input.py`', 'the bad-input corpus', '`... tests/evidence/test_bad_input.py '
                '-k CASE`'),
               ('`tests/benchmarks/bench_store_runs.py`', 'Argon2id and the store', '`.venv/bin/python '
                'tests/benchmarks/bench_store_runs.py`'),
               ('`tests/benchmarks/bench_token_calls.py`', 'oidc-token against the lookup, per call', '`... '
                'bench_token_calls.py`'),
               ('`tests/benchmarks/bench_play_hosts.py`', 'a play over 500 hosts: no lookup, ansible.builtin.env, the lookup',
                '`... bench_play_hosts.py --hosts 500`'),
               ('`tests/benchmarks/bench_provisioning.py`', 'job_tokens start/teardown for 10, 50, 200 workers',
                '`... bench_provisioning.py --workers 10,50,200 [--out F --resume]` (root; `--resume` adds runs of '
                'the same code to F)'),
           ]), '',
           'The helpers: `tests/support/fault_proxy.py` (the fault-injecting proxy, also a recording proxy for the '
           'secret scan), `tests/support/evidence.py` (running Ansible as users do, accounts, modes, the secret '
           'scanner, the refresher), `tests/support/callback_plugins/oidc_evidence_results.py` (task results for '
           'the assertions, without tokens), `tests/support/marked_refresher.py` (the refresher with step marks for '
           'the crash test), `scripts/evidence_report.py` (this page).', '']
    if suites:
        out += ['Last suite run: %s s wall time for the four suites (two pytest processes side by side), exit status '
                '%s, %s.' % (suites['seconds'], 'passed' if not any(suites['exit_status'].values()) else 'FAILED',
                             suites['date_utc']), '']
    if machine:
        out += ['Suites measured on: %s.' % machine, '']
    if bench_machine and bench_machine != machine:
        out += ['Benchmarks measured on: %s.' % bench_machine, '']
    out += ['## Reliability: faults', '', tests_line(faults) + faults_section(faults), '',
            '## Reliability: concurrency and crashes', '',
            tests_line(concurrency) + concurrency_section(concurrency), '',
            '## Security: where the secrets go', '',
            'Every flow of the integration targets at `-vvvv` with `ANSIBLE_LOG_PATH` (modules, lookup, '
            '`oidc_account(_info)`, failing tasks, check and diff mode; the role `job_tokens` through '
            '`job_run.yml` for a real job user, whose refresher rotates refresh tokens during the job), then every '
            'output and every file left (and the job user\'s files as they were while the job ran) searched for '
            'every secret value that crossed the wire or was used, in raw, URL-encoded, JSON-escaped and base64 '
            'forms.', '', tests_line(security) + security_section(security), '',
            '## Security: bad input', '', tests_line(bad) + bad_input_section(bad), '',
            '## Performance', '',
            'Benchmarks, not tests: each prints its figures; medians of several runs, each figure says how many. '
            'The machine was shared with other work while they ran; compare figures of one run with each other '
            'rather than with another machine.', '',
            '### The account store', '', measured_line(store, bench_machine) + store_section(store), '',
            '### oidc-token against the lookup', '', measured_line(calls, bench_machine) + calls_section(calls, plots),
            '',
            '### A play over many hosts', '', measured_line(hosts, bench_machine) + hosts_section(hosts, plots, load(json_dir, 'bench-hosts-before.json')), '',
            '### Provisioning workers with job_tokens', '',
            measured_line(provisioning, bench_machine) + provisioning_section(provisioning, plots), '',
            '## Findings', '',
            'What the suites and benchmarks found in the collection (file and function as found), and the limits they '
            'measure:', '']
    for kind, title, where, fix in FINDINGS:
        if kind in ('fixed', 'fixed-benchmark'):
            found = 'the benchmarks' if kind == 'fixed-benchmark' else 'the suites'
            out += ['- **%s** (found by %s, fixed). %s *Fix:* %s' % (title, found, where, fix)]
        else:
            out += ['- **%s** (%s). %s *Suggested:* %s' % (title, kind, where, fix)]
    out.append('')
    if not any_suite:
        out.insert(6, '_No suite figures yet: run scripts/evidence._\n')
    with open(md_path + '.tmp', 'w', encoding='utf-8') as handle:
        handle.write('\n'.join(out))
    os.replace(md_path + '.tmp', md_path)
    print('wrote %s (plots: %s)' % (md_path, ', '.join(sorted(plots.values())) or 'none'))
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
