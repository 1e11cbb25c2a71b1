"""CI pipelines that stage credentials to workers (issue 15, part 3), run for real.

- The test provider trusts a second, "CI" issuer (tests/support/ci_issuer.py, keys of its own) for
  subject tokens of type ...:jwt and ...:id_token: what it accepts and what it refuses, with RFC 8693
  errors, and that the refresh token of such an exchange refreshes and revokes like any other.
- examples/gitlab-ci/.gitlab-ci.yml runs under gitlab-ci-local (tests/ci/package.json; shell executor:
  its jobs have no image) against that provider and local "workers" (localhost aliases, each with a
  Unix job user of this run, become via su), with the collection installed from the tarball built
  from this checkout (the pipeline's OIDC_TOKENS_REQUIREMENTS) and a GitLab-like id_token as subject
  token: start gives each worker a bearer-token file whose access token is the CI identity's, the job
  stage uses it, teardown revokes and removes everything, also after a failing job; a token from an
  untrusted issuer is refused with a clear message and leaves nothing.
- examples/github-actions/job-tokens.yml passes actionlint (built by scripts/setup), which finds a planted error.

Needs root (useradd/userdel, su), scripts/setup's tests/ci/node_modules and the provider's node_modules.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from ci_issuer import CIIssuer
from provider import GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS, TOKEN_TYPE_JWT, TOKEN_TYPE_REFRESH, _basic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO_ROOT, 'examples', 'gitlab-ci')
WORKFLOW = os.path.join(REPO_ROOT, 'examples', 'github-actions', 'job-tokens.yml')
CI_DIR = os.path.join(REPO_ROOT, 'tests', 'ci')
GITLAB_CI_LOCAL = os.path.join(CI_DIR, 'node_modules', '.bin', 'gitlab-ci-local')
BIN = os.path.dirname(sys.executable)

TOKEN_TYPE_ID = 'urn:ietf:params:oauth:token-type:id_token'
CI_ISSUER = 'https://gitlab.ci.example.test'
CI_AUDIENCE = 'https://op.example.test/ci'
EXCHANGER = 'oidc-tokens-exchanger'
WORKERS = 2

# The job of the pipeline: read the bearer-token file, ask the provider's userinfo endpoint with it,
# keep what it answered (and the token, for the test to introspect after teardown) in a 0600 file of
# the job user in a 0700 directory of the job user. Prints the subject, never the token.
PROBE = r'''
import json, os, sys, requests
userinfo, ca, out = sys.argv[1:4]
path = os.environ['BEARER_TOKEN_FILE']
with open(path, encoding='utf-8') as handle:
    token = handle.read().strip()
answer = requests.get(userinfo, headers={'Authorization': 'Bearer ' + token}, verify=ca, timeout=10)
os.makedirs(out, mode=0o700, exist_ok=True)
fd = os.open(os.path.join(out, 'probe.json'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, 'w') as handle:
    json.dump({'status': answer.status_code, 'userinfo': answer.json(), 'token_file': path, 'access_token': token}, handle)
print('job: userinfo answered %s for subject %s' % (answer.status_code, answer.json().get('sub')))
sys.exit(0 if answer.status_code == 200 else 1)
'''


class Secret(str):
    """A token or secret that pytest's tracebacks and assertion messages show as '***'."""

    def __repr__(self):
        return "'***'"


def tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


# -- the provider with a trusted CI issuer ------------------------------------------------------------

@pytest.fixture(scope='module')
def public_dir():
    """A 0755 directory outside pytest's 0700 tree: the job users read the CA and the probe there."""
    path = tempfile.mkdtemp(prefix='oidc-ci-pipeline-')
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='module')
def ci(public_dir):
    return CIIssuer(CI_ISSUER, public_dir)


@pytest.fixture(scope='module')
def ci_provider(provider_factory, ci, public_dir):
    # Access tokens that outlive the pipeline: one that introspects inactive afterwards was revoked.
    op = provider_factory(tls=True, at_ttl=900, trusted_ci_issuers={ci.issuer: ci.jwks_path}, ci_audience=CI_AUDIENCE,
                          ci_jti_max_uses=WORKERS)
    ca = os.path.join(public_dir, 'ca.pem')
    shutil.copyfile(op.ca_path, ca)
    os.chmod(ca, 0o644)
    op.public_ca_path = ca
    return op


