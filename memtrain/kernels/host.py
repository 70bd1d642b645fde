"""The generated kernels compiled as C++ for the CPU, to check their arithmetic
against the NumPy path on a machine without a GPU.

The same source NVRTC compiles is built with g++ and -DMEMTRAIN_HOST, behind a
small header that maps CUDA's names to the host: one thread per block for the
row kernels (their block reductions are then the identity), threads run one
after another (in descending order, so the column sum's lane 0 adds up last)
for kernels launched with their own grid, and float16 through _Float16 (round
to nearest even, as cvt.rn.f16.f32). Only the block reductions and the float16
conversion differ from the device build; both are two lines of each branch.

This is a check, not a fast path: a launch is a Python loop over ctypes calls.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

HEADER = r"""
#include <cmath>
#include <cstring>
using namespace std;
struct memtrain_dim { unsigned x, y; };
extern "C" { memtrain_dim blockIdx, blockDim, threadIdx, gridDim; }
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads()
inline double atomicAdd(double* a, double v) { double old = *a; *a += v; return old; }
inline double __longlong_as_double(unsigned long long x) { double d; memcpy(&d, &x, 8); return d; }
"""


class HostUnavailable(RuntimeError):
    """No C++ compiler with _Float16 here."""


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def build(kernels, directory=None) -> Path:
    """One shared library holding every kernel (each in its own namespace), cached by content."""
    cxx = compiler()
    if cxx is None:
        raise HostUnavailable("no C++ compiler (g++) on PATH")
    text = "#define MEMTRAIN_HOST 1\n" + HEADER + "".join(
        f"namespace k{i} {{\n{k.source}}}\n" for i, k in enumerate(kernels))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    d = Path(directory or tempfile.gettempdir())
    lib = d / f"memtrain-host-kernels-{digest}.so"
    if lib.exists():
        return lib
    src = d / f"memtrain-host-kernels-{digest}.{os.getpid()}.cpp"
    src.write_text(text)
    tmp = lib.with_suffix(f".{os.getpid()}.so")
    r = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-o", str(tmp), str(src)],
                       capture_output=True, text=True)
    src.unlink()
    if r.returncode != 0:
        raise HostUnavailable(f"host build failed:\n{r.stderr[-4000:]}")
    os.replace(tmp, lib)
    return lib


def _signature(kernel) -> list:
    sig = re.search(rf"void {kernel.name}\((.*?)\) {{", kernel.source).group(1)
    out = []
    for p in (s.strip() for s in sig.split(",") if s.strip()):
        out.append(ctypes.c_void_p if "*" in p else ctypes.c_longlong if "long long" in p else ctypes.c_double)
    return out


class HostLauncher:
    """The Launcher interface of kernels/dispatch.py, on NumPy arrays, through the host build."""

    def __init__(self, kernels, directory=None):
        self.lib = ctypes.CDLL(str(build(kernels, directory)))
        self.dims = {n: _Dim.in_dll(self.lib, n) for n in ("blockIdx", "blockDim", "threadIdx", "gridDim")}

    def _fn(self, kernel):
        fn = getattr(self.lib, kernel.name)
        fn.argtypes = _signature(kernel)
        fn.restype = None
        return fn

    def _set(self, block=0, threads=1, thread=0, grid=1, row=0):
        self.dims["blockIdx"].x, self.dims["blockDim"].x = block, threads
        self.dims["blockIdx"].y = row
        self.dims["threadIdx"].x, self.dims["gridDim"].x = thread, grid

    def elementwise(self, kernel, n, args):
        self._set()
        self._fn(kernel)(n, *_c(args))

    def elementwise_rows(self, kernel, n, trials, args):
        """A rows kernel (source.elementwise_rows): one block row (blockIdx.y) per trial."""
        fn, cargs = self._fn(kernel), _c(args)
        for j in range(trials):
            self._set(row=j)
            fn(n, *cargs)

    def rows(self, kernel, rows, args):
        fn, cargs = self._fn(kernel), _c(args)
        for b in range(max(1, rows)):
            self._set(block=b, grid=rows)
            fn(rows, *cargs)

    def reduce(self, kernel, n, args):
        self._set()  # one thread, one block: the grid-stride loop covers everything
        self._fn(kernel)(n, *_c(args))

    def single(self, kernel, args):
        self._set()
        self._fn(kernel)(*_c(args))

    def blocks(self, kernel, grid, threads, args):
        fn, cargs = self._fn(kernel), _c(args)
        for b in range(grid):
            for t in reversed(range(threads)):
                self._set(block=b, threads=threads, thread=t, grid=grid)
                fn(*cargs)


class _Dim(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint)]


def _c(args):
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            if not (a.flags.c_contiguous or a.ndim == 0):
                raise ValueError("host kernels take contiguous arrays")
            out.append(a.ctypes.data)
        else:
            out.append(a)
    return out
