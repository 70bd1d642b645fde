"""Several sweep trials of one shape, run as one trial array, each writing its run dir as a lone job.

Each trial is a Job of its own config (train/job.py): its device, data, batch and output dirs are
checked as `memtrain train` checks them, and its run.json, history, epoch checkpoints and
model-final.npz are written by the Job's own code. Only the Trainer differs: each Job adopts its
trial's Trainer from one TrialArray (train/trials.py), whose buffers are rows of the array's stacks
and whose data set is the first trial's one copy.

Checkpoints: with a run dir (the worker's OUTPUT_DIR/arrays/<task id>, select/fuse.py), the array
writes one checkpoint of all its trials into RUN_DIR/checkpoints (train/checkpoint.py's format:
atomic, fsync'ed, SHA-256 over the .npz and the sidecar; contents in train/arraystate.py) at an
epoch's end once `checkpoint.min_interval` seconds have passed since the newest one (each trial's
history lines fsync'ed first), every `checkpoint.every_steps` array steps or `every_minutes`, when
a trial is cancelled and when the array stops or ends. The cadence and `keep` are the first
trial's [checkpoint] (a sweep's trials share their base's). A new run of the same array (a worker killed by SIGKILL and
retried by the scheduler, a sweep stopped and resumed) loads the newest checkpoint that verifies
(a torn or damaged one is set aside and the previous one used) and goes on from its step: every
trial ends bit-identical to its uninterrupted (and its lone) run, and its history is cut back to
the checkpoint's epoch as a lone job's is on resume. Without an array checkpoint a trial whose run
dir holds checkpoints of an earlier, unfinished run starts over; its earlier run dir is moved aside
(NAME.earlier-<UTC time>), nothing is deleted. The trials' own epoch checkpoints are written as a
lone job writes them (`memtrain train` on a trial's config resumes from them).

Stopping: stop() ends every trial after the step running now (SIGTERM to the worker); each writes
its stop checkpoint and the array's checkpoint records them as still training, so the next run
trains them on. stop_trial(index, reason) ends one trial: its run dir ends "stopped" with its
stop checkpoint, as a lone job's cancel does, its outcome is "cancelled", the others train on
and the array computes only theirs (a cancelled trial stays cancelled when the array resumes).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from memtrain.errors import CheckpointError, ConfigError, JobFailed
from memtrain.train import arraymetrics, arraystate
from memtrain.train import checkpoint as ckpt
from memtrain.train.job import Job
from memtrain.train.joblog import JobLog, ProgressBar, plan_line
from memtrain.train.trials import TrialArray, setting_from_config

STOPPED = "stopped"
CANCELLED = "cancelled"
CHECKPOINTS = "checkpoints"  # RUN_DIR/checkpoints: the array's checkpoints


class ArrayRun:
    """The trials of `cfgs` (JobConfigs that fuse.group_key puts in one group) as one array.
    run() returns one outcome per config, in order, as select/sweep.py run_trial returns for a
    lone trial; a trial stopped by stop() has status "stopped" (no result: it runs again), one
    stopped by stop_trial() "cancelled".

    run_dir: where the array keeps its checkpoints (None: none, and no resume); log: the array's
    own events (resume, checkpoints, cancels) as JSON lines, `on_event(event, fields)` hears them."""

    def __init__(self, cfgs, streams=None, run_dir=None, log=None, on_event=None):
        self.cfgs = list(cfgs)
        self.streams = streams or [io.StringIO() for _ in self.cfgs]
        self.jobs = [Job(c, log_format="json", progress=False, stream=s, install_signals=False)
                     for c, s in zip(self.cfgs, self.streams, strict=True)]
        self.array = None
        self.stop_reason = None
        self.ckpt_dir = None if run_dir is None else Path(run_dir) / CHECKPOINTS
        first = self.cfgs[0].checkpoint
        self.cadence = ckpt.Cadence(first.every_steps, first.every_minutes * 60, min_interval=first.min_interval)
        self.log = JobLog("json", log if log is not None else io.StringIO(), on_event)
        self.cancels = {}  # trial index -> reason: stop_trial() asked for it
        self.ended = {}  # trial index -> the outcome of a cancelled trial whose run dir has ended
        self._saved = None  # (clock, states) of the newest array checkpoint

    def stop(self, reason: str = "stop") -> None:
        """Every trial stops after the step running now (a signal, a cancel)."""
        self.stop_reason = self.stop_reason or reason
        if self.array is not None:
            self.array.stop(reason=reason)

    def stop_trial(self, index: int, reason: str = "cancel") -> None:
        """Trial `index` (its place in cfgs) stops after the step running now and ends cancelled;
        the others go on. Safe from any thread (a worker's watcher, a service)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.cfgs):
            raise ConfigError(f"trial: expected an index from 0 to {len(self.cfgs) - 1}, got {index!r}")
        self.cancels.setdefault(index, reason)
        if self.array is not None:
            self.array.stop(index, reason)

    def run(self) -> list:
        t0 = time.perf_counter()
        first = self.jobs[0]
        for job in self.jobs:
            job._t_start = t0
            job.open_device()
            if job is first:
                job.load_data()
            else:
                job.data = first.data  # one data set for the array: same file, split and seed (fuse.group_key)
            job.choose_batch()
        validation = (first.data.X_val, first.data.y_val) if first.data.X_val is not None else None
        n_train = len(first.data.X_train)
        settings = [setting_from_config(c, n_train, first.batch_size, name=c.name) for c in self.cfgs]
        self.array = TrialArray(settings, first.data.X_train, first.data.y_train, validation,
                                batch_size=first.batch_size, device=first.backend, fused=first.cfg.fused)
        for job, r in zip(self.jobs, self.array.results, strict=True):
            _attach(job, r.trainer)
        # one exporter for the array, or None; as a lone job, before its run dir is written (a port in use)
        metrics = arraymetrics.serve(self.jobs, self.array.plan)
        try:
            return self._resume_and_train()
        finally:
            if metrics is not None:
                metrics.stop()

    def _resume_and_train(self) -> list:
        states = self._resume()
        for job, r in zip(self.jobs, self.array.results, strict=True):
            if states is None:
                _start_fresh(job)
            elif states[r.index] == CANCELLED:
                self.cancels[r.index] = r.message
                self.ended[r.index] = _cancelled(job, r.message)
            else:
                _start_resumed(job)
        for index, reason in list(self.cancels.items()):
            self.array.stop(index, reason)
        if self.stop_reason:
            self.array.stop(reason=self.stop_reason)
        # overflow in the batched (3-D) matmul warns where a lone job's 2-D BLAS call does not: the
        # trainer's non-finite guard handles such a step, in an array as alone
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.array.train(on_epoch=self._on_epoch, on_step=self._on_step, after_epoch=self._after_epoch)
        self._save(self.stop_reason or "end")
        return [self._outcome(job, r) for job, r in zip(self.jobs, self.array.results, strict=True)]

    def _on_epoch(self, r, record) -> None:
        job = self.jobs[r.index]
        job._epoch_samples = len(job.data.X_train)  # the epoch's samples, for the history's samples/s
        arraymetrics.end_of_epoch(job.state, r.trainer, record, job._epoch_samples)
        job.on_epoch(r.trainer, record)

    def _on_step(self, trials) -> None:
        if any(i not in self.ended and self.array.results[i].state == STOPPED for i in tuple(self.cancels)):
            self._save("cancel")
        tr, n_batches = trials[0].trainer, self.jobs[0].steps_per_epoch
        # the trials still training stand at the array's clock (arraystate.clock), in O(1)
        if self.cadence.interval_due(tr.epoch * n_batches + tr.position, last_in_epoch=tr.position >= n_batches):
            self._save("interval")

    def _after_epoch(self) -> None:
        """The epoch-end checkpoint when checkpoint.min_interval has passed (as a lone job's); the
        array's end always writes one (run)."""
        if self.cadence.epoch_due(arraystate.clock(self.array), last=False):
            self._save("epoch")

    # -- checkpoints ---------------------------------------------------------------------------

    def identity(self) -> dict:
        """What an array checkpoint must match: each trial's Job identity and name, in order."""
        return {"array": [{**job.identity(), "name": job.cfg.name} for job in self.jobs]}

    def _states(self) -> list:
        """Each trial's state as the checkpoint records it: a trial of a stopped array trains on."""
        return [CANCELLED if r.index in self.ended else ("training" if r.state == STOPPED else r.state)
                for r in self.array.results]

    def _save(self, reason: str) -> None:
        """The array's checkpoint, unless the newest one holds this state; a cancelled trial's run
        dir is ended first, so the checkpoint never records a cancel its run dir lacks."""
        self._end_cancelled()
        if self.ckpt_dir is None:
            return
        states = self._states()
        clock = arraystate.clock(self.array)
        if self._saved == (clock, tuple(states)):
            return
        for job in self.jobs:
            job._sync_history()  # the epochs this checkpoint holds are durable in each trial's history first
        path = ckpt.save(self.ckpt_dir, arraystate.state_arrays(self.array),
                         arraystate.state_meta(self.array, states), self.identity(), keep=self.cfgs[0].checkpoint.keep)
        self._saved = (clock, tuple(states))
        self.cadence.written(clock, 0)
        self.log("checkpoint", "", path=str(path), reason=reason, step=clock,
                 training=sum(s == "training" for s in states))

    def _resume(self) -> list | None:
        """Load the newest good array checkpoint; each trial's recorded state, or None (a fresh start)."""
        d = self.ckpt_dir
        if d is None:
            return None
        if not self.cfgs[0].checkpoint.resume:
            if ckpt.list_checkpoints(d):
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                moved = ckpt.set_aside_run(d, d, f".earlier-{stamp}")
                self.log("aside", f"aside     the array's earlier checkpoints moved to {moved} (--no-resume)",
                         moved=[str(p) for p in moved])
            return None
        ckpt.recover(d, warn=self._warn)  # stale temporaries removed, torn checkpoints set aside
        try:
            found = ckpt.load_latest(d, self.identity(), warn=self._warn)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; the array's trials are not the ones that wrote {d}: move that folder "
                                  "away to start them over") from None
        if found is None:
            return None
        arrays, record = found
        states = arraystate.load(self.array, arrays, record["state"])
        self._saved = (record["state"]["steps"], tuple(states))
        self.cadence.written(record["state"]["steps"], 0)
        self.log("resume", f"resumed   the array from {d / record['npz']}: array step {record['state']['steps']}, "
                 f"{states.count('training')} of {len(states)} trials training", step=record["state"]["steps"],
                 states=states)
        return states

    def _warn(self, message: str) -> None:
        self.log("warning", message, message=message)

    # -- ends ------------------------------------------------------------------------------------

    def _end_cancelled(self) -> None:
        """The run dir of each trial stop_trial() took out ends as a lone job's cancel ends it."""
        for index, reason in list(self.cancels.items()):
            r = self.array.results[index]
            if index in self.ended or r.state != STOPPED:
                continue
            job = self.jobs[index]
            job.stop(reason)
            job._after_loop()  # its stop checkpoint, run.json "stopped"
            self.ended[index] = _cancelled(job, f"stopped on {reason}")
            self.log("cancelled", f"cancelled trial {index} ({job.cfg.name}) on {reason} at step {r.trainer.steps}; "
                     "the others train on", trial=index, name=job.cfg.name, step=r.trainer.steps)

    def _outcome(self, job, r) -> dict:
        """The trial's end as its lone Job ends it (Job._after_loop: a checkpoint, run.json, the log)."""
        if r.index in self.ended:
            return self.ended[r.index]
        if r.state == STOPPED:
            job.stop(self.stop_reason or "stop")
            job._after_loop()
            return {"status": STOPPED, "error": r.message, "summary": {}, "train_rows": job.train_rows}
        try:
            if r.state == "failed":  # the lone job's words (Job.on_step) for the same end
                job.failure = (f"{r.message}; stopped with a checkpoint of the last good state (try a lower lr or "
                               "clip_norm)")
                job._after_loop()
            summary, status, error = job._finish_or_retry(), "finished", None
        except JobFailed as exc:
            summary, status, error = {}, "failed", str(exc)
        return {"status": status, "error": error, "summary": summary, "train_rows": job.train_rows}


