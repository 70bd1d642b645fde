"""Answers of the read-only views (GET /jobs, /devices, the status page), kept between changes.

A view is a function of the store and of the running jobs' progress files (and, for
/devices and the page, of the clock: free memory now, ages). So an entry stands while
the store's write counter, the progress files' mtimes and, where given, a maximum age
say nothing changed; a poll then costs a few stat() calls, not a query, a view per job
and a serialisation. Each answer carries an ETag, and a client that sends it back in
If-None-Match gets 304 with no body.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    body: bytes
    headers: dict  # besides the ETag (a page's Link)
    etag: str
    version: int
    stamps: tuple  # (path, mtime_ns) of each watched file, None for a missing one
    made: float


def stamps(paths) -> tuple:
    out = []
    for p in paths:
        try:
            out.append((p, os.stat(p).st_mtime_ns))
        except OSError:
            out.append((p, None))
    return tuple(out)


class ViewCache:
    def __init__(self, store, size: int = 128):
        self.store, self.size = store, size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, key, max_age: float | None = None) -> Entry | None:
        """The cached answer for `key` while nothing it depends on changed, else None (a few stat()s:
        cheap enough for the event loop)."""
        with self._lock:
            e = self._entries.get(key)
        if (e is not None and e.version == self.store.version
                and (max_age is None or time.monotonic() - e.made < max_age)
                and stamps(p for p, _ in e.stamps) == e.stamps):
            return e
        return None

    def get(self, key, build, max_age: float | None = None) -> Entry:
        """The cached answer for `key`, or build() -> (body bytes, watched file paths, headers) made now.
        A progress file written while build() runs can leave an entry one write behind; the
        next write of that file (each epoch) replaces it."""
        e = self.fresh(key, max_age)
        if e is not None:
            return e
        version = self.store.version  # before build(): a write during it makes the entry stale at once
        body, watched, headers = build()
        e = Entry(body, headers, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"', version, stamps(watched),
                  time.monotonic())
        with self._lock:
            self._entries[key] = e
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return e


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): '*' or a list of tags, weak ones compared weakly."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags
