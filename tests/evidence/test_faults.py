"""Faults between the collection and a real provider, injected by a real TCP/HTTP proxy.

For every fault kind and every user-facing path (the modules through ansible-playbook, the lookup
in a play, the on-host refresher, and the same calls through the Python layer the modules use:
refresh, exchange, revoke) this checks what a user cares about:

- it retried only where that is safe (a request that spends a refresh token or a subject token is
  not repeated once it may have reached the provider; idempotent ones are),
- it ended with a clear message that names the fault,
- the account file is byte-identical unless a new refresh token was really received (then the RT
  on disk is the provider's current one), and every account file still decrypts,
- the refresher keeps the still-valid access token in the bearer-token file while it retries.

A fault after which the provider did act but the client never saw the answer (a reset or a cut-off
answer to a refresh) costs the grant: the provider rotated the refresh token, the client still has
the old one. No client can avoid that; the test shows that the next attempt says so clearly
("exchange a fresh subject token") and counts it as ``grants lost (provider acted, answer lost)``.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ansible_collections.oidc.tokens.plugins.module_utils import _oauth, _options, _tokens
from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError
from evidence import (
    EXCHANGER, LEDGER, SCOPE, Ansible, RefresherJob, exchange_account, introspect, load_account, play,
    private_mode_violations, proxied_provider, rt_active, sha, stop_process, tree_mode_violations)

SUITE = 'faults'
PASSWORD = 'faults-suite password'
PW_ENV = 'OIDC_EVIDENCE_PW'
TOKEN_POST = 'POST /token HTTP'
REVOKE_POST = 'POST /token/revocation'
DISCOVERY_GET = 'GET /.well-known/openid-configuration'
# The client's timeout in this suite (option timeout). Stalls last 30 s, well past it; the other
# faults must not meet it: 3 s was too short for 39 operations at once in one process on 2 busy cores.
TIMEOUT = 10
STALL = 30


class Kind(object):
    """One fault kind: what to queue for one operation, and what must come of it.

    spend: for a request that spends a credential (refresh, exchange); idem: for an idempotent one
    (revocation). Each is (queue entries matched against the request line, expected) where expected is
    'ok' or a regular expression the error message must match. grant: what becomes of the grant when a
    refresh failed ('alive': the provider never saw it; 'lost': it acted, the answer was lost).
    """

    def __init__(self, name, what, spend, idem, grant, refuse=None):
        self.name, self.what, self.spend, self.idem, self.grant, self.refuse = (
            name, what, spend, idem, grant, refuse)


KINDS = [
    Kind('refused_briefly', 'connection refused for 1.2 s (provider restarting), then back',
         ([], 'ok'), ([], 'ok'), None, refuse=1.2),
    Kind('refused', 'connection refused for longer than the retries last',
         ([], r'failed after 4 attempt\(s\).*[Cc]onnection refused'),
         ([], r'failed after 4 attempt\(s\).*[Cc]onnection refused'), 'alive', refuse=60),
    Kind('reset_after', 'the provider acts, the connection is reset before the answer',
         (['reset_after'], r'failed after 1 attempt\(s\).*not repeated'), (['reset_after', 'pass'], 'ok'), 'lost'),
    Kind('reset_mid', 'the provider acts, the connection is reset in the middle of the answer',
         (['reset_mid'], r'failed after 1 attempt\(s\).*not repeated'), (['reset_mid', 'pass'], 'ok'), 'lost'),
    Kind('5xx_twice', 'HTTP 503 (HTML page) twice, then the provider answers',
         (['status:503', 'status:503', 'pass'], 'ok'), (['status:503', 'status:503', 'pass'], 'ok'), None),
    Kind('5xx_persistent', 'HTTP 502 (HTML page) on every attempt',
         (['status:502'] * 4, r'HTTP 502 with text/html instead of a JSON object \(an HTML page titled'),
         (['status:502'] * 4, r'HTTP 502 with text/html'), 'alive'),
    Kind('500_once', 'HTTP 500 once (the provider may have acted)',
         (['status:500'], r'HTTP 500 with text/html'), (['status:500', 'pass'], 'ok'), 'alive'),
    Kind('stall_30s', 'the provider hangs for 30 s, then drops the request (client timeout %d s)' % TIMEOUT,
         (['stall_drop:%d' % STALL], r'timed out.*not repeated'), (['stall_drop:%d' % STALL, 'pass'], 'ok'),
         'alive'),
    Kind('truncated_json', 'the provider acts, its JSON answer is cut in half (consistent Content-Length)',
         (['truncate_json'], r'HTTP 200 with application/json instead of a JSON object'), (['truncate_json'], 'ok'),
         'lost'),
    Kind('truncated_stream', 'the provider acts, the answer ends early (Content-Length not reached)',
         (['truncate'], r'failed after 1 attempt\(s\).*not repeated'), (['truncate'], 'ok'), 'lost'),
    Kind('html_200', 'an HTML page with HTTP 200 (a captive portal)',
         (['html'], r'HTTP 200 with text/html instead of a JSON object \(an HTML page titled .Sign in to the network'),
         (['html'], r'HTTP 200 with text/html'), 'alive'),
    Kind('huge', 'a 4 MiB answer',
         (['huge'], r'larger than 1048576 bytes'), (['huge'], r'larger than 1048576 bytes'), 'alive'),
    Kind('redirect', 'a redirect to another host',
         (['redirect:https://evil.example/token'], r'redirect \(HTTP 302\) to https://evil.example/token.*not followed'),
         (['redirect:https://evil.example/token'], r'redirect \(HTTP 302\)'), 'alive'),
]
KIND_IDS = [k.name for k in KINDS]


# -- the provider behind the proxy ---------------------------------------------------------------------

class Site(object):
    """A provider whose issuer is a fault proxy's address; accounts and Ansible in one directory."""

    def __init__(self, provider_factory, workdir, **switches):
        self.provider, self.proxy = proxied_provider(provider_factory, **switches)
        self.issuer = self.proxy.url
        self.dir = str(workdir)
        self.config_dir = os.path.join(self.dir, 'accounts')
        self.store = AccountStore(self.config_dir)
        self.ansible = Ansible(os.path.join(self.dir, 'ansible'), env={PW_ENV: PASSWORD})
        self.counter = 0
        self.lock = threading.Lock()
        self.injected_before = 0

    def new_account(self, prefix, keep_access_token=False):
        with self.lock:
            self.counter += 1
            name = '%s-%d' % (prefix, self.counter)
        exchange_account(self.provider, self.config_dir, name, PASSWORD, keep_access_token=keep_access_token)
        return name

    def rt(self, name):
        return load_account(self.config_dir, name, PASSWORD)['refresh_token']

    def inject(self, entries, match, body=None):
        for entry in entries:
            self.proxy.push(entry, match=match, body=body)

    def settle(self):
        """Forget leftover faults, listen again; count the faults this step injected."""
        self.proxy.clear()
        self.proxy.resume()
        LEDGER.add(SUITE, 'faults injected', self.proxy.injected - self.injected_before)
        self.injected_before = self.proxy.injected

    def stop(self):
        self.proxy.stop()


