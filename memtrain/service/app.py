"""The HTTP API: FastAPI in front of a core.Service, built by a factory that takes its settings.

Every error is {"detail": "<one line>"}: the same line the CLI prints.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import TypeAdapter
from starlette.requests import ClientDisconnect

from memtrain import __version__
from memtrain.errors import DiskFull, MemtrainError
from memtrain.service import apidocs, models, planning, security
from memtrain.service.core import Service, Settings, tail
from memtrain.service.view_cache import ViewCache, not_modified

# no token: see docs/service.md; /docs-assets/{name}: Swagger UI's own files (apidocs.py)
OPEN_PATHS = ("/healthz", "/docs", "/docs-assets/{name}", "/openapi.json")
PAGE_LIMIT = 100  # GET /jobs without ?limit=
MAX_PAGE_LIMIT = 1000
JOB = TypeAdapter(models.Job)
DEVICE_LIST = TypeAdapter(list[models.Device])
PAGED = {200: {"headers": {
    "ETag": {"description": "the answer's tag: send it as If-None-Match to get 304 while nothing changed",
             "schema": {"type": "string"}},
    "Link": {"description": 'the next page, `</jobs?...&cursor=C>; rel="next"`; absent on the last page',
             "schema": {"type": "string"}}}}}

TOML_OR_JSON = {"requestBody": {"required": True, "content": {
    "application/toml": {"schema": {"type": "string", "description": "a job file, as `memtrain train` reads"}},
    "application/json": {"schema": models.JobSubmission.model_json_schema()},
}}}
ERRORS = {401: {"model": models.Error}, 404: {"model": models.Error}, 413: {"model": models.Error},
          422: {"model": models.Error}, 507: {"model": models.Error}}


class BodyLimit:
    """413 for a declared body over the limit, before any of it is read (ASGI middleware)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                response = JSONResponse({"detail": _too_large(self.limit)}, status_code=413)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class Edge:
    """A GET that repeats an earlier one (the same path and query string) while the answer cached
    for it stands is answered here, before routing, parsing and validation: the poll of a status
    page or a dashboard costs a dict lookup and a few stat()s. Only with the token, checked by the
    same security.token_ok as every route; anything else goes on to the app (ASGI middleware)."""

    def __init__(self, app, views: ViewCache, token: str | None):
        self.app, self.views, self.token = app, views, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            entry = self.views.for_request(scope["path"], scope["query_string"])
            if entry is not None:
                headers = dict(scope["headers"])
                auth, tag = headers.get(b"authorization"), headers.get(b"if-none-match")
                if security.token_ok(self.token, auth.decode("latin-1") if auth else None):
                    return await _answer(tag.decode("latin-1") if tag else None, entry)(scope, receive, send)
        return await self.app(scope, receive, send)


def _too_large(limit: int) -> str:
    return f"body: larger than {limit // 1024} KiB; a job file is expected (a few KiB at most)"


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
    app.state.service = service
    app.state.views = ViewCache(service.store)
    app.add_middleware(BodyLimit, limit=security.MAX_BODY)
    app.add_middleware(Edge, views=app.state.views, token=settings.token)

    _error_handlers(app)

    async def auth(request: Request):  # async: no thread hop for a string comparison
        if not security.token_ok(settings.token, request.headers.get("authorization")):
            raise HTTPException(401, "unauthorized: send the service's token as 'Authorization: Bearer TOKEN' "
                                     "(MEMTRAIN_TOKEN for the CLI)", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(auth)]

    @app.get("/healthz", response_model=models.Health, tags=["service"])
    def healthz():
        return {"status": "ok", "version": __version__}

    _job_routes(app, service, guarded)
    _service_routes(app, service, guarded)
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


def _job_routes(app, service, guarded) -> None:
    """POST/GET /jobs, GET/DELETE /jobs/{id}, GET /jobs/{id}/log."""

    @app.post("/jobs", status_code=201, response_model=models.Submitted, dependencies=guarded, tags=["jobs"],
              openapi_extra=TOML_OR_JSON, responses=ERRORS)
    async def submit(request: Request):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > security.MAX_BODY:
                raise HTTPException(413, _too_large(security.MAX_BODY))
        try:
            # planning loads the data set (once per setting): off the event loop
            return await asyncio.to_thread(service.submit, bytes(body), request.headers.get("content-type", ""))
        except planning.SubmissionError as exc:
            raise HTTPException(422, str(exc)) from None
        except DiskFull as exc:  # reads go on; nothing stored was touched
            raise HTTPException(507, str(exc)) from None

    @app.get("/jobs", response_model=list[models.Job], dependencies=guarded, tags=["jobs"],
             responses={**ERRORS, **PAGED})
    async def jobs(request: Request,
             state: str | None = Query(None, description="queued, running, succeeded, failed or cancelled"),
             limit: int = Query(PAGE_LIMIT, ge=1, le=MAX_PAGE_LIMIT, description="jobs per page, newest first"),
             cursor: int | None = Query(None, ge=0, description="from the previous page's Link header")):
        def build():
            parts, nxt, watched = service.jobs_page(state, limit, cursor, serialize=_one_job)
            query = f"limit={limit}&cursor={nxt}" + (f"&state={state}" if state else "")
            return b"[" + b",".join(parts) + b"]", watched, {} if nxt is None else {"Link": f'</jobs?{query}>; rel="next"'}

        return await _view(request, ("jobs", state, limit, cursor), build)

    @app.get("/jobs/{job_id}", response_model=models.Job, dependencies=guarded, tags=["jobs"], responses=ERRORS)
    def job(job_id: str):
        return _found(_conflict(service.job, job_id), job_id)

    @app.delete("/jobs/{job_id}", response_model=models.Job, dependencies=guarded, tags=["jobs"],
                responses={**ERRORS, 409: {"model": models.Error}})
    def cancel(job_id: str):
        """Cancel a job: a queued one at once; a running one gets one SIGTERM, writes its stop checkpoint
        and ends `cancelled`. Repeated cancels change nothing. An ended job: 409, its files untouched."""
        return _found(_conflict(service.cancel, job_id), job_id)

    @app.post("/jobs/{job_id}/requeue", response_model=models.Job, dependencies=guarded, tags=["jobs"],
              responses={**ERRORS, 409: {"model": models.Error}})
    def requeue(job_id: str):
        """Put a cancelled or failed job back in the queue under its id; it resumes from its checkpoint."""
        return _found(_conflict(service.requeue, job_id), job_id)

    @app.get("/jobs/{job_id}/log", response_class=PlainTextResponse, dependencies=guarded, tags=["jobs"],
             responses=ERRORS)
    async def job_log(job_id: str, lines: int = Query(200, ge=0, le=100000), follow: bool = False):
        path = _found(service.log_path(job_id), job_id)
        if not follow:
            return PlainTextResponse(tail(path, lines))
        return StreamingResponse(_follow(service, job_id, path, lines), media_type="text/plain")


