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
