"""The service's jobs as the scheduler launches them: stored job files, planned by
service/planning.py (an auto batch solved for the room its device has); everything a job
writes goes under its run dir."""

from __future__ import annotations

from pathlib import Path

from memtrain.scheduling.store import JobRow
from memtrain.service import planning, sweeps


class PlannedJobs:
    """The `jobs` of the service's Scheduler."""

    log_name = "job.log"  # the worker's stdout and stderr, in the run dir

    def batch_for(self, job: JobRow, device, room: int) -> tuple:
        """(batch, plan total, plan by category) the job starts with on `device` with `room` bytes free."""
        if job.batch_request != "auto":
            return job.batch_request, job.planned_bytes, job.planned
        checked = planning.restore(job)
        if job.batch_size:  # chosen by an earlier attempt: a resumed job keeps its batch (its checkpoint's)
            p = planning.plan_at(checked, device.budget_bytes, job.batch_size)
            return job.batch_size, p.total, p.by_category
        b = max(1, planning.largest_batch(checked, device.budget_bytes, room - device.overhead_bytes))
        p = planning.plan_at(checked, device.budget_bytes, b)
        return b, p.total, p.by_category

    @staticmethod
    def config(job: JobRow, run_dir: Path, batch: int, device, port: int | None, metrics_host: str) -> dict:
        """The config the worker runs: the stored one, at `batch`, writing under `run_dir` (a sweep's
        trial array: each trial's own config under "array", its run dirs as stored)."""
        if "array" in job.config:
            return sweeps.launch_config(job.config, device, port, metrics_host)
        return planning.launch_config(job.config, run_dir, batch=batch, memory_limit=device.budget_bytes,
                                      metrics_port=port, metrics_host=metrics_host,
                                      device=planning.worker_device(device.kind))

    @staticmethod
    def stored_result(result: dict | None) -> dict | None:
        """What the store keeps of a worker's result: an array's without its trials' histories."""
        return sweeps.stored_result(result)

    @staticmethod
    def env(device) -> dict:
        """What the worker is told besides its config (the process overhead it was admitted with)."""
        return planning.worker_env(device)
