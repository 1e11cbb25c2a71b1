# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # How requests reach the provider: every module that talks to one (the lookup has them, with their
    # environment variables and ansible.cfg keys, in oidc.tokens.provider.PLUGINS).
    DOCUMENTATION = r'''
options:
  ca_path:
    description:
      - A CA bundle file to verify the provider's TLS certificate with (oidc-agent's C(--cp)).
      - When not set, the system's trust store is used, or the file named by C(REQUESTS_CA_BUNDLE).
    type: path
  validate_certs:
    description:
      - Verify the provider's TLS certificate. Turn off only for testing.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the provider to connect and to answer, per request.
    type: int
    default: 10
  retries:
    description:
      - How often a request is repeated after a connection error or an HTTP 5xx answer, with exponential
        backoff. 4xx answers are never repeated.
      - A request that spends a refresh token or a subject token is repeated only when it cannot have reached
        the provider, because a provider with reuse detection revokes the whole grant when a spent refresh
        token comes back.
    type: int
    default: 3
'''