@pytest.fixture(scope='module')
def site(provider_factory, tmp_path_factory):
    # The subject tokens are issued before the plays meeting the faults (stalls, a 60-s refusal) run, all
    # within minutes on a busy machine: they must outlive those plays, as a user's fresh login would.
    s = Site(provider_factory, tmp_path_factory.mktemp('faults'), user_at_ttl=900)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _fresh_process_state():
    # Each operation starts like a new module process: no discovery document cached.
    _oauth._METADATA_CACHE.clear()
    yield
    _oauth._METADATA_CACHE.clear()


def options(**overrides):
    values = dict(issuer=None, client_id=None, client_secret=None, auth_method=None, ca_path=None,
                  validate_certs=True, timeout=TIMEOUT, retries=3, allow_insecure_http=False)
    values.update(overrides)
    return values.get


def check_accounts(site, *names):
    """The accounts an operation touched still decrypt (count those that do not: must be 0); the
    directory and every file in it are still 0700/0600."""
    lost = []
    for name in names:
        if not site.store.exists(name):
            continue
        try:
            site.store.load(name, PASSWORD)
        except OidcTokensError as exc:
            lost.append('%s: %s' % (name, exc))
    LEDGER.add(SUITE, 'configs lost or corrupted', len(lost))
    bad_modes = tree_mode_violations(site.config_dir)
    LEDGER.add(SUITE, 'mode checks', 1)
    LEDGER.add(SUITE, 'mode violations', len(bad_modes))
    assert not lost, lost
    assert not bad_modes, bad_modes


def check_all_accounts(site):
    check_accounts(site, *site.store.list())


