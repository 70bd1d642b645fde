"""The cached views' answers (GET /jobs, /devices, /) gzip-compressed for a client that asks, plain for
one that does not, with ETags and 304s right for both, against a real server on 127.0.0.1; the
second of two equal GETs is answered by the service's protocol itself (slow_clients, app.Replies),
so each check is made on both paths."""

import gzip
import json
import re
import socket

import pytest
from service_helpers import ThreadServer
from test_service_paging import stored_job

from memtrain.service import encoding

N = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ThreadServer(tmp_path_factory.mktemp("state")) as s:
        for i in range(N):
            s.service.store.insert(stored_job(i, "succeeded", s.settings.state_dir))
        yield s


class Conn:
    """One keep-alive connection sending exactly the given header lines (http.client would add its
    own Accept-Encoding) and reading answers by Content-Length."""

    def __init__(self, server):
        self.sock, self.buf = socket.create_connection(("127.0.0.1", server.port), timeout=10), b""

    def send(self, path: str, *lines: str) -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{''.join(h + chr(13) + chr(10) for h in lines)}\r\n"
                          .encode())

    def answer(self) -> tuple:
        """(status, headers with lower-case names, body as sent)."""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (re.split(r":\s*", line, maxsplit=1) for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(rest) < length:
            rest += self._recv()
        self.buf = rest[length:]
        return int(lines[0].split()[1]), headers, rest[:length]

    def get(self, path: str, *lines: str) -> tuple:
        self.send(path, *lines)
        return self.answer()

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed by the server")
        return chunk

    def close(self):
        self.sock.close()


@pytest.fixture
def conn(server):
    c = Conn(server)
    yield c
    c.close()


@pytest.fixture
def by_protocol(server, monkeypatch):
    """The answers the protocol wrote itself (a spy on the real app.Replies.reply)."""
    replies, written = server.app.state.replies, []
    real = replies.reply

    def reply(path, query, headers):
        found = real(path, query, headers)
        written.extend([(path, found[0])] if found else [])
        return found

    monkeypatch.setattr(replies, "reply", reply)
    return written


@pytest.mark.parametrize("path", ["/jobs", "/jobs?limit=50&state=succeeded", "/devices", "/"])
def test_a_gzip_answer_inflates_to_the_plain_one_on_both_paths(conn, path, by_protocol):
    for _ in range(2):  # the first built by the route, the second written by the protocol
        status, plain_headers, plain = conn.get(path)
        assert status == 200 and "content-encoding" not in plain_headers
        assert plain_headers["vary"] == "Accept-Encoding"
        status, headers, packed = conn.get(path, "Accept-Encoding: gzip, deflate")
        assert status == 200 and headers["vary"] == "Accept-Encoding"
        if len(plain) < encoding.MIN_SIZE:  # /devices: a few hundred bytes go plain to everyone
            assert "content-encoding" not in headers and packed == plain
            continue
        assert headers["content-encoding"] == "gzip" and len(packed) < len(plain) / 3
        assert headers["content-type"] == plain_headers["content-type"]
        if path != "/":  # the status page's ages move with the clock: only its form is compared
            assert gzip.decompress(packed) == plain
            assert headers["etag"] == plain_headers["etag"][:-1] + '-gzip"'
        else:
            assert b"<html" in gzip.decompress(packed).lower() and b"job00119" in gzip.decompress(packed)
    assert len(by_protocol) >= 2 and by_protocol[-1] == (path.split("?")[0], 200)


def test_the_page_is_large_enough_to_be_compressed(conn):
    _, _, plain = conn.get("/jobs")
    assert len(json.loads(plain)) == 100 and len(plain) > 10 * encoding.MIN_SIZE


def test_a_client_that_refuses_gzip_gets_the_plain_body(conn):
    for accept in ("identity", "gzip;q=0", "gzip;q=0, *", "br", "*;q=0"):
        for _ in range(2):
            status, headers, body = conn.get("/jobs", f"Accept-Encoding: {accept}")
            assert status == 200 and "content-encoding" not in headers, accept
            assert len(json.loads(body)) == 100
    status, headers, body = conn.get("/jobs", "Accept-Encoding: *")
    assert headers["content-encoding"] == "gzip" and len(json.loads(gzip.decompress(body))) == 100


def test_either_etag_gets_304_until_the_page_changes_then_the_new_page(server, conn):
    _, plain_headers, _ = conn.get("/jobs?limit=30")
    _, headers, _ = conn.get("/jobs?limit=30", "Accept-Encoding: gzip")
    plain_tag, packed_tag = plain_headers["etag"], headers["etag"]
    assert plain_tag != packed_tag
    for tag in (plain_tag, packed_tag):
        for _ in range(2):
            status, headers, body = conn.get("/jobs?limit=30", "Accept-Encoding: gzip", f"If-None-Match: {tag}")
            assert status == 304 and body == b"" and headers["etag"] == packed_tag
            status, headers, body = conn.get("/jobs?limit=30", f"If-None-Match: {tag}")
            assert status == 304 and body == b"" and headers["etag"] == plain_tag
    server.service.store.insert(stored_job(N, "succeeded", server.settings.state_dir))
    try:
        status, headers, body = conn.get("/jobs?limit=30", "Accept-Encoding: gzip", f"If-None-Match: {packed_tag}")
        page = json.loads(gzip.decompress(body))
        assert status == 200 and headers["etag"] not in (plain_tag, packed_tag) and page[0]["id"] == f"job{N:05d}"
        status, _, body = conn.get("/jobs?limit=30", "Accept-Encoding: gzip")  # the protocol's answer now
        assert status == 200 and json.loads(gzip.decompress(body)) == page
        server.service.store.update(f"job{N:05d}", name="renamed")  # a write: the next poll shows it
        status, _, body = conn.get("/jobs?limit=30", "Accept-Encoding: gzip")
        assert status == 200 and json.loads(gzip.decompress(body))[0]["name"] == "renamed"
        status, _, body = conn.get("/jobs?limit=30")
        assert json.loads(body)[0]["name"] == "renamed" and json.loads(body)[1:] == page[1:]
    finally:
        server.service.store.update(f"job{N:05d}", state="cancelled")


def test_pipelined_requests_are_answered_in_order(conn):
    conn.get("/jobs?limit=7")  # cached: the protocol answers the next ones itself
    conn.send("/jobs?limit=7")
    conn.send("/healthz")  # the app's
    conn.send("/jobs?limit=7", "Accept-Encoding: gzip")
    conn.send("/jobs/nope")
    first, health, packed, missing = (conn.answer() for _ in range(4))
    assert first[0] == 200 and len(json.loads(first[2])) == 7
    assert health[0] == 200 and json.loads(health[2])["status"] == "ok"
    assert packed[0] == 200 and gzip.decompress(packed[2]) == first[2]
    assert missing[0] == 404


def test_connection_close_is_honoured_on_a_cached_answer(conn):
    conn.get("/jobs?limit=3")
    status, headers, body = conn.get("/jobs?limit=3", "Connection: close")
    assert status == 200 and len(json.loads(body)) == 3 and headers.get("connection") == "close"
    with pytest.raises(ConnectionError):
        conn._recv()


@pytest.mark.parametrize("header, expected", [
    (None, False), ("", False), ("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("x-gzip", True),
    ("gzip;q=0", False), ("gzip; q=0.0", False), ("*", True), ("*;q=0", False), ("identity", False),
    ("gzip;q=0, *;q=1", False), ("br, *", True), ("gzip;q=x", False)])
def test_accept_encoding_is_read_as_rfc_9110_says(header, expected):
    assert encoding.accepts_gzip(header) is expected


def test_gzip_is_the_same_bytes_each_time():
    body = json.dumps([{"id": i} for i in range(500)]).encode()
    assert encoding.gzip(body) == encoding.gzip(body) and gzip.decompress(encoding.gzip(body)) == body


def test_a_uvicorn_whose_protocol_differs_answers_through_the_app(server, by_protocol, monkeypatch):
    """The protocol's own answers read uvicorn's internals (its parser, pipeline, flow, cycle): where
    one is missing (another uvicorn), the cached views are answered by the app, the same bytes."""
    cls = server.server.config.http
    monkeypatch.setattr(cls, "replies", cls.replies)  # put back after the test (the fallback clears it)
    monkeypatch.setattr(cls, "_reply", lambda self: self.an_internal_this_uvicorn_lacks)
    c = Conn(server)
    try:
        answers = [c.get("/jobs?limit=7") for _ in range(3)]
    finally:
        c.close()
    assert [a[0] for a in answers] == [200] * 3 and answers[1][2] == answers[2][2] == answers[0][2]
    assert len(json.loads(answers[2][2])) == 7
    assert by_protocol == [] and cls.replies is None


def test_the_access_log_at_info_has_a_line_for_each_answer_and_no_logging_error(tmp_path):
    """`memtrain serve` logs at info by default: the protocol's own answers get uvicorn's access-log
    line like the app's (its formatter reads five arguments), not a logging error."""
    from service_helpers import ProcessServer

    (tmp_path / "state").mkdir()
    srv = ProcessServer(tmp_path / "state", "--log-level", "info").start()
    try:
        c = Conn(srv)
        try:
            answers = [c.get("/jobs?limit=3", "Accept-Encoding: gzip") for _ in range(3)]
        finally:
            c.close()
    finally:
        srv.stop()
    assert [a[0] for a in answers] == [200] * 3
    log = (tmp_path / f"serve-{srv.port}.log").read_text()
    assert "Logging error" not in log and "Traceback" not in log, log
    assert log.count('"GET /jobs?limit=3 HTTP/1.1" 200') == 3, log
