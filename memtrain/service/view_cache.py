"""Answers of the read-only views (GET /jobs, /devices, the status page), kept between changes.

A view is a function of the store and of the running jobs' progress files (and, for
/devices and the page, of the clock: free memory now, ages). So an entry stands while
the store's write counter, the progress files' mtimes and, where given, a maximum age
say nothing changed; a poll then costs a few stat() calls, not a query, a view per job
and a serialisation. Each answer carries an ETag, and a client that sends it back in
If-None-Match gets 304 with no body. An entry also keeps its body gzip-compressed, made
the first time a client that accepts gzip asks for it (encoding.py): once per change.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from memtrain.service import encoding

PROGRESS_SLACK = 1.0  # seconds an answer stands without checking the running jobs' progress files


@dataclass(frozen=True)
class Entry:
    body: bytes
    headers: dict  # besides the ETag (a page's Link)
    media_type: str
    etag: str
    version: int
    stamps: tuple  # (path, mtime_ns) of each watched file, None for a missing one
    made: float
    max_age: float | None  # seconds; None: until the store or a watched file changes
    packed: dict = field(default_factory=dict, compare=False, repr=False)  # "gzip": the compressed body, once made

    def compressible(self) -> bool:
        return len(self.body) >= encoding.MIN_SIZE

    def gzipped(self) -> bytes:
        """The body gzip-compressed, made on the first call (two threads racing both make the same bytes)."""
        packed = self.packed.get("gzip")
        if packed is None:
            packed = self.packed["gzip"] = encoding.gzip(self.body)
        return packed


def etag(*parts: bytes) -> str:
    """A strong ETag of the answer these bytes make up (its body, or digests that stand for its parts)."""
    return '"' + hashlib.blake2b(b"".join(parts), digest_size=12).hexdigest() + '"'


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
        self._entries: OrderedDict = OrderedDict()  # key -> Entry
        self._requests: dict = {}  # (path, raw query string) -> key: how the edge (Edge) finds an entry
        self._lock = threading.Lock()
        self._builds: dict = {}  # key -> the lock its build holds

    def fresh(self, key) -> Entry | None:
        """The cached answer for `key` while nothing it depends on changed, else None (a few stat()s:
        cheap enough for the event loop). A running job's progress file changes every second or
        so; an answer younger than PROGRESS_SLACK stands without looking (a store write, which
        every change of state is, still ends it at once)."""
        with self._lock:
            e = self._entries.get(key)
        if e is None or e.version != self.store.version:
            return None
        age = time.monotonic() - e.made
        if e.max_age is not None and age >= e.max_age:
            return None
        return e if age < PROGRESS_SLACK or stamps(p for p, _ in e.stamps) == e.stamps else None

    def for_request(self, path: str, query: bytes) -> Entry | None:
        """The fresh entry an earlier request with this exact path and query string was answered from."""
        key = self._requests.get((path, query))
        return None if key is None else self.fresh(key)

    def _building(self, key) -> threading.Lock:
        with self._lock:
            if len(self._builds) > 4 * self.size:  # bounded: locks of keys long gone are dropped
                self._builds = {k: v for k, v in self._builds.items() if v.locked()}
            return self._builds.setdefault(key, threading.Lock())

    def knows(self, request: tuple) -> bool:
        return request in self._requests

    def get(self, key, build, *, max_age=None, media_type="application/json", request=None) -> Entry:
        """The cached answer for `key`, or build() -> (body bytes, watched file paths, headers) made now
        (an "ETag" in those headers is the answer's tag, else the body is hashed: a page of 146 KB
        costs 0.2 ms to hash); `request` (path, raw query string) is remembered as one that `key`
        answers. A progress file
        written while build() runs can leave an entry one write behind; its next write (each epoch)
        replaces it."""
        with self._building(key):  # one build per key at a time: pollers arriving meanwhile take its answer
            e = self.fresh(key)
            if e is None:
                version = self.store.version  # before build(): a write during it makes the entry stale at once
                body, watched, headers = build()
                tag = headers.pop("ETag", None) or etag(body)
                e = Entry(body, headers, media_type, tag, version, stamps(watched), time.monotonic(), max_age)
        with self._lock:
            self._entries[key] = e
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            if request is not None and len(self._requests) < 16 * self.size:  # bounded: odd queries stay out
                self._requests[request] = key
        return e


def not_modified(if_none_match: str | None, *etags: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): '*' or a list of tags, weak ones compared weakly; `etags`:
    the tags of the answer's representations (plain, gzip), any of which the client may hold."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or any(tag in tags for tag in etags)
