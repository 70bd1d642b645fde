"""POST /sweeps, GET /sweeps/{id}, DELETE /jobs/{id}/trials/{trial}: sweeps run as trial arrays."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from memtrain.service import models
from memtrain.service.core import Service
from memtrain.service.routers.deps import ERRORS, service, user
from memtrain.service.routers.jobs import CONFLICT, _conflict, submitted

# the body is a sweep file with its base job inline: TOML (as `memtrain sweep` reads it) or its JSON form,
# both parsed into the pydantic SweepSubmission (service/sweeps.py parse)
SWEEP_BODY = {"requestBody": {"required": True, "content": {
    "application/toml": {"schema": {"type": "string", "description": "a sweep file with an inline [base] table"}},
    "application/json": {"schema": models.SweepSubmission.model_json_schema()},
}}}

router = APIRouter(tags=["sweeps"], responses=ERRORS)
guarded = APIRouter(tags=["sweeps"], responses=ERRORS, dependencies=[Depends(user)])


@router.post("/sweeps", status_code=201, response_model=models.SweepSubmitted, openapi_extra=SWEEP_BODY)
async def submit_sweep(request: Request, who: str = Depends(user), svc: Service = Depends(service)):
    """Submit a sweep: its trials are planned as jobs; same-shape trials run as one trial array (one
    process, admitted by the array's plan plus one process overhead), the others as lone jobs. A bad
    sweep file, or one whose trials no device holds: 422 with one line, nothing stored."""
    return await submitted(request, svc.submit_sweep, who)


@guarded.get("/sweeps/{sweep_id}", response_model=models.SweepReport)
def sweep(sweep_id: str, svc: Service = Depends(service)):
    """The sweep's ended trials ranked by its validation metric (as `memtrain sweep` prints them), and
    every trial's job, state and run dir."""
    out = svc.sweep(sweep_id)
    if out is None:
        raise HTTPException(404, f"sweep {sweep_id}: no such sweep")
    return out


@guarded.delete("/jobs/{job_id}/trials/{trial_id}", response_model=models.TrialRun, responses=CONFLICT)
def cancel_trial(job_id: str, trial_id: str, svc: Service = Depends(service)):
    """Cancel one trial of a sweep's job: in a trial array it stops after its current step with a
    checkpoint while the others train on (all cancelled: the array is); a lone trial's job is
    cancelled. An ended job: 409."""
    try:
        out = _conflict(lambda j: svc.cancel_trial(j, trial_id), job_id)
    except KeyError as exc:
        raise HTTPException(404, exc.args[0]) from None
    if out is None:
        raise HTTPException(404, f"job {job_id}: no such job")
    return out
