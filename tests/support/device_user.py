"""A scripted user of the device flow (RFC 8628) on the test provider, driving its HTML pages like a browser
without JavaScript: open the verification URI, enter (or confirm) the user code, log in, consent.

    from device_user import DeviceUser
    user = DeviceUser(verify=provider.verify)
    user.approve(verification_uri, user_code, 'alice', 'alice-pw')    # -> the final page's title
    user.approve(verification_uri_complete, None, 'alice', 'alice-pw')   # the complete URI: no code to type
    user.deny(verification_uri, user_code)                             # "Abort" on the code's confirmation page
    user.deny_consent(verification_uri, user_code, 'alice', 'alice-pw')   # logs in, then "Deny" at the consent

The pages are node-oidc-provider's own (user code input, confirmation, success) and the test provider's login
and consent pages (tests/provider/interactions.mjs); KeycloakDeviceUser does the same on Keycloak's pages (code,
login, consent, status). Standard library and requests only; a form is posted
with its hidden inputs and the button a user would press, to the form's action, and redirects are followed
the way a browser follows them.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin

import requests


class DeviceUserError(RuntimeError):
    """A page did not look the way the scripted user expected."""


class _Forms(HTMLParser):
    """The forms of a page: id, action, method, inputs (name -> value), buttons [(name, value, form id)]; and the
    title. Buttons outside a form that name one with form="..." belong to that form."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.title = ''
        self.heading = ''   # the first <h1>
        self._in_title = False
        self._in_heading = False
        self._current = None
        self._loose_buttons = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'title':
            self._in_title = True
        elif tag == 'h1' and not self.heading:
            self._in_heading = True
        elif tag == 'form':
            self._current = {'id': attrs.get('id'), 'action': attrs.get('action') or '',
                             'method': (attrs.get('method') or 'get').lower(), 'inputs': {}, 'buttons': []}
            self.forms.append(self._current)
        elif tag == 'input' and attrs.get('name'):
            target = self._form_for(attrs)
            if target is not None:
                target['inputs'][attrs['name']] = attrs.get('value') or ''
        elif tag == 'button':
            button = (attrs.get('name'), attrs.get('value') or '', attrs.get('form'))
            if attrs.get('form') or self._current is None:
                self._loose_buttons.append(button)
            else:
                self._current['buttons'].append(button)

    def handle_endtag(self, tag):
        if tag == 'title':
            self._in_title = False
        elif tag == 'h1':
            self._in_heading = False
        elif tag == 'form':
            self._current = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._in_heading:
            self.heading += data

    def _form_for(self, attrs):
        if attrs.get('form'):
            return next((f for f in self.forms if f['id'] == attrs['form']), None)
        return self._current

    def close(self):
        super().close()
        for name, value, form_id in self._loose_buttons:
            form = next((f for f in self.forms if f['id'] == form_id), None)
            if form is not None:
                form['buttons'].append((name, value, form_id))
        self.title = ' '.join(self.title.split())
        self.heading = ' '.join(self.heading.split())


def parse_page(html):
    parser = _Forms()
    parser.feed(html)
    parser.close()
    return parser


