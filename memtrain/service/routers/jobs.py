"""POST/GET /jobs, GET/DELETE /jobs/{id}, POST /jobs/{id}/requeue, GET /jobs/{id}/log and /page."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from pydantic import TypeAdapter

from memtrain.errors import DiskFull
from memtrain.service import models, planning, security
from memtrain.service.core import Service, tail
from memtrain.service.routers.deps import ERRORS, ETAG, as_json, cached, found, service, user
from memtrain.service.view_cache import etag

PAGE_LIMIT = 100  # GET /jobs without ?limit=
MAX_PAGE_LIMIT = 1000
JOB = TypeAdapter(models.Job)
PAGED = {200: {"headers": {
    "ETag": ETAG,
    "Link": {"description": 'the next page, `</jobs?...&cursor=C>; rel="next"`; absent on the last page',
             "schema": {"type": "string"}}}}}
# the body is a job file: TOML (as `memtrain train` reads it) or its JSON form, whose schema is the
# pydantic JobSubmission; both are parsed into that model (planning.parse_body, streamed here under the
# size limit: FastAPI's own body parameter would read it all and could not take TOML), one message per field
TOML_OR_JSON = {"requestBody": {"required": True, "content": {
    "application/toml": {"schema": {"type": "string", "description": "a job file, as `memtrain train` reads"}},
    "application/json": {"schema": models.JobSubmission.model_json_schema()},
}}}
CONFLICT = {**ERRORS, 409: {"model": models.Error}}

router = APIRouter(tags=["jobs"], responses=ERRORS)
guarded = APIRouter(tags=["jobs"], responses=ERRORS, dependencies=[Depends(user)])


def too_large(limit: int) -> str:
    return f"body: larger than {limit // 1024} KiB; a job file is expected (a few KiB at most)"


@router.post("/jobs", status_code=201, response_model=models.Submitted, openapi_extra=TOML_OR_JSON)
async def submit(request: Request, who: str = Depends(user), svc: Service = Depends(service)):
    return await submitted(request, svc.submit, who)


async def submitted(request: Request, submit, who: str):
    """A job or sweep file's body, read under the size limit, handed to `submit` (Service.submit or
    submit_sweep) off the event loop (planning loads the data set): a bad file is a 422 in one line,
    a full disk a 507 (reads go on; nothing stored was touched)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > security.MAX_BODY:
            raise HTTPException(413, too_large(security.MAX_BODY))
    try:
        return await asyncio.to_thread(submit, bytes(body), request.headers.get("content-type", ""), who)
    except planning.SubmissionError as exc:
        raise HTTPException(422, str(exc)) from None
    except DiskFull as exc:
        raise HTTPException(507, str(exc)) from None


@guarded.get("/jobs", response_model=list[models.Job], responses=PAGED)
async def jobs(request: Request, svc: Service = Depends(service),
               state: str | None = Query(None, description="queued, running, succeeded, failed or cancelled"),
               limit: int = Query(PAGE_LIMIT, ge=1, le=MAX_PAGE_LIMIT, description="jobs per page, newest first"),
               cursor: int | None = Query(None, ge=0, description="from the previous page's Link header")):
    def build():
        parts, nxt, watched = svc.jobs_page(state, limit, cursor, serialize=lambda view: as_json(JOB, view))
        query = f"limit={limit}&cursor={nxt}" + (f"&state={state}" if state else "")
        link = "" if nxt is None else f'</jobs?{query}>; rel="next"'
        headers = {"Link": link} if link else {}
        # the tag from the views' digests (kept with each view) and the Link: the body is not hashed again
        headers["ETag"] = etag(*(p.digest for p in parts), link.encode())
        return b"[" + b",".join(p.json for p in parts) + b"]", watched, headers

    return await cached(request, ("jobs", state, limit, cursor), build)


@guarded.get("/jobs/{job_id}", response_model=models.Job)
def job(job_id: str, svc: Service = Depends(service)):
    return found(_conflict(svc.job, job_id), job_id)


@guarded.delete("/jobs/{job_id}", response_model=models.Job, responses=CONFLICT)
def cancel(job_id: str, svc: Service = Depends(service)):
    """Cancel a job: a queued one at once; a running one gets one SIGTERM, writes its stop checkpoint
    and ends `cancelled`. Repeated cancels change nothing. An ended job: 409, its files untouched."""
    return found(_conflict(svc.cancel, job_id), job_id)


@guarded.post("/jobs/{job_id}/requeue", response_model=models.Job, responses=CONFLICT)
def requeue(job_id: str, svc: Service = Depends(service)):
    """Put a cancelled or failed job back in the queue under its id; it resumes from its checkpoint."""
    return found(_conflict(svc.requeue, job_id), job_id)


@guarded.get("/jobs/{job_id}/log", response_class=PlainTextResponse)
async def job_log(job_id: str, lines: int = Query(200, ge=0, le=100000), follow: bool = False,
                  svc: Service = Depends(service)):
    path = found(svc.log_path(job_id), job_id)
    if not follow:
        return PlainTextResponse(tail(path, lines))
    return StreamingResponse(_follow(svc, job_id, path, lines), media_type="text/plain")


@guarded.get("/jobs/{job_id}/page", response_class=HTMLResponse,
             summary="The job's page: state, plan against measured memory, curves, events")
def job_page(job_id: str, svc: Service = Depends(service)):
    from memtrain.service.jobpage import render_job  # noqa: PLC0415

    return HTMLResponse(found(render_job(svc, job_id), job_id))


def _conflict(action, job_id):
    """`action(job_id)` with the job-state errors as their statuses: 409 (the state does not allow
    it), 507 (no room to record it), 500 with one line (the job's stored row is damaged)."""
    from memtrain.scheduling.scheduler import JobConflict  # noqa: PLC0415
    from memtrain.scheduling.store import StoreDamaged  # noqa: PLC0415

    try:
        return action(job_id)
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except DiskFull as exc:
        raise HTTPException(507, str(exc)) from None
    except StoreDamaged as exc:
        raise HTTPException(500, str(exc)) from None


async def _follow(svc, job_id, path, lines):
    yield tail(path, lines)
    try:
        pos = path.stat().st_size
    except OSError:
        pos = 0
    while True:
        active = svc.is_active(job_id)
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
