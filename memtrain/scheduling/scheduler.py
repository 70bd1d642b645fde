"""The scheduler: polls running jobs, admits queued ones, retries, cancels, recovers.

It owns no state of its own: each tick reads the jobs from the store, asks the
executor about the running ones, and writes every decision back before acting on
it, so a service killed at any point finds the truth in SQLite (`recover`).

Two strategies behind one interface (`Packing`, `HandOver`), chosen once from the executor:
- Packing (local processes, in-process calls): this scheduler admits, by plan (admission.py).
- HandOver (an executor that admits jobs itself, Ray: `admits = True`): every queued job is
  handed over at once, with its plan as its resource request; the job stays `queued` (with a
  handle) until the executor says it started, and the cluster, not this scheduler, decides
  how many run together.

What a job's launch looks like (its batch on a device, the config its worker runs) is the
caller's (`jobs`): the service plans stored job files (service/planned_jobs.py), a sweep
keeps each trial's own output dir (select/runner.py).

Thread rule (CPU): a job on the CPU gets max(1, cores // max_jobs) BLAS threads
(OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS, set before NumPy and numba load). The count is fixed per
device, so however many jobs start later, at most max_jobs * threads <= cores
threads compute at once (when max_jobs <= cores, the default).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from pathlib import Path

from memtrain.errors import ExitCode, MemtrainError
from memtrain.launch.executor import Exit, Handle, Launch, Resources
from memtrain.launch.resources import THREAD_VARS
from memtrain.launch.worker import EXIT, PROGRESS, read_json
from memtrain.memory import measure
from memtrain.scheduling import admission
from memtrain.scheduling.store import JobRow, Store, now
from memtrain.units import format_duration

log = logging.getLogger("memtrain.service")
STOPPED_FOR_RUNTIME = 2  # cancel_requested: 1 a DELETE, 2 this scheduler, for training.max_runtime
PROGRESS_FIELDS = {"epoch": int, "step": int, "train_loss": float, "val_loss": float, "val_accuracy": float,
                   "val_rmse": float, "val_mae": float, "val_r2": float,  # a regression's (linear output)
                   "event": str, "rss_bytes": int, "peak_rss_bytes": int, "time": float, "pid": int}


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _typed(value, kind):
    """`value` as `kind` (an int where a float is expected is one), else None; bool is no number,
    and NaN or Inf (a diverged loss) is None: JSON answers cannot carry them."""
    if isinstance(value, bool):
        return None
    if kind is float and isinstance(value, int):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, kind) else None


def finite(value):
    """A result record as JSON can answer it: NaN and Inf (a diverged job's losses) become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class JobConflict(MemtrainError):
    """A request the job's state does not allow (cancel an ended job, requeue a running one): HTTP 409."""


class Packing:
    """This scheduler admits (local processes, in-process calls): a job starts on a device when
    its plan fits the device's budget beside the running ones (admission.py)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def admit(self, queued: list) -> None:
        self.scheduler._pack(queued)

    def watch(self) -> None:
        """Nothing to watch: a job is `running` from the moment this scheduler started it."""

    def ended_while_away(self, job: JobRow, h: Handle) -> Exit | None:
        """A local child's exit is still known to the executor (None: it runs on)."""
        return self.scheduler.executor.poll(h)


class HandOver:
    """The executor admits (Ray): every queued job goes to it with its plan as its resource
    request, and stays `queued` until the executor says it started."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def admit(self, queued: list) -> None:
        self.scheduler._hand_over(queued)

    def watch(self) -> None:
        self.scheduler._watch_handed_over()

    def ended_while_away(self, job: JobRow, h: Handle) -> Exit | None:
        """Only the worker's exit record says (None: killed, or still running)."""
        written = read_json(Path(job.run_dir) / EXIT)
        return None if written is None else Exit(written["code"], None, written.get("reason"))


class Scheduler:
    def __init__(self, store: Store, executor, devices: list, *, head_wait: float = 300.0,
                 tick: float = 0.25, metrics_ports: bool = True, on_event=None, metrics_host: str = "127.0.0.1",
                 metrics_address: str | None = None, runtime_grace: float = 60.0,
                 quota: admission.Quota | None = None, jobs):
        self.store, self.executor, self.devices = store, executor, {d.name: d for d in devices}
        self.head_wait, self.tick_seconds, self.metrics_ports = head_wait, tick, metrics_ports
        self.metrics_host, self.metrics_address = metrics_host, metrics_address
        self.runtime_grace = runtime_grace  # seconds past max_runtime before the scheduler stops a job itself
        self.on_event = on_event or (lambda *a, **k: None)  # metrics: ("admitted"|"rejected"|..., job)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.RLock()
        self._thread = None
        self._progress: dict = {}  # progress.json path -> ((mtime_ns, size, inode), parsed)
        self._recent_ports: list = []  # handed out lately, before their job has stored its target
        self.strategy = (HandOver if getattr(executor, "admits", False) else Packing)(self)
        self.jobs = jobs  # the caller's: a job's batch on a device and the config its worker runs
        self.limits = quota or admission.Quota()  # its `used` stays empty: quota() counts it afresh

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="memtrain-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.executor.close()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug must not stop scheduling silently: logged with its traceback
                log.exception("scheduler tick failed")
            self._wake.wait(self.tick_seconds)
            self._wake.clear()

    def recover(self) -> None:
        """After a restart: re-adopt each running job's process, or requeue it to resume from
        its checkpoint (not counted as an attempt: the job did nothing wrong)."""
        for job in self.store.list("queued"):
            h = self.handle(job)
            if h is not None and not (h.executor == self.executor.name and self.executor.adopt(h)):
                self.store.update(job.id, executor=None, ref=None, attempts=max(0, job.attempts - 1))
        for job in self.store.list("running"):
            h = self.handle(job)
            if h is not None and h.executor != self.executor.name:
                h = None  # started by another executor: resumed from its checkpoint by this one
            if h is not None and self.executor.adopt(h):
                log.info("job %s: re-adopted", job.id)
                continue
            ended = self._ended_while_away(job, h)
            if ended is not None and not (ended.code is None and read_json(Path(job.run_dir) / EXIT) is None):
                self._finish(job, ended)
            else:
                self._requeue(job, "the service restarted and its process was gone; resuming from its checkpoint",
                              count=False)

    def _ended_while_away(self, job: JobRow, h: Handle | None) -> Exit | None:
        """How a job's process ended while no service watched it: a local child's exit is still
        known to the executor; otherwise only the worker's exit record says (None: killed)."""
        return None if h is None else self.strategy.ended_while_away(job, h)

    # -- one tick -----------------------------------------------------------------------------------

    def tick(self) -> None:
        with self._lock:
            for job in self.store.list("running"):
                h = self.handle(job)
                if h is None:
                    continue
                ended = self.executor.poll(h)
                if ended is not None:
                    self._finish(job, ended)
                else:
                    self._enforce_max_runtime(job, h)
            self.strategy.watch()
            self._admit()

    def admit_now(self) -> None:
        """One admission pass now (a submission: its answer names the device when it starts at once)."""
        with self._lock:
            self._admit()

    def _enforce_max_runtime(self, job: JobRow, h: Handle) -> None:
        """The job stops itself after the step that passes training.max_runtime; one that does not
        (stuck loading its data, or in a step that never ends) gets SIGTERM from here once it is
        `runtime_grace` seconds past it, as a cancel does, and ends failed for its run time."""
        limit = (job.config.get("training") or {}).get("max_runtime")
        if not limit or job.cancel_requested or job.started_at is None:
            return
        if now() - job.started_at > limit + self.runtime_grace:
            log.warning("job %s: %.0f s past its max_runtime and still running; stopping it", job.id,
                        now() - job.started_at - limit)
            self.store.update(job.id, cancel_requested=STOPPED_FOR_RUNTIME)
            self.executor.cancel(h)

    def device_loads(self) -> list:
        running = self.store.list("running")
        out = []
        for d in self.devices.values():
            mine = [j for j in running if j.device == d.name]
            out.append(admission.DeviceLoad(d.name, d.kind, d.budget_bytes, sum(j.reserved_bytes for j in mine),
                                      len(mine), d.max_jobs))
        return out

    def quota(self) -> admission.Quota:
        """The users' limits with the bytes each user's jobs commit now (running, or handed to an
        executor that admits by itself)."""
        used = {}
        for job in self.store.list("running") + self.store.list("queued"):
            if job.state == "running" or job.ref:
                used[job.user] = used.get(job.user, 0) + job.reserved_bytes
        return admission.Quota(self.limits.default, self.limits.per_user, used)

    def waiting(self, job: JobRow) -> admission.Waiting:
        auto = job.batch_request == "auto"
        plan = job.min_bytes if auto else job.planned_bytes
        need = min((d.footprint(plan) for d in self.devices.values() if d.kind == job.device_kind), default=plan)
        return admission.Waiting(job.id, job.device_kind, need, job.queued_at, auto, job.priority, job.user)

    def _admit(self) -> None:
        queued = [j for j in self.store.list("queued") if not j.ref and self._can_ever_fit(j)]
        if queued:
            self.strategy.admit(queued)

    def _pack(self, queued: list) -> None:
        """This scheduler admits: the jobs whose plans fit a device's budget start there."""
        by_id = {j.id: j for j in queued}
        chosen = {}

        def reserve(w, slot, room):
            job = by_id[w.id]
            chosen[w.id] = self._batch_for(job, self.devices[slot.name], room)
            return self.devices[slot.name].footprint(chosen[w.id][1])

        starts = admission.admit([self.waiting(j) for j in queued], self.device_loads(), now(), self.head_wait, reserve,
                                 self.quota())
        for job_id, device in starts:
            self._start(by_id[job_id], self.devices[device], *chosen[job_id])

    def _hand_over(self, queued: list) -> None:
        """Every queued job goes to the executor now, asking for its plan; a job with batch "auto"
        gets the largest batch its device's whole budget (one node's memory) allows. A job over its
        user's quota stays here until that user's jobs end."""
        quota = self.quota()
        by_id = {j.id: j for j in queued}
        for w in admission.order([self.waiting(j) for j in queued]):
            job = by_id[w.id]
            device = max((d for d in self.devices.values() if d.kind == job.device_kind),
                         key=lambda d: d.budget_bytes)
            left = quota.left(w.user)
            if left is not None and w.need > left:
                continue
            room = device.budget_bytes if left is None else min(device.budget_bytes, left)
            batch, total, by_category = self._batch_for(job, device, room)
            quota.used[w.user] = quota.used.get(w.user, 0) + device.footprint(total)
            self._start(job, device, batch, total, by_category, handed_over=True)

    def _watch_handed_over(self) -> None:
        """Jobs the executor holds: `running` once it started them (admission to start is the
        executor's queue wait), or finished (e.g. cancelled while waiting)."""
        for job in self.store.list("queued"):
            h = self.handle(job)
            if h is None:
                continue
            ended = self.executor.poll(h)
            if ended is not None:
                self.store.update(job.id, state="running", started_at=now())
                self._finish(job, ended)
            elif self.executor.running(h):
                self.store.update(job.id, expect_state="queued", state="running", started_at=now(),
                                  metrics_target=self._node_target(h))
                self.on_event("started", job)

    def _node_target(self, h: Handle) -> str | None:
        """node_ip:port of a job's exporter once the executor placed it; an exporter bound to
        loopback (the default) is reachable only on its own machine, so it stays host:port."""
        if not h.metrics_target or self.metrics_host in ("127.0.0.1", "localhost", "::1"):
            return h.metrics_target
        return self.executor.metrics_target(h, int(h.metrics_target.rsplit(":", 1)[1]))

    def _can_ever_fit(self, job: JobRow) -> bool:
        """A job planned by an earlier service run with larger budgets (or other devices) would
        block the queue for ever as its head: it fails instead, saying why."""
        w = self.waiting(job)
        budgets = [d.budget_bytes for d in self.devices.values() if d.kind == w.kind]
        limit = self.limits.limit(w.user)
        if budgets and w.need <= max(budgets) and (limit is None or w.need <= limit):
            return True
        from memtrain.units import format_bytes  # noqa: PLC0415

        if budgets and w.need <= max(budgets):
            have, other = f"user {w.user}'s quota is {format_bytes(limit)}", "--user-quota or token file"
        else:
            have = f"the largest {w.kind} budget is {format_bytes(max(budgets))}" if budgets else f"no {w.kind} device"
            other = "--budget/--devices"
        self._end(job, "failed", f"never fits this service's devices: needs {format_bytes(w.need)}; {have} "
                                 f"(it was planned by a service run with other {other})", None)
        return False

    def _batch_for(self, job: JobRow, device, room: int) -> tuple:
        return self.jobs.batch_for(job, device, room)

    # -- start / finish -------------------------------------------------------------------------

    def _start(self, job: JobRow, device, batch: int, total: int, by_category: dict, handed_over: bool = False) -> None:
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        port = self._metrics_port() if self.metrics_ports else None
        cfg = self.jobs.config(job, run_dir, batch, device, port, self.metrics_host)
        threads = device.threads_per_job
        env = dict.fromkeys(THREAD_VARS, threads) | self.jobs.env(device)  # BLAS and the CPU kernels; the overhead
        if device.kind == "cuda":  # by uuid: NVML's index (cuda:N here) need not be CUDA's ordinal
            env["CUDA_VISIBLE_DEVICES"] = measure.cuda_visible_id(device.uuid) if device.uuid else device.index
        reserved = device.footprint(total)
        launch = Launch(job.id, cfg, str(run_dir), str(run_dir / self.jobs.log_name), device.name, port, self.metrics_host,
                        env=env,
                        resources=Resources(total, device.overhead_bytes, threads, device.budget_bytes))
        # written before the process exists: a service killed in between finds a running job without a
        # handle, which recover() requeues (it never starts a second process on the same checkpoints)
        if not self.store.update(job.id, expect_state="queued", state="queued" if handed_over else "running",
                                 device=device.name, batch_size=batch, planned=by_category, planned_bytes=total,
                                 reserved_bytes=reserved, threads=threads, attempts=job.attempts + 1,
                                 started_at=None if handed_over else now(), reason=None, executor=None, ref=None,
                                 metrics_target=None):
            return  # cancelled meanwhile
        try:
            h = self.executor.start(launch)
        except Exception as exc:
            self.store.update(job.id, state="failed", reason=f"could not start: {exc}", **self._ending(job))
            self.on_event("failed", job)
            return
        target = h.metrics_target
        if target and self.metrics_address:  # e.g. exporters on 0.0.0.0, scraped as memtrain:PORT
            target = f"{self.metrics_address}:{target.rsplit(':', 1)[1]}"
        self.store.update(job.id, executor=h.executor, ref=h.ref, metrics_target=target)
        if self.store.get(job.id).cancel_requested:  # a cancel came while it started, before it had a handle
            self.executor.cancel(h)
        if not handed_over:
            self.on_event("started", job.replace(device=device.name))

    def _metrics_port(self) -> int:
        """A free port no running job was given: the kernel hands a just-released port out again,
        and the job binds it only a second later, so two jobs started together could get one port."""
        taken = {j.metrics_target.rsplit(":", 1)[1] for j in self.store.list("running") if j.metrics_target}
        taken |= {str(p) for p in self._recent_ports}
        for _ in range(100):
            port = free_port(self.metrics_host)
            if str(port) not in taken:
                break
        self._recent_ports = (self._recent_ports + [port])[-64:]
        return port

    def _finish(self, job: JobRow, ended: Exit) -> None:
        written = _dict(read_json(Path(job.run_dir) / EXIT))
        result = finite(_dict(written.get("result"))) or None  # a file of another shape is no result (never a 500)
        if hasattr(self.jobs, "stored_result"):  # what the caller keeps of it (a trial array's: no histories)
            result = self.jobs.stored_result(result)
        stopped = bool(result and result.get("stopped"))
        if ended.ok and not stopped:  # it finished (perhaps before a cancel reached it)
            self._end(job, "succeeded", None, result)
        elif job.cancel_requested == STOPPED_FOR_RUNTIME or (stopped and result["stopped"] == "max_runtime"):
            limit = format_duration(job.config["training"]["max_runtime"])  # not retried: it would run past again
            how = _stopped_how(result) if stopped else "stopped by the service"
            self._end(job, "failed", f"ran past its max_runtime of {limit}: {how}", result)
        elif job.cancel_requested:
            self._end(job, "cancelled", "cancelled on request" + (" (checkpoint saved)" if stopped else ""), result)
        elif ended.code == 2:
            self._end(job, "failed", ended.reason or "bad config (exit status 2)", None)
        elif ended.signal is not None or stopped or ended.code == ExitCode.RETRY:
            why = ended.reason or "stopped by a signal it did not ask for"
            if job.attempts < job.max_attempts:
                self._requeue(job, f"{why}; retrying from its last checkpoint (attempt {job.attempts + 1} of "
                                   f"{job.max_attempts})")
            else:
                self._end(job, "failed", f"{why}; gave up after {job.attempts} attempt(s)", None)
        else:
            self._end(job, "failed", ended.reason or f"exit status {ended.code}", None)

    def _end(self, job, state, reason, result) -> None:
        reason = None if reason is None else str(reason)  # an exit record's "reason" is the worker's word
        self.store.update(job.id, state=state, reason=reason, result=result, **self._ending(job))
        self.on_event(state, job)

    def _ending(self, job) -> dict:
        """What every ending writes besides state and reason: the time, no reservation, and the
        progress record as the job ended (views show an ended job's from its row: a page of
        finished jobs reads no progress file, and the record is the one the job ended with)."""
        return {"ended_at": now(), "reserved_bytes": 0, "final_progress": self.progress(job)}

    def _requeue(self, job, reason, count: bool = True) -> None:
        fields = dict(state="queued", device=None, reserved_bytes=0, queued_at=now(), reason=reason,
                      executor=None, ref=None, metrics_target=None)
        if not count:
            fields["attempts"] = max(0, job.attempts - 1)
        self.store.update(job.id, **fields)
        self.on_event("requeued", job)

    # -- requests ------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobRow | None:
        """Queued: cancelled at once. Running: SIGTERM (it checkpoints), `cancelled` once it exits.
        Idempotent: the process gets one SIGTERM however many cancels arrive (a second one while it
        writes its stop checkpoint is ignored by the worker anyway). An ended job: JobConflict."""
        with self._lock:
            job = self.store.get(job_id)
            if job is None:
                return None
            if job.state not in ("queued", "running"):
                again = f"; `memtrain requeue {job_id}` resumes it" if job.state in ("cancelled", "failed") else ""
                raise JobConflict(f"job {job_id}: already {job.state}; nothing to cancel (its files are kept"
                                  f"{again})")
            if job.state == "running" and job.cancel_requested:
                return job  # asked already: the one SIGTERM is on its way
            if job.state == "queued":
                self.store.update(job_id, expect_state="queued", state="cancelled",
                                  reason="cancelled on request (it had not started)", **self._ending(job))
                h = self.handle(job)
                if h is not None:  # handed to an executor that had not started it yet
                    self.executor.cancel(h)
            elif job.state == "running":
                self.store.update(job_id, cancel_requested=1)
                h = self.handle(job)
                if h is not None:
                    self.executor.cancel(h)
            self.wake()
            return self.store.get(job_id)

    def requeue(self, job_id: str) -> JobRow | None:
        """A cancelled or failed job back in the queue under its own id, with its attempts counted
        afresh: it resumes from its newest good checkpoint (the worker always resumes), so it ends
        as it would have without the interruption. Anything else: JobConflict."""
        with self._lock:
            job = self.store.get(job_id)
            if job is None:
                return None
            if job.state not in ("cancelled", "failed"):
                raise JobConflict(f"job {job_id}: {job.state}; only a cancelled or failed job can be requeued")
            self.store.update(job_id, expect_state=job.state, state="queued", attempts=0, cancel_requested=0,
                              queued_at=now(), ended_at=None, result=None, final_progress=None, device=None, reserved_bytes=0,
                              executor=None, ref=None, metrics_target=None,
                              reason=f"requeued on request after it was {job.state}; resumes from its checkpoint")
            self.on_event("requeued", job)
            self.wake()
            return self.store.get(job_id)

    def progress(self, job: JobRow) -> dict:
        """The job's progress.json, each field of its expected type or None: the file is the
        worker's (or anyone's who can write the run dir), and a wrong type must not fail a view.
        Parsed again only when the file changed (a stat, not a read, for a finished job's); the
        same dict is returned while it did not (read only: views tell "unchanged" by identity)."""
        path = os.path.join(job.run_dir, PROGRESS)
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        cached = self._progress.get(path)
        if cached is not None and stamp is not None and cached[0] == stamp:
            return cached[1]
        p = _dict(read_json(path))
        out = {k: _typed(p.get(k), kind) for k, kind in PROGRESS_FIELDS.items()}
        if stamp is not None:
            if len(self._progress) >= 4096:  # bounded: a page shows 100; the oldest go first
                self._progress.pop(next(iter(self._progress)))
            self._progress[path] = (stamp, out)
        return out

    @staticmethod
    def handle(job: JobRow) -> Handle | None:
        """The executor's handle of a stored job (None before it started)."""
        if not job.ref:
            return None
        return Handle(job.id, job.executor, job.ref, job.metrics_target)


def _stopped_how(result: dict) -> str:
    """How a job that stopped itself at its max_runtime ended: a lone job at a step, an array
    (its result is {"array": [...]}) with its trials still training."""
    if isinstance(result.get("array"), list):
        n = sum(1 for r in result["array"] if isinstance(r, dict) and r.get("status") == "stopped")
        return f"{n} of its {len(result['array'])} trials stopped (checkpoint saved)"
    return f"stopped at step {result.get('steps')} (checkpoint saved)"
