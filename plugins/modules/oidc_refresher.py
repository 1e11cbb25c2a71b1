#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_refresher
short_description: Keep a job's access token fresh on a host, or end it
version_added: 0.2.0
description:
  - Owns everything of the on-host refresher C(oidc-tokens-refresher) of one account of one job user; runs as root
    (C(become)), and does what touches the job user's files as that user. The role C(oidc.tokens.job_tokens) runs it,
    with the exchange, on many workers.
  - O(state=present) installs the refresher (one zip application of the refresher and the collection's module_utils,
    byte-identical for the same collection), makes the job user's private directories and, unless the user names their
    own, the account's password file (a random password when O(encryption_password) is not given). The account can then
    be made with M(oidc.tokens.oidc_token_exchange) as the job user, with RV(password_file) and RV(config_dir).
  - O(state=started) does the same; with O(subject_token) it then exchanges it for the account as the job user, exactly
    as M(oidc.tokens.oidc_token_exchange) does (an existing usable account is kept, unless O(force_exchange)); then it
    writes the refresher's configuration (no secret in it), schedules the
    refresher (a systemd service and a watchdog timer where systemd runs, else a cron entry of the job user that starts
    it every minute should it have stopped), starts it, and returns when the WLCG bearer-token file holds an access token
    valid for at least O(min_valid_period) seconds. The account must exist.
  - O(state=absent) removes the schedule, stops the refresher, revokes the account's refresh token (RFC 7009), deletes
    the account, the password file it manages, the bearer-token file, the configuration and the state. When the
    provider cannot revoke the token, the task fails and the account, its password and the configuration are kept so
    that it can run again (unless O(force)). Safe to run twice, after a failed start, for an account that never existed.
  - What runs as the job user (the exchange, the refresher it starts) gets a clean environment, with only the proxy
    (C(https_proxy), C(http_proxy), C(no_proxy)) and CA (C(REQUESTS_CA_BUNDLE), C(SSL_CERT_FILE)) variables of the
    task's C(environment). A refresher that systemd or cron restarts has none of them, so give O(ca_path) where a CA is
    needed.
author:
  - oidc.tokens maintainers (@oidc-tokens)
extends_documentation_fragment:
  - oidc.tokens.provider
  - oidc.tokens.connection
  - oidc.tokens.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports what would be installed, written, scheduled or removed; nothing is started, stopped or revoked.
  diff_mode:
    support: partial
    details:
      - With O(state=started), the refresher's configuration before and after.
  platform:
    platforms: posix
