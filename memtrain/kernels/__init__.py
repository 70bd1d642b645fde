"""memtrain's CUDA kernels: their source (generated here, per dtype), a
compile cache and the launches that replace the NumPy step on a GPU.

Importing this package imports no CuPy: the sources are plain text, so CI
compiles all of them with NVRTC on a machine without a GPU
(tests/test_kernels_compile.py). CuPy is imported only when a kernel is
launched (compile.py, dispatch.py).
"""

from __future__ import annotations

from memtrain.kernels.source import DTYPES, Kernel


def all_kernels(dtypes=DTYPES) -> list[Kernel]:
    """Every kernel memtrain can launch, for each dtype: what CI compiles."""
    # imported here, not with the package: a CPU job reads only source.py's step-scalar indices
    # (nn/step.py, memory/plan.py) and generates no CUDA source (issue 22, a small job's start-up)
    from memtrain.kernels import activation, loss, optim  # noqa: PLC0415

    out = [loss.step_begin()]
    for dtype in dtypes:
        out += optim.all_kernels(dtype) + activation.all_kernels(dtype) + loss.all_kernels(dtype)
    return out


__all__ = ["Kernel", "all_kernels"]
