"""The memory plan: every buffer a training step (or inference) uses.

The estimate sums it, the batch solver solves it for B, and the trainer
allocates exactly its buffers (memory/arena.py) and runs every operation
inside them. Buffer names here are the contract with nn/step.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from memtrain.errors import ConfigError
from memtrain.memory.slots import CHUNK, slot_shape
from memtrain.units import MAX_BATCH
from memtrain.validate import check_scalar

CATEGORIES = (
    "parameters",
    "gradients",
    "optimizer_state",
    "activations",
    "workspace",
    "data",
    "overhead",
)
CUDA_ALIGNMENT = 512  # CuPy's memory pool rounds every allocation up to this
INTP = np.dtype(np.intp).name


@dataclass(frozen=True)
class Buffer:
    name: str
    category: str
    shape: tuple
    dtype: str
    layer: int | None = None  # the layer the buffer belongs to, for --per-layer
    batched: bool = False  # its size is proportional to the batch size

    def __post_init__(self):
        if self.category not in CATEGORIES:
            raise ValueError(f"buffer {self.name}: unknown category {self.category!r}")

    @property
    def size(self) -> int:
        # Python ints: NumPy's int64 product wraps to negative bytes for huge shapes
        return math.prod(int(d) for d in self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


def round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


@dataclass(frozen=True)
class MemoryPlan:
    mode: str  # "train" or "inference"
    batch_size: int
    device: str  # "cpu" or "cuda"
    buffers: tuple
    overhead_bytes: int = 0
    overhead_source: str = "none"  # "measured", "assumed", "given" or "none"
    micro_batch_size: int | None = None  # rows per forward/backward pass; None: the whole batch
    # the CPU step runs memtrain's numba kernels (no optimizer or activation scratch); False on a GPU,
    # whose step is fused too but counts its own workspace, and for the NumPy reference path
    numba_kernels: bool = False

    @property
    def rows(self) -> int:
        """Rows the batched buffers hold: the micro-batch when accumulating, else the batch."""
        return self.micro_batch_size or self.batch_size

    def allocated(self, buf: Buffer) -> int:
        """Bytes the device really takes for `buf`: CuPy's pool rounds to 512 B."""
        if self.device == "cuda":
            return round_up(buf.nbytes, CUDA_ALIGNMENT)
        return buf.nbytes

    def get(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)

    def names(self) -> list:
        return [b.name for b in self.buffers]

    def by_category(self) -> dict:
        out = dict.fromkeys(CATEGORIES, 0)
        for b in self.buffers:
            out[b.category] += self.allocated(b)
        out["overhead"] += self.overhead_bytes
        return out

    @property
    def buffer_bytes(self) -> int:
        return sum(self.allocated(b) for b in self.buffers)

    @property
    def total(self) -> int:
        return self.buffer_bytes + self.overhead_bytes


# -- builders -----------------------------------------------------------------


def params_buffer(spec) -> Buffer:
    """The flat parameter vector; the model allocates it from this, the plans count it."""
    return Buffer("params", "parameters", (spec.n_params,), spec.dtype.name)


def _slot_buffers(spec, optimizer) -> list:
    """Optimizer state, counted from the optimizer's own slot declaration."""
    groups = len(spec.layout)
    out = []
    for slot in optimizer.all_slots():
        shape = slot_shape(slot, spec.n_params, groups)
        dtype = slot.dtype or spec.dtype.name
        out.append(Buffer(f"opt.{slot.name}", "optimizer_state", shape, np.dtype(dtype).name))
    return out


def _label_buffer(spec, b: int) -> Buffer:
    kind = spec.output.label_kind
    if kind == "class":
        return Buffer("y", "data", (b,), INTP, batched=True)
    return Buffer("y", "data", (b, spec.sizes[-1]), spec.dtype.name, batched=True)


def _loss_buffers(spec, b: int) -> list:
    dt = spec.dtype.name
    out = [Buffer("loss_rows", "workspace", (2, b), dt, batched=True)]
    if spec.output.needs_index:
        out.append(Buffer("label_index", "workspace", (b,), INTP, batched=True))
        out.append(Buffer("row_offsets", "workspace", (b,), INTP, batched=True))
    return out


