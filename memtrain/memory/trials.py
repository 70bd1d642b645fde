"""The plan of a trial array: K trials' plans stacked on a trial axis, the data set once.

Every buffer of a trial's own plan (parameters, gradients, optimizer slots,
activations, the epoch's permutation) becomes one row of a stacked buffer with
a leading trial axis; trials whose plans share a buffer (same name, shape and
dtype) share its stacked array, one row each, so the batched GEMMs of the array
read every trial's weights and activations from one array. A buffer only some
trials have (an optimizer's slot, dropout masks, the best weights of early
stopping) has one row per trial that has it. The data set (train and
validation, resident) is listed once: every trial reads the same rows.
The process overhead is counted once, for the whole array.
"""

from __future__ import annotations

from dataclasses import dataclass

from memtrain.errors import ConfigError
from memtrain.memory.plan import Buffer, MemoryPlan

SHARED = ("data_x", "data_y", "val_x", "val_y", "test_x", "test_y")  # one copy for the whole array
# A trial's Python objects (its Trainer, plan, views, history records): about 23 KiB per trial,
# measured with tracemalloc for K = 20 and 40 (tests/test_trials.py holds the plan to it)
TRIAL_OBJECT_BYTES = 24 * 1024


@dataclass(frozen=True)
class Stack:
    """One stacked buffer: its plan entry (shape (rows,) + the trial's shape) and which
    trial owns which row, as (trial index, row) pairs."""

    buffer: Buffer
    source: str  # the buffer's name in a trial's own plan
    rows: tuple


def stacks(plans: list) -> list:
    """The stacked buffers of the trials' plans, in the first trial's buffer order."""
    groups: dict = {}
    for k, plan in enumerate(plans):
        for buf in plan.buffers:
            if buf.name in SHARED:
                continue
            groups.setdefault((buf.name, tuple(buf.shape), buf.dtype), (buf, []))[1].append(k)
    out, seen = [], {}
    for (name, _, _), (buf, trials) in groups.items():
        # the same name with another shape or dtype (two optimizers' slots): a stack of its own
        seen[name] = seen.get(name, 0) + 1
        stacked = name if seen[name] == 1 else f"{name}#{seen[name]}"
        shape = (len(trials), *buf.shape)
        out.append(Stack(Buffer(stacked, buf.category, shape, buf.dtype, buf.layer, buf.batched), name,
                         tuple((k, r) for r, k in enumerate(trials))))
    return out


def array_plan(plans: list, *, overhead_bytes: int = 0, overhead_source: str = "none") -> MemoryPlan:
    """The memory plan of K trials trained as one array (plans: each trial's own, all of the
    same batch size, device and data set). Its total is what the array allocates: the
    stacked buffers, the data set once, each trial's Python objects, plus one process's overhead."""
    if not plans:
        raise ConfigError("trials: an array needs at least one trial")
    first = plans[0]
    for p in plans[1:]:
        if (p.batch_size, p.device, p.rows) != (first.batch_size, first.device, first.rows):
            raise ConfigError(f"trials: every trial of an array needs batch size {first.batch_size} on "
                              f"{first.device}, got {p.batch_size} on {p.device}")
    data = {b.name: b for p in plans for b in p.buffers if b.name in SHARED}
    for p in plans:
        for b in p.buffers:
            if b.name in SHARED and b != data[b.name]:
                raise ConfigError(f"trials: every trial of an array needs the same data set ({b.name} differs)")
    bufs = tuple(s.buffer for s in stacks(plans)) + tuple(data.values())
    overhead = int(overhead_bytes) + len(plans) * TRIAL_OBJECT_BYTES
    return MemoryPlan("train", first.batch_size, first.device, bufs, overhead, overhead_source,
                      micro_batch_size=first.micro_batch_size, numba_kernels=first.numba_kernels)
