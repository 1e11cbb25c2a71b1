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
    status:N        answer HTTP N with an HTML error page, never forwarding
    html            answer 200 with an HTML page (a captive portal or login page)
    truncate        forward, then send the headers and only half of the body
    huge            answer 200 with a JSON object of several MiB
    stall:S         wait S seconds, then forward
    redirect:URL    answer 302 to URL
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from urllib.parse import urlsplit


class FaultProxy:
    def __init__(self, upstream, host='127.0.0.1', port=0):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.host = host
        self.port = port
        self.default = 'pass'
        self.requests = 0
        self.forwarded = 0
        self.log = []
        self._faults = deque()
        self._lock = threading.Lock()
        self._loop = None
        self._server = None
        self._thread = None

    @property
    def url(self):
        return 'http://%s:%d' % (self.host, self.port)

    def push(self, fault, count=1):
        with self._lock:
            self._faults.extend([fault] * count)

    def clear(self):
        with self._lock:
            self._faults.clear()
            self.default = 'pass'

    def _next_fault(self):
        with self._lock:
            return self._faults.popleft() if self._faults else self.default

    def start(self):
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name='fault-proxy', daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError('fault proxy did not start')
        return self

    def stop(self):
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    async def _handle(self, reader, writer):
        try:
            fault = self._next_fault()
            if fault == 'refuse':
                writer.transport.abort()
                return
            head, body = await _read_request(reader)
            with self._lock:
                self.requests += 1
                self.log.append((head.split(b'\r\n', 1)[0].decode('latin-1'), fault))
            kind, _sep, arg = fault.partition(':')
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
            else:
                if kind == 'stall':
                    await asyncio.sleep(float(arg))
                response = await self._forward(head, body)
                if kind == 'reset_after':
                    writer.transport.abort()
                    return
                if kind == 'truncate':
                    split = response.index(b'\r\n\r\n') + 4
                    response = response[:split + (len(response) - split) // 2]
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