options:
  name:
    description:
      - The account's short name in the job user's account directory; also names the refresher's configuration,
        units and cron entry. The account store's rule applies (test C(oidc.tokens.account_name)).
    type: str
    required: true
  user:
    description:
      - The Unix user the job runs as. Letters, digits, C(.), C(_) and C(-).
    type: str
    required: true
  state:
    description:
      - C(present), C(started) or C(absent), see the description.
    type: str
    choices: [present, started, absent]
    default: started
  config_dir:
    description:
      - The job user's oidc-agent account directory. Default C(~/.config/oidc-agent) of the job user.
    type: path
  token_file:
    description:
      - The bearer-token file. Default C(bt_u<uid>-<name>), the account's own (two jobs of a user never share one),
        in the job user's runtime directory C(/run/user/<uid>) when there is one, else in the job user's directory
        under O(run_dir). The job finds it through C(BEARER_TOKEN_FILE) (RV(environment)).
      - A file that the refresher of another account of the job user writes is refused.
    type: path
  token_file_in_tmp:
    description:
      - Default O(token_file) to C(/tmp/bt_u<uid>), the WLCG discovery place for tools that do not read
        C(BEARER_TOKEN_FILE) (one job per user then). In a shared directory another user may have planted a file
        there, which the refresher then refuses to use.
    type: bool
    default: false
  encryption_password:
    description:
      - The account password to keep in the password file the module manages, for unattended refreshes. When neither
        this nor O(encryption_password_file) nor O(encryption_password_command) is given, a random one is made (once;
        a later run keeps it).
    type: str
  encryption_password_file:
    description:
      - A password file of the job user's own (the module only checks it can be read), or with O(encryption_password)
        the place the module writes the password to. Default C(NAME.password) in the job user's directory under
        O(run_dir), made by root so that nobody else can plant a file there.
    type: path
  encryption_password_command:
    description:
      - A command that prints the account password, run as the job user whenever the refresher needs it.
    type: str
  subject_token:
    description:
      - With O(state=started), the token to exchange for the account's refresh token (RFC 8693), usually the user's
        access token; it must be valid now. Without it the account must exist (made by
        M(oidc.tokens.oidc_token_exchange) with RV(password_file) and RV(config_dir) of O(state=present)).
    type: str
  subject_token_type:
    description:
      - The subject token's type, a token-type URN or C(access_token), C(id_token), C(jwt).
    type: str
    default: access_token
  scope:
    description:
      - Scopes the refresh token should cover, as for M(oidc.tokens.oidc_token_exchange).
    type: list
    elements: str
  audience:
    description:
      - RFC 8693 audiences of the tokens.
    type: list
    elements: str
  lifetime:
    description:
      - Seconds the account is kept from its exchange; then the refresher revokes the refresh token and removes the
        account (the end of its lifetime becomes the refresher's O(lifetime_end)).
    type: int
  offline_access:
    description:
      - Whether the exchange asks for the C(offline_access) scope, as for M(oidc.tokens.oidc_token_exchange).
    type: str
    choices: [auto, always, never]
    default: auto
  short_refresh_token:
    description:
      - What a refresh token that dies before O(lifetime) ends means, as for M(oidc.tokens.oidc_token_exchange).
    type: str
    choices: [warn, fail]
    default: warn
  force_exchange:
    description:
      - Exchange O(subject_token) even when a usable account exists (its refresh token is then revoked).
    type: bool
    default: false
  min_valid_period:
    description:
      - Seconds an access token in the bearer-token file must still be valid; the refresher refreshes before.
    type: int
    default: 60
  lifetime_end:
    description:
      - The end of the account's lifetime (seconds since the epoch, RV(oidc.tokens.oidc_token_exchange#module:account.lifetime_end));
        then the refresher revokes the refresh token, removes the account and stops.
    type: int
  job:
    description:
      - The job the tokens are for. While it exists the refresher keeps the token fresh; once it has ended (finished,
        failed, cancelled, its node rebooted) the refresher revokes the refresh token, removes the account, its
        password file, the bearer-token file, its configuration and its crontab entry, and stops, with no Ansible run
        needed. It looks every O(job_poll) seconds.
      - A job that cannot be looked up (the batch system's controller is down, a command times out) is not taken for
        ended, since ending the tokens of a running job would break it; the token is kept fresh meanwhile, up to the
        end of the account's lifetime, and the refresher logs that it cannot tell.
      - Without it, the tokens last until O(state=absent) or the end of the account's lifetime.
      - Once the refresher of O(name) follows a job, starting it for another job, or for none, fails and changes
        nothing (a second job would take over the first one's tokens); the same job again changes nothing.
    type: dict
    suboptions:
      kind:
        description:
          - C(pid), a process of the host (told from a later process with the same id by its start time, read when
            the task runs); C(slurm), a Slurm job id, asked of the controller with C(squeue); C(systemd), a unit
            (C(systemctl show)), of the system, or of the job user with O(job.scope=user).
        type: str
        required: true
        choices: [pid, slurm, systemd]
      id:
        description:
          - The process id, the Slurm job id (C(1234), or C(1234_5) for an element of an array job) or the unit name.
        type: str
        required: true
      slurm_conf:
        description:
          - The C(slurm.conf) that C(squeue) reads (its C(SLURM_CONF)), when it is not Slurm's default.
        type: path
      scope:
        description:
          - For C(systemd), whose unit it is.
        type: str
        choices: [system, user]
        default: system
  exclusive:
    description:
      - This start begins a new job. Fail, and change nothing, when the account has a refresher already (a job of
        that name runs, or was never torn down), instead of keeping it as a start of the same job again would. The
        failure has RV(conflict=true).
    type: bool
    default: false
  job_poll:
    description:
      - Seconds between two looks at O(job). A refresh token outlives its job by at most this, plus the revocation.
    type: int
    default: 30
  retry_max:
    description:
      - The longest wait, in seconds, between tries after a failed refresh.
    type: int
    default: 60
  scheduler:
    description:
      - What restarts the refresher should it stop. C(auto) is C(systemd) where systemd runs, else C(cron); C(none)
        only starts it.
    type: str
    choices: [auto, systemd, cron, none]
    default: auto
  start_timeout:
    description:
      - Seconds O(state=started) waits for a valid access token in the bearer-token file.
    type: int
    default: 60
  prefix:
    description:
      - Where the refresher is installed (C(bin/oidc-tokens-refresher), C(libexec/)); root's directories.
    type: str
    default: /opt/oidc-tokens
  run_dir:
    description:
      - Root's directory that holds a private directory per job user (password file, bearer-token file without a
        runtime directory).
    type: str
    default: /run/oidc-tokens
  python:
    description:
      - The Python that runs the refresher; it needs requests, PyNaCl and cryptography. Default the one that runs
        this module.
    type: path
  force:
    description:
      - With O(state=absent), delete the account even when its refresh token cannot be revoked; it may stay valid at
        the provider until it expires.
    type: bool
    default: false
  keep_logs:
    description:
      - With O(state=absent), keep the refresher's log files.
    type: bool
    default: true
requirements:
  - requests, PyNaCl and cryptography for the job user's Python (RV(missing_libraries) says which are missing)
seealso:
  - module: oidc.tokens.oidc_token_exchange
  - module: oidc.tokens.oidc_revoke
'''

EXAMPLES = r'''
- name: Exchange alice's token for this worker's own account job1 and keep a fresh access token for her job
  oidc.tokens.oidc_refresher:
    name: job1
    user: alice
    issuer: https://op.example.org/
    client_id: exchanger
    client_secret: "{{ vault_client_secret }}"
    subject_token: "{{ lookup('ansible.builtin.env', 'OIDC_AT') }}"
    scope: [openid, compute.read]
    lifetime: 259200
  become: true
  register: refresher

- name: The job finds its token through BEARER_TOKEN_FILE
  ansible.builtin.command: /opt/jobs/run-analysis
  environment: "{{ refresher.environment }}"
  become: true
  become_user: alice

- name: Job done, revoke and remove everything
  oidc.tokens.oidc_refresher:
    name: job1
    user: alice
    state: absent
  become: true

# Tie the tokens to a Slurm job: they end (revoked, removed) within job_poll seconds after the job does.
- name: Follow bob's batch job
  oidc.tokens.oidc_refresher:
    name: job2
    user: bob
    job:
      kind: slurm
      id: "{{ submitted.stdout | trim }}"
  become: true

# The same with an account made separately (another module, another password source).
- name: Prepare the worker for alice's account job1
  oidc.tokens.oidc_refresher:
    name: job1
    user: alice
    state: present
  become: true
  register: host

- name: Exchange as alice, into the password file the module keeps
  oidc.tokens.oidc_token_exchange:
    name: job1
    issuer: https://op.example.org/
    client_id: exchanger
    client_secret: "{{ vault_client_secret }}"
    subject_token: "{{ lookup('ansible.builtin.env', 'OIDC_AT') }}"
    config_dir: "{{ host.config_dir }}"
    encryption_password_file: "{{ host.password_file }}"
  become: true
  become_user: alice
  register: exchange

- name: Keep a fresh access token in alice's bearer-token file
  oidc.tokens.oidc_refresher:
    name: job1
    user: alice
    lifetime_end: "{{ exchange.account.lifetime_end }}"
  become: true
'''

RETURN = r'''
conflict:
  description: The start was refused because it would take over another job's tokens or bearer-token file (see
    O(job), O(exclusive) and O(token_file)); nothing was changed.
  returned: failed for that reason
  type: bool
  sample: true
exchanged:
  description: Whether O(subject_token) was exchanged (false when a usable account was kept).
  returned: state is started and subject_token is given
  type: bool
account:
  description: The account's non-secret details, as M(oidc.tokens.oidc_token_exchange) returns them.
  returned: state is started and subject_token is given
  type: dict
token_file:
  description: The bearer-token file (C(BEARER_TOKEN_FILE) of the job).
  returned: state is present or started
  type: str
  sample: /run/user/1001/bt_u1001-job1
password_file:
  description: The password file the account is encrypted with (null with O(encryption_password_command)).
  returned: state is present or started
  type: str
config_dir:
  description: The job user's account directory.
  returned: state is present or started
  type: str
refresher_config:
  description: The refresher's configuration file.
  returned: state is present or started
  type: str
state_dir:
  description: The refresher's state and log directory.
  returned: state is present or started
  type: str
bin:
  description: The refresher command.
  returned: state is present or started
  type: str
scheduler:
  description: C(systemd), C(cron) or C(none).
  returned: state is present or started
  type: str
unit:
  description: The systemd unit name (without suffix), when systemd schedules the refresher.
  returned: state is present or started
  type: str
environment:
  description: The job's environment, C(BEARER_TOKEN_FILE), C(OIDC_TOKENS_ACCOUNT) and C(OIDC_TOKENS_REFRESHER).
  returned: state is present or started
  type: dict
account_options:
  description: The options other modules of the collection need to use the account as the job user.
  returned: state is present or started
  type: dict
missing_libraries:
  description: The Python libraries the refresher needs that O(python) cannot import.
  returned: state is present or started
  type: list
  elements: str
pid:
  description: The refresher's process id.
  returned: state is started
  type: int
valid_for:
  description: Seconds the access token in the bearer-token file is still valid.
  returned: state is started
  type: int
revoked:
  description: Whether the refresh token was revoked.
  returned: state is absent
  type: bool
removed:
  description: The files removed (or, in check mode, found to remove).
  returned: state is absent
  type: list
  elements: path
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils import _refresher_host
from ansible_collections.oidc.tokens.plugins.module_utils._options import PROVIDER_ARGSPEC, STORE_ARGSPEC, run_module
from ansible_collections.oidc.tokens.plugins.module_utils._tokens import OFFLINE_ACCESS_CHOICES

STATES = {'present': _refresher_host.present, 'started': _refresher_host.started, 'absent': _refresher_host.absent}


def run(module):
    params = module.params
    if params['state'] == 'present':
        return STATES['present'](params, module.check_mode)[2]
    try:
        result = STATES[params['state']](params, module.check_mode)
    except _refresher_host.MissingLibrariesError as exc:
        module.fail_json(msg=str(exc), missing_libraries=exc.missing, python=exc.python)
    except _refresher_host.JobConflictError as exc:
        module.fail_json(msg=str(exc), conflict=True)
    if params['state'] == 'absent':
        if result.get('error'):
            module.fail_json(msg='The refresh token of account %r was not revoked: %s. The schedule, the refresher and '
                             'the bearer-token file are gone; the account, its password file and the refresher\'s '
                             'configuration were kept, so that this can run again once the provider is reachable (or '
                             'with force, which removes the account unrevoked).' % (params['name'], result['error']),
                             **result)
        if result.get('left_behind'):
            module.fail_json(msg='Everything else was done, but it could not remove %s. A file the job user cannot '
                             'remove there belongs to another user, who may have planted it: look at it as root before '
                             'the next job uses that path.' % ', '.join(result['left_behind']), **result)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            PROVIDER_ARGSPEC,
            subject_token=dict(type='str', no_log=True),
            subject_token_type=dict(type='str', default='access_token'),
            scope=dict(type='list', elements='str'),
            audience=dict(type='list', elements='str'),
            lifetime=dict(type='int'),
            offline_access=dict(type='str', default='auto', choices=list(OFFLINE_ACCESS_CHOICES)),
            short_refresh_token=dict(type='str', default='warn', choices=['warn', 'fail']),
            force_exchange=dict(type='bool', default=False),
            config_dir=STORE_ARGSPEC['config_dir'],
            encryption_password=STORE_ARGSPEC['encryption_password'],
            encryption_password_file=STORE_ARGSPEC['encryption_password_file'],
            encryption_password_command=STORE_ARGSPEC['encryption_password_command'],
            name=dict(type='str', required=True),
            user=dict(type='str', required=True),
            state=dict(type='str', default='started', choices=['present', 'started', 'absent']),
            token_file=dict(type='path'),
            token_file_in_tmp=dict(type='bool', default=False),
            min_valid_period=dict(type='int', default=60),
            lifetime_end=dict(type='int'),
            retry_max=dict(type='int', default=60),
            job=dict(type='dict', options=dict(
                kind=dict(type='str', required=True, choices=['pid', 'slurm', 'systemd']),
                id=dict(type='str', required=True),
                slurm_conf=dict(type='path'),
                scope=dict(type='str', default='system', choices=['system', 'user']),
            )),
            job_poll=dict(type='int', default=30),
            exclusive=dict(type='bool', default=False),
            scheduler=dict(type='str', default='auto', choices=['auto', 'systemd', 'cron', 'none']),
            start_timeout=dict(type='int', default=60),
            prefix=dict(type='str', default='/opt/oidc-tokens'),
            run_dir=dict(type='str', default='/run/oidc-tokens'),
            python=dict(type='path'),
            force=dict(type='bool', default=False),
            keep_logs=dict(type='bool', default=True),
        ),
        required_by={'subject_token': ('issuer', 'client_id')},
        mutually_exclusive=[('encryption_password_command', 'encryption_password'),
                            ('encryption_password_command', 'encryption_password_file')],
        supports_check_mode=True,
    )
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
