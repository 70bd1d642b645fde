"""y += a*x in place through BLAS axpy, where the arrays allow it.

On the CPU, for float32/float64 flat vectors, scipy's BLAS axpy updates y in
one multi-threaded pass with no scratch; NumPy needs a scratch (for a*x) and
two single-threaded passes. Measured on the development machine for the
1.86 M parameters of 784-1024-1024-10: 0.21 ms against 0.91 ms per SGD update
(best of 5 x 200; /tmp-free microbenchmark, see docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

_AXPY = {}


def axpy_for(x):
    """A function axpy(a, x, y) doing y += a*x in place, or None (CuPy, float16)."""
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        return None
    fn = _AXPY.get(x.dtype)
    if fn is None:
        from scipy.linalg import blas  # noqa: PLC0415

        raw = blas.saxpy if x.dtype == np.float32 else blas.daxpy

        def fn(a, xs, ys, raw=raw):
            raw(xs, ys, a=a)  # f2py's intent(in,out): contiguous ys of this dtype is updated in place

        _AXPY[x.dtype] = fn
    return fn


def blas_dtype(dtype, device: str) -> bool:
    return device == "cpu" and np.dtype(dtype) in (np.float32, np.float64)