def expect(outcome, expected, what):
    """outcome: ('ok', None) or ('failed', message)."""
    status, message = outcome
    if expected == 'ok':
        assert status == 'ok', '%s should have succeeded after retries, failed with: %s' % (what, message)
    else:
        assert status == 'failed', '%s should have failed' % what
        assert re.search(expected, message, re.S), '%s: unclear message %r (want /%s/)' % (what, message, expected)
        assert PASSWORD not in message


def record(kind, layer, operation, outcome, identical, grant, requests):
    LEDGER.add(SUITE, 'operations tried')
    LEDGER.row(SUITE, kind=kind.name, layer=layer, operation=operation, outcome=outcome[0],
               message=(outcome[1] or '')[:300], file_identical=identical, grant=grant, requests=requests)


# -- the Python layer the modules use ----------------------------------------------------------------

def core_refresh(site, name):
    get = options()
    try:
        _tokens.access_token(site.store, name, PASSWORD, lambda account: _options.oauth_client(get, account),
                             min_valid_period=60)
        return 'ok', None
    except OidcTokensError as exc:
        return 'failed', str(exc)


def core_exchange(site, name, subject):
    entry = site.provider.client(EXCHANGER)
    get = options(issuer=site.issuer, client_id=entry['client_id'], client_secret=entry['client_secret'])
    try:
        client = _options.oauth_client(get)
        token = _tokens.exchange(client, subject, scope=SCOPE)
        account = _tokens.build_account(name, client.issuer, client.client_id, entry['client_secret'],
                                        token.refresh_token, token.scope)
        site.store.save(name, account, PASSWORD)
        return 'ok', None
    except OidcTokensError as exc:
        return 'failed', str(exc)


def core_revoke(site, name):
    get = options()
    try:
        _tokens.revoke_account(site.store, name, PASSWORD, lambda account: _options.oauth_client(get, account))
        return 'ok', None
    except OidcTokensError as exc:
        return 'failed', str(exc)


def in_threads(fn, items):
    """fn(item) for every item at once (each waits for its own retries and timeouts)."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(fn, items))


NON_REFUSAL = [k for k in KINDS if k.refuse is None]
REFUSAL = [k for k in KINDS if k.refuse is not None]


class Case(object):
    """One operation meeting one fault kind."""

    def __init__(self, kind, layer, operation, name=None, subject=None):
        self.kind, self.layer, self.operation, self.name, self.subject = kind, layer, operation, name, subject
        self.rt_before = self.file_before = self.outcome = self.grant = self.identical = None
        self.requests = None
        self.extra = {}

    @property
    def spends(self):
        return self.operation != 'revoke'

    @property
    def expected(self):
        return (self.kind.spend if self.spends else self.kind.idem)[1]

    @property
    def entries(self):
        return (self.kind.spend if self.spends else self.kind.idem)[0]

    @property
    def secret(self):
        """What the operation's request body carries, to match its faults: the subject token or the RT."""
        return self.subject if self.operation == 'exchange' else self.rt_before


def prepare(site, case):
    if case.operation == 'exchange':
        case.name = '%s-%s' % ('exchange' if case.layer == 'python' else 'ansible-exchange', case.kind.name)
        case.subject = site.provider.user_access_token()
    else:
        case.name = case.name or site.new_account(case.operation)
        case.rt_before = site.rt(case.name)
        case.file_before = sha(site.store.path(case.name))
    return case


def prepare_all(site, cases):
    """Accounts (or subject tokens) for many cases, two at a time (one key derivation per core)."""
    cases = list(cases)
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda c: prepare(site, c), cases))
    return cases


def run_core(site, case):
    if case.operation == 'refresh':
        case.outcome = core_refresh(site, case.name)
    elif case.operation == 'exchange':
        case.outcome = core_exchange(site, case.name, case.subject)
    else:
        case.outcome = core_revoke(site, case.name)
    return case


@pytest.fixture(scope='module')
def python_layer(site):
    """Every kind against refresh, exchange and revoke through the Python layer, each operation in a
    process whose discovery document is already fetched (the faults hit the token endpoint). Cases of
    different kinds run at once, each account's faults matched by its own token."""
    cases = dict(((kind.name, operation), Case(kind, 'python', operation))
                 for kind in KINDS for operation in ('refresh', 'exchange', 'revoke'))
    prepare_all(site, cases.values())
    _oauth._METADATA_CACHE.clear()
    oauth_client_for_site(site).metadata
    for case in cases.values():
        if case.kind.refuse is None:
            site.inject(case.entries, TOKEN_POST if case.spends else REVOKE_POST, body=case.secret)
    in_threads(lambda c: run_core(site, c), [c for c in cases.values() if c.kind.refuse is None])
    site.settle()
    for kind in REFUSAL:
        site.proxy.refuse_connections(kind.refuse)
        in_threads(lambda c: run_core(site, c), [c for c in cases.values() if c.kind is kind])
        site.settle()
    return cases