def uniform_dtype(spec) -> str:
    # Generator.random fills float32/float64 only; float16 models draw in float32.
    return "float64" if spec.dtype.name == "float64" else "float32"


def training_plan(spec, optimizer, batch_size: int, device: str = "cpu", *, micro_batch_size=None,
                  dataset_size=None, resident_rows=None, keep_best: bool = False, overhead_bytes: int = 0,
                  overhead_source: str = "none", fused: bool = True) -> MemoryPlan:
    """Every buffer of one training step at `batch_size` (see docs/memory-model.md).

    With `micro_batch_size` m < batch_size, the step runs in micro-batches of m
    rows whose gradients are averaged (gradient accumulation): everything that
    grows with the batch is sized for m, plus one accumulator of P elements.

    `dataset_size` adds the epoch's permutation (host). `resident_rows` =
    (n_train, n_val) adds the data set itself, kept in the plan's memory (on a
    GPU: resident on the device) instead of streamed batch by batch; a third
    count, n_test, adds the test split a CPU job holds until its final evaluation.

    `fused` (CPU): the step runs memtrain's fused CPU kernels (kernels/cpu), which
    need neither the optimizer's chunk scratch nor an activation scratch; False
    plans the NumPy reference path. A GPU step always runs its fused kernels."""
    B = _check_batch(batch_size)
    device = _device_kind(device)
    fused = bool(fused) and device == "cpu"  # (a GPU plan's workspace is its own, below)
    b = B if micro_batch_size is None else _check_batch(micro_batch_size, "micro_batch_size")
    if b > B:
        raise ConfigError(f"micro_batch_size: {b} is larger than the batch size {B}")
    dt, P = spec.dtype.name, spec.n_params
    bufs = [params_buffer(spec), Buffer("grads", "gradients", (P,), dt)]
    if b < B:
        # the mean gradient over the micro-batches is summed here
        bufs.append(Buffer("grad_accum", "gradients", (P,), dt))
    if keep_best:
        # early stopping restores the best weights, so it keeps a copy of them
        bufs.append(Buffer("best_params", "parameters", (P,), dt))
    bufs += _slot_buffers(spec, optimizer)
    bufs += _data_buffers(spec, b, dataset_size, resident_rows)
    bufs += _activation_buffers(spec, b, fused)
    bufs += _loss_buffers(spec, b)
    bufs += step_workspace(spec, optimizer, device, fused=fused)
    return MemoryPlan("train", B, device, tuple(bufs), int(overhead_bytes), overhead_source,
                      micro_batch_size=b, numba_kernels=fused)


def _activation_buffers(spec, b: int, fused: bool) -> list:
    """Per layer: z (for g'(z)), a = g(z) (the next layer's input, for its weight
    gradient) and the dropout mask, which backprop keeps; the backward workspace."""
    dt, L, sizes = spec.dtype.name, spec.n_layers, spec.sizes
    keep_in, keep_hidden = spec.dropout or (1.0, 1.0)
    bufs = []
    if keep_in < 1.0:
        bufs.append(Buffer("mask0", "activations", (b, sizes[0]), dt, layer=0, batched=True))
    for i in range(1, L + 1):
        k = sizes[i]
        bufs.append(Buffer(f"z{i}", "activations", (b, k), dt, layer=i, batched=True))
        if i < L:
            bufs.append(Buffer(f"a{i}", "activations", (b, k), dt, layer=i, batched=True))
            if keep_hidden < 1.0:
                bufs.append(Buffer(f"mask{i}", "activations", (b, k), dt, layer=i, batched=True))
    bufs.append(Buffer("out", "activations", (b, sizes[-1]), dt, layer=L, batched=True))
    if L >= 2:
        widest = max(spec.hidden)
        # dL/da of a hidden layer; the delta itself is then written over z.
        bufs.append(Buffer("dA", "workspace", (b * widest,), dt, batched=True))
        if spec.activation.needs_scratch and not fused:  # the fused kernels keep intermediates in registers
            bufs.append(Buffer("act_scratch", "workspace", (b * widest,), dt, batched=True))
    drop_widths = ([sizes[0]] if keep_in < 1.0 else []) + (list(spec.hidden) if keep_hidden < 1.0 else [])
    if drop_widths:
        bufs.append(Buffer("dropout_uniform", "workspace", (b * max(drop_widths),), uniform_dtype(spec),
                           batched=True))
    return bufs


