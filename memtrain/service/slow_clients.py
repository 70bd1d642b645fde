"""A bound on the time a client takes to send a request (headers and body).

uvicorn closes an idle keep-alive connection, but once a request has begun it waits
for the rest for ever: a client that declares Content-Length: 100 and sends 10 bytes
holds a connection (and, for POST /jobs, a handler) until it gives up. This protocol
starts a clock when a connection opens and at each later request's first byte, and stops it
when h11 has read the whole request; past `timeout` seconds it answers 408 (when no response
has begun) and closes.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


def response_408(timeout: float) -> bytes:
    body = json.dumps({"detail": f"request: not received in full within {timeout:g} s "
                                 "(memtrain serve --request-timeout)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def protocol(timeout: float) -> type:
    """An H11Protocol class (uvicorn's `http=`) that bounds each request's receipt to `timeout` s."""

    class TimedH11Protocol(H11Protocol):
        request_timeout = timeout
        _clock = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            # a connection that sends nothing at all is held by nothing else (keep-alive starts after a response)
            self._clock = self.loop.call_later(self.request_timeout, self._too_slow)

        def data_received(self, data: bytes) -> None:
            if self._clock is None and self.conn.their_state not in _RECEIVED:
                self._clock = self.loop.call_later(self.request_timeout, self._too_slow)
            super().data_received(data)
            if self.conn.their_state in _RECEIVED:
                self._stop_clock()

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
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing of a response sent yet
                self.transport.write(response_408(self.request_timeout))
            self.transport.close()

    return TimedH11Protocol
