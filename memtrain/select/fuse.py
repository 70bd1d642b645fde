"""Which sweep trials run together as one trial array (train/trials.py), and the array's task.

Trials fuse when they have the same layer widths, activation, output unit, dtype and batch
size on the same data set (file, split, standardisation, label column and seed: the seed
also draws the validation split, so trials of different seeds hold different data). A trial
fuses only where the array trains it as its lone job would (train/arrayjob.py): on the CPU,
resident data, a fixed batch size without micro-batches, no max_runtime; trials with a metrics
port fuse only with trials that have one on the same host (train/arraymetrics.py).
Any other trial, and a group of one, runs as a lone job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memtrain.memory.trials import array_plan

ARRAYS = "arrays"  # OUTPUT_DIR/arrays/<task id>: the array's launch, exit record and worker log


def group_key(cfg, resident: bool, device_kind: str) -> tuple | None:
    """What trials of one array share; None for a trial that runs alone."""
    t, d = cfg.training, cfg.data
    if (device_kind != "cpu" or not resident or not isinstance(t.batch_size, int) or t.micro_batch_size is not None
            or t.cuda_graph or t.max_runtime is not None):
        return None
    spec = cfg.model_spec()
    # with metrics, the array serves every trial (labelled `trial`) on its first trial's port and host
    metrics = None if cfg.metrics.port is None else cfg.metrics.host
    return (tuple(spec.sizes), spec.activation.describe(), spec.output.name, spec.dtype.name, t.batch_size,
            str(d.dataset), d.validation, str(d.validation_dataset), d.test, d.standardize, d.label_column,
            cfg.seed, t.fused, cfg.device, metrics)


def groups(plans, device_kind: str) -> list:
    """The runnable TrialPlans as groups, each a list in the plans' order: an array's trials, or
    one lone trial; groups in the order of their first trial."""
    keyed: dict = {}
    out = []
    for tp in plans:
        key = group_key(tp.cfg, tp.resident, device_kind)
        if key is None:
            out.append([tp])
        elif key in keyed:
            keyed[key].append(tp)
        else:
            keyed[key] = [tp]
            out.append(keyed[key])
    return out


@dataclass(frozen=True)
class ArrayConfig:
    """An array task's config for the scheduler and the worker: each trial's JobConfig (its
    dict form under "array"), with an output dir of the array's own for the worker's files."""

    cfgs: tuple
    run_dir: Path

    def to_dict(self) -> dict:
        from memtrain.select.runner import absolute  # noqa: PLC0415 - runner imports this module's users

        first = self.cfgs[0].to_dict()
        d = str(self.run_dir)
        return {"array": [absolute(c.to_dict()) for c in self.cfgs], "output": {"dir": d},
                "checkpoint": {"dir": d}, "training": {"batch_size": first["training"]["batch_size"]},
                "data": {}}


def array_task_id(group) -> str:
    return f"array-{group[0].trial.id}-{len(group)}"


def array_bytes(group) -> int:
    """The array's plan (memory/trials.py: stacked trial buffers, the data set once), without
    the process overhead, which the scheduler adds once for the array's one process."""
    return array_plan([tp.plan for tp in group]).total