def oauth_client_for_site(site):
    entry = site.provider.client(EXCHANGER)
    return _options.oauth_client(options(issuer=site.issuer, client_id=entry['client_id'],
                                         client_secret=entry['client_secret']))


def check_grant_after_failure(site, name, kind, file_before):
    """After a failed refresh: is the RT on disk still good? Then the next refresh works; if the
    provider acted on the lost request, the next refresh fails clearly and changes nothing."""
    rt = site.rt(name)
    alive = rt_active(site.provider, rt)
    follow = core_refresh(site, name)
    LEDGER.add(SUITE, 'operations tried')
    if kind.grant == 'alive':
        assert alive, 'the provider never saw the request, yet the RT on disk is not active'
        assert follow[0] == 'ok', 'the refresh after the fault failed: %s' % follow[1]
        assert rt_active(site.provider, site.rt(name))
        return 'alive'
    assert not alive, 'the provider acted on the request, so the RT on disk should be spent'
    assert follow[0] == 'failed' and 'exchange a fresh subject token' in follow[1], follow
    assert sha(site.store.path(name)) == file_before
    LEDGER.add(SUITE, 'grants lost (provider acted, answer lost)')
    return 'lost'


def check_refresh_case(site, case, what):
    """The checks every refresh (python, module, lookup) gets."""
    expect(case.outcome, case.expected, what)
    case.identical = sha(site.store.path(case.name)) == case.file_before
    if case.outcome[0] == 'ok':
        rt_after = site.rt(case.name)
        assert rt_after != case.rt_before and rt_active(site.provider, rt_after), 'the new RT is not the current one'
        case.grant = 'alive'
    else:
        assert case.identical, '%s: a failed refresh changed the account file' % what
        case.grant = check_grant_after_failure(site, case.name, case.kind, case.file_before)
    record(case.kind, case.layer, case.operation, case.outcome, case.identical, case.grant, case.requests)
    check_accounts(site, case.name)


@pytest.mark.parametrize('kind', KINDS, ids=KIND_IDS)
def test_refresh_under_fault(site, python_layer, kind):
    """oidc_token, the lookup and the refresher all refresh through _tokens.access_token."""
    check_refresh_case(site, python_layer[(kind.name, 'refresh')], 'refresh under %s' % kind.name)


def check_exchange_case(site, case, what):
    """oidc_token_exchange: on failure no account is written; a lost answer leaves an orphan grant."""
    expect(case.outcome, case.expected, what)
    if case.outcome[0] == 'ok':
        assert rt_active(site.provider, site.rt(case.name))
    else:
        assert not site.store.exists(case.name), 'a failed exchange wrote an account'
        if case.kind.grant == 'lost':
            LEDGER.add(SUITE, 'orphan grants (exchange answered, answer lost)')
    record(case.kind, case.layer, case.operation, case.outcome,
           not site.store.exists(case.name) if case.outcome[0] != 'ok' else None,
           'orphan' if case.outcome[0] != 'ok' and case.kind.grant == 'lost' else None, None)
    check_accounts(site, case.name)


def check_revoke_case(site, case, what):
    """oidc_revoke: revocation is idempotent, so it is retried; when it fails the account is kept."""
    expect(case.outcome, case.expected, what)
    if case.outcome[0] == 'ok':
        assert not site.store.exists(case.name)
        assert not rt_active(site.provider, case.rt_before), 'the account was removed but its RT is still active'
        identical = None
    else:
        identical = sha(site.store.path(case.name)) == case.file_before
        assert identical, 'a failed revocation changed the account file'
        assert rt_active(site.provider, case.rt_before)
    record(case.kind, case.layer, case.operation, case.outcome, identical, None, None)
    check_accounts(site, case.name)


@pytest.mark.parametrize('kind', KINDS, ids=KIND_IDS)
def test_exchange_under_fault(site, python_layer, kind):
    """oidc_token_exchange: on failure no account is written; a lost answer leaves an orphan grant."""
    check_exchange_case(site, python_layer[(kind.name, 'exchange')], 'exchange under %s' % kind.name)


