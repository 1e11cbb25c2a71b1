"""AWX / Ansible Automation Platform (issue 15, part 2), with real parts only.

- The execution environment: ``ansible-builder create`` on the example definition docs/awx/execution-environment.yml,
  pointed at a tarball of this checkout, makes a build context that carries the collection (its galaxy step, replayed
  in that context, installs it), and ``ansible-builder introspect`` finds the collection's Python and bindep
  requirements through its meta/execution-environment.yml. No image is built (no container engine on the test
  machines).
- The custom credential type docs/awx/credential-type.yml: validated with AWX's own schemas and template check,
  rendered as AWX renders it for a job, and real plays run with exactly what it injects (its environment, its
  extra-vars file, its CA file) against the test provider over TLS: exchange, token, the lookup, revocation.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap

import jsonschema
import pytest
import requests
import yaml
from jinja2 import StrictUndefined, sandbox
from jinja2.exceptions import UndefinedError

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
EE_DEFINITION = os.path.join(REPO_ROOT, 'docs', 'awx', 'execution-environment.yml')
CREDENTIAL_TYPE = os.path.join(REPO_ROOT, 'docs', 'awx', 'credential-type.yml')
EXCHANGER = 'oidc-tokens-exchanger'
PYTHON_REQUIREMENTS = ('requests', 'cryptography', 'jmespath', 'PyNaCl')


def tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


def run(args, timeout=300, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


# -- the execution environment ------------------------------------------------------------------

def test_the_tarball_carries_the_execution_environment_metadata(built_collection):
    tarball, _collections = built_collection
    with tarfile.open(tarball) as archive:
        meta = yaml.safe_load(archive.extractfile('meta/execution-environment.yml'))
        names = set(archive.getnames())
    assert meta['dependencies'] == {'python': 'requirements.txt', 'system': 'bindep.txt'}
    assert {'requirements.txt', 'bindep.txt'} <= names


def test_ansible_builder_create_makes_a_build_context_that_installs_the_collection(built_collection, tmp_path):
    tarball, _collections = built_collection
    # The definition users copy, as it is (the collection from Galaxy by name): accepted.
    as_shipped = run([tool('ansible-builder'), 'create', '-f', EE_DEFINITION, '-c', str(tmp_path / 'shipped'),
                      '--output-filename', 'Containerfile'])
    assert as_shipped.returncode == 0, as_shipped.stdout + as_shipped.stderr
    shipped = yaml.safe_load((tmp_path / 'shipped' / '_build' / 'requirements.yml').read_text())
    assert [c['name'] for c in shipped['collections']] == ['oidc.tokens']

    # The same definition with this checkout's tarball in the build context instead, as its comment says.
    definition = yaml.safe_load(open(EE_DEFINITION).read())
    assert definition['version'] == 3
    shutil.copy(tarball, tmp_path / tarball.name)
    definition['additional_build_files'] = [{'src': tarball.name, 'dest': 'collections'}]
    definition['dependencies']['galaxy'] = {'collections': [{'name': 'collections/' + tarball.name, 'type': 'file'}]}
    (tmp_path / 'execution-environment.yml').write_text(yaml.safe_dump(definition))
    context = tmp_path / 'context'
    created = run([tool('ansible-builder'), 'create', '-f', str(tmp_path / 'execution-environment.yml'),
                   '-c', str(context), '--output-filename', 'Containerfile'])
    assert created.returncode == 0, created.stdout + created.stderr
    build = context / '_build'
    assert (build / 'collections' / tarball.name).read_bytes() == tarball.read_bytes()
    containerfile = (context / 'Containerfile').read_text()
    assert 'COPY _build /build' in containerfile and 'WORKDIR /build' in containerfile
    assert 'ansible-galaxy collection install' in containerfile and '-r requirements.yml' in containerfile

    # The galaxy stage's install, replayed in the build context (the image's /build): it installs our collection.
    installed = tmp_path / 'image-collections'
    galaxy = run([tool('ansible-galaxy'), 'collection', 'install', '-r', 'requirements.yml',
                  '--collections-path', str(installed)], cwd=str(build), timeout=120,
                 env=dict(os.environ, ANSIBLE_GALAXY_DISABLE_GPG_VERIFY='1'))
    assert galaxy.returncode == 0, galaxy.stdout + galaxy.stderr
    manifest = json.loads((installed / 'ansible_collections' / 'oidc' / 'tokens' / 'MANIFEST.json').read_text())
    assert (manifest['collection_info']['namespace'], manifest['collection_info']['name']) == ('oidc', 'tokens')


def test_ansible_builder_introspect_finds_the_python_and_system_requirements(built_collection, tmp_path):
    _tarball, collections = built_collection
    pip_out, bindep_out = tmp_path / 'requirements.txt', tmp_path / 'bindep.txt'
    introspected = run([tool('ansible-builder'), 'introspect', str(collections),
                        '--write-pip', str(pip_out), '--write-bindep', str(bindep_out)])
    assert introspected.returncode == 0, introspected.stdout + introspected.stderr
    ours = [line for line in pip_out.read_text().splitlines() if line.endswith('# from collection oidc.tokens')]
    with open(os.path.join(REPO_ROOT, 'requirements.txt')) as handle:
        declared = [line.strip() for line in handle if line.strip() and not line.startswith('#')]
    assert sorted(line.split('#')[0].strip() for line in ours) == sorted(declared)
    assert sorted(line.split('>=')[0] for line in declared) == sorted(PYTHON_REQUIREMENTS)
    system = [line for line in bindep_out.read_text().splitlines() if 'oidc.tokens' in line]
    assert system == ['oidc-agent-cli [platform:dpkg platform:rpm oidc-agent]  # from collection oidc.tokens']

    # bindep itself, as ansible-builder's assemble step runs it: nothing by default, oidc-agent-cli in its profile.
    default = run([tool('bindep'), '-f', str(bindep_out), '-l', 'newline'], timeout=60)
    assert default.returncode == 0 and default.stdout.strip() == '', default.stdout + default.stderr
    optional = run([tool('bindep'), '-f', str(bindep_out), '-l', 'newline', 'oidc-agent'], timeout=60)
    assert optional.returncode == 0 and optional.stdout.split() == ['oidc-agent-cli'], optional.stdout + optional.stderr


# -- the credential type, as AWX validates and injects it -----------------------------------------

# The JSON schemas of awx/main/fields.py (ansible/awx, CredentialTypeInputField.schema and
# CredentialTypeInjectorField.schema), the kinds a custom type may have (awx/api/serializers.py,
# CredentialTypeSerializer.validate) and the environment variables AWX refuses (awx/main/constants.py,
# ENV_BLOCKLIST, and fields.py's validate_env_var_allowed: no ANSIBLE_ prefix).
AWX_INPUTS_SCHEMA = {
    'type': 'object', 'additionalProperties': False,
    'properties': {
        'required': {'type': 'array', 'items': {'type': 'string'}},
        'fields': {'type': 'array', 'items': {
            'type': 'object', 'additionalProperties': False, 'required': ['id', 'label'],
            'properties': {
                'type': {'enum': ['string', 'boolean']}, 'format': {'enum': ['ssh_private_key', 'url']},
                'choices': {'type': 'array', 'minItems': 1, 'items': {'type': 'string'}, 'uniqueItems': True},
                'id': {'type': 'string', 'pattern': '^[a-zA-Z_]+[a-zA-Z0-9_]*$'},
                'label': {'type': 'string'}, 'help_text': {'type': 'string'}, 'multiline': {'type': 'boolean'},
                'secret': {'type': 'boolean'}, 'ask_at_runtime': {'type': 'boolean'}, 'default': {}}}}}}
AWX_INJECTORS_SCHEMA = {
    'type': 'object', 'additionalProperties': False,
    'properties': {
        'file': {'type': 'object', 'additionalProperties': False,
                 'patternProperties': {r'^template(\.[a-zA-Z_]+[a-zA-Z0-9_]*)?$': {'type': 'string'}}},
        'env': {'type': 'object', 'additionalProperties': False,
                'patternProperties': {'^[a-zA-Z_]+[a-zA-Z0-9_]*$': {'type': 'string', 'pattern': '^[\x00-\x7F]*$'}}},
        'extra_vars': {'type': 'object', 'additionalProperties': False,
                       'patternProperties': {r'^[a-zA-Z_\{\}]+[a-zA-Z0-9_\{\}]*$': {
                           'anyOf': [{'type': 'string'}, {'type': 'array'}, {'$ref': '#/properties/extra_vars'}]}}}}}
AWX_ENV_BLOCKLIST = frozenset(('VIRTUAL_ENV', 'PATH', 'PYTHONPATH', 'JOB_ID', 'INVENTORY_ID', 'INVENTORY_SOURCE_ID',
                               'INVENTORY_UPDATE_ID', 'AD_HOC_COMMAND_ID', 'REST_API_URL', 'REST_API_TOKEN',
                               'MAX_EVENT_RES', 'CALLBACK_QUEUE', 'CALLBACK_CONNECTION', 'CACHE', 'JOB_CALLBACK_DEBUG',
                               'INVENTORY_HOSTVARS', 'AWX_HOST', 'PROJECT_REVISION', 'SUPERVISOR_CONFIG_PATH'))


def load_credential_type():
    with open(CREDENTIAL_TYPE) as handle:
        (credential_type,) = yaml.safe_load(handle)['credential_types']
    return credential_type


def awx_inject(credential_type, inputs, private_data_dir):
    """What AWX gives a job for a credential of this type: (env, safe_env, args).

    A faithful copy of CredentialType.inject_credential in awx/main/models/credential.py (ansible/awx, as of
    e21dd0a0933f), for a custom type (one with injectors): the template namespace holds the inputs that are set
    (secret ones as ********** in the namespace of safe_env, the environment AWX stores with the job); each file
    template is rendered in an ImmutableSandboxedEnvironment into a mkstemp file in PRIVATE_DATA_DIR/env, chmod 0600,
    named in tower.filename.<label>; env templates render into the job's environment; extra_vars templates (keys
    and values) render into a YAML file dumped with every string !unsafe (awx/main/utils/safe_yaml.py, safe_dump),
    chmod 0400, handed to ansible-playbook as -e @file. In the job's container PRIVATE_DATA_DIR is /runner
    (get_incontainer_path); here the play runs on this host, so the paths are the host's.
    """
    class TowerNamespace:
        pass

    tower = TowerNamespace()
    namespace, safe_namespace = {'tower': tower}, {'tower': tower}
    secret_fields = [field['id'] for field in credential_type['inputs']['fields'] if field.get('secret')]
    for name, value in inputs.items():
        if isinstance(value, bool):
            safe_namespace[name] = namespace[name] = value
            continue
        if name in secret_fields:
            safe_namespace[name] = '**********'
        elif len(value):
            safe_namespace[name] = value
        if len(value):
            namespace[name] = value
    for field in credential_type['inputs']['fields']:
        if field.get('type') == 'boolean' and field['id'] not in inputs:
            namespace[field['id']] = safe_namespace[field['id']] = False

    injectors = credential_type['injectors']
    sandbox_env = sandbox.ImmutableSandboxedEnvironment()
    for label, template in injectors.get('file', {}).items():
        data = sandbox_env.from_string(template).render(**namespace)
        _handle, path = tempfile.mkstemp(dir=os.path.join(private_data_dir, 'env'))
        os.close(_handle)
        with open(path, 'w') as handle:
            handle.write(data)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        if label.find('.') == -1:
            tower.filename = path
        else:
            if not hasattr(tower, 'filename'):
                tower.filename = TowerNamespace()
            setattr(tower.filename, label.split('.')[1], path)

    env, safe_env, args = {}, {}, []
    for name, template in injectors.get('env', {}).items():
        if name.startswith('ANSIBLE_') or name in AWX_ENV_BLOCKLIST:
            continue   # AWX logs "Ignoring prohibited env var" and leaves it out
        env[name] = sandbox_env.from_string(template).render(**namespace)
        safe_env[name] = sandbox_env.from_string(template).render(**safe_namespace)

    def build_extra_vars(node):
        if isinstance(node, dict):
            return {build_extra_vars(k): build_extra_vars(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build_extra_vars(x) for x in node]
        return sandbox_env.from_string(node).render(**namespace)

    extra_vars = build_extra_vars(injectors.get('extra_vars', {}))
    if extra_vars:
        handle, path = tempfile.mkstemp(dir=os.path.join(private_data_dir, 'env'))
        with os.fdopen(handle, 'w') as out:
            out.write(awx_safe_dump(extra_vars))
        os.chmod(path, stat.S_IRUSR)
        args.extend(['-e', '@%s' % path])
    return env, safe_env, args


class _UnsafeStringDumper(yaml.SafeDumper):
    """awx/main/utils/safe_yaml.py SafeStringDumper: every string is written as !unsafe."""

    def represent_data(self, data):
        if isinstance(data, str):
            return self.represent_scalar('!unsafe', data)
        return super().represent_data(data)


def awx_safe_dump(extra_vars):
    """awx/main/utils/safe_yaml.py safe_dump without a safe_dict, as inject_credential calls it."""
    return ''.join(yaml.dump_all([{k: v}], None, Dumper=_UnsafeStringDumper, default_flow_style=False)
                   for k, v in extra_vars.items())


def test_the_credential_type_is_what_awx_accepts():
    credential_type = load_credential_type()
    assert credential_type['kind'] in ('cloud', 'net')     # the kinds a custom credential type may have
    assert credential_type['natural_key'] == {'name': credential_type['name'], 'kind': credential_type['kind'],
                                              'type': 'credential_type'}
    inputs, injectors = credential_type['inputs'], credential_type['injectors']
    jsonschema.validate(inputs, AWX_INPUTS_SCHEMA)
    jsonschema.validate(injectors, AWX_INJECTORS_SCHEMA)
    ids = [field['id'] for field in inputs['fields']]
    assert len(set(ids)) == len(ids) and 'tower' not in ids
    assert set(inputs['required']) <= set(ids)
    fields = {field['id']: field for field in inputs['fields']}
    assert fields['client_secret'].get('secret') and fields['encryption_password'].get('secret')
    assert fields['ca_bundle'].get('multiline') and 'ca_bundle' not in inputs['required']
    assert not [name for name in injectors['env'] if name.startswith('ANSIBLE_') or name in AWX_ENV_BLOCKLIST]

    # CredentialTypeInjectorField.validate: every template renders with StrictUndefined in a namespace of all
    # the fields and the tower.filename.<label> of each file template.
    class Filenames:
        pass

    class Tower:
        filename = Filenames()

    valid = dict((field_id, 'EXAMPLE') for field_id in ids)
    valid['tower'] = Tower()
    for label in injectors.get('file', {}):
        assert label.startswith('template.')
        setattr(Tower.filename, label.split('.')[1], 'EXAMPLE_FILENAME')
    strict = sandbox.ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    templates = list(injectors.get('file', {}).values()) + list(injectors.get('env', {}).values())
    templates += list(injectors.get('extra_vars', {})) + list(injectors.get('extra_vars', {}).values())
    for template in templates:
        try:
            strict.from_string(template).render(valid)
        except UndefinedError as exc:   # pragma: no cover - the failure message is the point
            pytest.fail('%r uses an undefined field: %s' % (template, exc))

    # The secrets reach the job only through its environment: no secret field in extra vars or a file template.
    secret_templates = list(injectors.get('extra_vars', {}).values()) + list(injectors.get('file', {}).values())
    assert not [t for t in secret_templates if 'client_secret' in t or 'encryption_password' in t]


PLAY = textwrap.dedent('''\
    ---
    # A job template's playbook with the credential "OIDC tokens client": the secrets come from the job's
    # environment, issuer and client from the credential's extra vars, the subject token from OIDC_AT.
    - name: A job with the credential OIDC tokens client
      hosts: localhost
      gather_facts: false
      module_defaults:
        group/oidc.tokens.oidc:
          issuer: "{{ job_tokens_issuer }}"
          client_id: "{{ job_tokens_client_id }}"
          client_secret: "{{ lookup('ansible.builtin.env', 'OIDC_TOKENS_CLIENT_SECRET') }}"
          ca_path: "{{ lookup('ansible.builtin.env', 'OIDC_TOKENS_CA_PATH') or omit }}"
          encryption_password_env: OIDC_TOKENS_ENCRYPTION_PASSWORD
      tasks:
        - name: Trade the user's access token for an account
          oidc.tokens.oidc_token_exchange:
            name: awxjob
            subject_token: "{{ lookup('ansible.builtin.env', 'OIDC_AT') }}"
            scope: [openid, storage.read:/, compute.read]
            lifetime: 3600

        - name: An access token from the module
          oidc.tokens.oidc_token:
            name: awxjob
            min_valid_period: 10
          register: module_token
          no_log: true

        - name: The token works at the provider's userinfo endpoint
          ansible.builtin.uri:
            url: "{{ job_tokens_issuer }}/me"
            ca_path: "{{ lookup('ansible.builtin.env', 'OIDC_TOKENS_CA_PATH') or omit }}"
            headers:
              Authorization: "Bearer {{ module_token.access_token }}"
          register: userinfo
          no_log: true

        - name: The lookup refreshes with everything else from the credential's environment
          ansible.builtin.copy:
            content: "{{ lookup('oidc.tokens.oidc_token', 'awxjob', force=true) }}"
            dest: "{{ playbook_dir }}/out/lookup_token"
            mode: "0600"
          no_log: true

        - name: Who the token is for
          ansible.builtin.debug:
            msg: "userinfo sub={{ userinfo.json.sub }}"
    ''')

TEARDOWN = textwrap.dedent('''\
    ---
    - name: Teardown with the credential OIDC tokens client
      hosts: localhost
      gather_facts: false
      tasks:
        - name: Revoke the account's refresh token and remove the account
          oidc.tokens.oidc_revoke:
            name: awxjob
            ca_path: "{{ lookup('ansible.builtin.env', 'OIDC_TOKENS_CA_PATH') or omit }}"
            encryption_password_env: OIDC_TOKENS_ENCRYPTION_PASSWORD
    ''')


@pytest.fixture(scope='module')
def tls_provider(provider_factory):
    return provider_factory(tls=True)


@pytest.mark.parametrize('ca_in_credential', [True, False], ids=['ca-bundle-in-credential', 'image-trusts-provider'])
def test_a_play_with_what_the_credential_injects_exchanges_uses_and_revokes(built_collection, tls_provider, tmp_path,
                                                                            ca_in_credential):
    provider = tls_provider
    _tarball, collections = built_collection
    client = provider.client(EXCHANGER)
    password = 'awx job password %s' % os.urandom(6).hex()
    inputs = {'issuer': provider.issuer, 'client_id': client['client_id'], 'client_secret': client['client_secret'],
              'encryption_password': password}
    if ca_in_credential:
        with open(provider.ca_path) as handle:
            inputs['ca_bundle'] = handle.read()

    private_data_dir = tmp_path / 'private_data_dir'   # AWX makes it with mkdtemp (0700), env/ inside it
    (private_data_dir / 'env').mkdir(parents=True)
    private_data_dir.chmod(0o700)
    injected_env, safe_env, args = awx_inject(load_credential_type(), inputs, str(private_data_dir))

    # What AWX stores and shows for the job: no secret.
    assert safe_env['OIDC_TOKENS_CLIENT_SECRET'] == '**********'
    assert safe_env['OIDC_TOKENS_ENCRYPTION_PASSWORD'] == '**********'
    assert safe_env['OIDC_TOKENS_ISSUER'] == provider.issuer
    # The CA bundle is a private file; without one the variable is empty (the collection takes it as not set).
    if ca_in_credential:
        ca_file = injected_env['OIDC_TOKENS_CA_PATH']
        assert stat.S_IMODE(os.stat(ca_file).st_mode) == 0o600
        assert open(ca_file).read() == inputs['ca_bundle']
    else:
        assert injected_env['OIDC_TOKENS_CA_PATH'] == ''
    (extra_vars_arg,) = [a for a in args if a.startswith('@')]
    extra_vars_file = extra_vars_arg[1:]
    assert stat.S_IMODE(os.stat(extra_vars_file).st_mode) == 0o400
    assert client['client_secret'] not in open(extra_vars_file).read() and password not in open(extra_vars_file).read()

    project = tmp_path / 'project'
    (project / 'out').mkdir(parents=True)
    (project / 'play.yml').write_text(PLAY)
    (project / 'teardown.yml').write_text(TEARDOWN)
    (project / 'inventory').write_text('localhost ansible_connection=local ansible_python_interpreter=%s\n'
                                       % sys.executable)
    home = tmp_path / 'home'
    home.mkdir()
    subject_token = provider.user_access_token()
    # The job's environment: a plain base (the image's), the subject token, and exactly what the credential injects.
    base = {'PATH': os.environ['PATH'], 'HOME': str(home), 'LANG': 'C.UTF-8', 'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_COLLECTIONS_PATH': str(collections), 'ANSIBLE_LOCAL_TEMP': str(tmp_path / 'ansible-tmp'),
            'OIDC_AT': subject_token}
    if not ca_in_credential:
        # The image's trust store knows the provider's CA (requests, and Python's ssl for the uri module).
        base.update(REQUESTS_CA_BUNDLE=provider.ca_path, SSL_CERT_FILE=provider.ca_path)
    environment = dict(base, **injected_env)

    def playbook(name):
        return run([tool('ansible-playbook'), '-vvv', '-i', 'inventory'] + args + [name], cwd=str(project),
                   env=environment, timeout=300)

    counts_before = provider.counts()
    played = playbook('play.yml')
    output = played.stdout + played.stderr
    assert played.returncode == 0, output[-4000:]
    assert 'userinfo sub=%s' % provider.user('alice')['sub'] in output

    store = AccountStore(config_dir=str(home / '.config' / 'oidc-agent'))
    account = store.load('awxjob', password)
    refresh_token = account['refresh_token']
    lookup_token = (project / 'out' / 'lookup_token').read_text()
    assert provider.introspect(refresh_token)['active'] is True
    assert provider.introspect(lookup_token)['active'] is True
    assert requests.get(provider.url + '/me', headers={'Authorization': 'Bearer ' + lookup_token}, timeout=10,
                        verify=provider.ca_path).json()['sub'] == provider.user('alice')['sub']
    assert provider.counts()['exchange'] == counts_before['exchange'] + 1

    torn_down = playbook('teardown.yml')
    output += torn_down.stdout + torn_down.stderr
    assert torn_down.returncode == 0, (torn_down.stdout + torn_down.stderr)[-4000:]
    assert provider.introspect(refresh_token)['active'] is False
    assert not store.exists('awxjob')

    for secret in (client['client_secret'], password, subject_token, refresh_token, lookup_token):
        assert secret not in output
