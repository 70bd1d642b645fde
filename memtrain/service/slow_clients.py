"""A bound on the time a client takes to send a request (headers and body), on uvicorn's
httptools protocol.

uvicorn closes an idle keep-alive connection, but once a request has begun it waits
for the rest for ever: a client that declares Content-Length: 100 and sends 10 bytes
holds a connection (and, for POST /jobs, a handler) until it gives up. This protocol
starts a clock when a connection opens and at each later request's first byte, and stops it
when the parser has read the whole request; past `timeout` seconds it answers 408 (when no
response has begun) and closes.

httptools (llhttp, uvicorn's own choice when installed: `uvicorn[standard]`) rather than h11:
parsing and writing a request's answer in C costs the service about half the CPU per
request of h11's pure Python (a 304: 0.11-0.13 ms against 0.21-0.32 ms; bench/service_load.py's
polling is mostly such fixed costs).
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def response_408(timeout: float) -> bytes:
    body = json.dumps({"detail": f"request: not received in full within {timeout:g} s "
                                 "(memtrain serve --request-timeout)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def protocol(timeout: float) -> type:
    """A protocol class (uvicorn's `http=`) that bounds each request's receipt to `timeout` s."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        request_timeout = timeout
        _clock = None
        _before = None  # the cycle of the request before the one being received (None: its first)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            # a connection that sends nothing at all is held by nothing else (keep-alive starts after a response)
            self._clock = self.loop.call_later(self.request_timeout, self._too_slow)

        def on_message_begin(self) -> None:  # the request's first byte
            self._before = self.cycle
            if self._clock is None:
                self._clock = self.loop.call_later(self.request_timeout, self._too_slow)
            super().on_message_begin()

        def on_message_complete(self) -> None:  # its last byte
            self._stop_clock()
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._stop_clock()
            super().connection_lost(exc)

        def _stop_clock(self) -> None:
            if self._clock is not None:
                self._clock.cancel()
                self._clock = None

        def _too_slow(self) -> None:
            self._clock = None
            if self.transport.is_closing():
                return
            current = self.cycle if self.cycle is not self._before else None
            if current is None or not current.response_started:  # nothing of a response sent yet
                self.transport.write(response_408(self.request_timeout))
            self.transport.close()

    return TimedHttpToolsProtocol