@pytest.mark.parametrize('kind', KINDS, ids=KIND_IDS)
def test_revoke_under_fault(site, python_layer, kind):
    """oidc_revoke: revocation is idempotent, so it is retried; when it fails the account is kept."""
    check_revoke_case(site, python_layer[(kind.name, 'revoke')], 'revoke under %s' % kind.name)


# -- the module and the lookup, through ansible-playbook -------------------------------------------------

ANSIBLE_TASKS = ('module', 'lookup', 'exchange', 'revoke')


def user_tasks(tasks=ANSIBLE_TASKS):
    common = {'config_dir': '{{ config_dir }}', 'encryption_password_env': PW_ENV, 'timeout': TIMEOUT}
    lookup = ("{{ lookup('oidc.tokens.oidc_token', lookup_account, config_dir=config_dir, "
              "encryption_password_env='%s', timeout=%d) | length > 20 }}" % (PW_ENV, TIMEOUT))
    exchange = dict(common, name='{{ exchange_account }}', issuer='{{ issuer }}', client_id=EXCHANGER,
                    client_secret="{{ lookup('ansible.builtin.env', 'EV_SECRET') }}",
                    subject_token="{{ lookup('ansible.builtin.env', 'EV_SUBJECT_' ~ inventory_hostname) }}",
                    scope=SCOPE)
    all_tasks = {
        'module': {'name': 'module', 'oidc.tokens.oidc_token': dict(common, name='{{ module_account }}'),
                   'register': 'module_result', 'ignore_errors': True},
        'lookup': {'name': 'lookup', 'ansible.builtin.set_fact': {'lookup_ok': lookup}, 'ignore_errors': True},
        'exchange': {'name': 'exchange', 'oidc.tokens.oidc_token_exchange': exchange, 'ignore_errors': True},
        'revoke': {'name': 'revoke', 'oidc.tokens.oidc_revoke': dict(common, name='{{ revoke_account }}'),
                   'ignore_errors': True},
    }
    return [all_tasks[name] for name in tasks]


def result_outcome(result):
    if result['status'] in ('failed', 'ignored'):
        return 'failed', result.get('msg') or ''
    return 'ok', None


def inventory(site, tag, hosts):
    """An inventory whose hosts are local 'workers', one per case group, with their accounts as host vars."""
    data = {'all': {'hosts': hosts, 'vars': {'ansible_connection': 'local',
                                             'ansible_python_interpreter': sys.executable}}}
    return site.ansible.write_private('%s-inventory.yml' % tag, data)


def run_user_play(site, hosts, tag, tasks=ANSIBLE_TASKS, env=None):
    run = site.ansible.playbook(play(user_tasks(tasks), hosts='all'), env=env,
                                extra_vars={'config_dir': site.config_dir, 'issuer': site.issuer},
                                inventory=inventory(site, tag, hosts), forks=max(1, len(hosts)))
    assert run.rc == 0, run.stdout[-3000:] + run.stderr[-3000:]   # ignore_errors: the play itself completes
    return run


@pytest.fixture(scope='module')
def ansible_layer(site):
    """The module and the lookup meeting every kind, through ansible-playbook: one play over one local
    host per kind (they run at once, each account's faults matched by its own RT); the kinds that
    refuse connections run one play each."""
    cases = dict(((kind.name, task), Case(kind, 'ansible-playbook', ANSIBLE_OPERATIONS[task]))
                 for kind in KINDS for task in ANSIBLE_TASKS)
    prepare_all(site, cases.values())
    hosts = dict((kind.name, dict(('%s_account' % task, cases[(kind.name, task)].name) for task in ANSIBLE_TASKS))
                 for kind in KINDS)
    env = {'EV_SECRET': site.provider.client(EXCHANGER)['client_secret']}
    env.update(('EV_SUBJECT_%s' % kind.name, cases[(kind.name, 'exchange')].subject) for kind in KINDS)
    for kind in NON_REFUSAL:
        for task in ANSIBLE_TASKS:
            case = cases[(kind.name, task)]
            site.inject(case.entries, TOKEN_POST if case.spends else REVOKE_POST, body=case.secret)
    run = run_user_play(site, dict((k.name, hosts[k.name]) for k in NON_REFUSAL), 'faults', env=env)
    site.settle()
    runs = [run]
    for kind in REFUSAL:
        for _task in ANSIBLE_TASKS:
            # The discovery is answered, then the provider's port refuses connections for a while.
            site.proxy.push('then_refuse:%s' % kind.refuse, match=DISCOVERY_GET)
        runs.append(run_user_play(site, {kind.name: hosts[kind.name]}, kind.name, env=env))
        site.settle()
    for (kind_name, task), case in cases.items():
        results = [r for run in runs for r in run.results if r['host'] == kind_name and r['task'] == task]
        assert results, 'no result for %s on %s' % (task, kind_name)
        case.outcome = result_outcome(results[-1])
    return cases


