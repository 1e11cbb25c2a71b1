#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: oidc_refresher_info
short_description: What the refresher of a job user's account knows on a host, never a token
version_added: 0.3.0
description:
  - Reads, as the job user, the configuration and state of the refresher that M(oidc.tokens.oidc_refresher) started
    for account O(name) of O(user), and reports whether its loop runs, how long the access token in the bearer-token
    file stays valid, when the refresh token itself expires (when the provider said), the end of the account's
    lifetime, the job it follows and whether that job still runs. The playbook C(oidc.tokens.job_status) runs it on
    every recorded worker.
  - Runs as root (C(become)), like M(oidc.tokens.oidc_refresher); it changes nothing.
author:
  - oidc.tokens maintainers (@oidc-tokens)
extends_documentation_fragment:
  - oidc.tokens.attributes
attributes:
  check_mode:
    support: full
    details:
      - The module changes nothing.
  diff_mode:
    support: N/A
    details: The module changes nothing.
  platform:
    platforms: posix
options:
  name:
    description:
      - The account (the job's name).
    type: str
    required: true
  user:
    description:
      - The job user.
    type: str
    required: true
notes:
  - Never returns a token or a password.
'''

EXAMPLES = r'''
- name: Is alice's job1 still served on this worker?
  oidc.tokens.oidc_refresher_info:
    name: job1
    user: alice
  become: true
  register: info

- name: Say so
  ansible.builtin.debug:
    msg: "running: {{ info.refresher.pid is not none }}, token valid for {{ info.refresher.valid_for }} s"
  when: info.exists
'''

RETURN = r'''
exists:
  description: Whether the account has a refresher configuration on the host (false once it was torn down, by
    O(oidc.tokens.oidc_refresher#module:state=absent) or by the refresher itself when its job ended).
  returned: always
  type: bool
refresher:
  description: The refresher's status; empty when RV(exists) is false.
  returned: always
  type: dict
  contains:
    pid:
      description: The pid of the running loop, or null when none runs.
      type: int
    status:
      description: C(ok), C(retrying), C(expired), C(gone) or C(job-ended), as the loop last wrote it.
      type: str
    valid_for:
      description: Seconds the access token in the bearer-token file stays valid (null without a token).
      type: int
    expires_at:
      description: When that access token expires (seconds since the epoch).
      type: int
    refresh_token_expires_at:
      description: When the refresh token expires, when the provider said (seconds since the epoch), else null.
      type: int
    lifetime_end:
      description: The end of the account's lifetime (seconds since the epoch).
      type: int
    account_exists:
      description: Whether the account file is still there.
      type: bool
    token_file:
      description: The bearer-token file.
      type: str
    job:
      description: The job the refresher follows, or null.
      type: dict
    job_state:
      description: C(running), C(ended) or C(unknown), when it follows a job.
      type: str
    last_error:
      description: The last failure the loop logged, if any.
      type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.oidc.tokens.plugins.module_utils import _refresher_host
from ansible_collections.oidc.tokens.plugins.module_utils._options import run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            user=dict(type='str', required=True),
        ),
        supports_check_mode=True,
    )
    run_module(module, lambda: _refresher_host.status(module.params))


if __name__ == '__main__':
    main()
