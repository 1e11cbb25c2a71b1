# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # What the attributes every module declares mean. Each module states its own support (and details) in
    # its DOCUMENTATION; the module's entries win over these when the fragments are merged.
    DOCUMENTATION = r'''
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return a prediction of its changed status without modifying the target.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when run in diff mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
'''

    # The modules that share the provider and store options (oidc.tokens.provider, oidc.tokens.store). The
    # group is declared in meta/runtime.yml; keep the two lists the same.
    ACTIONGROUP_OIDC = r'''
options: {}
attributes:
  action_group:
    description:
      - Use C(group/oidc.tokens.oidc) in C(module_defaults) to set options for all the modules of this group at
        once, typically the provider options (O(issuer), O(client_id), O(client_secret), O(ca_path) and the
        rest) and the store options (O(config_dir) and one password source).
      - Every module of the group accepts all of these options. Keep module-specific options (such as O(name))
        out of the group, since a module fails with C(Unsupported parameters) on an option it does not know.
    support: full
    membership:
      - oidc.tokens.oidc
'''
