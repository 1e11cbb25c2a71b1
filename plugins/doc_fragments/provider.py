# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Which OpenID provider and confidential client (with oidc.tokens.connection: how requests reach it).
    DOCUMENTATION = r'''
options:
  issuer:
    description:
      - The OpenID provider's issuer URL, as its discovery document announces it (a trailing slash or not
        makes no difference).
      - Discovery tries C(/.well-known/openid-configuration) and then RFC 8414
        C(/.well-known/oauth-authorization-server); a document that names another issuer is refused.
      - For an existing account, the issuer stored in the account is used; naming another one is an error, so
        that an account's refresh token is never sent anywhere but its own issuer.
    type: str
    aliases: [issuer_url]
  client_id:
    description:
      - The confidential client registered with the provider. For an exchange, the client must be allowed the
        token-exchange grant. For an existing account, the client stored in the account is used; naming another
        one is an error.
    type: str
  client_secret:
    description:
      - The client's secret. Keep it in Ansible Vault. For an existing account, defaults to the secret stored
        (encrypted) in the account.
    type: str
  auth_method:
    description:
      - How the client authenticates at the token, revocation and introspection endpoints.
      - When not set, C(client_secret_basic) if the provider offers it, else C(client_secret_post).
    type: str
    choices: [client_secret_basic, client_secret_post]
  allow_insecure_http:
    description:
      - Allow a plain C(http://) issuer on a host that is not loopback. Tokens and the client secret would cross
        the network unencrypted.
    type: bool
    default: false
'''

    # The lookup reads the same options from variables, the environment and ansible.cfg as well.
    PLUGINS = r'''
options:
  issuer:
    env:
      - name: OIDC_TOKENS_ISSUER
    ini:
      - section: oidc_tokens
        key: issuer
  client_id:
    env:
      - name: OIDC_TOKENS_CLIENT_ID
    ini:
      - section: oidc_tokens
        key: client_id
  client_secret:
    env:
      - name: OIDC_TOKENS_CLIENT_SECRET
  auth_method:
    ini:
      - section: oidc_tokens
        key: auth_method
  ca_path:
    env:
      - name: OIDC_TOKENS_CA_PATH
    ini:
      - section: oidc_tokens
        key: ca_path
  validate_certs:
    env:
      - name: OIDC_TOKENS_VALIDATE_CERTS
    ini:
      - section: oidc_tokens
        key: validate_certs
  timeout:
    env:
      - name: OIDC_TOKENS_TIMEOUT
    ini:
      - section: oidc_tokens
        key: timeout
  retries:
    env:
      - name: OIDC_TOKENS_RETRIES
    ini:
      - section: oidc_tokens
        key: retries
  allow_insecure_http:
    ini:
      - section: oidc_tokens
        key: allow_insecure_http
'''