def _service_routes(app, service, guarded) -> None:
    """GET /devices, /prometheus/targets, /metrics and the status page at /."""

    @app.get("/devices", response_model=list[models.Device], dependencies=guarded, tags=["service"],
             responses={200: {"headers": {"ETag": PAGED[200]["headers"]["ETag"]}}})
    async def devices(request: Request):
        def build():  # free memory now is read live: an answer is kept at most a second
            return _json(DEVICE_LIST, service.device_views()), service.running_progress_files(), {}

        return await _view(request, ("devices",), build, max_age=1.0)

    @app.get("/prometheus/targets", response_model=list[models.Target], dependencies=guarded, tags=["service"])
    def targets():
        return service.targets()

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=guarded, tags=["service"])
    def metrics():
        from memtrain.service.metrics import exposition  # noqa: PLC0415 - prometheus_client on first scrape

        body, content_type = exposition(service)
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, dependencies=guarded, tags=["service"])
    async def page(request: Request):
        from memtrain.service.page import render  # noqa: PLC0415

        def build():  # ages and free memory move with the clock: an answer is kept at most a second
            return render(service).encode(), service.running_progress_files(), {}

        return await _view(request, ("page",), build, max_age=1.0, media_type="text/html; charset=utf-8")

    @app.get("/jobs/{job_id}/page", response_class=HTMLResponse, dependencies=guarded, tags=["jobs"],
             responses=ERRORS, summary="The job's page: state, plan against measured memory, curves, events")
    def job_page(job_id: str):
        from memtrain.service.jobpage import render_job  # noqa: PLC0415

        return HTMLResponse(_found(render_job(service, job_id), job_id))


async def _view(request, key, build, **options):
    """The answer from the view cache: a fresh one on the event loop, a new one built on a worker
    thread (it queries the store, which a commit may hold, and reads files)."""
    views = request.app.state.views
    asked = (request.scope["path"], request.scope["query_string"])
    entry = views.fresh(key)
    if entry is None or not views.knows(asked):
        entry = await asyncio.to_thread(views.get, key, build, request=asked, **options)
    return _answer(request.headers.get("if-none-match"), entry)


def _one_job(view) -> bytes:
    return _json(JOB, view)


def _json(adapter, value) -> bytes:
    """`value` checked against the response model and serialised, as FastAPI does for a returned value."""
    return adapter.dump_json(adapter.validate_python(value))


def _answer(if_none_match, entry) -> Response:
    """The entry's answer, or 304 when the client holds it (If-None-Match)."""
    headers = {**entry.headers, "ETag": entry.etag, "Cache-Control": "no-cache"}  # no-cache: revalidate each time
    if not_modified(if_none_match, entry.etag):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type=entry.media_type, headers=headers)


def _conflict(action, job_id):
    """`action(job_id)` with the job-state errors as their statuses: 409 (the state does not allow
    it), 507 (no room to record it), 500 with one line (the job's stored row is damaged)."""
    from memtrain.service.scheduler import JobConflict  # noqa: PLC0415
    from memtrain.service.store import StoreDamaged  # noqa: PLC0415

    try:
        return action(job_id)
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except DiskFull as exc:
        raise HTTPException(507, str(exc)) from None
    except StoreDamaged as exc:
        raise HTTPException(500, str(exc)) from None


def _found(value, job_id):
    if value is None:
        raise HTTPException(404, f"job {job_id}: no such job")
    return value


async def _follow(service, job_id, path, lines):
    yield tail(path, lines)
    try:
        pos = path.stat().st_size
    except OSError:
        pos = 0
    while True:
        active = service.is_active(job_id)
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
        except OSError:
            chunk = b""
        if chunk:
            pos += len(chunk)
            yield chunk
        elif not active:
            return
        await asyncio.sleep(0.25)
