"""Compiling kernels: NVRTC for a check without a GPU, CuPy RawKernel to run them.

`check(kernel, arch)` needs only the NVRTC library (the cupy-cuda12x and
nvidia-cuda-nvrtc-cu12 wheels; no driver, no device) and raises
KernelCompileError with NVRTC's log. `raw(kernel)` returns the CuPy
RawKernel, compiled once per kernel name (one per dtype, as Chainer caches
its fused kernels) and kept for the process.
"""

from __future__ import annotations

from memtrain.kernels.source import Kernel

OPTIONS = ("-std=c++17",)  # NVRTC 12 and 13 both take it
_RAW: dict = {}


class KernelCompileError(RuntimeError):
    """A kernel's source does not compile; the message carries NVRTC's log."""


def check(kernel: Kernel, arch: str = "compute_90") -> None:
    from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415 - only the CI check needs it

    prog = nvrtc.createProgram(kernel.source, f"{kernel.name}.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", *OPTIONS])
    except nvrtc.NVRTCError:
        raise KernelCompileError(f"{kernel.name} ({arch}):\n{nvrtc.getProgramLog(prog)}") from None
    finally:
        nvrtc.destroyProgram(prog)


def raw(kernel: Kernel):
    """The compiled cupy.RawKernel for `kernel` (cached by name)."""
    fn = _RAW.get(kernel.name)
    if fn is None:
        import cupy  # noqa: PLC0415 - CuPy only when a kernel is launched

        fn = cupy.RawKernel(kernel.source, kernel.name, options=OPTIONS)
        _RAW[kernel.name] = fn
    return fn
