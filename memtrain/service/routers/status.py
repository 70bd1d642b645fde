"""GET /healthz, /devices, /prometheus/targets, /metrics and the status page at /."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import TypeAdapter

from memtrain import __version__
from memtrain.service import models
from memtrain.service.core import Service
from memtrain.service.routers.deps import ERRORS, ETAG, as_json, cached, service, user

DEVICE_LIST = TypeAdapter(list[models.Device])

router = APIRouter(tags=["service"])
guarded = APIRouter(tags=["service"], responses={401: ERRORS[401]}, dependencies=[Depends(user)])


@router.get("/healthz", response_model=models.Health)
def healthz():
    return {"status": "ok", "version": __version__}


@guarded.get("/devices", response_model=list[models.Device], responses={200: {"headers": {"ETag": ETAG}}})
async def devices(request: Request, svc: Service = Depends(service)):
    def build():  # free memory now is read live: an answer is kept at most a second
        return as_json(DEVICE_LIST, svc.device_views()), svc.running_progress_files(), {}

    return await cached(request, ("devices",), build, max_age=1.0)


@guarded.get("/prometheus/targets", response_model=list[models.Target])
def targets(svc: Service = Depends(service)):
    return svc.targets()


@guarded.get("/metrics", response_class=PlainTextResponse)
def metrics(svc: Service = Depends(service)):
    from memtrain.service.metrics import exposition  # noqa: PLC0415 - prometheus_client on first scrape

    body, content_type = exposition(svc)
    return Response(body, media_type=content_type)


@guarded.get("/", response_class=HTMLResponse)
async def page(request: Request, svc: Service = Depends(service)):
    from memtrain.service.page import render  # noqa: PLC0415

    def build():  # ages and free memory move with the clock: an answer is kept at most a second
        return render(svc).encode(), svc.running_progress_files(), {}

    return await cached(request, ("page",), build, max_age=1.0, media_type="text/html; charset=utf-8")