def exchange(op, subject_token, subject_token_type=TOKEN_TYPE_JWT, client=EXCHANGER, scope='openid offline_access compute.read'):
    response = op.session.post(op.token_endpoint, auth=_basic(op.client(client)), timeout=10, data={
        'grant_type': GRANT_TOKEN_EXCHANGE, 'subject_token': subject_token, 'subject_token_type': subject_token_type,
        'requested_token_type': TOKEN_TYPE_REFRESH, 'scope': scope})
    return response.status_code, response.json()


def userinfo(op, access_token):
    response = op.session.get(op.metadata()['userinfo_endpoint'], headers={'Authorization': 'Bearer ' + access_token},
                              timeout=10)
    return response.status_code, response.json()


@pytest.mark.parametrize('token_type', [TOKEN_TYPE_JWT, TOKEN_TYPE_ID])
def test_a_ci_token_is_exchanged_for_a_refresh_token_of_the_ci_identity_that_refreshes_and_revokes(ci_provider, ci, token_type):
    status, answer = exchange(ci_provider, ci.id_token(CI_AUDIENCE), token_type)
    assert status == 200, answer
    assert answer['refresh_token'] and answer['scope'] == 'openid offline_access compute.read'
    assert userinfo(ci_provider, answer['access_token']) == (200, {'sub': ci.subject})
    introspected = ci_provider.introspect(answer['refresh_token'], EXCHANGER)
    assert introspected['active'] is True and introspected['sub'] == ci.subject
    refreshed = ci_provider.refresh_with(answer['refresh_token'])
    assert userinfo(ci_provider, refreshed['access_token'])[1]['sub'] == ci.subject
    revoked = ci_provider.session.post(ci_provider.revocation_endpoint, auth=_basic(ci_provider.client(EXCHANGER)),
                                       data={'token': refreshed['refresh_token']}, timeout=10)
    assert revoked.status_code == 200
    assert ci_provider.introspect(refreshed['refresh_token'], EXCHANGER)['active'] is False
    assert ci_provider.introspect(refreshed['access_token'], EXCHANGER)['active'] is False


def test_ci_tokens_the_provider_must_refuse_get_rfc8693_errors_that_say_why(ci_provider, ci, public_dir, tmp_path):
    stranger = CIIssuer('https://gitlab.untrusted.example.test', str(tmp_path))
    impostor = CIIssuer(CI_ISSUER, str(tmp_path))      # the trusted issuer's name, keys of its own
    good = ci.id_token(CI_AUDIENCE)
    cases = {
        'untrusted issuer': (stranger.id_token(CI_AUDIENCE), "issuer https://gitlab.untrusted.example.test is neither"),
        'wrong audience': (ci.id_token('https://elsewhere.example.test'), "audience does not include %s" % CI_AUDIENCE),
        'audience list without ours': (ci.id_token(['a', 'b']), 'audience does not include'),
        'expired': (ci.id_token(CI_AUDIENCE, lifetime=-1), 'is expired'),
        'not yet valid': (ci.sign(ci.claims(CI_AUDIENCE, nbf=ci.claims(CI_AUDIENCE)['iat'] + 600)), 'not valid yet'),
        'unknown key': (impostor.id_token(CI_AUDIENCE), 'not signed by a key of the CI issuer'),
        'forged signature': (good.rsplit('.', 1)[0] + '.' + impostor.id_token(CI_AUDIENCE).rsplit('.', 1)[1], 'invalid signature'),
        "a local user's subject": (ci.sign(ci.claims(CI_AUDIENCE, sub=ci_provider.user('alice')['sub'])), "a local user's"),
        'no jti': (ci.sign({k: v for k, v in ci.claims(CI_AUDIENCE).items() if k != 'jti'}), 'has no jti'),
    }
    for label, (token, message) in cases.items():
        status, answer = exchange(ci_provider, token, TOKEN_TYPE_ID)
        assert status == 400 and answer['error'] == 'invalid_request', (label, answer)
        assert message in answer['error_description'], (label, answer)


def test_one_ci_token_is_exchanged_at_most_as_often_as_configured(ci_provider, ci):
    token = ci.id_token(CI_AUDIENCE)
    assert [exchange(ci_provider, token)[0] for worker in range(WORKERS)] == [200] * WORKERS
    status, answer = exchange(ci_provider, token)
    assert status == 400 and 'already exchanged %d time(s)' % WORKERS in answer['error_description']


