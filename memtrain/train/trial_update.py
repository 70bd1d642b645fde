"""A trial array's optimizer updates: one fused kernel per optimizer group and step.

Trials whose optimizers have the same update and the same hyper-parameter names
(Optimizer.group_key) form a group. After each trial's own l1/l2, clipping,
non-finite guard and schedule (Trainer.update_rate, on the host), the group's
trials that update this step run one `<optimizer>_rows` kernel over their rows of
the stacked parameters, gradients and slots, each with its own scalars (rate,
bias corrections, step count, hyper-parameters): Optimizer.fused_rows. A trial's
elements get exactly the arithmetic of its lone `fused_step`, so it stays
bit-identical to its lone run. A trial skipped this step (non-finite) or no longer
training is simply not among the kernel's rows.

The guard stays on the host on a GPU too: the loss and the gradient norm are read
back per trial and step, because a lone GPU run reads them there (its norm is one
cuBLAS dot: a device reduction of the whole stack would sum in another order and
clip with other bits). What the group saves there is launches: per group one copy
of the rates, one scatter into the trials' step scalars, one `tick_rows`, one
`<optimizer>_rows`, in place of a fill, a tick and an update per trial.

The l1/l2 penalties of the trials that have one (on the CPU) are one call per
step too (`penalized`, `add_penalties`): each trial's weights with its own l1, l2.

Per trial, as before: NovoGrad and Lookahead (their updates are not one
element-wise kernel: per-tensor norms, a sync every k steps), trials on the NumPy
reference path (fused=False, or numba missing), and a group's only trial to
update this step (the flat kernel it runs alone; no rows kernel compiled for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memtrain.kernels import dispatch
from memtrain.kernels.source import SC_LR
from memtrain.memory.trials import stacks


@dataclass
class Group:
    """Trials of one optimizer group: their indices, the stacked arrays their kernel takes
    ([params, grads, *slots]) and idx[a, j], the row of arrays[a] that trial trials[j] owns."""

    trials: list
    arrays: list
    idx: np.ndarray
    device_kernels: object = None  # on a GPU: the launcher's kernels, made at the first step, kept


def _key(result, rows: dict):
    """The group a trial can share a kernel with, or None (it updates alone)."""
    tr = result.trainer
    opt = tr.optimizer
    if tr.kernels.name not in ("numba", "cuda") or not opt.rows_fusable:
        return None
    return opt.group_key(), tuple(rows[(result.index, n)][0] for n in _names(result)[2:])


def optimizer_groups(results, plans, arrays: dict) -> list:
    """The groups of two or more trials (stacks: the array's stacked buffers of `plans`)."""
    rows = {(k, s.source): (s.buffer.name, r) for s in stacks(plans) for k, r in s.rows}
    members: dict = {}
    for res in results:
        key = _key(res, rows)
        if key is not None:
            members.setdefault(key, []).append(res.index)
    groups = []
    for (_, slot_stacks), trials in members.items():
        if len(trials) < 2:
            continue
        names = _names(results[trials[0]])
        stacked = [rows[(trials[0], n)][0] for n in names[:2]] + list(slot_stacks)
        idx = np.array([[rows[(k, n)][1] for k in trials] for n in names], dtype=np.int64)
        groups.append(Group(trials, [arrays[name] for name in stacked], idx))
        first = results[trials[0]].trainer
        if first.kernels.name == "numba":  # its rows kernel compiled now, not in the first step
            first.kernels.cpu.warm_rows(first.optimizer, first.spec.dtype)
    return groups


def _names(result) -> list:
    """The trainer buffers a rows kernel takes, in order: params, grads, the optimizer's slots as its
    kernel names them and, on a GPU, the step scalars (where each trial's rate is)."""
    tr = result.trainer
    device = "cuda" if tr.kernels.name == "cuda" else "cpu"
    slots = tr.optimizer.kernel_args(device, tr.optimizer.prepare(1, 1.0)).slots
    return ["params", "grads"] + [f"opt.{n}" for n in slots] + (["step_scalars"] if device == "cuda" else [])


def update(results, groups: list, lrs: dict) -> None:
    """The optimizer updates of one step: lrs[k], the rate of each trial k that updates (the
    others skipped: non-finite, or not training). Each updated trial's `steps` advances."""
    grouped = set()
    for g in groups:
        cols = [j for j, k in enumerate(g.trials) if k in lrs]
        grouped.update(g.trials)
        if len(cols) == 1:
            grouped.discard(g.trials[cols[0]])  # alone this step: its own flat kernel
        elif cols:
            _group_update(results, g, cols, lrs)
    for k, lr in lrs.items():
        tr = results[k].trainer
        if k not in grouped:
            tr.kernels.optimizer_step(tr.optimizer, tr.model.params, tr.grads, tr.arrays, lr, tr.spec.layout)
        tr.steps += 1


def _group_update(results, g: Group, cols: list, lrs: dict) -> None:
    """One rows kernel for the trials g.trials[j], j in cols (two or more)."""
    trainers = [results[g.trials[j]].trainer for j in cols]
    idx = g.idx if len(cols) == len(g.trials) else np.ascontiguousarray(g.idx[:, cols])  # the kernel's layout
    rates = [lrs[g.trials[j]] for j in cols]
    first = trainers[0]
    if first.kernels.name == "cuda":
        # every rate in one copy, scattered into each trial's step scalars on the device
        sc = g.arrays[-1]
        xp = first.backend.xp
        sc[dispatch.on_device(idx[-1], sc), SC_LR] = xp.asarray(np.array(rates, dtype=np.float64))
        idx = np.vstack([idx, np.arange(len(cols), dtype=np.int64)])  # each trial's column of hp
        if g.device_kernels is None:  # once per group, not every step
            g.device_kernels = dispatch.DeviceKernels(dispatch.default_launcher(), None, first.spec.dtype.name)
        kernels = g.device_kernels
    else:
        kernels = first.kernels.cpu.HOST
    first.optimizer.fused_rows(kernels, g.arrays, idx, [(t.optimizer, t.arrays) for t in trainers], rates)


def penalized(results, plans) -> dict:
    """Trial index -> (params stack, its row, grads stack, its row) for each trial on the fused CPU
    kernels with an l1 or l2 penalty, when two or more have one (else {}: each adds its own)."""
    rows = {(k, s.source): (s.buffer.name, r) for s in stacks(plans) for k, r in s.rows}
    out = {r.index: (*rows[(r.index, "params")], *rows[(r.index, "grads")]) for r in results
           if r.trainer.kernels.name == "numba" and (r.trainer.spec.l1 or r.trainer.spec.l2)}
    if len(out) < 2:
        return {}
    first = results[next(iter(out))].trainer
    first.kernels.cpu.warm_penalty_rows(first.spec)  # compiled now, not in the first step
    return out


def add_penalties(results, pen: dict, arrays: dict, trials) -> set:
    """grads_W += 2 l2 W + l1 sign(W) for the trials of this step that have a penalty, in one call
    (two or more of them); returns the indices it did, whose update_rate then skips its own."""
    ks = [r.index for r in trials if r.index in pen]
    if len(ks) < 2:
        return set()
    params, grads = pen[ks[0]][0], pen[ks[0]][2]
    idx = np.array([[pen[k][1] for k in ks], [pen[k][3] for k in ks]], dtype=np.int64)
    results[ks[0]].trainer.kernels.cpu.add_penalty_grad_rows([results[k].trainer.spec for k in ks], arrays[params],
                                                             arrays[grads], idx)
    return set(ks)
