"""Content-Encoding of the cached views' answers: gzip for a client that asks for it.

A plain poll of GET /jobs sends a page of ~150 KB; sending it (the socket write, which on
127.0.0.1 also runs the receiver's TCP path) was most of the service's CPU per poll. The
page is JSON and compresses ~10x or more, once per change of the view (view_cache.Entry
keeps the compressed body beside the plain one), not per request. Clients that send
`Accept-Encoding: gzip` (browsers, requests, httpx, curl --compressed) get it; any other
client gets the plain body, and small answers are sent plain to everyone.
"""

from __future__ import annotations

import zlib

MIN_SIZE = 1024  # bytes: below this, gzip's header and the client's inflating cost more than they save
LEVEL = 6  # zlib's default: ~0.6 ms per 150 KB page here, paid once per change of the page
VARY = "Accept-Encoding"


def gzip(body: bytes) -> bytes:
    """`body` in the gzip format (RFC 1952; mtime 0, so the same body always compresses the same)."""
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(body) + packer.flush()


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding value (RFC 9110 12.5.3) allows gzip: listed (or x-gzip, or `*`
    while gzip is not listed) with a q-value above 0. No header: identity only."""
    if not header:
        return False
    weights = {}
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a q-value that is not one: not an acceptance
        weights[name.strip().lower()] = q
    for name in ("gzip", "x-gzip"):
        if name in weights:
            return weights[name] > 0
    return weights.get("*", 0) > 0


def gzip_tag(etag: str) -> str:
    """The gzip answer's ETag: its own (RFC 9110 8.8.3: a strong tag names one representation's
    bytes), made from the plain answer's so either is recognised in If-None-Match."""
    return etag[:-1] + '-gzip"' if etag.endswith('"') else etag + "-gzip"
