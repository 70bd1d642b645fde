"""Storage and compute types inside the numba kernels, and the jit settings.

float32 and float64 are stored and computed as themselves. float16 arrays are
passed as their uint16 bit patterns (numba has no CPU float16) and computed in
float32, converted with LLVM's half conversions (F16C instructions on x86),
which round to nearest even exactly as NumPy's float16 casts do. That is the
GPU kernels' rule too (kernels/source.py: S storage, T compute, ld/st).

Scalars reach the kernels already cast to the compute type (dispatch.py), and
constants inside a kernel are written `like(x, 0.5)`: a bare Python float is a
float64 in numba and would silently promote float32 arithmetic.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from memtrain.kernels.cpu import threads_from_env


def kernel(fn):
    """A fused CPU kernel: nopython, cached on disk (compiled once per machine). Its loops
    are element-wise prange loops (never a parallel reduction), so a result is the same
    whatever the thread count and resume stays bit-exact; threads() sets how many run."""
    return njit(cache=True, parallel=True, nogil=True, error_model="numpy")(fn)


def serial_kernel(fn):
    """A fused CPU kernel with a reduction in its loop (a bias gradient's column sums):
    serial, so its order, and so its result, is NumPy's."""
    return njit(cache=True, nogil=True, error_model="numpy")(fn)


def rows_kernel(fn):
    """A trial array's kernel (optim.py `<name>_rows`): a serial loop over trials that calls the flat
    kernel on each trial's rows, so its arithmetic is the flat kernel's by construction."""
    return njit(cache=True, nogil=True, error_model="numpy")(fn)


def threads() -> int:
    """MEMTRAIN_CPU_THREADS (package __init__), at most numba's pool size."""
    return min(threads_from_env(), numba.config.NUMBA_NUM_THREADS)


def device(fn):
    """A helper inlined into the kernels (per-element formulas)."""
    return njit(cache=True, inline="always", error_model="numpy")(fn)


@intrinsic
def _h2f(typingctx, h):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def _f2h(typingctx, f):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


def ld(x):  # pragma: no cover - replaced inside numba by the overload below
    """A stored element in its compute type."""
    raise NotImplementedError


def st(like_array, x):  # pragma: no cover - replaced inside numba
    """A computed value in the storage type of `like_array`."""
    raise NotImplementedError


def like(x, c):  # pragma: no cover - replaced inside numba
    """The constant c in x's type."""
    raise NotImplementedError


@overload(ld, inline="always")
def _ld(x):
    if x == types.uint16:
        return lambda x: _h2f(x)
    return lambda x: x


@overload(st, inline="always")
def _st(like_array, x):
    dt = like_array.dtype
    if dt == types.uint16:
        return lambda like_array, x: _f2h(np.float32(x))
    return lambda like_array, x: dt(x)


@overload(like, inline="always")
def _like(x, c):
    t = x
    return lambda x, c: t(c)


def storage(a):
    """The array a kernel gets: float16 as its uint16 bits (a view, no copy)."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def compute_type(dtype):
    """The scalar type a kernel computes in: float64 for float64, else float32."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32
