"""Request and response bodies of the HTTP API (pydantic: the OpenAPI page is generated from these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobSubmission(BaseModel):
    """A job file's JSON form (the same keys as the TOML file; see docs/cli.md), and a TOML
    body parsed into it: every submission is validated by this model (strict: no "1" for 1)
    before the job's own checks (service/planning.py `submission`). The service sets
    checkpoint.dir, output.dir and metrics.port itself (a job file's own are replaced)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(None, description="letters, digits, '.', '_' and '-' (others become '-')")
    seed: int | None = None
    device: str | None = Field(None, description="auto, cpu, cuda or cuda:N")
    model: dict[str, Any] = Field(..., description='{"layers": [64, 16, 10], ...}')
    optimizer: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    training: dict[str, Any] | None = Field(None, description='batch_size: an integer or "auto"')
    data: dict[str, Any] | None = Field(None, description="dataset: digits, synthetic:..., or a file under --data-root")
    checkpoint: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = Field(None, description="linger, ...: port and host are the service's")
    output: dict[str, Any] | None = Field(None, description="the service places a job's output itself")
    priority: int = Field(0, description="higher starts first; submission order within a priority")

    def job_dict(self) -> dict:
        """The job file's keys as sent (what was not sent stays unset: the job's defaults apply)."""
        return self.model_dump(exclude_unset=True)


class SweepSubmission(BaseModel):
    """A sweep file's JSON form (`memtrain sweep`'s SWEEP.toml; docs/choosing-an-optimizer.md), with its
    base job inline as a [base] table: the service reads no client files (`memtrain submit SWEEP.toml`
    inlines a base given as a path). Every trial is checked and planned as a submitted job."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(None, description="the sweep's name (its trials are NAME-<trial id>)")
    base: dict[str, Any] = Field(..., description="the base job: a job file's JSON form, as POST /jobs takes")
    search: dict[str, Any] | None = Field(None, description='method ("grid" or "random"), trials, seed, metric')
    space: dict[str, Any] = Field(..., description='hyper-parameter -> a list, or {log_uniform = [lo, hi]}, ...')
    priority: int = Field(0, description="every job of the sweep starts at this priority")

    def sweep_dict(self) -> dict:
        """The sweep file's keys as sent, less the service's own (priority)."""
        return self.model_dump(exclude_unset=True, exclude={"priority"})


class SubmittedJob(BaseModel):
    id: str
    trials: int = Field(..., description="the sweep's trials it runs: K for a trial array, 1 for a lone trial")
    state: str
    planned_bytes: int
    device: str | None


class SweepSubmitted(BaseModel):
    id: str = Field(..., description="the sweep's id: GET /sweeps/{id}")
    name: str
    trials: int = Field(..., description="trials expanded from the space")
    jobs: list[SubmittedJob] = Field(..., description="trial arrays (same-shape trials as one job) and lone trials")
    skipped: list[dict[str, Any]] = Field(..., description="trials that never fit a device, with why")


class TrialRun(BaseModel):
    trial: str = Field(..., description="the trial's id (a hash of its parameters)")
    index: int
    params: dict[str, Any]
    job: str = Field(..., description="the job (trial array or lone trial) that runs it")
    state: str = Field(..., description="queued, running, stopping, succeeded, failed or cancelled")
    run_dir: str = Field(..., description="its run dir: run.json, history.csv, model-final.npz, as a lone job's")
    reason: str | None = None


class SweepReport(BaseModel):
    id: str
    sweep: str
    method: str
    metric: str
    params: list[str]
    trials: int
    state: str = Field(..., description="running while any of its jobs is queued or running, else ended")
    rows: list[dict[str, Any]] = Field(..., description="ended trials ranked by the validation metric, best first "
                                                        "(as `memtrain sweep` ranks them)")
    best: str | None
    skipped: list[dict[str, Any]]
    runs: list[TrialRun] = Field(..., description="every trial: its job, state and run dir")
    jobs: list[str]
    note: str


class Submitted(BaseModel):
    id: str
    state: str
    planned_bytes: int
    device: str | None


class JobProgress(BaseModel):
    epoch: int | None = None
    step: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_rmse: float | None = Field(None, description="regression (a linear output): validation RMSE")
    val_mae: float | None = None
    val_r2: float | None = None
    event: str | None = Field(None, description="the job's latest log event")
    rss_bytes: int | None = Field(None, description="resident memory of the job's processes now")
    peak_rss_bytes: int | None = None


class Job(BaseModel):
    id: str
    name: str
    state: str = Field(..., description="queued, running, succeeded, failed or cancelled")
    device: str | None
    planned_bytes: int = Field(..., description="the plan's total at batch_size (at batch 1 for a queued auto job)")
    planned: dict[str, int] = Field(..., description="the plan's bytes by category")
    batch_size: int | None = Field(..., description="null for an auto batch not yet solved")
    batch_request: int | str
    attempts: int
    max_attempts: int
    submitted_at: str
    started_at: str | None
    ended_at: str | None
    progress: JobProgress
    result: dict[str, Any] | None
    reason: str | None = Field(..., description="why it waits, failed or was cancelled")
    metrics_target: str | None = None
    threads: int | None = None
    priority: int = Field(0, description="higher starts first; submission order within a priority")
    user: str = Field("default", description="whose token submitted it: the quota it counts against")
    sweep: str | None = Field(None, description="the sweep whose trials it runs (POST /sweeps), else null")
    trials: int | None = Field(None, description="how many of the sweep's trials it runs (K for a trial array)")
    trial_runs: list[TrialRun] | None = Field(None, description="GET /jobs/{id} of a sweep's job: each trial's "
                                                                "state and run dir")


class Device(BaseModel):
    device: str
    capacity_bytes: int = Field(..., description="the budget plans may commit on it")
    committed_bytes: int = Field(..., description="plans of its running jobs plus one process overhead each")
    measured_bytes: int = Field(..., description="resident memory of its running jobs now (CPU)")
    free_now_bytes: int | None = Field(None, description="MemAvailable or NVML free memory now")
    overhead_bytes: int
    overhead_source: str
    budget_source: str
    max_jobs: int
    threads_per_job: int
    jobs: list[str]


class Target(BaseModel):
    targets: list[str]
    labels: dict[str, str]


class Health(BaseModel):
    status: str
    version: str


class Error(BaseModel):
    detail: str
