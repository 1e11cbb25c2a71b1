# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The option definitions Ansible's plugin loader derives from the lookup's DOCUMENTATION and doc
fragments, and the Python source of ``_OPTIONS_JSON`` in plugins/lookup/oidc_token.py that holds them.

    python tests/unit/plugins/lookup/runtime_options.py    # prints the block to paste into the plugin

(with the collection importable, e.g. from ansible_collections/oidc/tokens with its parent on
ANSIBLE_COLLECTIONS_PATH). test_oidc_token.py checks that the plugin's block holds these definitions.
"""

from __future__ import annotations

import json
import os

WIDTH = 116   # characters of JSON per source line (the line is indented and quoted around them)


def documented_options():
    """What ansible/plugins/loader.py _load_config_defs gets from DOCUMENTATION: the YAML parsed with
    Ansible's loader, the doc fragments added; its ``options``, as plain JSON-able data."""
    import yaml
    try:
        from ansible._internal._yaml._loader import AnsibleLoader
    except ImportError:  # ansible-core < 2.19
        from ansible.parsing.yaml.loader import AnsibleLoader
    from ansible.plugins.loader import fragment_loader
    from ansible.utils.plugin_docs import add_fragments
    from ansible_collections.oidc.tokens.plugins.lookup import oidc_token

    path = os.path.abspath(oidc_token.__file__)
    doc = yaml.load(oidc_token.DOCUMENTATION, Loader=AnsibleLoader)
    add_fragments(doc, path, fragment_loader=fragment_loader, is_module=False)
    return json.loads(json.dumps(doc['options'], sort_keys=True))


def options_source(options):
    """The ``_OPTIONS_JSON = (...)`` block of the plugin for ``options``."""
    text = json.dumps(options, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
    lines = ['_OPTIONS_JSON = (']
    for start in range(0, len(text), WIDTH):
        piece = text[start:start + WIDTH]
        lines.append('    %r' % piece)
    lines.append(')')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    from ansible.plugins.loader import init_plugin_loader
    init_plugin_loader()
    print(options_source(documented_options()), end='')
