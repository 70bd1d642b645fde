"""What a fused CPU step calls: the kernels of this package, with their scalars.

The CPU twin of memtrain/kernels/dispatch.py (the GPU's). Each optimizer owns
its kernel's arguments (Optimizer.kernel_args: the state slots in the kernel's
order and the step's scalars, computed on the host in float64 exactly as the
NumPy reference computes them, Optimizer.prepare) and drives its update
(Optimizer.fused_step) through `HOST`; `run` casts the scalars to the compute
type and calls the kernel. One call per layer for bias + activation and for
the activation's backward.
"""

from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np

from memtrain.kernels.cpu import activation as A
from memtrain.kernels.cpu import optim as K
from memtrain.kernels.cpu.scalar import compute_type, storage, threads

# activation name -> the prefix of its kernels in activation.py (<prefix>_forward, <prefix>_backward)
KERNEL = {"identity": "identity", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
          "leaky_relu": "generalized_relu", "abs": "generalized_relu", "softplus": "softplus", "swish": "swish",
          "mish": "mish", "gelu": "gelu", "prelu": "prelu"}


def run(name: str, arrays, scalars) -> None:
    """The fused kernel `name` of optim.py over flat arrays (the first one's length; float16 passed
    as its bits) and its scalars: floats cast to the first array's compute type, flags (bool) as
    they are. One optimizer's update on a slice is `run(opt.name, [p, g, *slots], args.scalars)`
    with `args = opt.kernel_args("cpu", opt.prepare(t, lr))`."""
    T = compute_type(arrays[0].dtype)
    getattr(K, name)(*(storage(a) for a in arrays), *(s if isinstance(s, bool) else T(s) for s in scalars))


def run_rows(name: str, arrays, idx, sc) -> None:
    """The kernel `<name>_rows` of optim.py over rows of stacked (K, P) arrays: idx[a, j] is the
    row of arrays[a] that the j-th updated trial owns, sc[s, j] its s-th scalar (float64, cast here
    to the compute type as `run` casts each scalar; a flag as 1.0 or 0.0)."""
    T = compute_type(arrays[0].dtype)
    getattr(K, name + "_rows")(*(storage(a) for a in arrays), idx, sc.astype(T, copy=False))


class HostKernels:
    """The CPU side of Optimizer.fused_step: step counters advance on the host (tick returns t)."""

    device = "cpu"

    @staticmethod
    def tick(state: dict, slot: str) -> int:
        counter = state[f"opt.{slot}"]
        counter[...] += 1
        return int(counter)

    @staticmethod
    def elementwise(name: str, arrays, scalars) -> None:
        run(name, arrays, scalars)

    @staticmethod
    def scalar_rows(n: int, trials: int):
        """Per-trial scalars of one rows kernel, filled on the host in float64 (run_rows casts them)."""
        return np.empty((n, trials), dtype=np.float64)

    @staticmethod
    def rows(name: str, arrays, idx, sc) -> None:
        run_rows(name, arrays, idx, sc)


HOST = HostKernels()


def optimizer_step(opt, params, grads, state: dict, lr: float, layout) -> None:
    """One update of the flat `params` in place: Optimizer.step, fused."""
    opt.fused_step(HOST, params, grads, state, lr, layout)


def add_penalty_grad(spec, params, grads) -> None:
    """grads_W += 2 l2 W + l1 sign(W), weights only (nn/step.py add_penalty_grad, fused)."""
    if not (spec.l1 or spec.l2):
        return
    T = compute_type(params.dtype)
    for g in spec.layout:
        if g.kind == "weight":
            lo, hi = g.offset, g.offset + g.size
            K.penalty_grad(storage(params[lo:hi]), storage(grads[lo:hi]), T(2.0 * spec.l2), T(spec.l1),
                           bool(spec.l2), bool(spec.l1))


def add_penalty_grad_rows(specs, params, grads, idx) -> None:
    """add_penalty_grad for several trials of a trial array in one call: specs[j] is the spec (its
    l1, l2) of the trial whose rows of the stacked params and grads are idx[0, j] and idx[1, j]."""
    T = compute_type(params.dtype)
    sc = np.array([[2.0 * s.l2, s.l1, bool(s.l2), bool(s.l1)] for s in specs], dtype=np.float64).T.astype(T)
    bounds = np.array([[g.offset, g.offset + g.size] for g in specs[0].layout if g.kind == "weight"], dtype=np.int64)
    K.penalty_grad_rows(storage(params), storage(grads), np.ascontiguousarray(idx), bounds, np.ascontiguousarray(sc))


def _act_params(act, T, backward: bool) -> tuple:
    if act.name in ("leaky_relu", "abs"):
        # forward: p1 > 0 takes max(z, alpha z) (alpha <= 1), else min; backward: p1 = 1 - alpha
        p1 = (1.0 - act.alpha) if backward else (1.0 if act.alpha <= 1 else -1.0)
        return T(act.alpha), T(p1)
    if act.name == "swish":
        return T(act.beta), T(0.0)
    return T(0.0), T(0.0)