ANSIBLE_OPERATIONS = {'module': 'refresh', 'lookup': 'refresh', 'exchange': 'exchange', 'revoke': 'revoke'}


@pytest.mark.parametrize('task', ['exchange', 'revoke'])
@pytest.mark.parametrize('kind', KINDS, ids=KIND_IDS)
def test_exchange_and_revoke_modules_under_fault(site, ansible_layer, kind, task):
    """oidc.tokens.oidc_token_exchange and oidc.tokens.oidc_revoke in a play, meeting the fault."""
    case = ansible_layer[(kind.name, task)]
    what = '%s module under %s' % (task, kind.name)
    if task == 'exchange':
        check_exchange_case(site, case, what)
    else:
        check_revoke_case(site, case, what)


@pytest.mark.parametrize('task', ['module', 'lookup'])
@pytest.mark.parametrize('kind', KINDS, ids=KIND_IDS)
def test_module_and_lookup_under_fault(site, ansible_layer, kind, task):
    """oidc.tokens.oidc_token (module) and lookup('oidc.tokens.oidc_token') in a play, meeting the fault."""
    case = ansible_layer[(kind.name, task)]
    case.operation = 'oidc_token module' if task == 'module' else 'lookup'   # refresh, as the table shows it
    if kind.refuse is not None and kind.refuse > TIMEOUT * 4 and task == 'lookup':
        # The provider's port is still closed when the lookup's worker asks for the discovery document.
        case.kind = Kind(kind.name, kind.what, ([], r'discovery.*failed after 4 attempt\(s\).*[Cc]onnection refused'),
                         kind.idem, kind.grant, kind.refuse)
    check_refresh_case(site, case, '%s under %s' % (task, kind.name))


# -- the on-host refresher -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def refresher_layer(site, tmp_path_factory):
    """oidc-tokens-refresher once, for every kind: a first pass fills the bearer-token file, the second
    meets the fault. Kinds that do not refuse connections run at once (faults matched by RT)."""
    cases = {}
    base = tmp_path_factory.mktemp('refresher-once')
    for kind in KINDS:
        name = site.new_account('refresher', keep_access_token=True)
        case = Case(kind, 'refresher', 'once', name=name)
        # Every pass refreshes: the provider's tokens live 60 s, the refresher wants 30 + 40 s.
        case.extra['job'] = RefresherJob(os.path.join(str(base), kind.name), site.config_dir, name, PASSWORD,
                                         min_valid_period=30, refresh_margin=40,
                                         provider={'timeout': TIMEOUT, 'retries': 3})
        cases[kind.name] = case

    def first(case):
        case.extra['first'] = case.extra['job'].run('once')
        return case

    def second(case):
        case.extra['result'] = case.extra['job'].run('once')
        return case

    in_threads(first, cases.values())
    for case in cases.values():
        assert case.extra['first'].returncode == 0, case.extra['first'].stderr
        case.extra['token_before'] = case.extra['job'].token()
        case.rt_before = site.rt(case.name)
        case.file_before = sha(site.store.path(case.name))
    for kind in NON_REFUSAL:
        case = cases[kind.name]
        site.inject(case.entries, TOKEN_POST, body=case.rt_before)
    in_threads(second, [cases[k.name] for k in NON_REFUSAL])
    site.settle()
    for kind in REFUSAL:
        site.proxy.push('then_refuse:%s' % kind.refuse, match=DISCOVERY_GET)
        second(cases[kind.name])
        site.settle()
    return cases


