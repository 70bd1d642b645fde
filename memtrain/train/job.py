"""A training job: JobConfig -> data -> batch -> plan -> trainer -> loop with
checkpoints, signals, progress and metrics -> models and a summary.

`Job(cfg).run()` is what `memtrain train`, the launch worker, compare and sweep
call. Each phase is a method (open_device, load_data, choose_batch,
serve_metrics, build_trainer, resume, train, finish) that run() calls in that
order; `state` (a JobState) is what the job knows about itself, and `stop()`
(from a signal handler, a service or another thread) ends it after the current
step with a checkpoint.

`batch_size = "auto"` needs a batch solver: memtrain.profiler.autobatch.auto_batch
lives above the trainer (it probes real steps), so callers pass it in.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from memtrain.backend import get_backend, set_tf32
from memtrain.errors import CheckpointError, ConfigError, DeviceError, FinishFailed, JobFailed
from memtrain.kernels.cpu import threads_from_env
from memtrain.memory.batch import check_batch_rows, largest_batch
from memtrain.memory.budget import check_address_space_limit, check_fits, default_margin, device_budget
from memtrain.memory.measure import active_pool, gpu_uuid, pool_peak_hook
from memtrain.memory.peak import PeakMeter
from memtrain.nn.mlp import MLP
from memtrain.nn.scores import ALL as SCORES
from memtrain.train import checkpoint as ckpt
from memtrain.train.history import RunHistory, config_hash, trainer_history
from memtrain.train.joblog import JobLog, ProgressBar, epoch_line, plan_line, summary_text
from memtrain.train.jobplan import (
    batch_cap,
    batch_multiple,
    data_bytes,
    is_resident,
    job_budget,
    job_setting,
    load_job_data,
    resident_rows_of,
    rows_of,
    test_bytes,
)
from memtrain.train.model_io import save_model
from memtrain.train.state import JobState
from memtrain.train.trainer import STOP, Trainer, cpu_kernels
from memtrain.units import format_bytes

__all__ = ["Job", "JobFailed", "data_bytes", "load_job_data", "resident_rows_of", "run", "test_bytes"]


def run(cfg, *, log_format: str = "text", progress: bool = True, stream=None, install_signals: bool = True,
        batch_solver=None) -> dict:
    """Run the job described by `cfg` (a JobConfig); returns the summary. Job(cfg, ...).run()."""
    return Job(cfg, log_format=log_format, progress=progress, stream=stream, install_signals=install_signals,
               batch_solver=batch_solver).run()


class Job:
    """One training job. Construct it from a JobConfig (bad settings fail here, before
    any work), then run(); read `state` while it runs and `summary` after it."""

    def __init__(self, cfg, *, log_format="text", progress=True, stream=None, install_signals=True,
                 batch_solver=None, run_info=None, on_event=None):
        self.cfg = cfg
        self.run_info = dict(run_info or {})  # RunInfo fields a caller adds to run.json (the service: name, job_id)
        self.log = JobLog(log_format, stream or sys.stdout, on_event)  # on_event(event, fields): every log event
        # the bar redraws one line: on a terminal only (a log file or a pipe gets the epoch lines)
        self.show_progress = progress and log_format == "text" and _isatty(self.log.stream)
        self.install_signals = install_signals
        self.batch_solver = batch_solver  # (setting, backend, **kw) -> AutoBatch, for batch_size = "auto"
        self.state = JobState(job=cfg.name)
        self.spec = cfg.model_spec()
        self.base_lr = cfg.optimizer.make().lr  # bad names and hyper-parameters fail before any work
        cfg.schedule.make(self.base_lr, 1)  # so does a bad schedule
        self.out_dir, self.ckpt_dir = cfg.output_dir, cfg.checkpoint_dir
        self.backend = self.data = self.setting = self.trainer = self.plan = self.exporter = None
        self.batch_size = self.micro_batch_size = None
        self.budget = None  # a Budget when training.memory_limit is set (choose_batch)
        self.resident = True
        self.peak = PeakMeter(cfg.training.measure)
        self.history = RunHistory(self.out_dir, warn=self._warn)  # run.json, history.jsonl/.csv in the run directory
        self.cadence = ckpt.Cadence(cfg.checkpoint.every_steps, cfg.checkpoint.every_minutes * 60,
                                    min_interval=cfg.checkpoint.min_interval)
        self._recovered = self._resumed_record = None  # the newest good checkpoint's record at start-up (ckpt.recover)
        self._history_open = False  # start() was called: every ending must finish() it
        self._epoch_samples = 0
        self._events_logged = 0  # trainer.events already in the log
        self._rate = ProgressBar(False, 0, None)  # its smoothed samples/s, for the epoch lines and the history
        self.summary = None
        self.stop_reason = None  # set by stop(): a signal name or "stop"
        self.failure = None
        self._previous_handlers = {}  # what train() replaced with stop(), put back when run() ends
        self._identity = None
        self._t_start = self._step_t = 0.0

    # -- control -------------------------------------------------------------------------

    def stop(self, reason: str = "stop") -> None:
        """End the job after the current step, with a checkpoint (safe from a signal handler)."""
        self.stop_reason = self.stop_reason or reason

    def run(self) -> dict:
        """Every phase in order; the metrics server and tracing stop however the job ends. A full
        disk, wherever it strikes, is one line (JobFailed, exit 1): every write is atomic, so the
        files already there (checkpoints, history, models) are as they were."""
        self._t_start = time.perf_counter()
        _freeze_heap_at_exit()
        try:
            return self._phases()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise JobFailed(self._write_failed(exc)) from None

    def _finish_or_retry(self) -> dict:
        """finish(); out of memory there is FinishFailed: the epoch-end checkpoint holds the trained
        state, so a new attempt (a service retries exit status 3) resumes it and only finishes."""
        tr = self.trainer
        if tr.stopped_early or (tr.epoch >= self.cfg.training.epochs and tr.patience is not None):
            tr.restore_best()  # as fit() does at its end: a resumed attempt that only finishes did not run fit()
        try:
            return self.finish()
        except MemoryError as exc:
            good = ckpt.list_checkpoints(self.ckpt_dir)
            raise FinishFailed(f"finish: out of memory in the final evaluation or model write ({exc or 'MemoryError'}); "
                               f"training is done and its last checkpoint {good[0] if good else '(none)'} is kept: "
                               "run again (the same command) to resume it and finish") from None

    def _write_failed(self, exc: OSError) -> str:
        good = ckpt.list_checkpoints(self.ckpt_dir) if self.ckpt_dir.is_dir() else []
        last = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was written yet"
        where = exc.filename or self.out_dir
        full = "disk full: " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return (f"{full}could not write {where} ({exc.strerror or exc}); {last}; nothing was overwritten: "
                "free some space, then resume with the same command")

    def _phases(self) -> dict:
        with contextlib.ExitStack() as resources:
            # the signal handlers set by train() stay until the job has ended: a second SIGTERM while the
            # stop checkpoint or the models are written must not kill the process half-way through a file
            resources.callback(self._restore_signals)
            self.open_device()
            self.load_data()
            self.choose_batch()
            if self.cfg.metrics.port is not None:
                self.serve_metrics()
                resources.callback(self.exporter.stop)
            resources.callback(self.peak.stop)
            self.build_trainer()
            resumed = self.resume()
            done = self._already_finished() if resumed else None
            if done is not None:
                return done
            self.start_history(resumed)
            try:
                stopped = self.train()
                result = stopped if stopped is not None else self._finish_or_retry()
            except BaseException as exc:
                self._end_history("failed", message=str(exc) or type(exc).__name__)
                raise
            if self.exporter is not None and self.cfg.metrics.linger:
                self._linger(self.cfg.metrics.linger)
            return result

    # -- phases ----------------------------------------------------------------------------

    def open_device(self) -> None:
        """Checks the output directories (created later, by build_trainer) and opens the backend."""
        check_address_space_limit()  # before SciPy/numba load: under a low RLIMIT_AS their import spins
        ckpt.check_creatable(self.ckpt_dir)
        ckpt.check_creatable(self.out_dir)
        # stale temporaries removed, unusable checkpoints set aside before anything reads them
        self._recovered = ckpt.recover(self.ckpt_dir, warn=self._warn) if self.cfg.checkpoint.resume else None
        backend = self.backend = get_backend(self.cfg.device, verbose=self.log.fmt == "text")
        s, spec = self.state, self.spec
        s.device, s.dtype = backend.name, spec.dtype.name
        s.model = f"{'-'.join(map(str, spec.sizes))} {spec.activation.describe()} {spec.output.name}"
        s.optimizer = self.cfg.optimizer.name
        s.gpu_index = backend.index if backend.is_cuda else None
        s.gpu_pci_bus_id = backend.xp.cuda.Device(backend.index).pci_bus_id if backend.is_cuda else ""
        s.gpu_uuid = gpu_uuid(backend.index) if backend.is_cuda else ""
        set_tf32(backend, self.cfg.training.tf32)  # raises for tf32 on the CPU; resets it otherwise
        if self.cfg.training.cuda_graph and not backend.is_cuda:
            raise DeviceError(f"training.cuda_graph: CUDA graphs need a CUDA device (the device is {backend.name})")
        if self.cfg.fused and not backend.is_cuda:
            threads_from_env()  # a bad MEMTRAIN_CPU_THREADS is refused before anything is created

    def load_data(self) -> None:
        ds = self.data = load_job_data(self.cfg)
        self.log("data", f"data      {ds.describe()}", dataset=ds.name, train=self.train_rows,
                 validation=_rows(ds.X_val), test=_rows(ds.X_test))

    @property
    def train_rows(self) -> int | None:
        """Rows of the training split (None before load_data)."""
        return None if self.data is None else len(self.data.X_train)

    def choose_batch(self) -> None:
        """A checkpoint's batch size, the given one, or solved on the plan and probed."""
        t = self.cfg.training
        ds, backend = self.data, self.backend
        rows = rows_of(ds)
        # on a GPU without a limit the data set is resident when it takes its share of the free memory
        share_of = t.memory_limit if (t.memory_limit is not None or not backend.is_cuda) else device_budget(backend)[0]
        self.resident = is_resident(backend.kind, rows.nbytes, share_of, self.cfg.data.resident_share)
        self.setting = job_setting(self.cfg, backend.kind, rows if self.resident else None)
        # a memory_limit is the job's whole memory: the process overhead (CPU) or the CUDA context is taken from it
        self.budget = None if t.memory_limit is None else job_budget(
            backend.kind, t.memory_limit, "training.memory_limit", backend=backend if backend.is_cuda else None)
        if self.budget is not None:
            self.budget.check("training.memory_limit")
        # on the CPU the data set (its test split too) is in memory already when the free memory is read
        loaded = rows.nbytes + test_bytes(ds) if (self.resident and not backend.is_cuda) else 0
        self.state.memory_budget = _budget(backend, t.memory_limit, loaded)
        batch, note = t.batch_size, None
        if batch == "auto":
            batch, note = self._auto_batch(loaded)
        micro = t.micro_batch_size
        if micro == "auto":
            micro = self._auto_micro(batch)
        if micro is not None and micro > batch:
            raise ConfigError(f"training.micro_batch_size: {micro} is larger than the batch size {batch}")
        if t.batch_size != "auto":
            check_batch_rows(batch, self.train_rows)
        if micro is None and t.batch_size != "auto":  # a given batch that cannot fit: one clear error, first
            b = self.budget
            check_fits(lambda n: self.setting.plan(n).total, batch, backend, loaded,
                       limit=None if b is None else b.room, limit_source=_limit_text(b))
        self.batch_size, self.micro_batch_size = batch, micro
        if note:
            self.log("batch", note, batch_size=batch)

    def serve_metrics(self) -> None:
        """The exporter in its own process (memtrain/exporter.py): scrapes cost the steps nothing."""
        from memtrain.exporter import Exporter  # noqa: PLC0415 - prometheus_client only when metrics are asked for

        host, port = self.cfg.metrics.host, self.cfg.metrics.port
        try:
            self.exporter = Exporter(self.state, port, host)
        except OSError as exc:
            raise ConfigError(f"metrics.port: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        url = f"http://{host}:{self.exporter.port}/metrics"
        self.log("metrics", f"metrics   {url}", url=url)

    def build_trainer(self) -> None:
        """The model and trainer with every buffer of the plan; the data set attached."""
        ckpt.check_writable(self.ckpt_dir)  # device, data and batch are good: now the run's folders
        ckpt.check_writable(self.out_dir)
        if self.cfg.named_by_hash:
            self.log("run", f"run       {self.out_dir} (no name given: named by its config; --name N for "
                     "runs/N)", output_dir=str(self.out_dir))
        cfg, ds = self.cfg, self.data
        steps_per_epoch = self.steps_per_epoch = -(-len(ds.X_train) // self.batch_size)
        self._bar = ProgressBar(self.show_progress, steps_per_epoch, self.log.stream)
        if not self.backend.is_cuda:
            # imports a first step would make (scipy.special, numba and its compiled kernels) are not the plan's memory
            _warm_up(self.spec, cfg.optimizer.make() if cfg.fused else None)
            self.peak.start()
        schedule = cfg.schedule.make(self.base_lr, cfg.training.epochs * steps_per_epoch)
        model = MLP.from_spec(self.spec, seed=cfg.seed, device=self.backend)
        tr = self.trainer = Trainer(model, cfg.optimizer.make(), self.batch_size,
                                    micro_batch_size=self.micro_batch_size, schedule=schedule,
                                    clip_norm=cfg.training.clip_norm, patience=cfg.training.patience, seed=cfg.seed,
                                    cuda_graph=cfg.training.cuda_graph, fused=cfg.fused)
        for note in tr.notes:
            self.log("note", f"note      {note}", note=note)
        validation = (ds.X_val, ds.y_val) if ds.X_val is not None else None
        before = set(tr.arrays)
        test = (ds.X_test, ds.y_test) if ds.X_test is not None else None
        tr.attach_data(ds.X_train, ds.y_train, validation, resident=self.resident, test=test)
        given = (ds.X_train, ds.y_train, ds.X_val, ds.y_val, ds.X_test, ds.y_test)
        adopted = [a for k, a in tr.arrays.items() if k not in before and k != "order" and isinstance(a, np.ndarray)
                   and any(a is d for d in given)]
        self.peak.untraced = sum(a.nbytes for a in adopted)  # allocated before tracing began
        plan = self.plan = tr.plan
        self.state.planned_bytes = plan.by_category()
        self.state.batch_size, self.state.micro_batch_size = tr.batch_size, tr.micro_batch_size
        self.log("plan", plan_line(plan, self.resident), planned_bytes=plan.by_category(), total=plan.total,
                 resident=self.resident)

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed into this job."""
        if self._identity is None:
            self._identity = {**self.trainer.identity(), "dataset": self.data.name, "seed": self.cfg.seed}
        return self._identity

    def resume(self) -> bool:
        """Loads the newest good checkpoint (when checkpoint.resume); True if one was loaded."""
        if not self.cfg.checkpoint.resume:
            if ckpt.list_checkpoints(self.ckpt_dir):
                self._start_over()
            return False
        try:
            found = ckpt.load_latest(self.ckpt_dir, self.identity(), warn=self._warn)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; give this job its own --name (or --output-dir), or start over in "
                                  f"{self.ckpt_dir} with --no-resume (it moves the earlier run aside)") from None
        if not found:
            return False
        arrays, record = found
        tr = self.trainer
        tr.load_state(arrays, record["state"])
        self._check_kernels(record["state"].get("kernels"))
        self._resumed_record = record
        self.cadence.written(tr.steps, tr.epoch)  # a stop before the next step writes nothing new
        self.state.steps, self.state.epoch = tr.steps, tr.epoch
        self.log("resume", f"resumed   from {self.ckpt_dir / record['npz']}: step {tr.steps}, epoch "
                 f"{tr.epoch + 1}, batch {tr.position}", step=tr.steps, epoch=tr.epoch, position=tr.position)
        return True

    def _check_kernels(self, was: str | None) -> None:
        """A checkpoint written by another step path (numba, numpy, cuda: training.fused = "auto"
        decides by size, and older versions ran numba by default) resumes, with a warning that says
        how to resume exactly. None: a checkpoint of a version that did not record it."""
        now = self.trainer.kernels.name
        if was is None or was == now:
            return
        fix = {"numba": "; set training.fused = true to resume exactly",
               "numpy": "; set training.fused = false to resume exactly"}.get(was, "") if now != "cuda" else ""
        self._warn(f"checkpoint: written by the {was} step, resumed on the {now} step: the model will not be "
                   f"bit-identical to an uninterrupted run{fix}")

    def _start_over(self) -> None:
        """--no-resume over an earlier run: its run directory (or, when that is not a run of its
        own, its checkpoint directory) is renamed to NAME.earlier-<UTC time>; nothing is deleted."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = ckpt.set_aside_run(self.out_dir, self.ckpt_dir, f".earlier-{stamp}")
        if not moved:
            raise ConfigError(f"checkpoint.dir: {self.ckpt_dir} already holds checkpoints of an earlier run and is "
                              "the working directory or above it; resume it (--resume) or choose another "
                              "--checkpoint-dir (nothing was overwritten)")
        ckpt.check_writable(self.ckpt_dir)
        ckpt.check_writable(self.out_dir)
        where = ", ".join(str(p) for p in moved)
        self.log("aside", f"aside     the earlier run moved to {where} (--no-resume: starting over)",
                 moved=[str(p) for p in moved])

    def start_history(self, resumed: bool) -> None:
        """run.json says running; on resume the history is cut back to the checkpoint's epoch
        (epochs trained after it were lost with the crash and are trained again)."""
        tr, s, cfg = self.trainer, self.state, self.cfg
        info = {"device": s.device, "dataset": self.data.name, "optimizer": s.optimizer,
                "model": {"sizes": list(self.spec.sizes), "activation": self.spec.activation.describe(),
                          "dtype": s.dtype},
                "batch_size": tr.batch_size, "micro_batch_size": tr.micro_batch_size,
                "epochs_planned": cfg.training.epochs, "steps": tr.steps, "planned_bytes": self.plan.total,
                "planned_by_category": self.plan.by_category(), "config_hash": config_hash(cfg.to_dict()),
                **self.run_info}
        if resumed:
            old = self._resumed_record["state"].get("history")  # a checkpoint of an older memtrain holds it
            kept = self.history.start(info, resume_from=tr.epoch, fallback=old)
            tr.history = trainer_history(kept)[-1:]
        else:
            self.history.start(info)
        self._history_open = True

    def _end_history(self, state: str, summary: dict | None = None, message: str | None = None) -> None:
        if self._history_open:
            self._history_open = False
            with contextlib.suppress(OSError):  # a full disk: the job's own error says so, not this
                self.history.finish(state, summary, message=message)

    def _append_history(self, record: dict, **fields) -> None:
        try:
            self.history.append(record, durable=False, **fields)
        except OSError as exc:  # a full disk: one line, like a checkpoint that cannot be written
            exc.filename = exc.filename or str(self.history.jsonl)
            raise JobFailed(f"history: {self._write_failed(exc)}") from None

    def _sync_history(self) -> None:
        """fsync the history lines appended since the last checkpoint: one fsync per checkpoint, not
        per epoch (a killed process loses nothing written; a power cut loses at most the lines after
        the newest checkpoint, which a resume from it cuts back anyway)."""
        if self._history_open:
            try:
                self.history.sync()
            except OSError as exc:
                exc.filename = exc.filename or str(self.history.jsonl)
                raise JobFailed(f"history: {self._write_failed(exc)}") from None

    def train(self) -> dict | None:
        """The loop (on_step/on_epoch after each step/epoch). Returns the stop record when
        stopped, None when the epochs ran out; raises JobFailed on too many non-finite steps."""
        tr = self.trainer
        self._install_signals()
        pool_hook = pool_peak_hook(active_pool(self.backend.xp)) if self.backend.is_cuda else None
        self._pool_hook = pool_hook
        self._step_t = time.perf_counter()
        self.peak.reset()  # the start-up's own allocations (history files, logs) are not a training step's
        self.set_state("training")
        remaining = self.cfg.training.epochs - tr.epoch
        try:
            with pool_hook if pool_hook is not None else contextlib.nullcontext():
                # a stop asked for before the loop (a cancel during start-up) trains nothing more
                if remaining > 0 and not tr.stopped_early and not self.stop_reason:
                    tr.fit(epochs=remaining, on_step=self.on_step, on_epoch=self.on_epoch)
        except BaseException:
            self.set_state("failed")
            raise
        finally:
            self._bar.close()
        return self._after_loop() if (self.stop_reason or self.failure) else None

    def _install_signals(self) -> None:
        """SIGTERM/SIGINT -> stop() until run() ends. Signal handlers can only be set on the main
        thread; a Job run on another thread (compare, sweep) is stopped through stop() instead."""
        self._previous_handlers = {}
        if self.install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[sig] = signal.signal(sig, lambda s, f: self.stop(signal.Signals(s).name))

    def _restore_signals(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def on_step(self, tr, loss):
        now = time.perf_counter()
        dt, self._step_t = now - self._step_t, now
        s = self.state
        s.step_durations.observe(dt)
        s.steps = tr.steps
        samples = min(tr.batch_size, len(self.data.X_train) - (tr.position - 1) * tr.batch_size)
        s.samples += samples
        self._epoch_samples += samples
        if self._pool_hook is not None:
            s.measured["cupy_pool_peak"] = self._pool_hook.peak
        self.peak.step_done()
        peak = self.peak.peak()
        if peak is not None:
            s.measured["tracemalloc_peak"] = peak  # the plan's part, the data set allocated before tracing included
            if self.peak.overhead() is not None:
                s.measured["python_objects"] = self.peak.overhead()
        s.train_loss, s.gradient_norm, s.learning_rate = loss, tr.last_grad_norm, tr.last_lr
        s.nonfinite_steps, s.oom_recoveries = tr.nonfinite_steps, tr.oom_recoveries
        if tr.micro_batch_size != s.micro_batch_size:  # an OOM re-planned the step
            s.micro_batch_size, s.planned_bytes = tr.micro_batch_size, tr.plan.by_category()
        if len(tr.events) > self._events_logged:  # OOM recoveries, a CUDA graph turned off: into the log
            self._log_trainer_events(tr.events[self._events_logged:])
            self._events_logged = len(tr.events)
        self._bar.update(tr, loss, dt, peak if peak is not None else s.measured.get("cupy_pool_peak"))
        self.publish()
        if tr.nonfinite_streak >= self.cfg.training.max_nonfinite:
            self.failure = (f"training: {tr.nonfinite_streak} non-finite steps in a row (loss {loss}); stopped "
                            "with a checkpoint of the last good state (try a lower lr or clip_norm)")
            return STOP
        if self._past_max_runtime():
            self.stop("max_runtime")
        if self.stop_reason:
            return STOP
        if self.cadence.interval_due(tr.steps, last_in_epoch=tr.position >= self.steps_per_epoch):
            self.save_checkpoint("interval")
        return None

    def _past_max_runtime(self) -> bool:
        """training.max_runtime: this run's wall time since run() began (start-up included)."""
        limit = self.cfg.training.max_runtime
        return limit is not None and time.perf_counter() - self._t_start >= limit

    def on_epoch(self, tr, record):
        self._bar.close()
        s = self.state
        s.epoch = tr.epoch
        s.validation_loss = record.get("val_loss", float("nan"))
        for k in SCORES:  # NaN: no such score for this kind of output
            v = record.get(f"val_{k}")
            setattr(s, f"validation_{k}", float("nan") if v is None else v)
        self.publish()
        # smoothed across epochs: a checkpoint's fsync or a busy machine moves it a little, not 50x
        seconds = record.get("seconds") or 0.0
        raw = self._epoch_samples / seconds if seconds > 0 else None  # the epoch's own, for the history
        rate = self._rate.rate(self._epoch_samples, seconds)
        self._epoch_samples = 0
        planned = self.plan.total  # a sum over the plan's buffers: once an epoch
        self.log("epoch", epoch_line(record, self.cfg.training.epochs, self.peak.peak(), planned, rate),
                 **record, samples_per_second=rate)
        # the epoch's history line first (made durable by the next checkpoint's save): a checkpoint
        # never holds an epoch the history lacks
        self._append_history(record, steps=tr.steps, samples_per_second=raw, planned_bytes=planned,
                            measured_peak_bytes=self.peak.peak())
        del tr.history[:-1]  # the history file holds every epoch: memory stays flat over long runs
        last = tr.epoch >= self.cfg.training.epochs or tr.stopped_early
        if self.cadence.epoch_due(tr.steps, last=last):  # checkpoint.min_interval; the last epoch always
            self.save_checkpoint("epoch")

    def _log_trainer_events(self, events) -> None:
        for e in events:
            fields = {k: v for k, v in e.items() if k != "event"}
            if e["event"] == "oom_recovery":
                text = (f"oom       out of memory ({e.get('error')}) at step {e.get('step')}: micro-batch "
                        f"{e.get('micro_batch_from')} -> {e.get('micro_batch_to')}, gradients accumulated (the batch "
                        "stays the same)")
            else:
                text = f"note      {e['event']}: " + ", ".join(f"{k} {v}" for k, v in fields.items())
            self.log(e["event"], text, **fields)

    def save_checkpoint(self, reason: str) -> Path | None:
        """A checkpoint of the current state, unless the newest one already holds it (None)."""
        tr = self.trainer
        if not self.cadence.should_write(tr.steps, tr.epoch):
            return None
        self.peak.hold()  # writing the .npz makes temporary copies: not the training step's memory
        self.set_state("checkpointing")
        self._sync_history()  # the epochs this checkpoint holds are durable in the history before it
        # the sidecar records how many history rows the state has (one per completed epoch), not the rows
        meta = {**tr.state_meta(), "history": range(tr.epoch)}
        path = ckpt.save(self.ckpt_dir, tr.state_arrays(), meta, self.identity(), keep=self.cfg.checkpoint.keep,
                         history=False)
        self.cadence.written(tr.steps, tr.epoch)
        self.state.checkpoints += 1
        self.state.last_checkpoint_time = time.time()
        self.set_state("training")
        self.peak.reset()
        self.log("checkpoint", "", path=str(path), reason=reason, step=tr.steps)
        return path

    def finish(self) -> dict:
        """Test evaluation, model-final (and model-best) on disk, the summary."""
        self.set_state("evaluating")
        train_peak = self.peak.peak()  # before the test evaluation allocates its inference plan
        self.summary = self._write_models(train_peak, time.perf_counter() - self._t_start)
        self.summary["python_objects_bytes"] = self.peak.overhead()
        run = self.history.finish("finished", self.summary) if self._history_open else None
        self._history_open = False
        if run is not None:
            self.summary["history"] = trainer_history(self.history.read())
        self.set_state("finished")
        self.log("summary", summary_text(self.summary), **self.summary)
        return self.summary

    # -- helpers -------------------------------------------------------------------------------

    def set_state(self, name: str) -> None:
        self.state.set_state(name)
        self.publish()

    def publish(self) -> None:
        if self.exporter is not None:
            self.exporter.publish(self.state)

    def _warn(self, message: str) -> None:
        self.log("warning", message, message=message)

    def _already_finished(self) -> dict | None:
        """A resumed job with nothing left to train says so (and trains nothing); None otherwise."""
        tr, epochs = self.trainer, self.cfg.training.epochs
        if (tr.epoch < epochs and not tr.stopped_early) or not (self.out_dir / "model-final.npz").exists():
            return None
        why = "stopped early, " if tr.stopped_early else ""
        msg = (f"finished  already: {why}{tr.epoch} epochs trained in {self.out_dir}; nothing to train "
               f"(--no-resume starts over, moving this run aside; --epochs M with M > {tr.epoch} trains on)")
        self.log("already_finished", msg, epochs=tr.epoch, steps=tr.steps, output_dir=str(self.out_dir))
        self.set_state("finished")
        return {"already_finished": True, "epochs": tr.epoch, "steps": tr.steps}

    def _after_loop(self) -> dict:
        self.save_checkpoint(self.stop_reason or "non-finite")
        if self.failure:
            self.set_state("failed")
            self._end_history("failed", message=self.failure)
            raise JobFailed(self.failure)
        steps = self.trainer.steps
        self._end_history("stopped", {"steps": steps}, message=f"stopped on {self.stop_reason}")
        self.log("stopped", f"stopped   on {self.stop_reason} at step {steps}; checkpoint saved, resume with the "
                 "same command", signal=self.stop_reason, step=steps)
        return {"stopped": self.stop_reason, "steps": steps}

    def _auto_batch(self, loaded) -> tuple:
        """(batch, note): a resumed checkpoint's batch, else the solver's (capped)."""
        t, n_train = self.cfg.training, len(self.data.X_train)
        if self._recovered is not None:  # verified by ckpt.recover at start-up
            batch = self._recovered["identity"]["batch_size"]
            return batch, f"batch     {batch} (from the checkpoint being resumed)"
        if self.batch_solver is None:
            raise ConfigError("training.batch_size: auto needs a batch solver "
                              "(Job(cfg, batch_solver=memtrain.profiler.autobatch.auto_batch))")
        self.set_state("planning")
        room = None if self.budget is None else self.budget.room
        margin = None if self.budget is None else self.budget.margin
        r = self.batch_solver(self.setting, self.backend, memory_limit=room, margin=margin,
                              multiple_of=batch_multiple(self.backend.kind), dataset_size=n_train,
                              already_allocated=loaded, max_batch=t.max_batch_size)
        cap = batch_cap(n_train, t.max_batch_size)
        batch = min(r.confirmed, cap)
        why = "max_batch_size" if cap < n_train else "the whole training set"
        note = (f"batch     auto: {r.confirmed:,} fits (analytic {r.analytic:,}, {len(r.probes)} probe(s), "
                f"{r.seconds:.2f} s); using {batch:,}" + (f" ({why})" if batch < r.confirmed else ""))
        self.log("autobatch", note, analytic=r.analytic, confirmed=r.confirmed, used=batch, probes=len(r.probes))
        return batch, None

    def _auto_micro(self, batch) -> int | None:
        """The largest micro-batch whose plan fits; None when the whole batch fits."""
        s = self.setting
        raw = self.budget.room if self.budget is not None else device_budget(self.backend)[0]

        def total(m):
            return s.plan(batch, micro_batch_size=m).total

        margin = self.budget.margin if self.budget is not None else default_margin(self.backend.kind, raw)
        fit = largest_batch(total, raw - margin)
        if not fit.batch_size:
            raise ConfigError(f"training.micro_batch_size: even a micro-batch of 1 needs "
                              f"{format_bytes(fit.shortfall)} more")
        return None if fit.batch_size >= batch else fit.batch_size

    def _linger(self, seconds) -> None:
        """A short job's final state stays scrapeable for `seconds` (never after an error)."""
        self.log("linger", f"metrics   still served for {seconds:g} s (metrics.linger); Ctrl-C ends it",
                 seconds=seconds)
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            pass

    def _write_models(self, peak, seconds) -> dict:
        cfg, ds, tr = self.cfg, self.data, self.trainer
        d = cfg.data
        data = {"dataset": d.dataset, "validation": d.validation, "test": d.test, "standardize": d.standardize,
                "seed": cfg.seed, "label_column": d.label_column}
        common = {"job": cfg.name, "dataset": ds.name, "data": data, "preprocessing": ds.preprocessing(),
                  "optimizer": tr.optimizer.describe(), "batch_size": tr.batch_size, "steps": tr.steps,
                  "epochs": tr.epoch}
        best_path, final_path = self.out_dir / "model-best", self.out_dir / "model-final"
        had_best = tr.best_epoch is not None
        # the training buffers in eval mode: the final evaluation allocates nothing beyond the plan
        test = tr.evaluate(ds.X_test, ds.y_test) if ds.X_test is not None else None
        if had_best:
            # fit() restored the best weights; the final ones are the best ones for early stopping jobs
            save_model(best_path, tr.model, {**common, "epoch": tr.best_epoch, "val_loss": tr.best_loss,
                                             "test": test})
        save_model(final_path, tr.model, {**common, "test": test})
        return _summary(cfg, tr, self.plan, peak, seconds, test, final_path, best_path if had_best else None)


def _summary(cfg, tr, plan, peak, seconds, test, final_path, best_path) -> dict:
    last = tr.history[-1] if tr.history else {}
    return {
        "job": cfg.name, "steps": tr.steps, "epochs": tr.epoch,
        "best_epoch": tr.best_epoch if best_path else None,
        "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
        **{f"val_{k}": last.get(f"val_{k}") for k in SCORES},
        "test_loss": None if test is None else test["loss"],
        **{f"test_{k}": None if test is None else test[k] for k in SCORES},
        "seconds": seconds, "batch_size": tr.batch_size, "micro_batch_size": tr.micro_batch_size,
        "oom_recoveries": tr.oom_recoveries, "nonfinite_steps": tr.nonfinite_steps,
        "planned_bytes": plan.total, "planned_by_category": plan.by_category(), "measured_peak_bytes": peak,
        "history": tr.history,
        "model": str(final_path.with_suffix(".npz")),
        "best_model": str(best_path.with_suffix(".npz")) if best_path else None,
    }


_FREEZE_REGISTERED = []


def _freeze_heap_at_exit() -> None:
    """At interpreter exit, gc.freeze(): the cycle collections Python runs while it shuts down
    otherwise walk the heap NumPy, numba and SciPy left, again and again (1.7-1.9 s of a small
    job's 2-5 s on the development VM; about 0.2 s frozen). Nothing the job wrote is pending by
    then (every file is written and fsync'ed before run() returns); the memory goes back with
    the process."""
    if not _FREEZE_REGISTERED:
        _FREEZE_REGISTERED.append(True)
        atexit.register(gc.freeze)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _warm_up(spec, fused_optimizer=None) -> None:
    """Import what a training step imports on first use, before the peak is measured:
    exact GELU's erf comes from scipy.special (~12 MB of Python objects); numba and the
    fused CPU kernels of this model and optimizer (~30 MB) when the step is fused."""
    if fused_optimizer is not None:
        cpu_kernels(spec, fused_optimizer)  # (a machine without them falls back in the Trainer)
    if "gelu" in spec.activation.describe().lower():
        from memtrain.nn.special import erf  # noqa: PLC0415

        x = np.zeros(1)
        erf(x, x)


def _rows(a) -> int:
    return 0 if a is None else len(a)


def _budget(backend, memory_limit, loaded) -> float:
    """What the job's plan is sized to fit, for the headroom metric."""
    if memory_limit is not None:
        return float(memory_limit)
    try:
        return float(device_budget(backend)[0] + loaded)
    except Exception:  # no NVML or /proc: the metric is left out, the job goes on
        return float("nan")


def _limit_text(budget) -> str:
    """Where the room a fixed batch is checked against came from."""
    if budget is None or not budget.overhead:
        return "training.memory_limit"
    return (f"training.memory_limit {format_bytes(budget.limit)} less the {budget.overhead_kind} overhead "
            f"{format_bytes(budget.overhead)}, {budget.overhead_source}")