class DeviceUser:
    """One browser: a cookie jar and the pages it was shown."""

    def __init__(self, verify=True, timeout=10):
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = verify
        # What a browser asks for: Keycloak serves the device authorization endpoint (JSON) and the user's device
        # pages at one resource, and picks by Accept.
        self.session.headers['Accept'] = 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8'
        self.timeout = timeout
        self.pages = []     # the titles of the pages seen, in order

    # -- the user's steps ---------------------------------------------------------------------------------

    def approve(self, verification_uri, user_code, username, password):
        """Enter the code, continue, log in, allow. Returns the last page's title ('Sign-in Success')."""
        page = self._confirmation_page(verification_uri, user_code)
        page = self._submit(page, 'op.deviceConfirmForm')                # Continue
        page = self._log_in(page, username, password)
        page = self._submit(page, None, button=('decision', 'allow'))   # Allow
        self._expect(page, 'Sign-in Success')
        return page.title

    def deny(self, verification_uri, user_code):
        """Enter the code, then press "[ Abort ]" on the confirmation page (the device flow's own deny)."""
        page = self._confirmation_page(verification_uri, user_code)
        page = self._submit(page, 'op.deviceConfirmForm', button=('abort', 'yes'))
        return page.title

    def deny_consent(self, verification_uri, user_code, username, password):
        """Enter the code, continue, log in, then press "Deny" on the consent page."""
        page = self._confirmation_page(verification_uri, user_code)
        page = self._submit(page, 'op.deviceConfirmForm')
        page = self._log_in(page, username, password)
        page = self._submit(page, None, button=('decision', 'deny'))
        return page.title

    # -- pages ----------------------------------------------------------------------------------------------

    def _confirmation_page(self, verification_uri, user_code):
        # With the user code: the verification URI's input form. Without: the complete URI (verification URI with
        # the code), whose page posts the code itself (a form a browser submits on load).
        page = self._get(verification_uri)
        if user_code:
            page.form('op.deviceInputForm')['inputs']['user_code'] = user_code
            page = self._submit(page, 'op.deviceInputForm')
        else:
            page = self._submit(page, None)
        self._expect(page, 'Device Login Confirmation')
        return page

    def _log_in(self, page, username, password):
        self._expect(page, 'Sign-in')
        form = page.forms[0]
        form['inputs'].update(username=username, password=password)
        return self._submit(page, None)

    def _get(self, url):
        return self._follow(self.session.get(url, timeout=self.timeout, allow_redirects=False))

    def _submit(self, page, form_id, button=None):
        form = page.form(form_id) if form_id else page.forms[0]
        data = dict(form['inputs'])
        if button is not None:
            name, value = button
            if not any(b[0] == name and b[1] == value for b in form['buttons']):
                raise DeviceUserError('the page %r has no button %s=%s' % (page.title, name, value))
            data[name] = value
        url = urljoin(page.url, form['action'])
        if form['method'] == 'post':
            response = self.session.post(url, data=data, timeout=self.timeout, allow_redirects=False)
        else:
            response = self.session.get(url, params=data, timeout=self.timeout, allow_redirects=False)
        return self._follow(response)

    def _follow(self, response):
        for _hop in range(10):
            if response.status_code not in (301, 302, 303, 307, 308):
                break
            url = urljoin(response.url, response.headers['Location'])
            response = self.session.get(url, timeout=self.timeout, allow_redirects=False)
        if response.status_code != 200:
            raise DeviceUserError('HTTP %s at %s: %s' % (response.status_code, response.url, response.text[:300]))
        page = parse_page(response.text)
        page.url = response.url
        page.text = response.text
        page.form = lambda form_id: _form_by_id(page, form_id)
        self.pages.append(page.title)
        return page

    @staticmethod
    def _expect(page, title):
        if page.title != title:
            raise DeviceUserError('expected the page %r, got %r: %s' % (title, page.title, page.text[:500]))


class KeycloakDeviceUser(DeviceUser):
    """The scripted user on Keycloak's pages: the code form (skipped with the complete URI), the login form, the
    consent ("Yes" / "No"), then the status page, whose heading says how it ended."""

    def approve(self, verification_uri, user_code, username, password):
        """Returns the status page's heading ('Device Login Successful')."""
        page = self._consent_page(verification_uri, user_code, username, password)
        page = self._submit(page, None, button=('accept', ''))
        return page.heading

    def deny_consent(self, verification_uri, user_code, username, password):
        page = self._consent_page(verification_uri, user_code, username, password)
        page = self._submit(page, None, button=('cancel', ''))
        return page.heading

    def _consent_page(self, verification_uri, user_code, username, password):
        page = self._get(verification_uri)
        if user_code:
            page.form('kc-user-verify-device-user-code-form')['inputs']['device_user_code'] = user_code
            page = self._submit(page, 'kc-user-verify-device-user-code-form')
        page.form('kc-form-login')['inputs'].update(username=username, password=password)
        page = self._submit(page, 'kc-form-login')
        if not any(button[0] == 'accept' for form in page.forms for button in form['buttons']):
            raise DeviceUserError('expected the consent page after the login, got %r: %s' % (page.heading, page.text[:500]))
        return page


def _form_by_id(page, form_id):
    for form in page.forms:
        if form['id'] == form_id:
            return form
    raise DeviceUserError('the page %r has no form %r' % (page.title, form_id))
