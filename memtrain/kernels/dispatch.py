"""What a GPU step launches: the kernels of this package, with their arguments.

The functions here take a `launcher` (Launcher below compiles with CuPy and
launches; tests pass a recorder) so that the choice of kernels, their order
and their arguments are checked on a machine without a GPU.
"""

from __future__ import annotations

import functools

import numpy as np

from memtrain.kernels import activation, loss, optim
from memtrain.kernels.source import BLOCK, ROW_BLOCK, SC_GRAD_SQ, single

# optimizer name -> (param slots passed after p, g; hyper-parameter attributes)
OPTIMIZER_ARGS = {
    "sgd": ((), ()),
    "momentum": (("v",), ("alpha",)),
    "nesterov": (("v",), ("alpha",)),
    "adagrad": (("r",), ("delta",)),
    "rmsprop": (("r",), ("rho", "delta")),
    "adadelta": (("eg2", "edx2"), ("gamma", "eps")),
    "adam": (("m", "v"), ("beta1", "beta2", "eps")),
    "nadam": (("m", "v"), ("beta1", "beta2", "eps")),
    "radam": (("m", "v"), ("beta1", "beta2", "eps")),
    "rprop": (("step", "prev_sign"), ("eta_plus", "eta_minus", "step_min", "step_max")),
}


@functools.lru_cache(maxsize=None)
def optimizer_kernels(dtype: str) -> dict:
    return optim.kernels(dtype)


@functools.lru_cache(maxsize=None)
def activation_kernels(name: str, dtype: str) -> tuple:
    return activation.forward(name, dtype), activation.backward(name, dtype)


@functools.lru_cache(maxsize=None)
def loss_kernel(name: str, dtype: str):
    return loss.kernel(name, dtype)


@functools.lru_cache(maxsize=None)
def begin_kernel():
    # a new step: its loss starts at 0 (the updates read it to skip a non-finite step)
    return single("step_begin", "float64", [("double*", "sc")],
                  f"sc[{loss.SC_LOSS}] = 0; sc[{SC_GRAD_SQ}] = 0;")


