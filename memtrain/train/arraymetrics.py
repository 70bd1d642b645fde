"""A trial array's Prometheus metrics: one exporter for the array's one process.

The array (train/arrayjob.py) serves when its trials have a metrics port (select/fuse.py puts
only trials that all have one, on one host, in an array): on the first trial's port, as one
exporter process (memtrain/exporter.py) whose scrape holds each trial's training series
labelled `trial` (its job name) and the array's memory once (docs/metrics.md, "Trial arrays").
Each trial's Job publishes its own JobState to it, as a lone job publishes to its own.

A trial of an array has no per-step callback (the array steps all of its trials at once), so
its step counters, loss, learning rate and gradient norm are set at the end of each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from memtrain.errors import ConfigError
from memtrain.train.state import JobState


@dataclass
class ArrayMetrics:
    exporter: object  # memtrain.exporter.Exporter
    state: JobState  # the array's own: its plan and identity

    def stop(self) -> None:
        self.state.set_state("finished")
        self.exporter.publish(self.state)
        self.exporter.stop()


def serve(jobs, plan) -> ArrayMetrics | None:
    """The array's exporter, or None when its trials have no metrics port; each job publishes
    to it and logs its URL. `plan`: the array's MemoryPlan (memory/trials.py array_plan)."""
    first = jobs[0]
    host, port = first.cfg.metrics.host, first.cfg.metrics.port
    if port is None:
        return None
    from memtrain.exporter import Exporter  # noqa: PLC0415 - prometheus_client only when metrics are asked for
    from memtrain.metrics import trial_labels  # noqa: PLC0415

    array = array_state(jobs, plan)
    labels = trial_labels([j.cfg.name for j in jobs])
    try:
        exporter = Exporter(array, port, host, trials=[(n, j.state) for n, j in zip(labels, jobs, strict=True)])
    except OSError as exc:
        raise ConfigError(f"metrics.port: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    url = f"http://{host}:{exporter.port}/metrics"
    for job, label in zip(jobs, labels, strict=True):
        job.exporter = exporter
        job.log("metrics", f"metrics   {url} (the array's, trial=\"{label}\")", url=url, trial=label)
    return ArrayMetrics(exporter, array)


def array_state(jobs, plan) -> JobState:
    """The array's own state: its plan, its budget, and an identity naming its trials' optimizers."""
    first = jobs[0].state
    optimizers = ",".join(dict.fromkeys(j.state.optimizer for j in jobs))
    s = JobState(job=f"array-{first.job}-{len(jobs)}", model=first.model, optimizer=optimizers, dtype=first.dtype,
                 device=first.device, gpu_index=first.gpu_index, gpu_pci_bus_id=first.gpu_pci_bus_id,
                 gpu_uuid=first.gpu_uuid, planned_bytes=plan.by_category(), memory_budget=first.memory_budget)
    s.set_state("training")
    return s


def end_of_epoch(state: JobState, tr, record: dict, rows: int) -> None:
    """What a lone job's on_step keeps up to date, as of a trial's epoch end: its steps and samples,
    the epoch's mean training loss, the last update's learning rate and gradient norm."""
    state.steps, state.samples = tr.steps, state.samples + rows
    state.train_loss = record.get("train_loss", float("nan"))
    state.learning_rate, state.gradient_norm = tr.last_lr, tr.last_grad_norm
    state.nonfinite_steps = tr.nonfinite_steps
