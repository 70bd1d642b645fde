"""Sweep trials and compare runs go through the service's scheduler: one admission rule (plans
within the budget, at most `max_jobs` at once, priority then FIFO with bounded backfill), one
retry rule (a job killed by a signal it did not ask for resumes from its checkpoint, up to
`max_attempts`), one thread rule (each worker process gets cores // max_jobs BLAS threads).

The scheduler keeps its jobs in a store (SQLite) in a temporary directory: a sweep resumes
from its results.jsonl, not from the store. It has one device, the sweep's budget; each
task keeps its own output dir (its run dir: launch.json, exit.json, progress.json and the
worker's log go there too, as `log.jsonl`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.launch.worker import EXIT, read_json
from memtrain.scheduling.scheduler import Scheduler
from memtrain.scheduling.store import ACTIVE, JobRow, Store, now
from memtrain.service import planning
from memtrain.service.devices import Device

ENDED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Task:
    """One job to run: `id` unique among the tasks (a trial id, an optimizer name); `cfg` a
    JobConfig whose output and checkpoint dirs are its own; `planned_bytes` what it reserves
    (its plan, or its whole memory_limit for batch "auto", which the job then solves)."""

    id: str
    cfg: object
    planned_bytes: int = 0
    planned: dict | None = None


class TaskJobs:
    """The scheduler's view of a task: it runs at the batch and in the dirs its config names."""

    log_name = "log.jsonl"

    @staticmethod
    def batch_for(job: JobRow, device, room: int) -> tuple:
        batch = job.batch_request
        return (batch if isinstance(batch, int) else None), job.planned_bytes, job.planned

    @staticmethod
    def config(job: JobRow, run_dir: Path, batch, device, port, metrics_host: str) -> dict:
        return job.config

    @staticmethod
    def env(device) -> dict:
        """The process overhead the task was admitted with, as a service job is told it."""
        return planning.worker_env(device)


def device(kind: str, budget: int, source: str, max_jobs: int | None, threads: int = 1,
           overhead: tuple = (0, "")) -> Device:
    """The scheduler's one device for a sweep or compare: `budget` bytes, `max_jobs` at once (None:
    no count limit, an executor that places by itself), each worker process with `threads` BLAS
    threads (the thread rule: cores // max_jobs)."""
    jobs = max_jobs or 1_000_000
    return Device(name="cuda:0" if kind == "cuda" else "cpu", kind=kind, free_at_start_bytes=budget, budget_bytes=budget,
                  budget_source=source, max_jobs=jobs, overhead_bytes=overhead[0],
                  overhead_source=overhead[1] or "none", threads_per_job=threads)


def absolute(config: dict) -> dict:
    """Paths as the worker sees them: its cwd is its run dir, on whichever node runs it."""
    config = json.loads(json.dumps(config))
    config["output"]["dir"] = str(Path(config["output"]["dir"]).resolve())
    config["checkpoint"]["dir"] = str(Path(config["checkpoint"]["dir"]).resolve())
    data = config.get("data", {})
    for key in ("dataset", "validation_dataset"):
        if isinstance(data.get(key), str) and Path(data[key]).exists():
            data[key] = str(Path(data[key]).resolve())
    return config


def _row(task: Task, dev, max_attempts: int) -> dict:
    config = absolute(task.cfg.to_dict())
    batch = config["training"]["batch_size"]
    t = now()
    return {"id": task.id, "name": task.id, "state": "queued", "config": config, "checked": {},
            "device_kind": dev.kind, "batch_request": batch, "batch_size": batch if isinstance(batch, int) else None,
            "planned": dict(task.planned or {}), "planned_bytes": int(task.planned_bytes),
            "min_bytes": int(task.planned_bytes), "max_attempts": max_attempts, "submitted_at": t, "queued_at": t,
            "run_dir": config["output"]["dir"]}