@pytest.mark.parametrize('kind', KINDS, ids=KIND_IDS)
def test_refresher_once_under_fault(site, refresher_layer, kind):
    """oidc-tokens-refresher once: a failed refresh keeps the still-valid token in the bearer-token file."""
    case = refresher_layer[kind.name]
    job, result, token_before = case.extra['job'], case.extra['result'], case.extra['token_before']
    assert token_before and introspect(site.provider, token_before)['active']
    log = job.log_text()
    if case.expected == 'ok':
        assert result.returncode == 0, result.stderr
        assert job.token() != token_before and introspect(site.provider, job.token())['active']
        assert rt_active(site.provider, site.rt(case.name))
        outcome, identical, grant = ('ok', None), False, 'alive'
    else:
        assert result.returncode == 1, (result.returncode, result.stderr)
        last = [line for line in log.splitlines() if 'Refresh failed' in line][-1]
        assert re.search(case.expected, last, re.S), 'unclear log line %r' % last
        assert 'keeping the current access token' in last
        assert PASSWORD not in log
        # The still-valid token stays in the bearer-token file; the account file is untouched.
        assert job.token() == token_before and introspect(site.provider, token_before)['active']
        identical = sha(site.store.path(case.name)) == case.file_before
        assert identical
        outcome = ('failed', last.split(': ', 1)[-1])
        grant = check_grant_after_failure(site, case.name, kind, case.file_before)
    assert private_mode_violations([job.token_file, job.state_dir]) == []
    record(kind, 'refresher', 'once', outcome, identical, grant, None)
    check_accounts(site, case.name)


def test_refresher_loop_keeps_serving_the_valid_token_through_faults(provider_factory, tmp_path):
    """oidc-tokens-refresher run against 8 s access tokens while faults hit one refresh after another:
    a job reading the bearer-token file never finds it missing or holding an inactive token. (The
    refresher refreshes when about 4 s are left; a failed pass costs at most about 1.5 s here.)"""
    s = Site(provider_factory, tmp_path / 'loop', at_ttl=8)
    try:
        name = s.new_account('loop')
        job = RefresherJob(tmp_path / 'job', s.config_dir, name, PASSWORD, min_valid_period=2, refresh_margin=2,
                           retry_min=0.3, retry_max=0.6, provider={'timeout': 1, 'retries': 1})
        proc = job.start()
        seen = {'reads': 0, 'missing': 0, 'inactive': 0, 'tokens': set()}
        halt = threading.Event()

        def reader():
            while not halt.is_set():
                token = job.token()
                if token is None:
                    seen['missing'] += 1
                else:
                    seen['reads'] += 1
                    seen['tokens'].add(token)
                    if not introspect(s.provider, token)['active']:
                        seen['inactive'] += 1
                halt.wait(0.25)

        faults = [['status:503', 'status:503'], ['status:502'] * 2, ['refuse'], ['html'], ['stall_drop:3'],
                  ['status:500'], ['huge'], ['redirect:https://evil.example/']]
        try:
            job.wait_for_token(proc=proc)
            thread = threading.Thread(target=reader, daemon=True)
            thread.start()
            for entries in faults:
                tokens_before = len(seen['tokens'])
                for entry in entries:
                    s.proxy.push(entry, match=TOKEN_POST if entry != 'refuse' else None)
                deadline = time.monotonic() + 20
                # Wait until the fault was met and a later refresh succeeded.
                while (s.proxy.pending() or len(seen['tokens']) <= tokens_before) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert not s.proxy.pending(), 'the refresher never met %s' % entries
                LEDGER.add(SUITE, 'operations tried')
            halt.set()
            thread.join(5)
            assert proc.poll() is None, proc.stderr.read()
        finally:
            halt.set()
            code = stop_process(proc)
        s.settle()
        log = job.log_text()
        LEDGER.row(SUITE, kind='sequence of 8 faults', layer='refresher', operation='run loop',
                   outcome='ok' if not (seen['missing'] or seen['inactive']) else 'failed',
                   message='%d reads, %d missing, %d inactive, %d distinct tokens' % (
                       seen['reads'], seen['missing'], seen['inactive'], len(seen['tokens'])),
                   file_identical=None, grant='alive' if rt_active(s.provider, s.rt(name)) else 'lost', requests=None)
        assert code == 0
        assert seen['missing'] == 0 and seen['inactive'] == 0, (seen, log)
        assert log.count('Refresh failed') >= len(faults), log
        assert 'keeping the current access token' in log
        assert rt_active(s.provider, s.rt(name))
        check_all_accounts(s)
    finally:
        s.stop()


# -- a gateway error after the provider acted --------------------------------------------------------------

