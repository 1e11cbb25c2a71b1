"""A real HTTP proxy that sits between a client and the test provider and injects faults.

Not a mock: requests travel over loopback TCP to the real provider; the proxy only decides, per
request, to pass it on or to misbehave the way networks and overloaded providers do.

    with FaultProxy('http://127.0.0.1:5000') as proxy:
        proxy.url                      # point the client here
        proxy.push('status:503', 2)    # the next two requests get an HTML 503 page
        proxy.push('reset_after')      # the next request reaches the provider, the answer is cut off
        proxy.requests                 # how many requests arrived; proxy.forwarded: how many reached upstream

Faults:
    pass            forward unchanged
    refuse          close the connection before reading the request (the client sees a reset)
    reset_after     forward to the provider, then close without answering (the provider did act)
    reset_mid       forward, send the headers and half of the body, then reset the connection (RST)
    status:N        answer HTTP N with an HTML error page, never forwarding
    html            answer 200 with an HTML page (a captive portal or login page)
    truncate        forward, then send the headers and only half of the body
    truncate_json   forward, then send half of the body with a Content-Length that matches it
                    (a complete HTTP answer whose JSON is cut off)
    huge            answer 200 with a JSON object of several MiB
    stall:S         wait S seconds, then forward
    stall_drop:S    wait S seconds, then close without forwarding (a provider that hangs and never acts)
    redirect:URL    answer 302 to URL
    gateway:N       forward (the provider acts), then answer HTTP N with an HTML page, as a reverse proxy
                    does when the provider's answer came too late or broken (502, 504)
    then_refuse:S   forward and answer, then close the listening socket for S seconds (later
                    connections are refused: a provider that went down right after this answer)

More, for the evidence suites (tests/evidence), without changing the above:
    push(fault, count, match='POST /token')   the fault applies only to requests whose request line
                                              contains ``match``; other requests pass it by
    push(fault, count, body=REFRESH_TOKEN)    ... only to requests whose body contains this (one
                                              account's requests, when several run at once)
    push_response(status, body, ...)          answer with exactly this body, never forwarding
    respond_always(status, body, ...)         answer every other request so (a fake provider)
    refuse_connections(seconds)               close the listening socket (clients get ECONNREFUSED)
                                              and open it again on the same port after ``seconds``
    record_secrets=True                       collect every token, secret and password that crosses
                                              the proxy (request forms, Basic auth, JSON answers)
                                              in ``proxy.secrets`` (a set; ``proxy.secret_kinds``
                                              says what each was), to search outputs for them
    injected                                  how many faults were applied (not counting 'pass')
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections import deque
from urllib.parse import parse_qsl, unquote_plus, urlsplit

# Form fields and JSON members whose values are secrets.
SECRET_FORM_FIELDS = ('subject_token', 'actor_token', 'refresh_token', 'token', 'client_secret', 'password',
                      'code', 'code_verifier', 'assertion')
SECRET_JSON_FIELDS = ('access_token', 'refresh_token', 'id_token')


class _Canned(object):
    """An exact answer the proxy gives instead of forwarding."""

    def __init__(self, status, body, content_type='application/json', headers=()):
        self.status = int(status)
        self.body = body if isinstance(body, bytes) else (
            body.encode('utf-8') if isinstance(body, str) else json.dumps(body).encode('utf-8'))
        self.content_type = content_type
        self.headers = tuple(headers)

    def __repr__(self):
        return 'respond:%d' % self.status


class FaultProxy:
    def __init__(self, upstream, host='127.0.0.1', port=0, record_secrets=False):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.host = host
        self.port = port
        self.default = 'pass'
        self.requests = 0
        self.forwarded = 0
        self.injected = 0
        self.log = []
        self.record_secrets = record_secrets
        self.secrets = set()
        self.secret_kinds = {}     # value -> what it was: access_token, refresh_token, client_secret, ...
        self._faults = deque()
        self._lock = threading.Lock()
        self._loop = None
        self._server = None
        self._thread = None
        self._reopen = None

    @property
    def url(self):
        return 'http://%s:%d' % (self.host, self.port)

    def push(self, fault, count=1, match=None, body=None):
        """Queue a fault for the next ``count`` requests whose request line contains ``match`` and whose
        body contains ``body`` (bytes or str; e.g. one account's refresh token), when given."""
        if isinstance(body, str):
            body = body.encode('utf-8')
        with self._lock:
            self._faults.extend([(fault, match if body is None else (match, body))] * count)

    def push_response(self, status, body, content_type='application/json', count=1, match=None, headers=(),
                      request_body=None):
        self.push(_Canned(status, body, content_type, headers), count, match, request_body)

    def respond_always(self, status, body, content_type='application/json', headers=()):
        """Answer every request not matched by a queued fault with exactly this (a fake endpoint)."""
        self.default = _Canned(status, body, content_type, headers)

    def pending(self):
        with self._lock:
            return len(self._faults)

    def clear(self):
        with self._lock:
            self._faults.clear()
            self.default = 'pass'

    def _next_fault(self, head=None, body=b''):
        """The fault for this request. Before the request is read (head None) only an unmatched
        'refuse' at the front of the queue applies."""
        line = head.split(b'\r\n', 1)[0].decode('latin-1') if head is not None else None
        with self._lock:
            if line is None:
                if self._faults and self._faults[0] == ('refuse', None):
                    self._faults.popleft()
                    return 'refuse'
                return None
            for index, (fault, match) in enumerate(self._faults):
                wanted_body = None
                if isinstance(match, tuple):
                    match, wanted_body = match
                if (match is None or match in line) and (wanted_body is None or wanted_body in body):
                    del self._faults[index]
                    return fault
            return self.default

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self):
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(self._listen())
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name='fault-proxy', daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError('fault proxy did not start')
        return self

    def _listen(self):
        return asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)

    def stop(self):
        if self._loop is None:
            return

        async def shutdown():
            if self._reopen is not None:
                self._reopen.cancel()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            # Stalled connections still sleeping: end them with the proxy.
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    def refuse_connections(self, seconds):
        """Close the listening socket now (connections are refused) and listen again after ``seconds``."""
        with self._lock:
            self.injected += 1
        asyncio.run_coroutine_threadsafe(self._close_listener(seconds), self._loop).result(5)

    async def _close_listener(self, seconds):
        with self._lock:
            self.log.append(('(listener closed for %.1f s)' % seconds, 'refuse_connections'))
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()

        async def reopen():
            self._reopen = None
            if self._server is None:
                self._server = await self._listen()

        self._reopen = self._loop.call_later(seconds, lambda: asyncio.ensure_future(reopen()))

    def resume(self):
        """Listen again now, if refuse_connections() closed the listening socket."""

        async def reopen():
            if self._reopen is not None:
                self._reopen.cancel()
                self._reopen = None
            if self._server is None:
                self._server = await self._listen()

        asyncio.run_coroutine_threadsafe(reopen(), self._loop).result(5)

    def listening(self):
        return self._server is not None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- one connection ------------------------------------------------------------------------------

    def _count(self, head, fault):
        with self._lock:
            self.requests += 1
            if fault != 'pass':
                self.injected += 1
            self.log.append((head.split(b'\r\n', 1)[0].decode('latin-1'), repr(fault) if isinstance(fault, _Canned)
                             else fault))

    async def _handle(self, reader, writer):
        try:
            if self._next_fault() == 'refuse':
                with self._lock:
                    self.injected += 1
                    self.log.append(('(connection refused before the request)', 'refuse'))
                writer.transport.abort()
                return
            head, body = await _read_request(reader)
            fault = self._next_fault(head, body)
            self._count(head, fault)
            if self.record_secrets:
                self._harvest_request(head, body)
            if isinstance(fault, _Canned):
                await _answer(writer, fault.status, fault.content_type, fault.body, extra=fault.headers)
                writer.close()
                return
            kind, _sep, arg = fault.partition(':')
            if kind == 'refuse':
                writer.transport.abort()
                return
            if kind == 'status':
                await _answer(writer, int(arg), 'text/html',
                              b'<html><head><title>%d Service Unavailable</title></head><body>upstream down</body></html>'
                              % int(arg))
            elif kind == 'html':
                await _answer(writer, 200, 'text/html',
                              b'<!DOCTYPE html><html><head><title>Sign in to the network</title></head></html>')
            elif kind == 'huge':
                await _answer(writer, 200, 'application/json',
                              json.dumps({'access_token': 'x' * (4 * 1024 * 1024)}).encode())
            elif kind == 'redirect':
                await _answer(writer, 302, 'text/plain', b'moved', extra=[('Location', arg)])
            elif kind == 'gateway':
                # A reverse proxy whose upstream acted but whose answer it did not get in time (or got cut off).
                await self._forward(head, body)
                await _answer(writer, int(arg), 'text/html',
                              b'<html><head><title>%d Gateway Error</title></head><body>upstream</body></html>'
                              % int(arg))
            elif kind == 'then_refuse':
                response = await self._forward(head, body)
                # Closed before the answer goes out, so that no new connection slips into the backlog.
                await self._close_listener(float(arg))
                writer.write(response)
                await writer.drain()
                writer.close()
                return
            elif kind == 'stall_drop':
                await asyncio.sleep(float(arg))
                writer.transport.abort()
                return
            else:
                if kind == 'stall':
                    await asyncio.sleep(float(arg))
                response = await self._forward(head, body)
                if self.record_secrets:
                    self._harvest_response(response)
                if kind == 'reset_after':
                    writer.transport.abort()
                    return
                split = response.index(b'\r\n\r\n') + 4
                if kind == 'truncate':
                    response = response[:split + (len(response) - split) // 2]
                elif kind == 'truncate_json':
                    response = _with_body(response[:split - 4], response[split:split + (len(response) - split) // 2])
                elif kind == 'reset_mid':
                    writer.write(response[:split + (len(response) - split) // 2])
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.transport.abort()
                    return
                writer.write(response)
                await writer.drain()
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()

    async def _forward(self, head, body):
        lines = head.split(b'\r\n')
        kept = [lines[0]] + [line for line in lines[1:] if line and not line.lower().startswith(b'connection:')]
        request = b'\r\n'.join(kept + [b'Connection: close', b'', b'']) + body
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        up_writer.write(request)
        await up_writer.drain()
        response = await up_reader.read()
        up_writer.close()
        with self._lock:
            self.forwarded += 1
        return response

    # -- secrets seen on the wire ----------------------------------------------------------------------

    def _add_secret(self, value, kind='secret'):
        if isinstance(value, str) and len(value) >= 6:
            with self._lock:
                self.secrets.add(value)
                if self.secret_kinds.get(value) in (None, 'token'):
                    self.secret_kinds[value] = kind

    def _harvest_request(self, head, body):
        for line in head.split(b'\r\n')[1:]:
            name, _sep, value = line.partition(b':')
            if name.strip().lower() == b'authorization':
                scheme, _sep, credentials = value.strip().partition(b' ')
                if scheme.lower() == b'basic':
                    try:
                        pair = base64.b64decode(credentials).decode('utf-8')
                    except (ValueError, UnicodeDecodeError):
                        continue
                    self._add_secret(unquote_plus(pair.partition(':')[2]), 'client_secret')
                else:
                    self._add_secret(credentials.decode('latin-1'), 'access_token')
        try:
            form = parse_qsl(body.decode('utf-8'), keep_blank_values=True)
        except UnicodeDecodeError:
            return
        for name, value in form:
            if name in SECRET_FORM_FIELDS:
                self._add_secret(value, name)

    def _harvest_response(self, response):
        try:
            split = response.index(b'\r\n\r\n') + 4
            data = json.loads(response[split:].decode('utf-8'))
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(data, dict):
            for name in SECRET_JSON_FIELDS:
                self._add_secret(data.get(name), name)


def _with_body(head, body):
    """An HTTP response head (without its blank line) with a new body and a matching Content-Length."""
    lines = [line for line in head.split(b'\r\n') if not line.lower().startswith((b'content-length:',
                                                                                  b'transfer-encoding:'))]
    return b'\r\n'.join(lines + [b'Content-Length: %d' % len(body), b'', b'']) + body


async def _read_request(reader):
    head = await reader.readuntil(b'\r\n\r\n')
    length = 0
    for line in head.split(b'\r\n'):
        name, _sep, value = line.partition(b':')
        if name.strip().lower() == b'content-length':
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b''
    return head[:-4], body


async def _answer(writer, status, content_type, body, extra=()):
    headers = [('Content-Type', content_type), ('Content-Length', str(len(body))), ('Connection', 'close')]
    headers.extend(extra)
    text = 'HTTP/1.1 %d Fault\r\n' % status + ''.join('%s: %s\r\n' % h for h in headers) + '\r\n'
    writer.write(text.encode('latin-1') + body)
    await writer.drain()
