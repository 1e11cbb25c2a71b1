# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: oidc_token
author:
  - oidc.tokens maintainers (@oidc-tokens)
version_added: 0.1.0
short_description: Access tokens of accounts on the controller, one refresh for all hosts
description:
  - Returns an access token of each account named in the terms, from an account made by
    M(oidc.tokens.oidc_token_exchange) (or by oidc-agent's C(oidc-gen)) in O(config_dir) on the B(controller),
    like M(oidc.tokens.oidc_token) does on a host and C(oidc-token) does in a shell.
  - Ansible templates a lookup once per host, each time in a fresh worker process. So that a play over a thousand
    hosts costs one refresh per access-token lifetime and not a thousand (and not a thousand key derivations of the
    encrypted account either), the lookup keeps the tokens it hands out in a cache of the controller user (see
    O(cache) and O(cache_dir)), one entry per account, O(scope), O(audience), O(resource), O(issuer) and
    O(client_id). An entry is reused while it has at least O(min_valid_period) seconds left and the account file
    has not changed since (a revoked or replaced account is not served from the cache).
  - On a miss one worker takes the cache's lock of the account, and the others wait for it and then use what it
    got. That worker decrypts the account (one Argon2id derivation), reuses the default access token kept in the
    account while it is valid long enough (as M(oidc.tokens.oidc_token) does), or refreshes under the account
    store's lock; when the provider rotates the refresh token, the new one is written to the account file before
    the access token is returned.
  - With O(query), returns that part (a JMESPath expression) of the dictionary C(access_token), C(expires_at),
    C(issuer), C(scope), C(claims) instead of the access token.
  - With O(source=agent), asks the user's running oidc-agent (its socket C($OIDC_SOCK)) for a token of the account it
    has loaded, as C(oidc-token -t MIN_VALID_PERIOD -s SCOPE --aud AUDIENCE ACCOUNT) does, and reads and writes no
    file.
extends_documentation_fragment:
  - oidc.tokens.provider
  - oidc.tokens.connection
  - oidc.tokens.provider.plugins
  - oidc.tokens.store
  - oidc.tokens.store.plugins
options:
  _terms:
    description:
      - Names of accounts in O(config_dir) on the controller.
    type: list
    elements: str
    required: true
  source:
    description:
      - Where the token comes from.
      - V(store), an account file in O(config_dir), decrypted with the encryption password, through the lookup's cache.
      - V(agent), the user's running oidc-agent at O(agent_socket) (C($OIDC_SOCK)), for an account loaded in it
        (C(oidc-add ACCOUNT)). No account file is read or written and no encryption password is needed; O(config_dir),
        the encryption password options, O(cache), O(cache_dir), O(resource), O(issuer), O(client_id),
        O(client_secret) and O(auth_method) are ignored. The token goes through no cache of the lookup (the agent
        keeps the account's default token itself) and into no file. O(min_valid_period), O(scope), O(audience),
        O(force) (oidc-token's C(-f)) and O(query) apply.
      - Only the lookup's own option sets it, never a host variable, the environment or C(ansible.cfg).
    type: str
    choices: [store, agent]
    default: store
  agent_socket:
    description:
      - The socket of the oidc-agent for O(source=agent). When not set, C($OIDC_SOCK) of the controller, as
        C(eval "$(oidc-agent)") exports it.
      - It must be a UNIX socket owned by the controller user, and the agent behind it must run as that user.
      - Only the lookup's own option, the controller's environment or C(ansible.cfg) set it, never a host variable.
    type: path
    env:
      - name: OIDC_SOCK
    ini:
      - section: oidc_tokens
        key: agent_socket
  min_valid_period:
    description:
      - Seconds the returned token must still be valid (oidc-token's C(-t)). A cached or kept token with less time
        left is not used.
      - Keep it below the lifetime of the provider's access tokens, or every call refreshes.
    type: int
    default: 60
    env:
      - name: OIDC_TOKENS_MIN_VALID_PERIOD
    ini:
      - section: oidc_tokens
        key: min_valid_period
    vars:
      - name: oidc_tokens_min_valid_period
  scope:
    description:
      - Ask for a token with fewer scopes than the account holds (oidc-token's C(-s)). Unlike oidc-agent, the lookup
        caches such a token too, in an entry of its own. A scope the provider does not grant fails the lookup.
    type: list
    elements: str
  audience:
    description:
      - Audiences for the token (oidc-token's C(--aud), sent as C(audience)).
    type: list
    elements: str
  resource:
    description:
      - RFC 8707 resources for the token.
    type: list
    elements: str
  force:
    description:
      - Refresh even if a cached or kept token is still valid (oidc-token's C(-f)); the new token replaces the cached
        one. Every host that evaluates the lookup with O(force) refreshes.
    type: bool
    default: false
  verify:
    description:
      - When O(query) uses C(claims) (or the whole dictionary), check a JWT access token's signature against the
        provider's JWKS, its issuer and its expiry before its claims are returned. When false, the claims are only
        decoded. An opaque token has no claims. Without O(query) nothing is verified.
    type: bool
    default: true
    env:
      - name: OIDC_TOKENS_VERIFY
    ini:
      - section: oidc_tokens
        key: verify
  query:
    description:
      - A JMESPath expression applied to the dictionary C(access_token), C(expires_at), C(issuer), C(scope), C(claims);
        its result is returned instead of the access token.
      - 'For example C(expires_at), C(claims.sub) or C({token: access_token, until: expires_at}).'
      - Needs the Python library jmespath on the controller.
    type: str
  cache:
    description:
      - Keep the tokens handed out in the cache and reuse them (see O(cache_dir)). When false, every evaluation
        decrypts the account, and refreshes unless the default token kept in the account is still valid.
    type: bool
    default: true
    env:
      - name: OIDC_TOKENS_CACHE
    ini:
      - section: oidc_tokens
        key: cache
  cache_dir:
    description:
      - The directory of the cache, created with mode 0700; its files have mode 0600.
      - When not set, C($XDG_RUNTIME_DIR/oidc-tokens) if C(XDG_RUNTIME_DIR) is set (a tmpfs of the user on systemd
        systems), else C(~/.cache/oidc-tokens) on a disk, and the lookup then warns each time it writes a token there.
      - Only the lookup's own option, the controller's environment or C(ansible.cfg) set it, never a host variable.
      - M(oidc.tokens.oidc_revoke) and M(oidc.tokens.oidc_account) run on the controller remove the cached tokens of
        the accounts they revoke or remove from the default directory or C($OIDC_TOKENS_CACHE_DIR); a cache_dir set
        only in C(ansible.cfg) is not known to them.
    type: path
    env:
      - name: OIDC_TOKENS_CACHE_DIR
    ini:
      - section: oidc_tokens
        key: cache_dir
notes:
  - The lookup runs on the controller and reads accounts of the controller user. For accounts on the managed hosts
    use M(oidc.tokens.oidc_token).
  - The cache holds access tokens in plain text, in files of mode 0600 of the controller user in a directory of mode
    0700 (on a tmpfs when C(XDG_RUNTIME_DIR) is set, so nothing reaches a disk). Refresh tokens and the client
    secret never go there; they stay encrypted in the account file. Set O(cache=false) to keep no token outside the
    account file.
  - A cache hit neither decrypts the account nor checks the encryption password, since whoever can read the cache as
    the controller user gets the same tokens without it.
  - Ansible does not hide what a lookup returns. Put C(no_log) on tasks that show the token, and pass it to modules
    in options they mark as secret.
  - Every OAuth and account error fails the task with a message that names the account and never holds a secret.
  - Which options a host may set. The lookup runs on the controller with the controller user's accounts, for every
    host, so host variables (inventory, and facts a managed host returns, which Ansible turns into host variables)
    set only O(encryption_password) (C(oidc_tokens_encryption_password)) and O(min_valid_period)
    (C(oidc_tokens_min_valid_period)); with them a host can at worst make its own lookups fail or refresh sooner.
    Options that say where a credential goes, which TLS to trust, which command to run or which path to read or
    write (O(issuer), O(client_id), O(client_secret), O(ca_path), O(validate_certs), O(allow_insecure_http),
    O(config_dir), O(cache_dir), O(encryption_password_file), O(encryption_password_env),
    O(encryption_password_command), O(agent_socket)) come only from the lookup's own options in the playbook, the
    controller's environment or C(ansible.cfg), and O(source) only from the lookup's own option.
  - An account's issuer and client are the ones stored in it. An O(issuer) or O(client_id) that names another one
    fails the lookup; the account's refresh token is only ever sent to its own issuer.
  - An environment variable that is set but empty counts as not set, so C(ansible.cfg) or the default applies (AWX's
    credential injectors set every variable they name, empty for a field left blank).
  - With O(source=agent), a locked agent, an agent that has not loaded the account and an agent that is not running
    fail the lookup with what to run (C(oidc-add --unlock), C(oidc-add ACCOUNT), C(eval "$(oidc-agent)")). The agent's
    C(expires_at) describes the account's default token; for a token asked with O(scope) or O(audience) the lookup
    takes C(expires_at) from the JWT's C(exp) (null for an opaque token). C(claims) are the JWT's, verified against
    the JWKS of the issuer the agent names unless O(verify=false), with the connection options.
  - An account that oidc-agent has loaded and that the collection's modules or this lookup (O(source=store)) use at the
    same time from the same file is shared by two holders of one refresh token. oidc-agent does not take the
    collection's lock, and after one rotates the refresh token the other replays a spent one (a provider with reuse
    detection then revokes the grant). The lookup's miss and the modules warn when the agent at C($OIDC_SOCK) has the
    account loaded; use O(source=agent) for such an account, or unload it from the agent (C(oidc-add -r ACCOUNT)).
requirements:
  - requests (on a cache miss)
  - PyNaCl (on a cache miss)
  - jmespath (for O(query))
  - cryptography (for O(verify) of claims)
seealso:
  - module: oidc.tokens.oidc_token
  - module: oidc.tokens.oidc_token_exchange
'''

EXAMPLES = r'''
- name: Call an API on every host with the job's access token (one refresh for the whole play)
  ansible.builtin.uri:
    url: https://api.example.org/v1/jobs
    headers:
      Authorization: "Bearer {{ lookup('oidc.tokens.oidc_token', 'job1') }}"
  no_log: true
  # The password source is the controller's: ansible.cfg ([oidc_tokens] encryption_password_file), the
  # environment (OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE) or an option of the lookup, never a host variable.

- name: A down-scoped token valid for at least 10 minutes
  ansible.builtin.set_fact:
    storage_token: >-
      {{ lookup('oidc.tokens.oidc_token', 'job1', scope=['storage.read:/'], min_valid_period=600,
                encryption_password=vault_account_password) }}
  no_log: true

- name: The user's token from the oidc-agent running on the controller (after oidc-add wlcg), nothing written to disk
  ansible.builtin.set_fact:
    user_token: "{{ lookup('oidc.tokens.oidc_token', 'wlcg', source='agent', min_valid_period=300) }}"
  no_log: true

- name: Only the expiry and the subject, never the token
  ansible.builtin.debug:
    msg: "{{ lookup('oidc.tokens.oidc_token', 'job1', query='{until: expires_at, sub: claims.sub}') }}"

# In ansible.cfg:
#   [oidc_tokens]
#   config_dir = ~/.config/oidc-agent
#   encryption_password_file = ~/.config/oidc-tokens/password
#   min_valid_period = 300
'''

RETURN = r'''
_raw:
  description:
    - One access token per account named, or with O(query) what the expression selects from C(access_token),
      C(expires_at) (epoch seconds, null when the provider does not say), C(issuer), C(scope) (list) and
      C(claims) (the JWT access token's claims; empty for an opaque token).
  type: list
  elements: raw
'''

import importlib.util
import json
import os
import sys

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase
from ansible.utils.display import Display

try:
    from ansible.errors import AnsibleValueOmittedError
except ImportError:  # ansible-core < 2.19
    AnsibleValueOmittedError = None


def _import_with_bytecode(*names):
    """Import the collection's ``plugins.<name>`` modules the way Ansible loads this plugin file.

    Ansible's collection loader compiles module_utils and plugin_utils from source in every process
    (it never reads or writes bytecode), and the lookup runs in a fresh worker per host: compiling the
    hit path's four files cost more than the rest of a hit. Loaded by path, as the plugin loader loads
    this file, Python keeps their bytecode in __pycache__ like any other module's. Registered under their
    collection names, so every later import gets the same module objects. Dependencies come first: a
    module's own ``from ansible_collections... import`` then finds them in sys.modules.
    """
    base = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in names:
        full_name = 'ansible_collections.oidc.tokens.plugins.' + name
        if full_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(full_name, os.path.join(base, *name.split('.')) + '.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules[full_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full_name]
            raise


# Nothing heavy is imported here: a cache hit must stay cheap in every worker process. requests,
# PyNaCl and the collection's OAuth and store code are imported on a miss (_lookup_miss.fetch_token),
# jmespath only for ``query``.
_import_with_bytecode('module_utils._errors', 'module_utils._account_names', 'module_utils._lookup_cache_files',
                      'plugin_utils._lookup_cache')
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError
from ansible_collections.oidc.tokens.plugins.plugin_utils._lookup_cache import TokenCache

display = Display()

QUERY_FIELDS = ('access_token', 'expires_at', 'issuer', 'scope', 'claims')


def _compile_query(expression):
    try:
        import jmespath
    except ImportError:
        raise AnsibleError('The lookup oidc.tokens.oidc_token needs the Python library jmespath on the controller for '
                           'the query option (pip install jmespath).')
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise AnsibleError('The query %r of the lookup oidc.tokens.oidc_token is not a valid JMESPath expression: %s'
                           % (expression, exc)) from None


def query_needs_claims(parsed):
    """Whether a compiled JMESPath expression (its ``parsed`` AST) can reach ``claims``.

    True when it names the field ``claims`` or uses the current node (``@``) or a value projection
    (``*``), which can return the whole dictionary.
    """
    stack = [parsed]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get('type')
        if kind == 'field' and node.get('value') == 'claims':
            return True
        if kind in ('current', 'value_projection'):
            return True
        stack.extend(node.get('children') or [])
    return False


class LookupModule(LookupBase):
    """Options in, one call per account (to the token cache, or to the running oidc-agent), the token (or the query's part of it) out."""

    def run(self, terms, variables=None, **kwargs):
        self._set_lookup_options(variables, kwargs)
        get = self.get_option

        query = get('query')
        compiled = _compile_query(query) if query else None
        claims = None
        if compiled is not None and query_needs_claims(compiled.parsed):
            claims = 'verify' if get('verify') else 'decode'
        if get('source') == 'agent':
            token_of = self._agent_token_getter(claims)
        else:
            token_of = self._cached_token_getter(claims)

        results = []
        for term in terms:
            if not isinstance(term, str) or not term:
                raise AnsibleError('The lookup oidc.tokens.oidc_token takes account names, not %r.' % (term,))
            try:
                token = token_of(str(term))
            except OidcTokensError as exc:
                raise AnsibleError(str(exc)) from None
            if compiled is None:
                results.append(token['access_token'])
            else:
                results.append(compiled.search(dict((field, token.get(field)) for field in QUERY_FIELDS)))
        return results

    def _cached_token_getter(self, claims):
        """An account's token through the token cache; a miss goes to the shared token layer (_tokens)."""
        get = self.get_option
        cache = TokenCache(get('cache_dir'), enabled=get('cache'), warn=display.warning)
        selectors = dict((option, get(option)) for option in ('scope', 'audience', 'resource', 'issuer', 'client_id'))

        def token_of(name):
            def fetch(force, claims_mode):
                from ansible_collections.oidc.tokens.plugins.plugin_utils._lookup_miss import fetch_token
                return fetch_token(get, name, force, claims_mode, display.warning)

            return cache.token(get('config_dir'), name, fetch, get('min_valid_period'), get('force'), claims, selectors)
        return token_of

    def _agent_token_getter(self, claims):
        """source=agent: an account's token from the running oidc-agent; no cache, no file."""
        from ansible_collections.oidc.tokens.plugins.plugin_utils._lookup_agent import agent_token

        return lambda name: agent_token(self.get_option, name, claims)

    def _set_lookup_options(self, variables, direct):
        definitions = C.config.get_configuration_definitions('lookup', self._load_name) or {}
        # set_options drops unknown keywords silently: a typo (min_valid_perod=600) must not fall back to a default.
        known = set(definitions).union(*(definition.get('aliases') or () for definition in definitions.values()))
        unknown = sorted(set(direct) - known)
        if unknown:
            raise AnsibleError('The lookup oidc.tokens.oidc_token has no option %s.' % ', '.join(unknown))
        # An option that an empty environment variable would set counts as not set: ansible.cfg or the default
        # applies. Ansible would take the empty value, and for a path (ca_path, config_dir) make it the current
        # directory; AWX's credential injectors set every variable they name, empty when a field is left blank.
        empty = dict((entry['name'], '') for definition in definitions.values() for entry in definition.get('env') or ()
                     if os.environ.get(entry['name']) == '')
        for name in empty:
            del os.environ[name]
        try:
            self.set_options(var_options=self._option_vars(variables), direct=direct)
        finally:
            os.environ.update(empty)

    def _option_vars(self, variables):
        """The variables that set options (the vars: entries), templated.

        Ansible hands a lookup the variables as they were written, so ``oidc_tokens_config_dir:
        "{{ base }}/accounts"`` would arrive untemplated; connection plugins template theirs the same way.
        """
        if not variables:
            return variables
        templar = getattr(self, '_templar', None)
        options = {}
        for name in C.config.get_plugin_vars('lookup', self._load_name):
            if name not in variables:
                continue
            value = variables[name]
            if templar is not None:
                try:
                    value = templar.template(value)
                except Exception as exc:
                    if AnsibleValueOmittedError is not None and isinstance(exc, AnsibleValueOmittedError):
                        continue
                    raise
            options[name] = value
        return options


# Ansible learns a lookup's options from its DOCUMENTATION: in every worker process it forks (one per host and task),
# its plugin loader parses that YAML and the doc fragments it extends (ansible/plugins/loader.py, _load_config_defs),
# which cost more than all the rest of a cache hit. It skips that when the plugin's definitions are known already,
# so the plugin registers them itself when it is imported: the same options, merged with the fragments and kept as
# JSON below. ansible-doc and the sanity tests read DOCUMENTATION from this file's source as before, and
# ansible-config gets the same definitions (with their descriptions). The defaults hold no templates, so the trust
# tags the loader gives parsed documentation are not needed. tests/unit/plugins/lookup/runtime_options.py writes
# the block; test_runtime_options_are_the_documented_ones fails when it differs from what the loader would parse.
_OPTIONS_JSON = (
    '{"_terms":{"description":["Names of accounts in O(config_dir) on the controller."],"elements":"str","required":true,'
    '"type":"list"},"agent_socket":{"description":["The socket of the oidc-agent for O(source=agent). When not set, C($OI'
    'DC_SOCK) of the controller, as C(eval \\"$(oidc-agent)\\") exports it.","It must be a UNIX socket owned by the control'
    'ler user, and the agent behind it must run as that user.","Only the lookup\'s own option, the controller\'s environmen'
    't or C(ansible.cfg) set it, never a host variable."],"env":[{"name":"OIDC_SOCK"}],"ini":[{"key":"agent_socket","sect'
    'ion":"oidc_tokens"}],"type":"path"},"allow_insecure_http":{"default":false,"description":["Allow a plain C(http://) '
    'issuer on a host that is not loopback. Tokens and the client secret would cross the network unencrypted."],"ini":[{"'
    'key":"allow_insecure_http","section":"oidc_tokens"}],"type":"bool"},"audience":{"description":["Audiences for the to'
    'ken (oidc-token\'s C(--aud), sent as C(audience))."],"elements":"str","type":"list"},"auth_method":{"choices":["clien'
    't_secret_basic","client_secret_post"],"description":["How the client authenticates at the token, revocation and intr'
    'ospection endpoints.","When not set, C(client_secret_basic) if the provider offers it, else C(client_secret_post)."]'
    ',"ini":[{"key":"auth_method","section":"oidc_tokens"}],"type":"str"},"ca_path":{"description":["A CA bundle file to '
    'verify the provider\'s TLS certificate with (oidc-agent\'s C(--cp)).","When not set, the system\'s trust store is used,'
    ' or the file named by C(REQUESTS_CA_BUNDLE)."],"env":[{"name":"OIDC_TOKENS_CA_PATH"}],"ini":[{"key":"ca_path","secti'
    'on":"oidc_tokens"}],"type":"path"},"cache":{"default":true,"description":["Keep the tokens handed out in the cache a'
    'nd reuse them (see O(cache_dir)). When false, every evaluation decrypts the account, and refreshes unless the defaul'
    't token kept in the account is still valid."],"env":[{"name":"OIDC_TOKENS_CACHE"}],"ini":[{"key":"cache","section":"'
    'oidc_tokens"}],"type":"bool"},"cache_dir":{"description":["The directory of the cache, created with mode 0700; its f'
    'iles have mode 0600.","When not set, C($XDG_RUNTIME_DIR/oidc-tokens) if C(XDG_RUNTIME_DIR) is set (a tmpfs of the us'
    'er on systemd systems), else C(~/.cache/oidc-tokens) on a disk, and the lookup then warns each time it writes a toke'
    'n there.","Only the lookup\'s own option, the controller\'s environment or C(ansible.cfg) set it, never a host variabl'
    'e.","M(oidc.tokens.oidc_revoke) and M(oidc.tokens.oidc_account) run on the controller remove the cached tokens of th'
    'e accounts they revoke or remove from the default directory or C($OIDC_TOKENS_CACHE_DIR); a cache_dir set only in C('
    'ansible.cfg) is not known to them."],"env":[{"name":"OIDC_TOKENS_CACHE_DIR"}],"ini":[{"key":"cache_dir","section":"o'
    'idc_tokens"}],"type":"path"},"client_id":{"description":["The confidential client registered with the provider. For '
    'an exchange, the client must be allowed the token-exchange grant. For an existing account, the client stored in the '
    'account is used; naming another one is an error."],"env":[{"name":"OIDC_TOKENS_CLIENT_ID"}],"ini":[{"key":"client_id'
    '","section":"oidc_tokens"}],"type":"str"},"client_secret":{"description":["The client\'s secret. Keep it in Ansible V'
    'ault. For an existing account, defaults to the secret stored (encrypted) in the account."],"env":[{"name":"OIDC_TOKE'
    'NS_CLIENT_SECRET"}],"type":"str"},"config_dir":{"description":["The directory of the account files, shared with oidc'
    '-agent.","When not set, C($OIDC_CONFIG_DIR), else C(~/.config/oidc-agent) of the user the task runs as.","The direct'
    'ory is kept at mode 0700 and the files at 0600."],"env":[{"name":"OIDC_CONFIG_DIR"}],"ini":[{"key":"config_dir","sec'
    'tion":"oidc_tokens"}],"type":"path"},"encryption_password":{"description":["The password the account file is encrypt'
    'ed with (oidc-agent\'s encryption password). Keep it in Ansible Vault.","Exactly one of O(encryption_password), O(enc'
    'ryption_password_file), O(encryption_password_env) and O(encryption_password_command) is needed whenever an account '
    'is read or written. The password is never passed on a command line."],"env":[{"name":"OIDC_TOKENS_ENCRYPTION_PASSWOR'
    'D"}],"type":"str","vars":[{"name":"oidc_tokens_encryption_password"}]},"encryption_password_command":{"description":'
    '["A command, run without a shell, whose standard output (without a final newline) is the password, for example a sec'
    'ret manager\'s client (oidc-agent\'s C(--pw-cmd))."],"ini":[{"key":"encryption_password_command","section":"oidc_token'
    's"}],"type":"str"},"encryption_password_env":{"description":["The name of an environment variable that holds the pas'
    'sword, in the environment of the module on the target or of the lookup on the controller.","On a remote host, Ansibl'
    "e's C(environment) keyword puts the value on the command line of the module's process, where other users of that hos"
    't can read it in the process list. There, prefer O(encryption_password) (from Ansible Vault), O(encryption_password_'
    'file) or O(encryption_password_command)."],"ini":[{"key":"encryption_password_env","section":"oidc_tokens"}],"type":'
    '"str"},"encryption_password_file":{"description":["A file whose content (without a final newline) is the password, o'
    'n the host where the plugin runs (the target for modules, the controller for the lookup)."],"env":[{"name":"OIDC_TOK'
    'ENS_ENCRYPTION_PASSWORD_FILE"}],"ini":[{"key":"encryption_password_file","section":"oidc_tokens"}],"type":"path"},"f'
    'orce":{"default":false,"description":["Refresh even if a cached or kept token is still valid (oidc-token\'s C(-f)); t'
    'he new token replaces the cached one. Every host that evaluates the lookup with O(force) refreshes."],"type":"bool"}'
    ',"issuer":{"aliases":["issuer_url"],"description":["The OpenID provider\'s issuer URL, as its discovery document anno'
    'unces it (a trailing slash or not makes no difference).","Discovery tries C(/.well-known/openid-configuration) and t'
    'hen RFC 8414 C(/.well-known/oauth-authorization-server); a document that names another issuer is refused.","For an e'
    "xisting account, the issuer stored in the account is used; naming another one is an error, so that an account's refr"
    'esh token is never sent anywhere but its own issuer."],"env":[{"name":"OIDC_TOKENS_ISSUER"}],"ini":[{"key":"issuer",'
    '"section":"oidc_tokens"}],"type":"str"},"min_valid_period":{"default":60,"description":["Seconds the returned token '
    'must still be valid (oidc-token\'s C(-t)). A cached or kept token with less time left is not used.","Keep it below th'
    'e lifetime of the provider\'s access tokens, or every call refreshes."],"env":[{"name":"OIDC_TOKENS_MIN_VALID_PERIOD"'
    '}],"ini":[{"key":"min_valid_period","section":"oidc_tokens"}],"type":"int","vars":[{"name":"oidc_tokens_min_valid_pe'
    'riod"}]},"query":{"description":["A JMESPath expression applied to the dictionary C(access_token), C(expires_at), C('
    'issuer), C(scope), C(claims); its result is returned instead of the access token.","For example C(expires_at), C(cla'
    'ims.sub) or C({token: access_token, until: expires_at}).","Needs the Python library jmespath on the controller."],"t'
    'ype":"str"},"resource":{"description":["RFC 8707 resources for the token."],"elements":"str","type":"list"},"retries'
    '":{"default":3,"description":["How often a request is repeated after a connection error or an HTTP 5xx answer, with '
    'exponential backoff. 4xx answers are never repeated.","A request that spends a refresh token or a subject token is r'
    'epeated only when it cannot have reached the provider, because a provider with reuse detection revokes the whole gra'
    'nt when a spent refresh token comes back."],"env":[{"name":"OIDC_TOKENS_RETRIES"}],"ini":[{"key":"retries","section"'
    ':"oidc_tokens"}],"type":"int"},"scope":{"description":["Ask for a token with fewer scopes than the account holds (oi'
    "dc-token's C(-s)). Unlike oidc-agent, the lookup caches such a token too, in an entry of its own. A scope the provid"
    'er does not grant fails the lookup."],"elements":"str","type":"list"},"source":{"choices":["store","agent"],"default'
    '":"store","description":["Where the token comes from.","V(store), an account file in O(config_dir), decrypted with t'
    'he encryption password, through the lookup\'s cache.","V(agent), the user\'s running oidc-agent at O(agent_socket) (C('
    '$OIDC_SOCK)), for an account loaded in it (C(oidc-add ACCOUNT)). No account file is read or written and no encryptio'
    'n password is needed; O(config_dir), the encryption password options, O(cache), O(cache_dir), O(resource), O(issuer)'
    ', O(client_id), O(client_secret) and O(auth_method) are ignored. The token goes through no cache of the lookup (the '
    "agent keeps the account's default token itself) and into no file. O(min_valid_period), O(scope), O(audience), O(forc"
    'e) (oidc-token\'s C(-f)) and O(query) apply.","Only the lookup\'s own option sets it, never a host variable, the envir'
    'onment or C(ansible.cfg)."],"type":"str"},"timeout":{"default":10,"description":["Seconds to wait for the provider t'
    'o connect and to answer, per request."],"env":[{"name":"OIDC_TOKENS_TIMEOUT"}],"ini":[{"key":"timeout","section":"oi'
    'dc_tokens"}],"type":"int"},"validate_certs":{"default":true,"description":["Verify the provider\'s TLS certificate. T'
    'urn off only for testing."],"env":[{"name":"OIDC_TOKENS_VALIDATE_CERTS"}],"ini":[{"key":"validate_certs","section":"'
    'oidc_tokens"}],"type":"bool"},"verify":{"default":true,"description":["When O(query) uses C(claims) (or the whole di'
    "ctionary), check a JWT access token's signature against the provider's JWKS, its issuer and its expiry before its cl"
    'aims are returned. When false, the claims are only decoded. An opaque token has no claims. Without O(query) nothing '
    'is verified."],"env":[{"name":"OIDC_TOKENS_VERIFY"}],"ini":[{"key":"verify","section":"oidc_tokens"}],"type":"bool"}'
    '}'
)


# A core without these methods simply parses DOCUMENTATION as before.
if hasattr(C.config, 'has_configuration_definition') and not C.config.has_configuration_definition('lookup', __name__):
    C.config.initialize_plugin_configuration_definitions('lookup', __name__, json.loads(_OPTIONS_JSON))
