"""Optimizer state declared as slots (optax's ScaleByAdamState); each update is a
plain function (PyTorch's functional `adam(...)`) that modifies the flat
parameter, state and scratch arrays it is given in place, run chunk by chunk
(the NumPy reference), or one fused kernel over the whole flat vectors
(`fused_step`, kernels/).

A slot's kind says how big it is:
- "param":     one element per parameter (P elements), in the layout of params
- "per_layer": one element per parameter tensor (W_i, b_i, alpha_i)
- "scalar":    one element (a step counter)
`init_state` allocates nothing itself: the plan lists `opt.<slot>` buffers from
this same declaration, the arena allocates them, and `init_state` fills their
initial values, eagerly, before the first step.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import numpy as np

from memtrain.backend import array_module
from memtrain.memory.slots import CHUNK, Slot, slot_shape
from memtrain.validate import check_scalar


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    return check_scalar(value, name, float, min_val=0, include_boundaries="left" if allow_zero else "neither")


def check_unit(name: str, value, *, closed: bool = False) -> float:
    """A decay rate in [0, 1) (or [0, 1] with closed=True)."""
    return check_scalar(value, name, float, min_val=0, max_val=1, include_boundaries="both" if closed else "left")


def chunks(n: int, size: int = CHUNK):
    for start in range(0, n, size):
        yield start, min(start + size, n)


class KernelArgs(NamedTuple):
    """What an optimizer's fused kernel takes after the parameters and the gradient (Chainer's
    UpdateRule owns its kernel; no dispatcher keeps a table of them)."""

    slots: tuple  # state slots, by name, in the kernel's order ("param" slots sliced with p, others whole)
    scalars: tuple  # the scalar arguments after those arrays (on a GPU after the step scalars `sc`)


@functools.lru_cache(maxsize=None)
def _init_parameters(cls) -> tuple:
    return tuple(n for n in inspect.signature(cls.__init__).parameters if n != "self")


class Optimizer:
    """Base: subclasses set `name`, `slots`, `scratch_count`, keep each `__init__` argument as
    the attribute of the same name (that is `hyper`), implement `update(p, g, st, scratch, pre)`
    on one chunk and, where the fused kernel's scalars are not just the rate, `host_scalars`."""

    name = ""
    slots: tuple = ()
    scratch_count = 1

    def __init__(self, lr: float):
        self.lr = check_positive("lr", lr)

    def all_slots(self) -> tuple:
        return tuple(self.slots)

    @property
    def hyper(self) -> dict:
        """The hyper-parameters, named and ordered as `__init__` takes them (scikit-learn's
        get_params); a wrapped optimizer's (Lookahead's inner) come first, in its place."""
        out = {}
        for name in _init_parameters(type(self)):
            value = getattr(self, name)
            out.update(value.hyper if isinstance(value, Optimizer) else {name: value})
        return out

    def describe(self) -> str:
        return f"{self.name}(" + ", ".join(f"{k}={v:g}" for k, v in self.hyper.items()) + ")"

    _EPS_FIELDS = ("eps", "delta")

    def adapt_to_dtype(self, dtype) -> list:
        """float16 cannot hold an eps of 1e-8 (it rounds to 0 and Adam divides
        0/0 where a gradient is 0): raise eps-like fields to float16's smallest
        normal number. Returns notes saying what changed."""
        notes = []
        if np.dtype(dtype) != np.float16:
            return notes
        tiny = float(np.finfo(np.float16).tiny)
        for target in (self, getattr(self, "inner", None)):
            for field in self._EPS_FIELDS:
                value = getattr(target, field, None) if target is not None else None
                if value is not None and value < tiny:
                    setattr(target, field, tiny)
                    notes.append(f"{target.name} {field} raised from {value:g} to {tiny:g}: float16 rounds it to 0")
        return notes

    def init_state(self, state: dict, params) -> None:
        for slot in self.all_slots():
            state[f"opt.{slot.name}"][...] = slot.init

    def step(self, params, grads, state: dict, scratch, lr: float, layout) -> None:
        """One update of `params` in place, given this step's gradient and rate."""
        t = self._tick(state)
        pre = self.prepare(t, lr)
        param_slots = [s.name for s in self.slots if s.kind == "param"]
        for start, stop in chunks(params.shape[0]):
            st = {name: state[f"opt.{name}"][start:stop] for name in param_slots}
            n = stop - start
            self.update(params[start:stop], grads[start:stop], st, [s[:n] for s in scratch], pre)

    def _tick(self, state) -> int:
        """Advance the step counter if this optimizer declares one; returns t (1-based)."""
        if "opt.count" in state:
            state["opt.count"][...] += 1
            return int(state["opt.count"])
        return 0

    def prepare(self, t: int, lr: float) -> dict:
        """Per-step scalars (bias corrections, the rate), computed once, not per chunk."""
        return {"lr": lr}

    def update(self, p, g, st, s, pre) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # -- the fused kernel (kernels/optim.py on a GPU, kernels/cpu/optim.py on the CPU) ---------
    def kernel_args(self, device: str, pre: dict | None = None) -> KernelArgs:
        """The arguments of this optimizer's fused kernel named `self.name`, after p and g.

        "cpu": the kernel takes this step's scalars, computed on the host in float64 from
        `pre` (this step's `prepare`) as the NumPy reference computes them (`host_scalars`).
        "cuda": the kernel reads the rate from the device's step scalars and t from the step
        counter, which it takes after the "param" slots; its scalars are the hyper-parameters
        after lr, in `__init__` order."""
        slots = self._param_slots
        if device == "cuda":
            counter = tuple(s.name for s in self.slots if s.name == "count")
            return KernelArgs(slots + counter, tuple(float(v) for k, v in self.hyper.items() if k != "lr"))
        return KernelArgs(slots, self.host_scalars(pre))

    def host_scalars(self, pre: dict) -> tuple:
        """The CPU kernel's scalars after its arrays, in its order, as float64 (bool: a flag)."""
        return (pre["lr"],)

    def slot_arrays(self, state: dict, names, lo: int | None = None, hi: int | None = None) -> list:
        """The state arrays `names` for a kernel over params[lo:hi]: "param" slots sliced
        to that range, per-layer and scalar slots whole."""
        kinds = {s.name: s.kind for s in self.all_slots()}
        return [state[f"opt.{n}"][lo:hi] if kinds[n] == "param" else state[f"opt.{n}"] for n in names]

    # per step and trial in a trial array: computed once (an optimizer's slots never change)
    @functools.cached_property
    def _param_slots(self) -> tuple:
        return tuple(s.name for s in self.slots if s.kind == "param")

    @functools.cached_property
    def _counts_steps(self) -> bool:
        return any(s.name == "count" for s in self.slots)

    def step_args(self, kernels, state: dict, lr) -> KernelArgs:
        """Advance this optimizer's step counter and return its fused kernel's arguments for this
        step: what `fused_step` passes, and what a trial array's one kernel per optimizer group
        takes per trial (`fused_rows`)."""
        t = kernels.tick(state, "count") if self._counts_steps else 0
        return self.kernel_args(kernels.device, self.prepare(t, lr) if t is not None else None)

    # a trial array may update trials of this optimizer together (fused_rows); False where an
    # update is not one element-wise kernel over the flat vector (NovoGrad, Lookahead)
    rows_fusable = True

    def group_key(self) -> tuple:
        """Trials whose optimizers have equal keys can run one `fused_rows` kernel: the same update
        and the same hyper-parameter names (their values become per-trial scalars)."""
        return (type(self).__name__, self.name, tuple(self.hyper))

    def fused_rows(self, kernels, arrays, idx, members, lrs) -> None:
        """One fused kernel for several trials of one group (group_key) over their rows of a trial
        array's stacked arrays: arrays = [params, grads, *slot stacks in kernel_args order], idx[a, j]
        the row of arrays[a] that the j-th trial owns, members[j] = (its optimizer, its state dict)
        and lrs[j] its rate. Each trial's scalars are its own `step_args`, so every element gets the
        arithmetic its trial's `fused_step` gives it. On a GPU the rates are in each trial's step
        scalars already (the caller wrote them), the step counters advance on the device and the
        kernel's scalars are each trial's hyper-parameters (kernel_args("cuda")), one column each."""
        if kernels.device == "cuda":
            hp = [opt.kernel_args("cuda").scalars for opt, _ in members]
            hp = np.array(hp, dtype=np.float64).T.reshape(len(hp[0]), len(members))
            kernels.rows(self.name, arrays, idx, hp, "count" in self.kernel_args("cuda").slots)
            return
        sc = None
        for j, ((opt, state), lr) in enumerate(zip(members, lrs, strict=True)):
            scalars = opt.step_args(kernels, state, lr).scalars
            if sc is None:
                sc = kernels.scalar_rows(len(scalars), len(members))
            sc[:, j] = scalars
        kernels.rows(self.name, arrays, idx, sc)

    def fused_step(self, kernels, params, grads, state: dict, lr, layout) -> None:
        """`step`, as one fused kernel over the flat vectors. `kernels` is the device's side
        (kernels/cpu/dispatch.py HostKernels, kernels/dispatch.py DeviceKernels): `device`,
        `tick(state, slot)` (advances a counter; returns t on the host, None where the counter
        lives on the device), `elementwise(name, arrays, scalars)` and, for a trial array,
        `scalar_rows(n, trials)` and `rows(name, arrays, idx, sc)`. lr: this step's rate
        (on a GPU the kernel reads it from the device)."""
        args = self.step_args(kernels, state, lr)
        kernels.elementwise(self.name, [params, grads] + self.slot_arrays(state, args.slots), args.scalars)


COUNT = Slot("count", "scalar", "int64", 0, "steps taken, t")


def standalone_state(optimizer: Optimizer, params, n_groups: int = 1):
    """State and scratch for using an optimizer outside a Trainer (tests, notebooks):
    returns (state, scratch) allocated from the slot declaration, initialised."""
    xp = array_module(params)
    state = {
        f"opt.{slot.name}": xp.zeros(slot_shape(slot, params.shape[0], n_groups), dtype=slot.dtype or params.dtype)
        for slot in optimizer.all_slots()
    }
    optimizer.init_state(state, params)
    scratch = [xp.zeros(min(params.shape[0], CHUNK), dtype=params.dtype) for _ in range(optimizer.scratch_count)]
    return state, scratch
