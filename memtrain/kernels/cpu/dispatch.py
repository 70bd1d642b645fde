"""What a fused CPU step calls: the kernels of this package, with their scalars.

Mirrors memtrain/kernels/dispatch.py (the GPU's): the same per-optimizer slot
order (OPTIMIZER_ARGS), one update call per optimizer over the flat vectors,
one call per layer for bias + activation and for the activation's backward.
The step's scalars are computed on the host, in float64 exactly as the NumPy
reference computes them (Optimizer.prepare), then cast to the compute type.
"""

from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np

from memtrain.kernels.cpu import activation as A
from memtrain.kernels.cpu import optim as K
from memtrain.kernels.cpu.scalar import compute_type, storage, threads
from memtrain.kernels.dispatch import OPTIMIZER_ARGS

# activation name -> the prefix of its kernels in activation.py (<prefix>_forward, <prefix>_backward)
KERNEL = {"identity": "identity", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu",
          "leaky_relu": "generalized_relu", "abs": "generalized_relu", "softplus": "softplus", "swish": "swish",
          "mish": "mish", "gelu": "gelu", "prelu": "prelu"}


def _scalars(opt, pre: dict, T) -> tuple:
    """The kernel's scalar arguments after its arrays, in its order (optim.py)."""
    lr, name = pre["lr"], opt.name
    if name == "sgd":
        return (T(lr),)
    if name in ("momentum", "nesterov"):
        return T(lr), T(opt.alpha)
    if name == "adagrad":
        return T(lr), T(opt.delta)
    if name == "rmsprop":
        return T(lr), T(opt.rho), T(1.0 - opt.rho), T(opt.delta)
    if name == "adadelta":
        return T(lr), T(opt.gamma), T(1.0 - opt.gamma), T(opt.eps)
    if name == "rprop":
        a, b = (opt.eta_plus + opt.eta_minus - 2.0) / 2.0, (opt.eta_plus - opt.eta_minus) / 2.0
        return T(a), T(b), T(opt.step_min), T(opt.step_max)
    b1, b2, bc1 = opt.beta1, opt.beta2, pre["bc1"]
    moments = (T(b1), T(1.0 - b1), T(b2), T(1.0 - b2), T(1.0 / np.sqrt(pre["bc2"])), T(opt.eps))
    if name == "adam":
        return moments + (T(lr / bc1),)
    if name == "nadam":
        return moments + (T(b1 / bc1), T((1.0 - b1) / bc1), T(lr))
    rect = pre["rect"]  # radam
    return moments + ((T(lr * rect / bc1), True) if rect is not None else (T(lr / bc1), False))


def optimizer_step(opt, params, grads, state: dict, lr: float, layout) -> None:
    """One update of the flat `params` in place: Optimizer.step, fused."""
    T = compute_type(params.dtype)
    if opt.name == "lookahead":
        optimizer_step(opt.inner, params, grads, state, lr, layout)
        state["opt.la_count"][...] += 1
        if int(state["opt.la_count"]) % opt.k == 0:
            K.lookahead_sync(storage(params), storage(state["opt.slow"]), T(opt.alpha))
        return
    t = opt._tick(state)
    if opt.name == "novograd":
        m = state["opt.m"]
        for lo, hi, scale in opt.layer_scales(grads, state, t, layout):
            K.novograd(storage(params[lo:hi]), storage(grads[lo:hi]), storage(m[lo:hi]), T(lr), T(opt.beta1),
                       T(scale), T(opt.weight_decay), bool(opt.weight_decay))
        return
    slots, _ = OPTIMIZER_ARGS[opt.name]
    arrays = [storage(params), storage(grads)] + [storage(state[f"opt.{s}"]) for s in slots]
    getattr(K, opt.name)(*arrays, *_scalars(opt, opt.prepare(t, lr), T))


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
    for _ in range(2):  # Lookahead's sync runs on its k-th step; RAdam's branch is a bool argument
        optimizer_step(optimizer, p, np.ones(2, dtype=dt), state, 1e-3, layout)
    if optimizer.name == "lookahead":
        K.lookahead_sync(storage(p), storage(p.copy()), compute_type(dt)(0.5))
    if spec.l1 or spec.l2:
        add_penalty_grad(SimpleNamespace(l1=spec.l1, l2=spec.l2, layout=layout), p, p.copy())
