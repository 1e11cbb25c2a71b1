# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: account_name
author:
  - oidc.tokens maintainers (@oidc-tokens)
version_added: 0.2.0
short_description: Whether a string is an account name the account store accepts
description:
  - True when the input is a safe oidc-agent account short name, by the same rule the account store, the modules
    and the lookup apply, one rule everywhere. Letters, digits and the characters C(._-@+=,:~), not starting with C(.),
    no C(..), at most 128 characters, not a name oidc-agent reserves (C(config), C(*.config), C(*.clientconfig*),
    C(*.stats), C(*.log)), and nothing else, not even a final newline.
  - The role C(oidc.tokens.job_tokens) checks its account name with it before the name reaches a path, a systemd
    unit or a cron line.
options:
  _input:
    description: The name to check.
    type: raw
    required: true
'''

EXAMPLES = r'''
- name: Refuse a bad account name early
  ansible.builtin.assert:
    that: account is oidc.tokens.account_name
    fail_msg: "{{ account | to_json }} is not an account name"
'''

RETURN = r'''
_value:
  description: Whether the input is a valid account name.
  type: bool
'''

from ansible_collections.oidc.tokens.plugins.module_utils._account_names import validate_name
from ansible_collections.oidc.tokens.plugins.module_utils._errors import InvalidAccountNameError


def account_name(value):
    try:
        validate_name(value)
    except InvalidAccountNameError:
        return False
    return True


class TestModule(object):
    def tests(self):
        return {'account_name': account_name}