def bias_activation_forward(act, z, bias, out, alpha) -> None:
    """z += bias (broadcast over rows); out = g(z): one pass."""
    if act.name == "prelu":
        A.prelu_forward(storage(z), storage(bias), storage(alpha), storage(out))
        return
    T = compute_type(z.dtype)
    fwd = getattr(A, KERNEL[act.name] + "_forward")
    fwd(storage(z), storage(bias), storage(out), *_act_params(act, T, False))


def activation_backward(act, z, a, grad, alpha, galpha, gbias) -> None:
    """z = grad * g'(z) and gbias = z summed over rows (the layer's bias gradient), one pass;
    PReLU also sums dL/dalpha into galpha (over rows, on the host)."""
    if act.name == "prelu":
        A.prelu_backward(storage(z), storage(a), storage(grad), storage(alpha), storage(gbias))
        np.sum(a, axis=0, out=galpha)
        return
    T = compute_type(z.dtype)
    bwd = getattr(A, KERNEL[act.name] + "_backward")
    bwd(storage(z), storage(a), storage(grad), storage(gbias), *_act_params(act, T, True))


_THREADS = []


def use_threads() -> None:
    """At the start of a step: numba's thread count for this thread (it is per thread), as
    scalar.threads() said when the step was built."""
    numba.set_num_threads(_THREADS[0] if _THREADS else 1)


def warm(spec, optimizer) -> None:
    """Compile (or load from numba's on-disk cache) every kernel a step of this model and
    optimizer calls, on one-element arrays of its dtype: before the first step, so that
    neither its time nor numba's allocations land inside a measured step."""
    _THREADS[:] = [threads()]
    use_threads()
    dt = spec.dtype
    one = np.ones((1, 1), dtype=dt)
    hidden = spec.n_layers >= 2
    if hidden:
        alpha = np.ones(1, dtype=dt)
        bias_activation_forward(spec.activation, one.copy(), alpha.copy(), one.copy(), alpha.copy())
        activation_backward(spec.activation, one.copy(), one.copy(), one.copy(), alpha.copy(), alpha.copy(),
                            alpha.copy())
    p = np.ones(2, dtype=dt)
    state = {f"opt.{s.name}": np.zeros({"param": 2, "per_layer": 1, "scalar": ()}[s.kind], dtype=s.dtype or dt)
             for s in optimizer.all_slots()}
    optimizer.init_state(state, p)
    layout = [SimpleNamespace(offset=0, size=2, kind="weight")]
    # enough steps for every kernel of the update to run once: a wrapper that syncs every k
    # steps (Lookahead) syncs on the k-th; RAdam's two branches are one kernel (a bool argument)
    for _ in range(max(2, int(getattr(optimizer, "k", 0)))):
        optimizer_step(optimizer, p, np.ones(2, dtype=dt), state, 1e-3, layout)
    if spec.l1 or spec.l2:
        add_penalty_grad(SimpleNamespace(l1=spec.l1, l2=spec.l2, layout=layout), p, p.copy())


def warm_rows(optimizer, dtype) -> None:
    """Compile (or load) the rows kernel of `optimizer`'s group (Optimizer.fused_rows), on two
    rows of two elements: a trial array calls it when it is built, before its first step."""
    dt = np.dtype(dtype)
    states = []
    for _ in range(2):
        state = {f"opt.{s.name}": np.zeros({"param": 2, "per_layer": 1, "scalar": ()}[s.kind], dtype=s.dtype or dt)
                 for s in optimizer.all_slots()}
        optimizer.init_state(state, np.ones(2, dtype=dt))
        states.append(state)
    names = optimizer.kernel_args("cpu", optimizer.prepare(1, 1.0)).slots
    arrays = [np.ones((2, 2), dtype=dt), np.ones((2, 2), dtype=dt)]
    arrays += [np.stack([st[f"opt.{n}"] for st in states]) for n in names]
    idx = np.tile(np.arange(2, dtype=np.int64), (len(arrays), 1))
    optimizer.fused_rows(HOST, arrays, idx, [(optimizer, st) for st in states], [1e-3, 1e-3])


def warm_penalty_rows(spec) -> None:
    """Compile (or load) add_penalty_grad_rows for `spec`'s dtype, on two rows of one weight."""
    layout = [SimpleNamespace(offset=0, size=2, kind="weight")]
    one = SimpleNamespace(l1=1e-3, l2=1e-3, layout=layout)
    p = np.ones((2, 2), dtype=spec.dtype)
    add_penalty_grad_rows([one, one], p, p.copy(), np.tile(np.arange(2, dtype=np.int64), (2, 1)))
