"""Forward, loss and backward of an MLP inside a plan's buffers.

Every operation writes into a buffer the plan listed (`out=`, in place), so a
step allocates nothing whose size grows with the batch or the parameter
count. Names of buffers are those memory/plan.py gives them.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from memtrain.backend import array_module
from memtrain.kernels.source import SC_EAGER_NORM
from memtrain.memory.slots import CHUNK
from memtrain.optim.base import chunks


def layer_views(spec, flat) -> list:
    """[None, (W1, b1, alpha1|None), ..., (WL, bL, None)] as views into `flat`."""
    views = [None] + [[None, None, None] for _ in range(spec.n_layers)]
    slot = {"weight": 0, "bias": 1, "alpha": 2}
    for g in spec.layout:
        views[g.layer][slot[g.kind]] = g.view(flat)
    return [None] + [tuple(v) for v in views[1:]]


def fill_offsets(offsets, width: int) -> None:
    """offsets[i] = i * width, without a temporary arange: cumsum of a constant."""
    xp = array_module(offsets)
    offsets[...] = width
    xp.cumsum(offsets, out=offsets)
    offsets -= width


class StepBuffers:
    """Per-batch views (b <= B rows) of a plan's arrays, for training or inference."""

    def __init__(self, spec, arrays: dict, mode: str, cpu=None):
        """cpu: the fused CPU activation kernels (train/step_kernels.py NumbaStep) when the plan is
        a fused CPU plan (it has no activation scratch: bias + activation and its backward run as
        fused kernels)."""
        self.spec, self.arrays, self.mode, self.cpu = spec, arrays, mode, cpu
        self.B = arrays["x"].shape[0]
        if "row_offsets" in arrays:
            fill_offsets(arrays["row_offsets"], spec.sizes[-1])
        self._cache = (None, None)

    def at(self, b: int) -> SimpleNamespace:
        if self._cache[0] == b:
            return self._cache[1]
        A, spec, L = self.arrays, self.spec, self.spec.n_layers
        sizes = spec.sizes
        v = SimpleNamespace(b=b, x=A["x"][:b], y=A["y"][:b], rows=A["loss_rows"],
                            index=A.get("label_index"), offsets=A.get("row_offsets"))
        flat = lambda name, k: A[name][: b * k].reshape(b, k) if name in A else None  # noqa: E731
        if self.mode == "train":
            v.z = [None] + [A[f"z{i}"][:b] for i in range(1, L + 1)]
            v.a = [None] + [A[f"a{i}"][:b] for i in range(1, L)]
            v.mask = [A[f"mask{i}"][:b] if f"mask{i}" in A else None for i in range(L)]
            v.out = A["out"][:b]
            v.dA = [None] + [flat("dA", sizes[i]) for i in range(1, L)]
        else:
            # ping-pong: every z in ping, every g(z) in pong (plan.inference_plan)
            v.z = [None] + [flat("ping", sizes[i]) for i in range(1, L + 1)]
            v.a = [None] + [flat("pong", sizes[i]) for i in range(1, L)]
            v.mask = [None] * L
            v.out = flat("pong", sizes[-1])
            v.dA = None
        v.scratch = [None] + [flat("act_scratch", sizes[i]) for i in range(1, L)]
        v.uniform = A.get("dropout_uniform")
        # GPU plans carry the step's scalars: training then runs memtrain's fused kernels
        v.sc = A.get("step_scalars") if self.mode == "train" else None
        v.fused = False
        v.cpu = self.cpu
        self._cache = (b, v)
        return v


def sample_mask(rng, mask, keep: float, uniform) -> None:
    """Inverted dropout: mask = 1(u < keep) / keep, drawn per minibatch."""
    xp = array_module(mask)
    b, k = mask.shape
    u = uniform[: b * k].reshape(b, k)
    rng.random(out=u, dtype=u.dtype)
    xp.less(u, keep, out=mask)
    mask *= 1.0 / keep


