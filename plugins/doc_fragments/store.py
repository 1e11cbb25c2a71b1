# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    # Where the encrypted oidc-agent account files live and how their password is obtained.
    DOCUMENTATION = r'''
options:
  config_dir:
    description:
      - The directory of the account files, shared with oidc-agent.
      - When not set, C($OIDC_CONFIG_DIR), else C(~/.config/oidc-agent) of the user the task runs as.
      - The directory is kept at mode 0700 and the files at 0600.
    type: path
  encryption_password:
    description:
      - The password the account file is encrypted with (oidc-agent's encryption password). Keep it in
        Ansible Vault.
      - Exactly one of O(encryption_password), O(encryption_password_file), O(encryption_password_env) and
        O(encryption_password_command) is needed whenever an account is read or written. The password is
        never passed on a command line.
    type: str
  encryption_password_file:
    description:
      - A file whose content (without a final newline) is the password, on the host where the plugin runs (the
        target for modules, the controller for the lookup).
    type: path
  encryption_password_env:
    description:
      - The name of an environment variable that holds the password, in the environment of the module on the
        target or of the lookup on the controller.
      - On a remote host, Ansible's C(environment) keyword puts the value on the command line of the module's
        process, where other users of that host can read it in the process list. There, prefer
        O(encryption_password) (from Ansible Vault), O(encryption_password_file) or O(encryption_password_command).
    type: str
  encryption_password_command:
    description:
      - A command, run without a shell, whose standard output (without a final newline) is the password,
        for example a secret manager's client (oidc-agent's C(--pw-cmd)).
    type: str
'''

    PLUGINS = r'''
options:
  config_dir:
    env:
      - name: OIDC_CONFIG_DIR
    ini:
      - section: oidc_tokens
        key: config_dir
  encryption_password:
    env:
      - name: OIDC_TOKENS_ENCRYPTION_PASSWORD
    vars:
      - name: oidc_tokens_encryption_password
  encryption_password_file:
    env:
      - name: OIDC_TOKENS_ENCRYPTION_PASSWORD_FILE
    ini:
      - section: oidc_tokens
        key: encryption_password_file
  encryption_password_env:
    ini:
      - section: oidc_tokens
        key: encryption_password_env
  encryption_password_command:
    ini:
      - section: oidc_tokens
        key: encryption_password_command
'''
