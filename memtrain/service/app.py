"""The HTTP API: FastAPI in front of a core.Service, built by a factory that takes its settings.
The routes are in routers/ (jobs, status), each getting the Service and the caller's user by
`Depends`; this module adds the middleware (body limit, cached answers) and the error handlers.

Every error is {"detail": "<one line>"}: the same line the CLI prints.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from memtrain import __version__
from memtrain.errors import MemtrainError
from memtrain.service import apidocs, security
from memtrain.service.core import Service, Settings
from memtrain.service.routers import jobs, status, sweeps
from memtrain.service.routers.deps import answer, answer_bytes
from memtrain.service.view_cache import ViewCache

# no token: see docs/service.md; /docs-assets/{name}: Swagger UI's own files (apidocs.py)
OPEN_PATHS = ("/healthz", "/docs", "/docs-assets/{name}", "/openapi.json")


class BodyLimit:
    """413 for a declared body over the limit, before any of it is read (ASGI middleware)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                response = JSONResponse({"detail": jobs.too_large(self.limit)}, status_code=413)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class Replies:
    """Which GETs are answered before routing: one that repeats an earlier one (the same path and
    query string) while the answer cached for it stands, with the token (security.token_ok, as
    every route checks it). The poll of a status page or a dashboard then costs a dict lookup and
    a few stat()s (its body gzip-compressed once per change for a client that accepts it)."""

    def __init__(self, views: ViewCache, token):
        self.views, self.token = views, token

    def find(self, path: str, query: bytes, headers) -> tuple | None:
        """(If-None-Match, the entry, Accept-Encoding) for a GET answered here, else None;
        `headers`: the request's (lower-case name, value) byte pairs."""
        entry = self.views.for_request(path, query)
        if entry is None:
            return None
        found = {}
        for name, value in headers:  # the first of repeated headers, as the routes read them (starlette)
            found.setdefault(name, value)
        auth, tag, encodings = found.get(b"authorization"), found.get(b"if-none-match"), found.get(b"accept-encoding")
        if not security.token_ok(self.token, auth.decode("latin-1") if auth else None):
            return None
        return (tag.decode("latin-1") if tag else None, entry, encodings.decode("latin-1") if encodings else None)

    def reply(self, path: str, query: bytes, headers) -> tuple | None:
        """The answer's bytes (deps.answer_bytes) for slow_clients' protocol, which writes it without
        the ASGI round (a task, six middlewares, a Response: most of a cached poll's CPU), else None."""
        found = self.find(path, query, headers)
        return None if found is None else answer_bytes(*found)


class Edge:
    """The same answers (Replies) as ASGI middleware, for a request the protocol did not answer itself
    (a server other than `memtrain serve`'s, a pipelined request, a client not reading its answers)."""

    def __init__(self, app, replies: Replies):
        self.app, self.replies = app, replies

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            found = self.replies.find(scope["path"], scope["query_string"], scope["headers"])
            if found is not None:
                return await answer(*found)(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(settings: Settings, service: Service | None = None) -> FastAPI:
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="memtrain serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="A memory-aware training service: jobs are planned at submission and start "
                              "when their plans fit a device's budget (docs/service.md).")
    apidocs.add_docs(app, "memtrain serve")  # /docs with Swagger UI served from the package: no CDN
    app.state.service, app.state.settings = service, settings  # what routers.deps injects
    app.state.views = ViewCache(service.store)
    app.state.replies = Replies(app.state.views, settings.token)  # server.uvicorn_config hands it to the protocol
    app.add_middleware(BodyLimit, limit=security.MAX_BODY)
    app.add_middleware(Edge, replies=app.state.replies)

    _error_handlers(app)
    for router in (status.router, jobs.router, jobs.guarded, sweeps.router, sweeps.guarded, status.guarded):
        app.include_router(router)
    return app


def _error_handlers(app) -> None:
    """Every answer is JSON {"detail": "<one line>"}: a user's error is a 4xx without a traceback
    anywhere; anything else is a bug: 500 here, its traceback in the service's log (Starlette's
    ServerErrorMiddleware calls the Exception handler, then re-raises for uvicorn to log)."""

    @app.exception_handler(RequestValidationError)
    async def _one_line(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return JSONResponse({"detail": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(MemtrainError)
    async def _user_error(request, exc):  # memtrain.errors: bad input, whichever layer found it
        return JSONResponse({"detail": getattr(exc, "public", None) or str(exc)}, status_code=422)  # DataError's

    @app.exception_handler(ClientDisconnect)
    async def _gone(request, exc):  # the client left (or slow_clients answered 408 and closed): no one to tell
        return Response(status_code=408)

    @app.exception_handler(Exception)
    async def _bug(request, exc):
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); this is a bug in memtrain serve: "
                                       "its traceback is in the service's log"}, status_code=500)
