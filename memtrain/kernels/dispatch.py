"""What a GPU step launches: the kernels of this package, with their arguments.

The functions here take a `launcher` (Launcher below compiles with CuPy and
launches; tests pass a recorder) so that the choice of kernels, their order
and their arguments are checked on a machine without a GPU.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from memtrain.kernels import activation, loss, optim
from memtrain.kernels.source import BLOCK, ROW_BLOCK, SC_GRAD_SQ


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
    return loss.step_begin()


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

    def elementwise_rows(self, kernel, n: int, trials: int, args) -> None:
        """A rows kernel over `trials` rows of n elements: blockIdx.y is the trial; the blocks of
        all rows together fill the device, as one flat kernel's do."""
        from memtrain.kernels.compile import raw  # noqa: PLC0415 - compile.py imports CuPy

        grid = max(1, min(-(-n // BLOCK), self.sm_count * 8 // max(1, trials)))
        raw(kernel)((grid, max(1, trials)), (BLOCK,), (np.int64(n), *_scalars(args)))

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


class DeviceKernels:
    """The GPU side of Optimizer.fused_step: step counters stay on the device (tick launches
    the tick kernel and returns None: t is not known on the host), and a kernel takes the step
    scalars `sc` after its arrays, before its own scalars (kernels/optim.py)."""

    device = "cuda"

    def __init__(self, launcher, sc, dtype: str):
        self.launcher, self.sc, self.kernels = launcher, sc, optimizer_kernels(dtype)

    def tick(self, state: dict, slot: str) -> None:
        self.launcher.single(self.kernels["tick"], [state[f"opt.{slot}"], self.sc])

    def elementwise(self, name: str, arrays, scalars) -> None:
        self.launcher.elementwise(self.kernels[name], arrays[0].shape[0], [*arrays, self.sc, *scalars])

    def rows(self, name: str, arrays, idx, hp, counter: bool) -> None:
        """The update `name` for several trials of a trial array in one launch (`<name>_rows`), after
        one `tick_rows` launch where the update has a step counter. arrays: [p, g, *slots, sc] as
        stacks (K, ...); idx: host int64 (len(arrays) + 1, J), the row of each array that the j-th
        trial owns, then its column of hp, the per-trial hyper-parameters (host float64, (H, G)).
        Both are copied to the device once and kept (they change only when trials leave)."""
        trials = idx.shape[1]
        d_idx, d_hp = on_device(idx, arrays[0]), on_device(hp, arrays[0])
        if counter:  # count is the slot before sc (Optimizer.kernel_args("cuda"))
            c, sc = arrays[-2], arrays[-1]
            self.launcher.elementwise(self.kernels["tick_rows"], trials,
                                      [on_device(idx[[-3, -2]], c), c, _row_stride(c), sc, _row_stride(sc)])
        if trials > MAX_GRID_Y:  # gridDim.y's limit: the trials in slices (each its own idx)
            for lo in range(0, trials, MAX_GRID_Y):
                self.rows(name, arrays, idx[:, lo : lo + MAX_GRID_Y], hp, False)
            return
        args = [d_idx.shape[1], d_idx, d_hp, hp.shape[1]]
        for a in arrays:
            args += [a, _row_stride(a)]
        self.launcher.elementwise_rows(self.kernels[f"{name}_rows"], arrays[0].shape[1], trials, args)

    def block(self, name: str, arrays, scalars) -> None:
        """One block of ROW_BLOCK threads (a reduction whose total one thread stores)."""
        self.launcher.rows(self.kernels[name], 1, [*arrays, self.sc, *scalars])


_UPLOADED: dict = {}
MAX_GRID_Y = 65535  # CUDA's largest gridDim.y: a rows launch's trials


def on_device(host, like):
    """A small host array (a rows kernel's idx or hp) where `like` lives (the device), copied once
    per content and kept."""
    host = np.ascontiguousarray(host)
    # CuPy's module where `like` is CuPy's (its type's module, as backend.array_module tells them)
    xp = sys.modules["cupy"] if type(like).__module__.split(".")[0] == "cupy" else np
    key = (xp.__name__, host.dtype.str, host.shape, host.tobytes())
    if key not in _UPLOADED:
        if len(_UPLOADED) >= 256:  # a process running many arrays: keep the cache small
            _UPLOADED.clear()
        _UPLOADED[key] = xp.asarray(host)
    return _UPLOADED[key]


def _row_stride(a) -> int:
    """The elements between two trials' rows of a stacked array."""
    return a.strides[0] // a.itemsize


def optimizer_step(opt, params, grads, state: dict, layout, launcher) -> None:
    """One update of the flat `params`, all on the device (lr in state['step_scalars'])."""
    opt.fused_step(DeviceKernels(launcher, state["step_scalars"], params.dtype.name), params, grads, state, None,
                   layout)


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
