"""The service without HTTP: settings, submission, views of jobs and devices, logs.

app.py puts FastAPI in front of a `Service`; tests and benchmarks may drive one directly.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from memtrain.errors import DiskFull
from memtrain.launch.worker import PROGRESS
from memtrain.scheduling import admission
from memtrain.scheduling.scheduler import Scheduler
from memtrain.scheduling.store import ACTIVE, STATES, JobRow, Store, now
from memtrain.service import devices as devs
from memtrain.service import planning, recovery, security, sweeps
from memtrain.service.housekeeping import Housekeeper
from memtrain.service.planned_jobs import PlannedJobs
from memtrain.units import format_bytes

MIN_FREE_BYTES = 16 * 1024**2  # below this a submission is refused (507): see check_room


@dataclass(frozen=True)
class Serialised:
    """A job's view as JSON bytes, with a digest of them: a page's ETag is made from its views'
    digests (computed once per view) instead of hashing the whole answer again."""

    json: bytes
    digest: bytes

    @classmethod
    def of(cls, data: bytes) -> "Serialised":
        return cls(data, hashlib.blake2b(data, digest_size=16).digest())


@dataclass
class Settings:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8470
    devices: str = "auto"
    budgets: dict = field(default_factory=dict)  # device name -> bytes
    token: object = None  # security.Tokens, or one token (str) that every client shares
    user_quota: int | None = None  # bytes each user's running jobs may commit (the token file may override)
    data_roots: tuple = ()
    max_jobs_per_device: int | None = None
    max_attempts: int = 2
    head_wait: float = 300.0  # seconds a head job may be passed by smaller ones
    cpu_overhead: int | None = None  # None: measured once and kept in the state dir
    metrics_ports: bool = True  # each job serves /metrics on a port the service picks
    job_metrics_host: str = "127.0.0.1"  # where each job's exporter listens
    job_metrics_address: str | None = None  # the host Prometheus reaches them at (default: job_metrics_host)
    tick: float = 0.25
    executor: object = None  # None: LocalExecutor
    storage: Path | None = None  # each job's checkpoints, output and log (default: STATE_DIR/jobs)
    max_runtime: float | None = security.MAX_RUNTIME  # a job's training.max_runtime when it sets none, and its cap
    request_timeout: float = security.REQUEST_TIMEOUT  # seconds to receive a whole request (slow_clients.py)
    runtime_grace: float = 60.0  # seconds past max_runtime before the scheduler stops a job that did not stop
    recover: bool = False  # rebuild the store from its backup and the job dirs first (serve --recover)
    keep_checkpoints: int = 10  # succeeded jobs whose checkpoints are kept (the newest ones)
    keep_checkpoints_hours: float = 24.0  # and for at most this long after they ended
    housekeeping_seconds: float = 60.0  # backup, retention and the state dir's size, once a round

    def __post_init__(self):
        self.state_dir = Path(self.state_dir)
        # absolute: a job may run on another node, or with another working directory
        self.storage = Path(self.storage or self.state_dir).absolute()
        if isinstance(self.token, str):
            self.token = security.Tokens.single(self.token)


class Service:
    def __init__(self, settings: Settings):
        self.settings = s = settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_state_dir(s.state_dir)
        try:
            self.recovered = recovery.recover(s.state_dir, s.storage) if s.recover else []
            recovery.check_not_lost(s.state_dir, s.storage)
            self.store = Store(s.state_dir / recovery.STORE)
        except BaseException:
            self._lock.close()
            raise
        self.housekeeper = Housekeeper(self.store, s)
        if s.executor is None:
            from memtrain.launch.local import LocalExecutor  # noqa: PLC0415

            s.executor = LocalExecutor()
        if getattr(s.executor, "admits", False):  # Ray: one device, the cluster
            self.devices = devs.cluster(s.executor, s.budgets, cpu_overhead=s.cpu_overhead)
        else:
            self.devices = devs.discover(s.devices, s.budgets, max_jobs=s.max_jobs_per_device,
                                         cpu_overhead=s.cpu_overhead)
        self.events = {"admitted": 0, "rejected": 0, "started": 0, "requeued": 0}
        self.waits = []  # queue waits (seconds) since start, for the histogram
        self._serialised: dict = {}  # job id -> (row, progress, Serialised): jobs_page(serialize=...)
        self.scheduler = Scheduler(self.store, s.executor, self.devices, head_wait=s.head_wait,
                                   tick=s.tick, metrics_ports=s.metrics_ports, on_event=self._event,
                                   metrics_host=s.job_metrics_host, metrics_address=s.job_metrics_address,
                                   runtime_grace=s.runtime_grace,
                                   quota=admission.Quota(s.user_quota, dict(s.token.quotas) if s.token else {}),
                                   jobs=PlannedJobs())

    def start(self) -> None:
        self.housekeeper.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self.housekeeper.stop()
        self.store.close()
        self._lock.close()

    def _event(self, kind: str, job: JobRow) -> None:
        self.events[kind] = self.events.get(kind, 0) + 1
        if kind == "started":
            self.waits.append(max(0.0, now() - job.queued_at))

    # -- submission ---------------------------------------------------------------------------

    def submit(self, body: bytes, content_type: str, user: str = security.DEFAULT_USER) -> dict:
        """Validate and plan; raises planning.SubmissionError (422) before anything is written,
        DiskFull (507) when the state dir or the storage has no room for the job. `user`: whose
        token sent it (the quota it counts against)."""
        try:
            self.check_room()
            job = planning.parse_body(body, content_type)  # a models.JobSubmission
            checked = planning.validate(job.job_dict(), data_roots=self.settings.data_roots,
                                        device_kinds=sorted({d.kind for d in self.devices}),
                                        max_runtime=self.settings.max_runtime)
            mine = [d for d in self.devices if d.kind == checked.device_kind]
            plans = {d.name: planning.plan(checked, d.budget_bytes) for d in mine}
            fits = [d for d in mine if d.footprint(plans[d.name].total) <= d.budget_bytes]
            if not fits:
                best = max(mine, key=lambda d: d.budget_bytes)
                raise planning.NeverFits(planning.never_fits_message(
                    checked, plans[best.name], best.overhead_bytes, {d.name: d.budget_bytes for d in mine}))
            best = max(fits, key=lambda d: d.budget_bytes)
            self._check_placeable(checked, plans[best.name], best)
            self._check_quota(checked, plans[best.name], best, user)
        except (planning.SubmissionError, DiskFull):
            self.events["rejected"] += 1
            raise
        p = plans[best.name]
        job_id = self._new_id()
        t = now()
        self._insert({
            "id": job_id, "name": checked.name, "state": "queued", "config": checked.config,
            "checked": planning.to_json(checked), "device_kind": checked.device_kind,
            "batch_request": checked.batch, "batch_size": p.batch_size, "planned": p.by_category,
            "planned_bytes": p.total, "min_bytes": p.min_total, "max_attempts": self.settings.max_attempts,
            "submitted_at": t, "queued_at": t, "run_dir": str(self.settings.storage / "jobs" / job_id),
            "priority": checked.config["priority"], "user": user,
        })
        self.events["admitted"] += 1
        self.scheduler.admit_now()  # so the answer names the device when it starts at once
        job = self.store.get(job_id)
        return {"id": job_id, "state": job.state, "planned_bytes": job.planned_bytes, "device": job.device}

    def submit_sweep(self, body: bytes, content_type: str, user: str = security.DEFAULT_USER) -> dict:
        """A sweep file (its base inline): its trials checked and planned as jobs, grouped into trial
        arrays and lone jobs, stored with the sweep (service/sweeps.py). SubmissionError (422) for a
        bad sweep file or a trial no device holds, before anything is written; DiskFull (507)."""
        try:
            self.check_room()
            out = sweeps.submit(self, body, content_type, user)
        except (planning.SubmissionError, DiskFull):
            self.events["rejected"] += 1
            raise
        self.events["admitted"] += len(out["jobs"])
        self.scheduler.admit_now()
        for j in out["jobs"]:
            row = self.store.get(j["id"])
            j.update(state=row.state, device=row.device)
        return out

    def sweep(self, sweep_id: str) -> dict | None:
        return sweeps.sweep_view(self, sweep_id)

    def cancel_trial(self, job_id: str, trial_id: str) -> dict | None:
        return sweeps.cancel_trial(self, job_id, trial_id)

    def _insert(self, row: dict) -> None:
        """The job's own record in its dir first (what --recover rebuilds from), then its row; a row
        that cannot be stored takes its record back (a refused job must not come back on --recover)."""
        try:
            try:
                recovery.write_job_file(row)
            except OSError as exc:
                raise DiskFull(f"{row['run_dir']}: cannot write the job's record ({exc.strerror or exc}); free some "
                               "space and submit again (the jobs already stored are intact)") from None
            try:
                self.store.insert(row)
            except BaseException:
                recovery.remove_job_file(row)
                raise
        except DiskFull:  # SQLite's own "database or disk is full" too
            self.events["rejected"] += 1
            raise

    def check_room(self) -> None:
        """A job needs room for its row, log, checkpoints and models: refused while the state dir or
        the storage has less than MIN_FREE_BYTES free (a job accepted then would only fail later)."""
        for where in dict.fromkeys((self.settings.state_dir, self.settings.storage)):
            try:
                free = shutil.disk_usage(where).free
            except OSError:
                continue  # not there yet: created at the first start
            if free < MIN_FREE_BYTES:
                raise DiskFull(f"{where}: {format_bytes(free)} free, a job needs at least "
                               f"{format_bytes(MIN_FREE_BYTES)} for its log, checkpoints and models; free some "
                               "space and submit again (the jobs already stored are intact)")

    def _check_placeable(self, checked, p, device) -> None:
        """With an executor that places jobs (Ray): 422 when no node could ever hold the job's
        request (its memory and CPUs), naming the largest batch that fits the biggest node."""
        ex = self.settings.executor
        if not hasattr(ex, "options"):
            return
        from memtrain.launch.executor import Launch, Resources  # noqa: PLC0415
        from memtrain.launch.resources import NeverFits, check_fits  # noqa: PLC0415

        need = p.min_total if checked.batch == "auto" else p.total
        launch = Launch(checked.name, {}, "", "", "cpu", resources=Resources(need, device.overhead_bytes,
                                                                             device.threads_per_job))
        try:
            check_fits(ex.options(launch), ex.ray.nodes(), what=checked.name)
        except NeverFits as exc:
            room = (exc.largest_bytes or 0) - device.overhead_bytes
            best = planning.largest_batch(checked, device.budget_bytes, room) if room > 0 else 0
            hint = f"the largest batch that fits is {best}" if best else "not even batch 1 fits"
            raise planning.NeverFits(f"never fits: {exc}; {hint}") from None

    def _check_quota(self, checked, p, device, user: str) -> None:
        """422 for a job its user's quota could never hold, even with none of their jobs running."""
        limit = self.scheduler.limits.limit(user)
        need = device.footprint(p.min_total if checked.batch == "auto" else p.total)
        if limit is not None and need > limit:
            raise planning.NeverFits(f"never fits user {user}'s quota: needs {format_bytes(need)} (plan and process "
                                     f"overhead), the quota is {format_bytes(limit)}")

    def _new_id(self) -> str:
        while True:
            job_id = secrets.token_hex(4)
            if self.store.get(job_id) is None:
                return job_id

    # -- views -------------------------------------------------------------------------------------

    def job_view(self, job: JobRow, slots=None, progress=None, quota=None) -> dict:
        reason = job.reason
        if job.state == "queued" and job.ref:  # handed to an executor that admits by itself
            why = (f"for {self.settings.executor.name.capitalize()} resources: {format_bytes(job.reserved_bytes)} "
                   f"of memory and {job.threads} CPU(s) free on one node")
            reason = f"waiting {why}" + (f" (earlier: {reason})" if reason else "")
        elif job.state == "queued":
            slots = self.scheduler.device_loads() if slots is None else slots
            w = self.scheduler.waiting(job)
            quota = self.scheduler.quota() if quota is None else quota
            why = admission.blocking(w, slots, quota)
            reason = f"waiting: {why}" + (f" (earlier: {reason})" if reason else "")
        prog = progress if progress is not None else self.progress(job)
        return {
            "id": job.id, "name": job.name, "state": job.state, "device": job.device,
            "planned_bytes": job.planned_bytes, "planned": job.planned, "batch_size": job.batch_size,
            "batch_request": job.batch_request, "attempts": job.attempts, "max_attempts": job.max_attempts,
            "submitted_at": iso(job.submitted_at), "started_at": iso(job.started_at),
            "ended_at": iso(job.ended_at), "progress": prog, "result": job.result, "reason": reason,
            "metrics_target": job.metrics_target if job.state == "running" else None,
            "threads": job.threads, "priority": job.priority, "user": job.user,
            "sweep": job.sweep, "trials": job.trials,
        }

    def progress(self, job: JobRow) -> dict:
        """What a view shows as the job's progress: none while queued; an ended job's record as it
        ended, kept in its row (its file is not read again: a page of finished jobs stats no file);
        else its progress file (Scheduler.progress; also an ended job's stored before rows kept one)."""
        if job.state == "queued":
            return {}
        if job.final_progress is not None and job.state not in ACTIVE:
            return job.final_progress
        return self.scheduler.progress(job)

    def jobs_page(self, state: str | None = None, limit: int = 100, before: int | None = None,
                  serialize=None) -> tuple:
        """(views, next, watched): up to `limit` jobs newest first below seq `before`, the `before` of
        the next page (None on the last), and the progress files these views read that can change
        without a store write (the running jobs'). With `serialize` (view -> bytes) each view comes
        as a `Serialised` (its bytes and their digest), kept per job while its row and progress are
        the same objects (Store.page and Scheduler.progress hand out one object per unchanged row
        and file)."""
        _check_state(state)
        rows, nxt = self.store.page(state, limit, before)
        queued = any(j.state == "queued" for j in rows)
        slots, quota = (self.scheduler.device_loads(), self.scheduler.quota()) if queued else (None, None)
        watched = [str(Path(j.run_dir) / PROGRESS) for j in rows if j.state == "running"]
        if serialize is None:
            return [self.job_view(j, slots, quota=quota) for j in rows], nxt, watched
        return [self._view_bytes(j, slots, serialize, quota) for j in rows], nxt, watched

    def _view_bytes(self, job: JobRow, slots, serialize, quota=None) -> Serialised:
        if job.state == "queued":  # its reason depends on the other jobs: made afresh
            return Serialised.of(serialize(self.job_view(job, slots, quota=quota)))
        prog = self.progress(job)
        kept = self._serialised.get(job.id)
        if kept is not None and kept[0] is job and kept[1] is prog:
            return kept[2]
        out = Serialised.of(serialize(self.job_view(job, slots, prog)))
        if len(self._serialised) >= 4096:  # bounded: the oldest go first
            self._serialised.pop(next(iter(self._serialised)))
        self._serialised[job.id] = (job, prog, out)  # holding job and prog: identities stay unique
        return out

    def job(self, job_id: str) -> dict | None:
        job = self.store.get(job_id)
        if job is None:
            return None
        view = self.job_view(job)
        if job.sweep:  # a sweep's job: each of its trials, with its state and run dir
            view["trial_runs"] = sweeps.trial_views(self, job)
        return view

    def cancel(self, job_id: str) -> dict | None:
        job = self.scheduler.cancel(job_id)
        return None if job is None else self.job_view(job)

    def requeue(self, job_id: str) -> dict | None:
        job = self.scheduler.requeue(job_id)
        return None if job is None else self.job_view(job)

    def device_views(self) -> list:
        out = []
        running = self.store.list("running")
        for d in self.devices:
            mine = [j for j in running if j.device == d.name]
            try:
                free_now = devs.free_now(d.name)
            except Exception:  # NVML gone: the field is left out, the page still renders
                free_now = None
            out.append({"device": d.name, "capacity_bytes": d.budget_bytes,
                        "committed_bytes": sum(j.reserved_bytes for j in mine),
                        "measured_bytes": self._measured(d, mine),
                        "free_now_bytes": free_now, "overhead_bytes": d.overhead_bytes,
                        "overhead_source": d.overhead_source, "budget_source": d.budget_source,
                        "max_jobs": d.max_jobs, "threads_per_job": d.threads_per_job,
                        "jobs": [j.id for j in mine]})
        return out

    def _measured(self, device, jobs) -> int:
        """CPU: resident memory of the jobs' processes (their progress files). GPU: NVML's used
        memory of the jobs' workers on that GPU."""
        progress = [self.scheduler.progress(j) for j in jobs]
        if device.kind == "cpu":
            return sum(int(p.get("rss_bytes") or 0) for p in progress)
        try:
            return devs.gpu_process_bytes(device.name, [p["pid"] for p in progress if p.get("pid")])
        except Exception:  # NVML gone: nothing measured this time
            return 0

    def running_progress_files(self) -> list:
        """The files the device views read beside the store (measured memory of running jobs)."""
        return [str(Path(j.run_dir) / PROGRESS) for j in self.store.list("running")]

    def targets(self) -> list:
        return [{"targets": [j.metrics_target], "labels": {"job_id": j.id, "name": j.name}}
                for j in self.store.list("running") if j.metrics_target]

    def log_path(self, job_id: str) -> Path | None:
        job = self.store.get(job_id)
        return None if job is None else Path(job.run_dir) / "job.log"

    def is_active(self, job_id: str) -> bool:
        job = self.store.get(job_id)
        return job is not None and job.state in ("queued", "running")


def _check_state(state: str | None) -> None:
    if state is not None and state not in STATES:
        raise planning.SubmissionError(f"state: expected one of {', '.join(STATES)}, got {state!r}")


def _lock_state_dir(state_dir: Path):
    """One service per state dir: two schedulers on one database would start jobs twice. The
    lock goes with the process, so a service killed with SIGKILL leaves none behind."""
    import fcntl  # noqa: PLC0415

    from memtrain.errors import MemtrainError  # noqa: PLC0415

    f = open(state_dir / "serve.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise MemtrainError(f"--state-dir {state_dir}: another memtrain serve uses it ({holder}); stop it or "
                            "choose another state dir") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def tail(path: Path, lines: int) -> bytes:
    """The last `lines` lines of a file (read from the end: logs can be long)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return b""
    with open(path, "rb") as f:
        f.seek(max(0, size - 256 * 1024))
        data = f.read()
    return b"".join(data.splitlines(keepends=True)[-lines:]) if lines else b""


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # UTC, whole seconds (a third of datetime's cost)