def test_the_other_subject_tokens_are_handled_as_before(ci_provider, provider):
    # A user's access token, as access_token, still works with the CI issuer trusted ...
    status, answer = exchange(ci_provider, ci_provider.user_access_token(), TOKEN_TYPE_ACCESS)
    assert status == 200 and userinfo(ci_provider, answer['access_token'])[1]['sub'] == ci_provider.user('alice')['sub']
    # ... and a provider without --trusted-ci-issuer still refuses the id_token type as unsupported.
    status, answer = exchange(provider, provider.user_access_token(), TOKEN_TYPE_ID)
    assert status == 400 and "unsupported subject_token_type" in answer['error_description']


# -- the GitLab pipeline under gitlab-ci-local ----------------------------------------------------------

@pytest.fixture(scope='module')
def job_users():
    """Unix job users of this run only (oidcci + random hex), removed at the end."""
    if os.geteuid() != 0 or not shutil.which('useradd'):
        pytest.skip('the pipeline test makes job users: it needs root and useradd')
    run_id = secrets.token_hex(3)
    users = ['oidcci%s%d' % (run_id, n) for n in range(1, WORKERS + 1)]
    created = []
    # userdel leaves the role's /run/oidc-tokens/UID: one left by a deleted user whose uid a new user of
    # this run gets is stale, and so is ours once the user is gone.
    try:
        for user in users:
            subprocess.run(['useradd', '--create-home', '--shell', '/bin/bash', user], check=True, capture_output=True)
            created.append((user, pwd.getpwnam(user).pw_uid))
            shutil.rmtree('/run/oidc-tokens/%d' % created[-1][1], ignore_errors=True)
        yield users
    finally:
        for user, uid in created:
            subprocess.run(['userdel', '-r', user], check=False, capture_output=True)
            shutil.rmtree('/run/oidc-tokens/%d' % uid, ignore_errors=True)


def leftovers(user, account):
    """What start leaves for a job user's account that teardown must remove (the paths that exist)."""
    entry = pwd.getpwnam(user)
    paths = [os.path.join(entry.pw_dir, '.config', 'oidc-agent', account),
             os.path.join(entry.pw_dir, '.config', 'oidc-tokens', 'refresher', account + '.json'),
             '/run/oidc-tokens/%d/%s.password' % (entry.pw_uid, account),
             '/run/oidc-tokens/%d/bt_u%d-%s' % (entry.pw_uid, entry.pw_uid, account)]
    return [path for path in paths if os.path.lexists(path)]


