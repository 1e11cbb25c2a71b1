"""Watch the workers' accounts while job_run.yml runs, as root, and remember their refresh tokens.

Every few tenths of a second each worker's account file is decrypted with the store's own code and
the password the role left for the refresher (found through the refresher's configuration). The
refresh tokens seen, the last one first, go to OUT (mode 0600) when STOP appears, so that the test can
introspect them after the teardown: the last one is the one the teardown had to revoke. Also notes
whether the worker's cron entry appeared while the account existed.

    python watch_accounts.py OUT STOP user1:account user2:account ...
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time

from ansible_collections.oidc.tokens.plugins.module_utils._account_store import AccountStore
from ansible_collections.oidc.tokens.plugins.module_utils._errors import OidcTokensError


def main(out, stop, specs):
    workers = {}
    for spec in specs:
        user, account = spec.split(':')
        home = pwd.getpwnam(user).pw_dir
        workers[user] = {'account': account, 'home': home, 'tokens': [], 'seen_account': False, 'cron': None,
                         'store': AccountStore(config_dir=os.path.join(home, '.config', 'oidc-agent'))}
    while not os.path.exists(stop):
        for user, worker in workers.items():
            store = worker['store']
            if not store.exists(worker['account']):
                continue
            conf_path = os.path.join(worker['home'], '.config', 'oidc-tokens', 'refresher',
                                     worker['account'] + '.json')
            try:
                with open(conf_path, encoding='utf-8') as handle:
                    conf = json.load(handle)
                # Read as root: the collection's own password sources take only a file of the running user.
                with open(conf['password_file'], encoding='utf-8') as handle:
                    password = handle.readline().rstrip('\n')
                token = store.load(worker['account'], password)['refresh_token']
            except (OSError, ValueError, KeyError, OidcTokensError):
                continue   # not written yet, or deleted right now
            worker['seen_account'] = True
            if token and (not worker['tokens'] or worker['tokens'][-1] != token):
                worker['tokens'].append(token)
            if not worker['cron']:
                listing = subprocess.run(['crontab', '-l', '-u', user], capture_output=True, text=True, check=False)
                worker['cron'] = 'oidc-tokens-refresher' in listing.stdout and worker['account'] in listing.stdout
        time.sleep(0.2)
    result = {user: {'account': w['account'], 'last': w['tokens'][-1] if w['tokens'] else None,
                     'all': w['tokens'], 'seen_account': w['seen_account'], 'cron_while_running': w['cron']}
              for user, w in workers.items()}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as handle:
        json.dump(result, handle)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