def run_tasks(tasks, dev, executor, *, max_attempts: int = 2, log=None, on_start=None, poll_s: float = 0.1,
              head_wait: float = 300.0, grace_s: float = 30.0):
    """Yields (task, its ended store row, the in-process executor's outcome or None) as tasks end,
    in the order they end. On an error or Ctrl-C the running ones are cancelled (SIGTERM: they
    checkpoint) before this returns."""
    tasks = list(tasks)
    by_id = {t.id: t for t in tasks}
    with tempfile.TemporaryDirectory(prefix="memtrain-scheduler-") as tmp:
        store = Store(Path(tmp) / "jobs.sqlite")
        events = _Events(store, by_id, log, on_start)
        sched = Scheduler(store, executor, [dev], head_wait=head_wait, tick=poll_s, metrics_ports=False,
                          on_event=events, jobs=TaskJobs())
        try:
            for t in tasks:
                store.insert(_row(t, dev, max_attempts))
            done = set()
            while len(done) < len(tasks):
                sched.tick()
                ended = [j for j in store.list() if j.state in ENDED and j.id not in done]
                for job in ended:
                    done.add(job.id)
                    yield by_id[job.id], job, _outcome(executor, job)
                if not ended:
                    time.sleep(poll_s)
        finally:
            _stop(sched, store, grace_s)
            store.close()


class _Events:
    """The scheduler's events as the caller's log lines: a start, a retry."""

    def __init__(self, store, by_id, log, on_start):
        self.store, self.by_id, self.log, self.on_start = store, by_id, log, on_start

    def __call__(self, kind: str, job: JobRow) -> None:
        if kind == "started" and self.on_start is not None:
            self.on_start(self.by_id[job.id])
        elif kind == "requeued" and self.log is not None:
            self.log(f"retry     {job.id}: {self.store.get(job.id).reason}")


def _outcome(executor, job: JobRow):
    outcome = getattr(executor, "outcome", None)
    if outcome is None or not job.ref:
        return None
    return outcome(Scheduler.handle(job))


def _stop(sched, store, grace_s: float) -> None:
    """Cancel what still runs and wait (up to `grace_s`) for it to end with its checkpoint."""
    active = [j.id for j in store.list() if j.state in ACTIVE]
    for job_id in active:
        sched.cancel(job_id)
    active = [i for i in active if store.get(i).ref]  # one without a handle has no process to wait for
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(store.get(i).state in ACTIVE for i in active):
        sched.tick()
        time.sleep(0.1)
    sched.executor.close()


def written_outcome(job: JobRow) -> dict:
    """What a worker process's exit record says of a task: the summary with its history, the
    training rows, and why it failed (the scheduler's reason)."""
    written = read_json(Path(job.run_dir) / EXIT) or {}
    result = written.get("result") if isinstance(written.get("result"), dict) else None
    rows = written.get("train_rows")
    if job.state == "succeeded" and result is not None and not result.get("stopped"):
        return {"status": "finished", "error": None, "summary": {**result, "history": written.get("history") or []},
                "train_rows": rows}
    return {"status": "failed", "error": job.reason or job.state, "summary": {}, "train_rows": rows}


def device_kind(executor, requested: str) -> str:
    """The trials' device kind on the cluster: "cuda" for cuda devices, "cpu" for cpu,
    and for "auto" whether the cluster has GPUs (this machine may have none)."""
    if requested.startswith("cuda"):
        return "cuda"
    if requested == "auto" and hasattr(executor, "ray"):
        return "cuda" if executor.ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    return "cpu"


def cluster_budget(executor, requested: str, limit: int | None) -> tuple:
    """(device kind, budget, where the budget came from) for a sweep on a cluster: a
    trial must fit one node. On the CPU the budget is the largest node's Ray memory
    (or --memory-limit); on GPUs --memory-limit (one GPU's capacity) is required,
    since Ray does not report GPU memory."""
    kind = device_kind(executor, requested)
    if limit is not None:
        return kind, limit, "--memory-limit"
    if kind == "cuda":
        raise MemtrainError("--memory-limit: needed with --executor ray on GPUs (one GPU's capacity; Ray does not "
                            "report GPU memory)")
    return kind, executor.largest_memory(), f"the largest {executor.name} node's memory resource"
