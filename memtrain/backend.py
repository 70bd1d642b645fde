"""NumPy or CuPy: the `xp` idiom.

Every numerical routine takes arrays and asks `array_module(a)` (CuPy's
get_array_module) for the namespace, so one code path runs on both.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from memtrain.errors import DeviceError

_DEVICE_RE = re.compile(r"^(cpu|auto|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Backend:
    """A resolved device: `xp` is numpy or cupy, `kind` is "cpu" or "cuda"."""

    kind: str
    index: int
    xp: Any

    @property
    def name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def rng(self, seed):
        """A seeded generator whose `random(out=...)` fills a buffer in place.
        `seed` may be a tuple of ints (e.g. (seed, step)): counter-based streams
        that a resumed job can recreate without saving generator state."""
        if self.is_cuda:
            key = seed if isinstance(seed, int) else int(np.random.SeedSequence(list(seed)).generate_state(1)[0])
            return self.xp.random.default_rng(key)
        return np.random.Generator(np.random.PCG64(seed if isinstance(seed, int) else list(seed)))

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a) if self.is_cuda else np.asarray(a)

    def activate(self) -> None:
        """Make this device current (a no-op on the CPU)."""
        if self.is_cuda:
            self.xp.cuda.Device(self.index).use()


# what a Linux machine with an NVIDIA driver has (WSL: /dev/dxg); without any of them CUDA sees no device
_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")


def _no_driver() -> str | None:
    """Why CUDA cannot see a device here, found without importing CuPy and its CUDA libraries (0.2-1.5 s
    of a small CPU job with device "auto"); None where there may be one (another OS, a driver, or
    CuPy imported already, e.g. a test's stand-in)."""
    if sys.platform != "linux" or "cupy" in sys.modules or any(map(os.path.exists, _DRIVER_PATHS)):
        return None
    return "no NVIDIA driver here (/proc/driver/nvidia, /dev/nvidiactl and /dev/dxg are missing)"


def _import_cupy():
    no_driver = _no_driver()
    if no_driver:
        return None, no_driver
    try:
        import cupy  # noqa: PLC0415 - imported only when CUDA is asked for
    except Exception as exc:  # ImportError, or a CUDA library missing at import
        return None, f"CuPy is not installed or failed to import ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or no device visible
        return None, f"CuPy sees no CUDA device ({type(exc).__name__}: {exc})"
    if count == 0:
        return None, "CuPy sees no CUDA device"
    return cupy, None


def _nvml_gpus() -> int:
    """GPUs the NVIDIA driver lists (0 without a driver): tells "no GPU" from "a GPU CuPy cannot use"."""
    if _no_driver():
        return 0
    try:
        import pynvml  # noqa: PLC0415 - only when auto falls back to the CPU

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML library: no GPU to speak of
        return 0


def _say_cpu(why: str) -> None:
    """Device auto fell back to the CPU. Where the driver lists no GPU that is no news: one short
    line, CuPy's reason only with MEMTRAIN_DEBUG=1. A GPU CuPy cannot use is news: why, and the fix."""
    gpus = _nvml_gpus()
    if gpus:
        print(f"memtrain: {gpus} GPU(s) here, but {why}; using the CPU (for the GPU: pip install "
              "'memtrain[cuda12]', docs/gpu.md)", file=sys.stderr)
        return
    print("memtrain: no GPU found, using the CPU", file=sys.stderr)
    if os.environ.get("MEMTRAIN_DEBUG"):
        print(f"memtrain: debug: device auto -> cpu: {why}", file=sys.stderr)


def parse_device(device: str) -> tuple[str, int | None]:
    m = _DEVICE_RE.match(str(device).strip().lower())
    if not m:
        raise DeviceError(f"device: expected cpu, auto, cuda or cuda:N, got {device!r}")
    kind, index = m.group(1), m.group(2)
    if kind != "cuda" and index is not None:
        raise DeviceError(f"device: only cuda takes an index, got {device!r}")
    return kind, None if index is None else int(index)


def get_backend(device: str = "auto", *, verbose: bool = False) -> Backend:
    """Resolve "cpu", "cuda", "cuda:N" or "auto" to a Backend.

    "auto" picks CUDA when CuPy can see a device, else the CPU, and with
    verbose=True says which on stderr in one short line (why there is no GPU, e.g. CuPy's
    driver error, only with MEMTRAIN_DEBUG=1: on a CPU machine it is no news).
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return Backend("cpu", 0, np)
    cupy, why = _import_cupy()
    if kind == "auto":
        if cupy is None:
            if verbose:
                _say_cpu(why)
            return Backend("cpu", 0, np)
        if verbose:
            print("memtrain: device auto -> cuda:0", file=sys.stderr)
        return Backend("cuda", 0, cupy)
    if cupy is None:
        raise DeviceError(f"device: {device} was asked for but {why}")
    index = index or 0
    count = cupy.cuda.runtime.getDeviceCount()
    if index >= count:
        raise DeviceError(f"device: cuda:{index} does not exist ({count} CUDA device(s) visible)")
    backend = Backend("cuda", index, cupy)
    backend.activate()  # CuPy allocates on the current device: make it the one asked for
    return backend


def set_tf32(backend: Backend, enabled: bool) -> None:
    """float32 matmuls on Tensor Cores in TF32 (10-bit mantissa; Ampere and later)
    or back to full float32. Off by default: TF32 changes float32 results in about
    the fourth digit. Process-wide (CuPy keeps one compute type per dtype)."""
    if not backend.is_cuda:
        if enabled:
            raise DeviceError("tf32: needs a CUDA device (the device is cpu)")
        return
    try:
        from cupy._core import _routines_linalg as linalg  # noqa: PLC0415 - CuPy's compute-type switch
    except ImportError as exc:
        raise DeviceError(f"tf32: this CuPy has no compute-type switch ({exc})") from None
    kind = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
    linalg.set_compute_type(np.dtype(np.float32), kind)


def array_module(a):
    """numpy or cupy, whichever owns `a` (CuPy's get_array_module without importing CuPy)."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        return sys.modules["cupy"]
    return np


class small_ufunc_buffers:
    """Context: NumPy ufuncs that broadcast (z += b) or cast allocate a scratch of
    `bufsize` elements per call (default 8192: 64 KiB in float64) that no plan
    lists. 512 elements bounds it to 4 KiB and measured no slower (bench
    notes in docs/memory-model.md). Restores the caller's setting on exit."""

    SIZE = 512

    def __enter__(self):
        self._old = np.setbufsize(self.SIZE)
        return self

    def __exit__(self, *exc):
        np.setbufsize(self._old)
        return False