def _cancelled(job, message: str) -> dict:
    return {"status": CANCELLED, "error": message, "summary": {}, "train_rows": job.train_rows}


def _attach(job, tr) -> None:
    """What Job.build_trainer does, with the array's Trainer for the job's own."""
    ckpt.check_writable(job.ckpt_dir)
    ckpt.check_writable(job.out_dir)
    job.steps_per_epoch = -(-len(job.data.X_train) // job.batch_size)
    job._bar = ProgressBar(False, job.steps_per_epoch, job.log.stream)
    job.trainer, job.plan = tr, tr.plan
    job.state.planned_bytes = tr.plan.by_category()
    job.state.batch_size, job.state.micro_batch_size = tr.batch_size, tr.micro_batch_size
    job.log("plan", plan_line(tr.plan, True), planned_bytes=tr.plan.by_category(), total=tr.plan.total,
            resident=True)


def _start_fresh(job) -> None:
    if ckpt.list_checkpoints(job.ckpt_dir):  # an earlier run of this trial that did not finish
        job._start_over()
    job.start_history(False)
    job.set_state("training")


def _start_resumed(job) -> None:
    """What Job.resume does after loading, with the state the array checkpoint gave the trainer:
    the history cut back to its epoch, run.json running again."""
    tr = job.trainer
    job._resumed_record = {"state": tr.state_meta()}
    job.state.steps, job.state.epoch = tr.steps, tr.epoch
    job.log("resume", f"resumed   from the array's checkpoint: step {tr.steps}, epoch {tr.epoch + 1}, batch "
            f"{tr.position}", step=tr.steps, epoch=tr.epoch, position=tr.position)
    job.start_history(True)
    job.set_state("training")


def run_array(cfgs, attach=None, run_dir=None, log=None, on_event=None) -> list:
    """Run the configs as one array; each trial's log (JSON lines) goes to its run dir's log.jsonl.
    attach(run): given the ArrayRun before it starts (a worker's signal handler stops it).
    run_dir: the array's own folder (its checkpoints: resumed when there); log, on_event: ArrayRun's."""
    run = ArrayRun(cfgs, run_dir=run_dir, log=log, on_event=on_event)
    if attach is not None:
        attach(run)
    try:
        return run.run()
    finally:
        for cfg, buf in zip(run.cfgs, run.streams, strict=True):
            if cfg.output_dir.is_dir():
                (cfg.output_dir / "log.jsonl").write_text(buf.getvalue())
