"""The executor interface: start, poll, cancel and re-adopt a job's process.

Everything an executor needs is in `Launch` (built by the caller from the job's
plan), and everything the caller must persist to find the process again after its
own restart is in `Handle` (plain strings and numbers, so it fits a SQLite row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Resources:
    """What the job's plan says it needs, so an executor can place it.

    planned_bytes: the plan's total on `device` (parameters ... data);
    overhead_bytes: the measured per-process overhead on that device kind (CUDA context,
    interpreter); num_cpus: BLAS threads the job may use (the caller's thread rule);
    device_capacity_bytes: the capacity of the device the bytes are meant for (a Ray
    executor turns planned + overhead into a fraction of a GPU with it)."""

    planned_bytes: int
    overhead_bytes: int
    num_cpus: int = 1
    device_capacity_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return self.planned_bytes + self.overhead_bytes


@dataclass(frozen=True)
class Launch:
    """One attempt of one job. `config` is the job's JSON form (JobConfig.to_dict()),
    with its checkpoint/output dirs already under `run_dir`; `env` holds the thread
    limits and CUDA_VISIBLE_DEVICES the caller chose."""

    job_id: str
    config: dict
    run_dir: str
    log_path: str
    device: str = "cpu"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    env: dict = field(default_factory=dict)
    resources: Resources = field(default_factory=lambda: Resources(0, 0))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Handle:
    """How to find a started job again: `ref` is executor-specific (local: the pid and
    the process start time, so a recycled pid is not mistaken for the job; Ray: the
    actor's name). `metrics_target` is host:port for Prometheus, None without metrics."""

    job_id: str
    executor: str
    ref: str
    metrics_target: str | None = None


@dataclass(frozen=True)
class Exit:
    """How a job's process ended. `signal` is set when it was killed by a signal it did
    not ask for (the caller may retry from the checkpoint); `reason` is the last error
    line of its log, or None after a clean exit."""

    code: int | None
    signal: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0


class Executor(Protocol):
    name: str

    def start(self, launch: Launch) -> Handle:
        """Start the job's worker; returns at once."""

    def poll(self, handle: Handle) -> Exit | None:
        """None while the job runs; its Exit once it has ended."""

    def cancel(self, handle: Handle) -> None:
        """Ask the job to stop (SIGTERM: it checkpoints, then exits)."""

    def adopt(self, handle: Handle) -> bool:
        """After the caller restarted: True when `handle` still names a live job process
        of ours (then poll/cancel work on it), False when it must be resumed anew."""

    def close(self) -> None:
        """Release the executor's own resources (not the jobs')."""