class Pipeline:
    """A copy of examples/gitlab-ci in a 0700 directory, run with gitlab-ci-local's shell executor."""

    def __init__(self, directory, op, users, tarball, public_dir, subject_token, job_command):
        self.dir = directory
        self.op = op
        self.users = users
        self.results = os.path.join(public_dir, 'results-%s' % secrets.token_hex(4))
        os.mkdir(self.results)
        os.chmod(self.results, 0o755)
        for user in users:
            own = os.path.join(self.results, user)
            os.mkdir(own, 0o700)
            shutil.chown(own, user, user)
        os.makedirs(directory, mode=0o700)
        for name in ('.gitlab-ci.yml', 'job.yml', 'job_vars.yml', 'requirements.yml'):
            shutil.copy(os.path.join(EXAMPLE, name), directory)
        with open(os.path.join(directory, 'test-requirements.yml'), 'w', encoding='utf-8') as handle:
            yaml.safe_dump({'collections': [{'name': str(tarball), 'type': 'file'}]}, handle)
        inventory = {'workers': {
            'hosts': {'worker%d' % n: {'job_tokens_user': user} for n, user in enumerate(users, 1)},
            'vars': {'ansible_connection': 'local', 'ansible_python_interpreter': '/usr/bin/python3',
                     'ansible_become_method': 'su', 'job_tokens_record_path': os.path.join(directory, 'record', 'jobs.json'),
                     'job_tokens_start_timeout': 30}}}
        with open(os.path.join(directory, 'inventory.yml'), 'w', encoding='utf-8') as handle:
            yaml.safe_dump(inventory, handle)
        probe = os.path.join(public_dir, 'probe.py')
        with open(probe, 'w', encoding='utf-8') as handle:
            handle.write(PROBE)
        os.chmod(probe, 0o644)
        userinfo_url = op.metadata()['userinfo_endpoint']
        variables = {
            'OIDC_ISSUER': op.issuer, 'OIDC_CLIENT_ID': EXCHANGER, 'OIDC_CLIENT_SECRET': op.client(EXCHANGER)['client_secret'],
            'OIDC_CA_PATH': op.public_ca_path, 'OIDC_AUDIENCE': CI_AUDIENCE,
            # What GitLab's id_tokens: would put into the job's environment (gitlab-ci-local does not mint them).
            'OIDC_ID_TOKEN': str(subject_token),
            'JOB_INVENTORY': 'inventory.yml', 'OIDC_TOKENS_REQUIREMENTS': 'test-requirements.yml',
            'JOB_COMMAND': job_command.format(probe='/usr/bin/python3 %s %s %s %s/$(id -un)' % (
                probe, userinfo_url, op.public_ca_path, self.results)),
        }
        # Secrets in a 0600 variables file, never on gitlab-ci-local's command line. Each one typed
        # "variable": gitlab-ci-local would make a value that starts with / a file variable, in a 0644
        # file under /tmp.
        fd = os.open(os.path.join(directory, '.gitlab-ci-local-variables.yml'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            yaml.safe_dump({name: {'type': 'variable', 'values': {'*': value}} for name, value in variables.items()}, handle)
        git = ['git', '-C', directory]
        subprocess.run(git + ['init', '-q', '-b', 'main'], check=True)
        subprocess.run(git + ['config', 'user.name', 'ci'], check=True)
        subprocess.run(git + ['config', 'user.email', 'ci@example.test'], check=True)
        subprocess.run(git + ['remote', 'add', 'origin', 'https://gitlab.ci.example.test/ci-group/ci-project.git'], check=True)
        subprocess.run(git + ['add', '.gitlab-ci.yml', 'job.yml', 'job_vars.yml', 'requirements.yml'], check=True)
        subprocess.run(git + ['commit', '-q', '-m', 'pipeline'], check=True)

    def run(self, *jobs):
        """The whole pipeline, or only the jobs named."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(('ANSIBLE_', 'GCL_', 'CI_', 'GITLAB_'))}
        env.update(PATH=os.pathsep.join([os.path.join(CI_DIR, 'node_modules', '.bin'), BIN, env.get('PATH', '')]),
                   HOME=self.dir, ANSIBLE_NOCOLOR='1', NO_COLOR='1', FORCE_COLOR='0')
        result = subprocess.run([GITLAB_CI_LOCAL, '--cwd', '.', '--no-color'] + list(jobs), cwd=self.dir, env=env, capture_output=True, text=True,
                                timeout=600, check=False)
        self.output = result.stdout + result.stderr
        self.returncode = result.returncode
        return self

    def probe(self, user):
        with open(os.path.join(self.results, user, 'probe.json'), encoding='utf-8') as handle:
            return json.load(handle)


@pytest.fixture
def pipeline(tmp_path, ci_provider, job_users, built_collection, public_dir):
    tarball = built_collection[0]
    if not os.access(GITLAB_CI_LOCAL, os.X_OK):
        pytest.fail('gitlab-ci-local is not installed: run scripts/setup (npm ci in tests/ci)')

    def make(subject_token, job_command='{probe}'):
        return Pipeline(str(tmp_path / 'project'), ci_provider, job_users, tarball, public_dir, Secret(subject_token), job_command)
    return make


def assert_no_secret_in(output, *secret_values):
    for value in secret_values:
        assert value not in output


def check_torn_down(run, op, users, account):
    for user in users:
        assert leftovers(user, account) == [], run.output
        probe = run.probe(user)
        assert not os.path.lexists(probe['token_file'])
        # The access token outlives the pipeline (900 s) unless its grant was revoked with the refresh token.
        assert op.introspect(probe['access_token'], EXCHANGER)['active'] is False


def test_the_gitlab_pipeline_stages_ci_credentials_to_the_workers_and_tears_them_down(pipeline, ci_provider, ci, job_users):
    before = ci_provider.counts()
    token = ci.id_token(CI_AUDIENCE)
    run = pipeline(token).run()
    assert run.returncode == 0, run.output
    assert_no_secret_in(run.output, token, ci_provider.client(EXCHANGER)['client_secret'])
    after = ci_provider.counts()
    # One exchange per worker with the one CI token, one revocation per worker at teardown.
    assert after['exchange'] - before['exchange'] == WORKERS
    assert after['revocation'] - before['revocation'] == WORKERS
    for user in job_users:
        probe = run.probe(user)
        # The job stage found a valid access token in the bearer-token file start made, of the CI identity.
        assert probe['status'] == 200 and probe['userinfo']['sub'] == ci.subject, probe['userinfo']
        uid = pwd.getpwnam(user).pw_uid
        assert os.path.basename(probe['token_file']).startswith('bt_u%d-ci-' % uid), probe['token_file']
    assert 'job: userinfo answered 200 for subject %s' % ci.subject in run.output
    account = 'ci-' + run.probe(job_users[0])['token_file'].rsplit('-ci-', 1)[1]
    check_torn_down(run, ci_provider, job_users, account)


def test_a_failing_job_stage_still_runs_the_teardown(pipeline, ci_provider, ci, job_users):
    before = ci_provider.counts()
    run = pipeline(ci.id_token(CI_AUDIENCE), job_command='{probe} && exit 3').run()
    assert run.returncode != 0
    assert after_minus(ci_provider, before, 'revocation') == WORKERS, run.output
    account = 'ci-' + run.probe(job_users[0])['token_file'].rsplit('-ci-', 1)[1]
    check_torn_down(run, ci_provider, job_users, account)


def after_minus(op, before, kind):
    return op.counts()[kind] - before[kind]


def test_a_token_of_an_untrusted_issuer_is_refused_with_a_clear_message_and_leaves_nothing(pipeline, ci_provider, job_users,
                                                                                           tmp_path):
    stranger = CIIssuer('https://gitlab.untrusted.example.test', str(tmp_path))
    before = ci_provider.counts()
    run = pipeline(stranger.id_token(CI_AUDIENCE)).run('start')
    assert run.returncode != 0
    start_output = run.output
    # GitLab runs the teardown (when: always) after a failed start; gitlab-ci-local (4.75) does not run a job
    # whose earlier stage holds a job that was skipped, so the teardown job is run here by name.
    # (start alone leaves the 0600 password file it wrote for the account, with no account, until then.)
    teardown = run.run('teardown')
    assert teardown.returncode == 0, teardown.output
    run.output = start_output + teardown.output
    assert "subject_token's issuer https://gitlab.untrusted.example.test is neither this provider nor a trusted CI issuer" in run.output, \
        run.output
    assert after_minus(ci_provider, before, 'exchange') == 0
    for user in job_users:
        entry = pwd.getpwnam(user)
        accounts = os.path.join(entry.pw_dir, '.config', 'oidc-agent')
        assert not os.path.isdir(accounts) or not [name for name in os.listdir(accounts) if name.startswith('ci-')]
        run_dir = '/run/oidc-tokens/%d' % entry.pw_uid
        assert not os.path.isdir(run_dir) or not [name for name in os.listdir(run_dir) if 'ci-' in name], run.output
        assert not os.path.exists(os.path.join(run.results, user, 'probe.json'))


# -- the GitHub Actions workflow, checked by actionlint ---------------------------------------------------

ACTIONLINT = os.path.join(CI_DIR, '.bin', 'actionlint')


def actionlint(path):
    assert os.access(ACTIONLINT, os.X_OK), 'actionlint is not built: scripts/setup builds it into tests/ci/.bin'
    return subprocess.run([ACTIONLINT, '-no-color', '-format', '{{json .}}', path], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_github_workflow_passes_actionlint(tmp_path):
    result = actionlint(WORKFLOW)
    assert result.returncode == 0 and json.loads(result.stdout or '[]') == [], result.stdout + result.stderr


def test_actionlint_finds_a_mistake_planted_in_a_copy_of_the_workflow(tmp_path):
    with open(WORKFLOW, encoding='utf-8') as handle:
        text = handle.read()
    assert 'if: always()' in text and 'id-token: write' in text
    broken = tmp_path / '.github' / 'workflows' / 'job-tokens.yml'
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace('if: always()', 'if: always(github.event)').replace('id-token: write', 'id-token: writ'))
    findings = json.loads(actionlint(str(broken)).stdout)
    assert {finding['kind'] for finding in findings} >= {'expression', 'permissions'}, findings