@pytest.mark.parametrize('status', [502, 504])
def test_a_gateway_error_after_the_provider_acted_is_not_replayed(site, status):
    """A reverse proxy in front of the provider answers 502/504 when the provider's answer reached it late or
    broken; the provider may well have rotated the refresh token. Retrying the refresh replays the spent token."""
    name = site.new_account('gateway', keep_access_token=True)
    account = load_account(site.config_dir, name, PASSWORD)
    in_use = account.meta['access_token']          # the token a job is using right now
    rt, file_before = account['refresh_token'], sha(site.store.path(name))
    _oauth._METADATA_CACHE.clear()
    oauth_client_for_site(site).metadata
    forwarded = site.proxy.forwarded
    site.proxy.push('gateway:%d' % status, match=TOKEN_POST, body=rt)
    outcome = core_refresh(site, name)
    replays = site.proxy.forwarded - forwarded - 1
    site.settle()
    still_active = introspect(site.provider, in_use)['active']
    LEDGER.add(SUITE, 'operations tried')
    LEDGER.add(SUITE, 'refresh tokens replayed after a gateway %d' % status, replays)
    LEDGER.row(SUITE, kind='gateway_%d_after_acting' % status, layer='python', operation='refresh',
               outcome=outcome[0], message=(outcome[1] or '')[:300], file_identical=sha(site.store.path(name)) ==
               file_before, grant='lost', requests=None,
               replayed=replays, access_token_in_use_still_active=still_active)
    check_accounts(site, name)
    assert replays == 0, 'the refresh was sent again after a %d that may have been processed' % status
    assert still_active, 'the replay made the provider revoke the grant and the access token in use'


# -- a provider restart that loses every grant -----------------------------------------------------------

def test_provider_restart_loses_all_grants(provider_factory, tmp_path):
    """The provider keeps grants in memory; stopped and started on the same port it knows none of them.
    Every path fails with the message to exchange a fresh subject token, and no account file changes."""
    s = Site(provider_factory, tmp_path / 'restart', at_ttl=60)
    try:
        core = s.new_account('core')
        module, lookup = s.new_account('module'), s.new_account('lookup')
        refresher = s.new_account('refresher', keep_access_token=True)
        job = RefresherJob(tmp_path / 'job', s.config_dir, refresher, PASSWORD, min_valid_period=30,
                           refresh_margin=40, provider={'timeout': TIMEOUT, 'retries': 3})
        assert job.run('once').returncode == 0
        served = job.token()
        subject = s.provider.user_access_token()
        files = {n: sha(s.store.path(n)) for n in (core, module, lookup, refresher)}

        old = s.provider
        port = old.ready['port']
        old.stop()
        s.provider = provider_factory(issuer=s.issuer, port=port, at_ttl=60)
        assert s.provider.ready['port'] == port
        LEDGER.add(SUITE, 'faults injected')
        LEDGER.add(SUITE, 'provider restarts')

        kind = Kind('provider_restart', 'the provider restarts on the same port and has lost every grant',
                    ([], r'exchange a fresh subject token'), ([], 'ok'), 'lost')
        outcome = core_refresh(s, core)
        expect(outcome, r'refused the refresh token of account .*invalid_grant.*exchange a fresh subject token',
               'refresh after restart')
        record(kind, 'python', 'refresh', outcome, sha(s.store.path(core)) == files[core], 'lost', None)

        _oauth._METADATA_CACHE.clear()
        outcome = core_exchange(s, 'after-restart', subject)
        expect(outcome, r'refused the token exchange: invalid_request', 'exchange of a subject token from before')
        assert not s.store.exists('after-restart')
        record(kind, 'python', 'exchange', outcome, True, None, None)

        run = run_user_play(s, {'restarted': {'module_account': module, 'lookup_account': lookup}}, 'restart')
        for task, name in (('module', module), ('lookup', lookup)):
            outcome = result_outcome(run.task(task))
            expect(outcome, r'invalid_grant.*exchange a fresh subject token', '%s after restart' % task)
            record(kind, 'ansible-playbook', 'oidc_token module' if task == 'module' else 'lookup', outcome,
                   sha(s.store.path(name)) == files[name], 'lost', None)

        # The refresher: the token it served died with the grants; it stops for good and removes it.
        assert not introspect(s.provider, served)['active']
        result = job.run('once')
        assert result.returncode == 4, (result.returncode, result.stderr, job.log_text())
        assert job.token() is None
        assert 'exchange a fresh subject token' in job.log_text()
        record(kind, 'refresher', 'once', ('failed', 'exit 4: refresh token refused, bearer-token file removed'),
               sha(s.store.path(refresher)) == files[refresher], 'lost', None)

        for name, digest in files.items():
            assert sha(s.store.path(name)) == digest, '%s changed although no new RT was received' % name
        check_all_accounts(s)
    finally:
        s.stop()