def forward(spec, layers, v, *, train: bool, rng=None, resample: bool = True) -> None:
    """z_i = h_{i-1} W_i + b_i; h_i = g(z_i) (times the dropout mask when training).
    Leaves the output layer's logits in v.z[L]. (A trial array, train/trials.py, runs the same
    pieces with its GEMMs batched over the trials.)"""
    xp = array_module(v.x)
    h = forward_input(v, train=train, rng=rng, resample=resample, keep=(spec.dropout or (1.0, 1.0))[0])
    for i in range(1, spec.n_layers + 1):
        xp.matmul(h, layers[i][0], out=v.z[i])
        h = forward_layer(spec, layers, v, i, train=train, rng=rng, resample=resample)


def forward_input(v, *, train: bool, rng=None, resample: bool = True, keep: float = 1.0):
    """The first layer's input: the batch, times the input dropout mask when training."""
    v.fused = bool(train and getattr(v, "sc", None) is not None)
    h = v.x
    if train and v.mask[0] is not None:
        if resample:
            sample_mask(rng, v.mask[0], keep, v.uniform)
        h *= v.mask[0]  # in place: the batch buffer is refilled for every step
    return h


def forward_layer(spec, layers, v, i: int, *, train: bool, rng=None, resample: bool = True):
    """After z_i = h W_i: the bias, g and the dropout mask; returns the next layer's input
    (None after the output layer, whose bias the loss adds on a GPU)."""
    act, L = spec.activation, spec.n_layers
    fused, cpu = v.fused, getattr(v, "cpu", None)  # cpu: fused CPU kernels, in training and evaluation
    _, bias, alpha = layers[i]
    z = v.z[i]
    if fused:
        # one launch for bias + g; the output layer's bias is added by the loss kernel
        v.out_bias = bias
        if i < L:
            _kernels().bias_activation_forward(act, z, bias, v.a[i], alpha, _kernels().default_launcher())
    elif cpu is not None and i < L:
        cpu.bias_activation_forward(act, z, bias, v.a[i], alpha)  # one pass, no scratch
    else:
        z += bias
    if i == L:
        return None
    if not fused and cpu is None:
        act.forward(z, v.a[i], v.scratch[i], alpha)
    return hidden_dropout(spec, v, i, train=train, rng=rng, resample=resample)


def hidden_dropout(spec, v, i: int, *, train: bool, rng=None, resample: bool = True):
    """a_i times its dropout mask when training; returns a_i, the next layer's input."""
    h = v.a[i]
    if train and v.mask[i] is not None:
        if resample:
            sample_mask(rng, v.mask[i], spec.dropout[1], v.uniform)
        h *= v.mask[i]
    return h


def loss_sum(spec, v, *, read: bool = True):
    """Sum of the per-sample losses of the batch; the outputs are left in v.out.
    After a fused (GPU training) forward, one kernel leaves dL/dz in v.out instead
    and adds the loss to the device scalars; read=False then returns None
    without synchronising (a captured CUDA graph)."""
    if getattr(v, "fused", False):
        k = _kernels()
        k.step_begin(v.sc, k.default_launcher())
        k.output_loss(spec.output, v.z[spec.n_layers], v.out_bias, v.y, v.out, v.sc, k.default_launcher())
        return float(v.sc[1]) if read else None
    return spec.output.loss_sum(v.z[spec.n_layers], v.out, v.y, v.rows, v.index, v.offsets)


def _kernels():
    from memtrain.kernels import dispatch  # noqa: PLC0415 - GPU only; imports no CuPy itself

    return dispatch


def backward(spec, layers, glayers, v) -> None:
    """Backprop (course): delta at the output = dL/dz; below,
    delta_j = g'(z_j) sum_k W_kj delta_k; dL/dW = u delta; dL/db = delta.
    Needs loss_sum() to have run (it leaves the outputs in v.out)."""
    xp = array_module(v.x)
    delta = backward_output(spec, v)
    for i in range(spec.n_layers, 0, -1):
        xp.matmul(layer_input(v, i).T, delta, out=glayers[i][0])
        bias_grad(spec, glayers, v, i, delta)
        if i > 1:
            xp.matmul(delta, layers[i][0].T, out=v.dA[i - 1])
            delta = backward_hidden(spec, layers, glayers, v, i - 1)


def backward_output(spec, v):
    """dL/dz of the output layer, in v.out (the fused GPU loss kernel already left it there)."""
    if not getattr(v, "fused", False):
        spec.output.delta(v.out, v.y, v.rows, v.index)
    return v.out


