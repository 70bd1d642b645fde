"""What every route depends on: the Service (`Depends(service)`), the caller's user from their
token (`Depends(user)`), and the cached answer of a GET (view_cache) with its ETag."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException, Request
from fastapi.responses import Response

from memtrain.service import encoding, models, security
from memtrain.service.core import Service
from memtrain.service.view_cache import not_modified

ERRORS = {401: {"model": models.Error}, 404: {"model": models.Error}, 413: {"model": models.Error},
          422: {"model": models.Error}, 507: {"model": models.Error}}
ETAG = {"description": "the answer's tag: send it as If-None-Match to get 304 while nothing changed",
        "schema": {"type": "string"}}


async def service(request: Request) -> Service:  # async: FastAPI runs a plain def on a worker thread
    """The app's Service (create_app puts it in app.state)."""
    return request.app.state.service


async def user(request: Request) -> str:  # async: no thread hop for a string comparison
    """The user whose token the request carries (the default user without a token file); 401 without one."""
    found = security.user_of(request.app.state.settings.token, request.headers.get("authorization"))
    if found is None:
        raise HTTPException(401, "unauthorized: send the service's token as 'Authorization: Bearer TOKEN' "
                                 "(MEMTRAIN_TOKEN for the CLI)", headers={"WWW-Authenticate": "Bearer"})
    return found


async def cached(request, key, build, **options) -> Response:
    """The answer from the view cache: a fresh one on the event loop, a new one built on a worker
    thread (it queries the store, which a commit may hold, and reads files; its gzip form too,
    when the client accepts gzip)."""
    views = request.app.state.views
    asked = (request.scope["path"], request.scope["query_string"])
    encodings = request.headers.get("accept-encoding")
    entry = views.fresh(key)
    if entry is None or not views.knows(asked):
        entry = await asyncio.to_thread(_built, views, key, build, asked, encodings, options)
    return answer(request.headers.get("if-none-match"), entry, encodings)


def _built(views, key, build, asked, encodings, options):
    entry = views.get(key, build, request=asked, **options)
    if entry.compressible() and encoding.accepts_gzip(encodings):
        entry.gzipped()
    return entry


def chosen(if_none_match, entry, accept_encoding=None) -> tuple:
    """(status, headers, body) of the entry's answer: gzip-compressed for a client that accepts gzip
    (a large one: encoding.py), or 304 when the client holds it (If-None-Match with either form's ETag)."""
    packs = entry.compressible() and encoding.accepts_gzip(accept_encoding)
    packed_tag = encoding.gzip_tag(entry.etag)
    headers = {**entry.headers, "ETag": packed_tag if packs else entry.etag,
               "Cache-Control": "no-cache", "Vary": encoding.VARY}  # no-cache: revalidate each time
    if not_modified(if_none_match, entry.etag, packed_tag):
        return 304, headers, b""
    if not packs:
        return 200, headers, entry.body
    # gzipped() off the event loop when this request built the entry (_built); made here when an
    # identity client's request built it: once per change of the view
    headers["Content-Encoding"] = "gzip"
    return 200, headers, entry.gzipped()


def answer(if_none_match, entry, accept_encoding=None) -> Response:
    """The entry's answer (chosen) as a Response."""
    status, headers, body = chosen(if_none_match, entry, accept_encoding)
    if status == 304:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=entry.media_type, headers=headers)


def answer_bytes(if_none_match, entry, accept_encoding=None) -> tuple:
    """The same answer as HTTP/1.1 bytes for slow_clients' protocol to write itself: (status line,
    header lines, body); the server's own headers (date, server) go between the two."""
    status, headers, body = chosen(if_none_match, entry, accept_encoding)
    lines = [f"{name.lower()}: {value}\r\n" for name, value in headers.items()]
    if status == 200:
        lines += [f"content-type: {entry.media_type}\r\n", f"content-length: {len(body)}\r\n"]
    return status, "".join(lines).encode("latin-1"), body


def as_json(adapter, value) -> bytes:
    """`value` checked against the response model and serialised, as FastAPI does for a returned value."""
    return adapter.dump_json(adapter.validate_python(value))


def found(value, job_id):
    if value is None:
        raise HTTPException(404, f"job {job_id}: no such job")
    return value
