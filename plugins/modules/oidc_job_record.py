#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_job_record
short_description: The controller's record of the jobs whose tokens were started on workers
version_added: 0.3.0
description:
  - Keeps, on the host it runs on (the controller, delegated to C(localhost)), a record of every worker, job user,
    account, issuer, client, bearer-token file, end of lifetime and followed job that the role C(oidc.tokens.job_tokens)
    started, with how Ansible reached each worker. The playbooks C(oidc.tokens.job_status) and
    C(oidc.tokens.job_teardown) (with C(job_from_record=true)) read it, so that jobs can be listed and torn down
    without the inventory that started them.
  - The record holds no secret. It is one JSON file of the running user, mode 0600 in a 0700 directory, replaced
    atomically under a lock, so that plays running at the same time do not lose each other's entries.
  - Without O(add) and O(remove), it only returns the record.
author:
  - oidc.tokens maintainers (@oidc-tokens)
extends_documentation_fragment:
  - oidc.tokens.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  path:
    description:
      - The record. Default C($XDG_STATE_HOME/oidc-tokens/jobs.json), else C(~/.local/state/oidc-tokens/jobs.json) of
        the user the module runs as.
    type: path
  add:
    description:
      - Entries to add, or to replace (the same account and worker). Each has at least C(account) and C(worker); the
        other fields kept are C(job_user), C(issuer), C(client_id), C(token_file), C(lifetime_end), C(job),
        C(started_at) (default now), C(connection) (only C(ansible_host), C(ansible_port), C(ansible_user),
        C(ansible_connection), C(ansible_become_method), C(ansible_python_interpreter)) and C(role) (only
        C(job_tokens_prefix), C(job_tokens_run_dir), C(job_tokens_config_dir), C(job_tokens_ca_path)).
    type: list
    elements: dict
    default: []
  remove:
    description:
      - Entries to remove, each given by its C(account) and C(worker), as a dictionary or as a pair
        C([account, worker]).
    type: list
    elements: raw
    default: []
notes:
  - Never give it a secret; fields other than those above are dropped.
'''

EXAMPLES = r'''
- name: Record what start set up on the workers of this play
  oidc.tokens.oidc_job_record:
    add:
      - account: job1
        worker: node17
        job_user: alice
        issuer: https://iam.example.org/
        client_id: job-runner
        token_file: /run/user/1001/bt_u1001-job1
        lifetime_end: 1900000000
        connection: {ansible_host: node17.example.org, ansible_user: admin}
  delegate_to: localhost
  run_once: true
  become: false

- name: List the recorded jobs
  oidc.tokens.oidc_job_record:
  delegate_to: localhost
  run_once: true
  become: false
  register: record
'''

RETURN = r'''
path:
  description: The record.
  returned: always
  type: str
jobs:
  description: The record's entries after the change, one per account and worker.
  returned: always
  type: list
  elements: dict
  sample:
    - account: job1
      worker: node17
      job_user: alice
      issuer: https://iam.example.org/
      client_id: job-runner
      token_file: /run/user/1001/bt_u1001-job1
      lifetime_end: 1900000000
      job: {kind: slurm, id: "1234"}
      started_at: 1800000000
      connection: {ansible_host: node17.example.org}
      role: {}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils import _job_record
from ansible_collections.oidc.tokens.plugins.module_utils._options import run_module


def run(module):
    path = module.params['path'] or _job_record.default_record_path()
    changed, before, after = _job_record.update_record(path, module.params['add'], module.params['remove'],
                                                       module.check_mode)
    result = {'changed': changed, 'path': path, 'jobs': [after[key] for key in sorted(after)]}
    if module._diff and changed:
        result['diff'] = {'before': before, 'after': after}
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path'),
            add=dict(type='list', elements='dict', default=[]),
            remove=dict(type='list', elements='raw', default=[]),
        ),
        supports_check_mode=True,
    )
    run_module(module, lambda: run(module))


if __name__ == '__main__':
    main()