def layer_input(v, i: int):
    """What layer i multiplied its weights with (dropout applied): its weight gradient's left factor."""
    return v.a[i - 1] if i > 1 else v.x


def bias_grad(spec, glayers, v, i: int, delta) -> None:
    """dL/db_i = delta summed over rows; the fused CPU backward of a hidden layer sums it itself."""
    gb = glayers[i][1]
    if getattr(v, "fused", False):
        _kernels().column_sum(delta, gb, _kernels().default_launcher())
    elif getattr(v, "cpu", None) is None or i == spec.n_layers:
        array_module(delta).sum(delta, axis=0, out=gb)


def backward_hidden(spec, layers, glayers, v, j: int):
    """After dA = delta_{j+1} W_{j+1}^T: the dropout mask and g'(z_j); returns delta_j (written over z_j)."""
    dA = v.dA[j]
    if v.mask[j] is not None:
        dA *= v.mask[j]
    act = spec.activation
    _, _, alpha = layers[j]
    _, gb_below, galpha = glayers[j]
    if getattr(v, "fused", False):
        _kernels().activation_backward(act, v.z[j], v.a[j], dA, alpha, galpha, _kernels().default_launcher())
    elif getattr(v, "cpu", None) is not None:
        v.cpu.activation_backward(act, v.z[j], v.a[j], dA, alpha, galpha, gb_below)
    else:
        act.backward(v.z[j], v.a[j], dA, v.scratch[j], alpha, galpha)
    return v.z[j]


def weight_groups(spec):
    return [g for g in spec.layout if g.kind == "weight"]


def penalty(spec, params, scratch) -> float:
    """l2 * sum ||W||_F^2 + l1 * sum |W|, weights only, never biases (course: regularisation)."""
    xp = array_module(params)
    total = 0.0
    for g in weight_groups(spec):
        w = params[g.offset : g.offset + g.size]
        if spec.l2:
            total += spec.l2 * float(xp.dot(w, w))
        if spec.l1:
            for a, b in chunks(g.size, scratch.shape[-1] if scratch is not None else CHUNK):
                s = scratch[0][: b - a]
                xp.abs(w[a:b], out=s)
                total += spec.l1 * float(s.sum(dtype="float64"))
    return total


def add_penalty_grad(spec, params, grads, scratch) -> None:
    """grads_W += 2 l2 W + l1 sign(W)."""
    if not (spec.l1 or spec.l2):
        return
    xp = array_module(params)
    for g in weight_groups(spec):
        w = params[g.offset : g.offset + g.size]
        gw = grads[g.offset : g.offset + g.size]
        for a, b in chunks(g.size, scratch.shape[-1]):
            s = scratch[0][: b - a]
            if spec.l2:
                xp.multiply(w[a:b], 2.0 * spec.l2, out=s)
                gw[a:b] += s
            if spec.l1:
                xp.sign(w[a:b], out=s)
                s *= spec.l1
                gw[a:b] += s


def clip_by_norm(grads, max_norm, sc=None) -> float:
    """Scale the whole gradient down to `max_norm` if it is longer (course: cliffs,
    exploding gradients). Returns the norm before clipping. `sc`: a GPU plan's step scalars."""
    norm = math.sqrt(squared_norm(grads, sc))
    if max_norm is not None and norm > max_norm:
        grads *= max_norm / norm
    return norm


def squared_norm(x, sc=None) -> float:
    """sum x^2. float16 is summed in float32 pieces on the CPU (its dot overflows past 65504);
    on a GPU (`sc`, the plan's step scalars) by the fused reduction, which reads float16 and sums
    in double: one launch and one read back, not one per piece."""
    xp = array_module(x)
    if x.dtype.itemsize >= 4:
        return float(xp.dot(x, x))
    if sc is not None and xp.__name__ != "numpy":
        k = _kernels()
        sc[SC_EAGER_NORM] = 0.0
        k.grad_sq_norm(x, sc, k.default_launcher(), slot=SC_EAGER_NORM)
        return float(sc[SC_EAGER_NORM])
    total = 0.0
    for a, b in chunks(x.shape[0], 1024):
        piece = x[a:b].astype("float32")  # bounded: 4 KiB
        total += float(xp.dot(piece, piece))
    return total
