"""Write the systemd units oidc.tokens.oidc_refresher installs for worker1's job user into DIR, for
systemd-analyze verify (this machine runs no systemd, so the module itself takes the cron path).

    python render_units.py DIR USER ACCOUNT
"""

from __future__ import annotations

import os
import sys

from ansible_collections.oidc.tokens.plugins.module_utils import _refresher_host


def main(directory, user_name, account):
    user = _refresher_host.JobUser.find(user_name)
    paths = _refresher_host.job_paths(user, account, '/opt/oidc-tokens', '/run/oidc-tokens')
    units = _refresher_host.systemd_units(user, paths)
    service = units['service']
    for wanted in ('User=%s' % user_name, 'ExecStart=/opt/oidc-tokens/bin/oidc-tokens-refresher run %s' % account,
                   'SuccessExitStatus=3 4 5', 'Restart=on-failure'):
        if wanted not in service.splitlines():
            sys.exit('render_units: the service unit lacks the line %r' % wanted)
    os.makedirs(directory, exist_ok=True)
    for kind, text in units.items():
        with open(os.path.join(directory, '%s.%s' % (paths['unit'], kind)), 'w', encoding='utf-8') as handle:
            handle.write(text)
    print(paths['unit'])


if __name__ == '__main__':
    main(*sys.argv[1:])
