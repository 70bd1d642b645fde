"""A bound on the time a client takes to send a request (headers and body), on uvicorn's
httptools protocol.

uvicorn closes an idle keep-alive connection, but once a request has begun it waits
for the rest for ever: a client that declares Content-Length: 100 and sends 10 bytes
holds a connection (and, for POST /jobs, a handler) until it gives up. This protocol
starts a clock when a connection opens and at each later request's first byte, and stops it
when the parser has read the whole request; past `timeout` seconds it answers 408 (when no
response has begun) and closes. A connection on which no request has begun (opened and
left idle: a client's spare pooled connection) is closed without a word, as uvicorn closes an
idle keep-alive connection: a 408 there would be read as the answer to that client's next
request, which it sends not knowing the server gave up on it.

The same protocol answers a GET that the view cache holds (app.Replies: the poll of /jobs, /devices,
the status page) itself, writing the answer's bytes without the ASGI round (a task, six
middlewares, a Response object), which was most of the CPU of a cached poll.

httptools (llhttp, uvicorn's own choice when installed: `uvicorn[standard]`) rather than h11:
parsing and writing a request's answer in C costs the service about half the CPU per
request of h11's pure Python (a 304: 0.11-0.13 ms against 0.21-0.32 ms; bench/service_load.py's
polling is mostly such fixed costs).
"""

from __future__ import annotations

import json

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from memtrain.service.security import REQUEST_TIMEOUT


def response_408(timeout: float) -> bytes:
    body = json.dumps({"detail": f"request: not received in full within {timeout:g} s "
                                 "(memtrain serve --request-timeout)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bound on a request's receipt and the cached answers
    (the subclass protocol() makes sets both)."""

    request_timeout = REQUEST_TIMEOUT
    replies = None  # app.Replies, or None: every request goes to the app
    _clock = None
    _begun = False  # a request's first byte arrived and its last has not
    _replied = False  # the request being received was answered from `replies`

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        # a connection that sends nothing at all is held by nothing else (keep-alive starts after a response)
        self._clock = self.loop.call_later(self.request_timeout, self._too_slow)

    def on_message_begin(self) -> None:  # the request's first byte
        self._begun = True
        if self._clock is None:
            self._clock = self.loop.call_later(self.request_timeout, self._too_slow)
        # a reply written here arms uvicorn's keep-alive timer (on_response_complete) while the rest of
        # the data is still parsed; a pipelined request after it is under way, not idle
        self._unset_keepalive_if_required()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self.replies is None or not self._try_reply():
            super().on_headers_complete()

    def _try_reply(self) -> bool:
        """_reply, or False for good where this uvicorn's protocol lacks what _reply reads (its parser,
        pipeline, flow and cycle are uvicorn's internals, checked with 0.55): the app's Edge
        middleware then answers the same cached views through the ASGI path."""
        try:
            return self._reply()
        except AttributeError:
            self.logger.warning("cached answers go through the app: this uvicorn's protocol differs", exc_info=True)
            type(self).replies = None
            return False

    def on_message_complete(self) -> None:  # its last byte
        self._begun = False
        self._stop_clock()
        if self._replied:  # answered already: what uvicorn does once a response is complete
            self._replied = False
            self.on_response_complete()
            return
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
        if self._begun and (self.cycle is None or self.cycle.scope is not self.scope
                            or not self.cycle.response_started):  # a request, and nothing of its answer sent
            self.transport.write(response_408(self.request_timeout))
        self.transport.close()

    def _reply(self) -> bool:
        """Answer this GET from `replies` if it holds it and nothing else is under way; True if so."""
        p = self.parser
        if (p.get_method() != b"GET" or p.get_http_version() != "1.1" or not p.should_keep_alive()
                or p.should_upgrade() or self.root_path or self.pipeline or self.flow.write_paused
                or (self.cycle is not None and not self.cycle.response_complete)
                or any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)):
            return False  # uvicorn's own path keeps order, bodies, flow control and closing right
        url = httptools.parse_url(self.url)
        if b"%" in url.path or not url.path.isascii():
            return False  # the app answers (and refuses) what is not a plain path
        try:
            found = self.replies.reply(url.path.decode("ascii"), url.query or b"", self.headers)
        except Exception:  # a bug: its traceback logged, the request left to the app (a parser callback's
            self.logger.exception("answering a cached GET")  # exception would become uvicorn's 400)
            return False
        if found is None:
            return False
        status, lines, body = found
        server = b"".join(name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers)
        log, client = (self.access_logger if self.access_log else None), self.client  # read before the write
        self.transport.write(b"".join((STATUS_LINE[status], server, lines, b"\r\n", body)))
        if log is not None:  # uvicorn's AccessFormatter reads these five arguments
            log.info('%s - "%s %s HTTP/%s" %d', "%s:%d" % client if client else "", "GET",
                     self.url.decode("latin-1").replace('"', "%22"), "1.1", status)
        self._replied = True
        return True


def protocol(timeout: float, replies=None) -> type:
    """A protocol class (uvicorn's `http=`) that bounds each request's receipt to `timeout` s and,
    given `replies` (app.Replies), answers the GETs it holds itself."""
    return type("TimedHttpToolsProtocol", (TimedHttpToolsProtocol,), {"request_timeout": timeout, "replies": replies})
