"""Several sweep trials of one shape, run as one trial array, each writing its run dir as a lone job.

Each trial is a Job of its own config (train/job.py): its device, data, batch and output dirs are
checked as `memtrain train` checks them, and its run.json, history, epoch checkpoints and
model-final.npz are written by the Job's own code. Only the Trainer differs: each Job adopts its
trial's Trainer from one TrialArray (train/trials.py), whose buffers are rows of the array's stacks
and whose data set is the first trial's one copy.

Resuming: an array does not resume from its trials' checkpoints (the array's trials must stand at
the same batch position). A trial whose run dir holds checkpoints of an earlier, unfinished run
starts over; its earlier run dir is moved aside (NAME.earlier-<UTC time>), nothing is deleted.
"""

from __future__ import annotations

import io
import time

import numpy as np

from memtrain.errors import JobFailed
from memtrain.train import checkpoint as ckpt
from memtrain.train.job import Job
from memtrain.train.joblog import ProgressBar, plan_line
from memtrain.train.trials import TrialArray, setting_from_config

STOPPED = "stopped"


class ArrayRun:
    """The trials of `cfgs` (JobConfigs that fuse.group_key puts in one group) as one array.
    run() returns one outcome per config, in order, as select/sweep.py run_trial returns for a
    lone trial; a trial stopped by stop() has status "stopped" (no result: it runs again)."""

    def __init__(self, cfgs, streams=None):
        self.cfgs = list(cfgs)
        self.streams = streams or [io.StringIO() for _ in self.cfgs]
        self.jobs = [Job(c, log_format="json", progress=False, stream=s, install_signals=False)
                     for c, s in zip(self.cfgs, self.streams, strict=True)]
        self.array = None
        self.stop_reason = None
        self.stopped_trials: dict = {}  # trial index -> reason: stop_trial() before the array exists

    def stop_trial(self, index: int, reason: str = "cancel") -> None:
        """Trial `index` stops after the step running now (its checkpoint saved as a stopped lone
        job's); the others train on (a service's per-trial cancel)."""
        self.stopped_trials.setdefault(index, reason)
        if self.array is not None:
            self.array.stop(index=index, reason=reason)

    def stop(self, reason: str = "stop") -> None:
        """Every trial stops after the step running now (a signal, a cancel)."""
        self.stop_reason = self.stop_reason or reason
        if self.array is not None:
            self.array.stop(reason=reason)

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
        if self.stop_reason:
            self.array.stop(reason=self.stop_reason)
        for index, reason in self.stopped_trials.items():
            self.array.stop(index=index, reason=reason)
        for job, r in zip(self.jobs, self.array.results, strict=True):
            _adopt(job, r.trainer)
        # overflow in the batched (3-D) matmul warns where a lone job's 2-D BLAS call does not: the
        # trainer's non-finite guard handles such a step, in an array as alone
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self.array.train(on_epoch=self._on_epoch)
        return [self._outcome(job, r) for job, r in zip(self.jobs, self.array.results, strict=True)]

    def _on_epoch(self, r, record) -> None:
        job = self.jobs[r.index]
        job._epoch_samples = len(job.data.X_train)  # the epoch's samples, for the history's samples/s
        job.on_epoch(r.trainer, record)

    def _outcome(self, job, r) -> dict:
        """The trial's end as its lone Job ends it (Job._after_loop: a checkpoint, run.json, the log)."""
        if r.state == STOPPED:
            job.stop(self.stop_reason or self.stopped_trials.get(r.index) or "stop")
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


def _adopt(job, tr) -> None:
    """What Job.build_trainer and Job.resume do, with the array's Trainer for the job's own."""
    ckpt.check_writable(job.ckpt_dir)
    ckpt.check_writable(job.out_dir)
    if ckpt.list_checkpoints(job.ckpt_dir):  # an earlier run of this trial that did not finish
        job._start_over()
    job.steps_per_epoch = -(-len(job.data.X_train) // job.batch_size)
    job._bar = ProgressBar(False, job.steps_per_epoch, job.log.stream)
    job.trainer, job.plan = tr, tr.plan
    job.state.planned_bytes = tr.plan.by_category()
    job.state.batch_size, job.state.micro_batch_size = tr.batch_size, tr.micro_batch_size
    job.log("plan", plan_line(tr.plan, True), planned_bytes=tr.plan.by_category(), total=tr.plan.total,
            resident=True)
    job.start_history(False)
    job.set_state("training")


def run_array(cfgs, attach=None) -> list:
    """Run the configs as one array; each trial's log (JSON lines) goes to its run dir's log.jsonl.
    attach(run): given the ArrayRun before it starts (a worker's signal handler stops it)."""
    run = ArrayRun(cfgs)
    if attach is not None:
        attach(run)
    try:
        return run.run()
    finally:
        for cfg, buf in zip(run.cfgs, run.streams, strict=True):
            if cfg.output_dir.is_dir():
                (cfg.output_dir / "log.jsonl").write_text(buf.getvalue())
