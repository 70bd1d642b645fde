"""Overhead: memory a job takes besides its plan's buffers, in two kinds.

Device overhead: what a device takes before the first plan buffer.
- CPU: 0. NumPy has no context.
- CUDA, measured: NVML's figure for this process after CUDA initialisation
  and one warm-up GEMM (cuBLAS handle and workspace, RNG state), with the
  pool emptied, so that no plan buffer is in it. Reported as "measured".
- CUDA, assumed: without a GPU to measure, ASSUMED_CUDA_OVERHEAD, reported as
  "assumed" and documented in docs/memory-model.md. It is a planning
  default, not a measurement: pass --overhead to use your own.

Process overhead: what a CPU job's processes hold besides the plan (the interpreter,
NumPy, SciPy, scikit-learn, numba and its compiled kernels, the metrics exporter).
Measured once per machine and Python (train/process_probe.py, cached by
memory/overhead_cache.process_overhead), or MEMTRAIN_PROCESS_OVERHEAD bytes when set
(the service passes its own figure to its workers so that both count the same), or,
where it cannot be measured, ASSUMED_CPU_PROCESS_OVERHEAD labelled "assumed".
"""

from __future__ import annotations

import os

from memtrain.errors import ConfigError
from memtrain.memory.measure import active_pool, process_gpu_bytes

ASSUMED_CUDA_OVERHEAD = 512 * 1024**2
# The probe job's processes measured 251-279 MiB (private + shared once) on the 2-core dev VM while
# other test runs loaded it (train/process_probe.py, bench/process_overhead_views.py, 2026-12-03);
# a round figure above that is the default where nothing can be measured.
ASSUMED_CPU_PROCESS_OVERHEAD = 320 * 1024**2
PROCESS_OVERHEAD_VAR = "MEMTRAIN_PROCESS_OVERHEAD"
DEVICE_OVERHEAD_VAR = "MEMTRAIN_DEVICE_OVERHEAD"  # a GPU job's: the figure its service or sweep admitted it with


class OverheadUnmeasured(RuntimeError):
    """NVML gives no figure for this process (it lists host PIDs in a container, or the
    driver reports none): the overhead cannot be measured here."""


def assumed(device_kind: str) -> tuple:
    if device_kind == "cuda":
        return ASSUMED_CUDA_OVERHEAD, "assumed"
    return 0, "none"


def assumed_process() -> tuple:
    return ASSUMED_CPU_PROCESS_OVERHEAD, "assumed"


def given_process(var: str = PROCESS_OVERHEAD_VAR) -> tuple | None:
    """(bytes, "given") from MEMTRAIN_PROCESS_OVERHEAD (or `var`: MEMTRAIN_DEVICE_OVERHEAD), None when
    unset. A bad value is one line."""
    text = os.environ.get(var)
    if text is None or not text.strip():
        return None
    if not text.strip().isdigit():
        raise ConfigError(f"{var}: expected a number of bytes (0 or more), got {text!r}")
    return int(text), f"given ({var})"


def measure_cuda_overhead(index: int) -> int:
    """NVML process usage after CUDA init + one GEMM, less what the allocating pool still holds.
    Raises OverheadUnmeasured where NVML cannot see this process."""
    import cupy  # noqa: PLC0415

    with cupy.cuda.Device(index):
        pool = active_pool(cupy)  # the pool that allocates: a capped one when installed
        a = cupy.ones((256, 256), dtype=cupy.float32)
        (a @ a).sum().item()  # creates the context, the cuBLAS handle and its workspace
        del a
        pool.free_all_blocks()
        cupy.cuda.runtime.deviceSynchronize()
        try:
            used = process_gpu_bytes(index)
        except Exception as exc:  # NVMLError: no driver library, or the device vanished
            raise OverheadUnmeasured(f"NVML failed ({type(exc).__name__}: {exc})") from None
        held = pool.total_bytes()  # buffers still alive are not overhead
    if used is None:
        raise OverheadUnmeasured("NVML does not list this process on the device (a container's PID namespace, "
                                 "or no per-process figure from the driver)")
    return used - held


def cuda_overhead_now(index: int) -> tuple:
    """(bytes, source, note): measured now, or where NVML cannot see this process the assumed
    figure, labelled "assumed" and with the reason in `note` (profiling and auto batch go on)."""
    try:
        return measure_cuda_overhead(index), "measured", ""
    except OverheadUnmeasured as exc:
        nbytes, source = assumed("cuda")
        return nbytes, source, str(exc)