class Launcher:
    """Compiles (compile.raw, cached) and launches on the current stream."""

    def __init__(self):
        import cupy  # noqa: PLC0415 - CuPy only when a kernel is launched

        self.cupy = cupy
        self.sm_count = cupy.cuda.Device().attributes["MultiProcessorCount"]

    def elementwise(self, kernel, n: int, args) -> None:
        from memtrain.kernels.compile import raw  # noqa: PLC0415 - compile.py imports CuPy

        # enough blocks to fill the device; the grid-stride loop covers the rest
        grid = max(1, min(-(-n // BLOCK), self.sm_count * 8))
        raw(kernel)((grid,), (BLOCK,), (np.int64(n), *_scalars(args)))

    def rows(self, kernel, rows: int, args) -> None:
        from memtrain.kernels.compile import raw  # noqa: PLC0415 - compile.py imports CuPy

        raw(kernel)((max(1, rows),), (ROW_BLOCK,), (np.int64(rows), *_scalars(args)))

    def blocks(self, kernel, grid: int, threads: int, args) -> None:
        """A kernel with its own grid (all arguments explicit)."""
        from memtrain.kernels.compile import raw  # noqa: PLC0415 - compile.py imports CuPy

        raw(kernel)((max(1, grid),), (threads,), tuple(_scalars(args)))

    def reduce(self, kernel, n: int, args) -> None:
        """A grid-stride reduction into the step scalars (ROW_BLOCK threads, one atomic add per block)."""
        from memtrain.kernels.compile import raw  # noqa: PLC0415 - compile.py imports CuPy

        grid = max(1, min(-(-n // ROW_BLOCK), self.sm_count * 4))
        raw(kernel)((grid,), (ROW_BLOCK,), (np.int64(n), *_scalars(args)))

    def single(self, kernel, args) -> None:
        from memtrain.kernels.compile import raw  # noqa: PLC0415 - compile.py imports CuPy

        raw(kernel)((1,), (1,), tuple(_scalars(args)))


_DEFAULT = []


def default_launcher() -> Launcher:
    """One Launcher per process, made on first use (it imports CuPy)."""
    if not _DEFAULT:
        _DEFAULT.append(Launcher())
    return _DEFAULT[0]


def _scalars(args):
    """Python numbers as the C types the kernels declare (long long, double)."""
    for a in args:
        if isinstance(a, bool):
            raise TypeError("kernel argument: bool is not a kernel scalar")
        if isinstance(a, int):
            yield np.int64(a)
        elif isinstance(a, float):
            yield np.float64(a)
        else:
            yield a


def optimizer_step(opt, params, grads, state: dict, layout, launcher) -> None:
    """One update of the flat `params`, all on the device (lr in state['step_scalars'])."""
    sc = state["step_scalars"]
    K = optimizer_kernels(params.dtype.name)
    n = params.shape[0]
    if opt.name == "lookahead":
        optimizer_step(opt.inner, params, grads, state, layout, launcher)
        launcher.single(K["tick"], [state["opt.la_count"], sc])
        launcher.elementwise(K["lookahead_sync"], n, [params, state["opt.slow"], state["opt.la_count"], sc,
                                                      int(opt.k), float(opt.alpha)])
        return
    if "opt.count" in state and any(s.name == "count" for s in opt.all_slots()):
        launcher.single(K["tick"], [state["opt.count"], sc])
    if opt.name == "novograd":
        _novograd(opt, params, grads, state, layout, launcher, K)
        return
    slots, hyper = OPTIMIZER_ARGS[opt.name]
    args = [params, grads] + [state[f"opt.{s}"] for s in slots] + [sc]
    if "opt.count" in state and opt.name in ("adam", "nadam", "radam"):
        args.append(state["opt.count"])
    args += [float(getattr(opt, h)) for h in hyper]
    launcher.elementwise(K[opt.name], n, args)


def _novograd(opt, params, grads, state, layout, launcher, K) -> None:
    sc, v, m, count = state["step_scalars"], state["opt.v"], state["opt.m"], state["opt.count"]
    for li, group in enumerate(layout):
        lo, hi = group.offset, group.offset + group.size
        launcher.rows(K["novograd_norm"], 1, [grads[lo:hi], hi - lo, v, li, count, sc, float(opt.beta2)])
        launcher.elementwise(K["novograd"], hi - lo, [params[lo:hi], grads[lo:hi], m[lo:hi], v, li, sc,
                                                      float(opt.beta1), float(opt.eps), float(opt.weight_decay)])


def bias_activation_forward(act, z, bias, out, alpha, launcher) -> None:
    """z += bias (broadcast over rows); out = g(z): one launch."""
    fwd, _ = activation_kernels(act.name, z.dtype.name)
    k = z.shape[1]
    args = [z, bias] + ([alpha] if act.name == "prelu" else []) + [out, k, float(activation.fixed_parameter(act))]
    launcher.elementwise(fwd, z.size, args)


def activation_backward(act, z, a, grad, alpha, galpha, launcher) -> None:
    """z = grad * g'(z); PReLU also sums dL/dalpha into galpha."""
    _, bwd = activation_kernels(act.name, z.dtype.name)
    k = z.shape[1]
    args = [z, a, grad] + ([alpha] if act.name == "prelu" else []) + [k, float(activation.fixed_parameter(act))]
    launcher.elementwise(bwd, z.size, args)
    if act.name == "prelu":
        column_sum(a, galpha, launcher)


@functools.lru_cache(maxsize=None)
def column_sum_kernel(dtype: str):
    return activation.column_sum(dtype)


def column_sum(x, out, launcher) -> None:
    """out = x.sum(axis=0) for a (rows, k) array: the bias gradient."""
    rows, k = x.shape
    cols, lanes = activation.COLUMN_TILE
    launcher.blocks(column_sum_kernel(x.dtype.name), -(-k // cols), cols * lanes, [k, x, rows, out])


def output_loss(output, z, bias, y, out, sc, launcher) -> None:
    """Output bias, output unit, per-row loss added to sc, and dL/dz into `out`: one launch."""
    b, C = z.shape
    launcher.rows(loss_kernel(output.name, z.dtype.name), b, [z, bias, y, out, C, 1.0 / b, sc])


def grad_sq_norm(grads, sc, launcher, slot: int = SC_GRAD_SQ) -> None:
    """sc[slot] += ||grads||^2 on the device (graph mode: SC_GRAD_SQ, read back with the loss).
    The kernel adds to its sc[SC_GRAD_SQ]; another slot is reached through a view of `sc` that
    starts slot - SC_GRAD_SQ elements later."""
    shift = slot - SC_GRAD_SQ
    if not 0 <= shift <= sc.shape[0] - SC_GRAD_SQ - 1:
        raise ValueError(f"grad_sq_norm: slot {slot} is not in the step scalars after SC_GRAD_SQ")
    launcher.reduce(optimizer_kernels(grads.dtype.name)["grad_sq_norm"], grads.shape[0],
                    [grads, sc[shift:] if shift else sc])


def step_begin(sc, launcher) -> None:
    launcher.single(begin_kernel(), [sc])
