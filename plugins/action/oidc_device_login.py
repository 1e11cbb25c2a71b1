# -*- coding: utf-8 -*-
# Copyright: contributors to the oidc.tokens collection
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action plugin of oidc.tokens.oidc_device_login: run the module twice on the host and, in between, show the
user the verification URI and the user code on the controller.

A module cannot show anything while it runs, and the user must see the code while the host waits for the login.
So: first run (no device options): the module starts the device authorization on the host and returns the codes
and the device code (a secret); the controller shows the codes (Display, on standard error, visible without -v);
second run (the device code, the interval and the deadline as module options, no_log there): the module polls on
the host and writes the account. The device code is taken out of the first result and never shown or returned. When no
login is needed (a usable account exists), in check mode and on failure, the first result is the task's result.
"""

from __future__ import annotations

import time

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

MODULE = 'oidc.tokens.oidc_device_login'
DEVICE_OPTIONS = ('device_code', 'device_interval', 'device_deadline')


def login_message(host, name, issuer, login):
    """What the user is shown: where to go, which code to enter, until when. No secret."""
    lines = ['oidc.tokens: log in to %s for account %r (host %s):' % (issuer, name, host),
             '  open %s and enter the code %s' % (login['verification_uri'], login['user_code'])]
    if login.get('verification_uri_complete'):
        lines.append('  or open %s' % login['verification_uri_complete'])
    deadline = login['deadline']
    lines.append('  waiting until %s (%d s), polling every %d s'
                 % (time.strftime('%H:%M:%S UTC', time.gmtime(deadline)), max(0, deadline - int(time.time())),
                    login['interval']))
    return '\n'.join(lines)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp  # not used
        args = dict(self._task.args)
        given = [option for option in DEVICE_OPTIONS if args.get(option) is not None]
        if given:
            result.update(failed=True, msg='%s are set by the action plugin of %s between its two runs; do not set '
                                           'them in a task.' % (', '.join(DEVICE_OPTIONS), MODULE))
            return result
        try:
            started = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
            device_code = started.pop('device_code', None)
            login = started.pop('device_login', None)
            if started.get('failed') or not device_code or not login:
                result.update(started)
                return result
            host = (task_vars or {}).get('inventory_hostname', self._task.get_name())
            # On standard error: Ansible does not flush standard output, which is block-buffered when it is not a
            # terminal (a CI job's log, a pipe), so the codes would show only after the wait. Standard error is
            # line-buffered, and shown without -v like standard output.
            display.display(login_message(host, args.get('name'), args.get('issuer') or args.get('issuer_url'), login),
                            stderr=True)
            args.update(device_code=device_code, device_interval=login['interval'], device_deadline=login['deadline'])
            finished = self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
            del device_code, args
            finished.pop('device_code', None)
            if not finished.get('failed'):
                finished['verification_uri'] = login['verification_uri']
            result.update(finished)
            return result
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