def step_workspace(spec, optimizer, device: str, *, fused: bool = True) -> list:
    """The workspace of the update, per device.

    cpu, fused: none: each update is one fused kernel that reads and writes
          every element once (memtrain/kernels/cpu), and so is l1/l2's gradient.
    cpu, NumPy reference: the optimizer's chunk scratch (NumPy needs one buffer
          per intermediate; chunks keep it at CHUNK elements, not P).
    cuda: no optimizer workspace either (memtrain/kernels). Instead the step's
          scalars (lr, the step's loss and gradient norm, ...; 8 float64) live on the device, where
          the kernels and a captured CUDA graph read them. l1/l2 still run
          through the chunked NumPy-style path, so they keep one chunk."""
    P = spec.n_params
    regularised = 1 if (spec.l1 or spec.l2) else 0
    if device == "cpu" and fused:
        return []
    if device == "cuda":
        from memtrain.kernels.source import N_SCALARS  # noqa: PLC0415 - plain constants, no CuPy

        bufs = [Buffer("step_scalars", "workspace", (N_SCALARS,), "float64")]
        if regularised:
            bufs.append(Buffer("chunk", "workspace", (1, min(P, CHUNK)), spec.dtype.name))
        return bufs
    n_scratch = max(optimizer.scratch_count, regularised)
    return [Buffer("chunk", "workspace", (n_scratch, min(P, CHUNK)), spec.dtype.name)] if n_scratch else []


def _data_buffers(spec, b, dataset_size, resident_rows) -> list:
    """The batch, the epoch's permutation, and a resident data set (train, validation[, test])."""
    dt, width = spec.dtype.name, spec.sizes[0]
    bufs = [Buffer("x", "data", (b, width), dt, batched=True), _label_buffer(spec, b)]
    if dataset_size:
        bufs.append(Buffer("order", "data", (int(dataset_size),), INTP))
    for prefix, n in zip(("data", "val", "test"), resident_rows or ()):
        if n:
            bufs.append(Buffer(f"{prefix}_x", "data", (int(n), width), dt))
            label = _label_buffer(spec, int(n))
            bufs.append(Buffer(f"{prefix}_y", "data", label.shape, label.dtype))
    return bufs


def inference_plan(spec, batch_size: int, device: str = "cpu", *, overhead_bytes: int = 0,
                   overhead_source: str = "none") -> MemoryPlan:
    """Inference keeps a layer's output only until the next layer is computed
    (course: memory slides), so two ping-pong buffers serve every layer: all
    z's go to `ping`, all g(z)'s to `pong`."""
    b = _check_batch(batch_size)
    dt = spec.dtype.name
    widest = max(spec.sizes[1:])
    bufs = [
        params_buffer(spec),
        Buffer("x", "data", (b, spec.sizes[0]), dt, batched=True),
        _label_buffer(spec, b),
        Buffer("ping", "activations", (b * widest,), dt, batched=True),
        Buffer("pong", "activations", (b * widest,), dt, batched=True),
    ]
    if spec.n_layers >= 2 and spec.activation.needs_scratch and spec.activation.params_per_unit:
        # only PReLU's forward needs a scratch (GELU/Mish/Swish need theirs in backward)
        bufs.append(Buffer("act_scratch", "workspace", (b * max(spec.hidden),), dt, batched=True))
    bufs += _loss_buffers(spec, b)
    return MemoryPlan("inference", b, _device_kind(device), tuple(bufs), int(overhead_bytes), overhead_source)


def _check_batch(batch_size, field: str = "batch_size") -> int:
    return check_scalar(batch_size, field, int, min_val=1, max_val=MAX_BATCH,
                        expected=f"a positive integer at most {MAX_BATCH:,}")


def _device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"
