"""Device overhead: memory a device takes before the first plan buffer.

- CPU: 0. NumPy has no context; the interpreter's own memory is not the
  training's (tracemalloc, which the CPU checks use, does not see it either).
- CUDA, measured: NVML's figure for this process after CUDA initialisation
  and one warm-up GEMM (cuBLAS handle and workspace, RNG state), with the
  pool emptied, so that no plan buffer is in it. Reported as "measured".
- CUDA, assumed: without a GPU to measure, ASSUMED_CUDA_OVERHEAD, reported as
  "assumed" and documented in docs/memory-model.md. It is a planning
  default, not a measurement: pass --overhead to use your own.
"""

from __future__ import annotations

from memtrain.memory.measure import process_gpu_bytes

ASSUMED_CUDA_OVERHEAD = 512 * 1024**2


def assumed(device_kind: str) -> tuple:
    if device_kind == "cuda":
        return ASSUMED_CUDA_OVERHEAD, "assumed"
    return 0, "none"


def measure_cuda_overhead(index: int) -> int:
    """NVML process usage after CUDA init + one GEMM, before any plan buffer."""
    import cupy  # noqa: PLC0415

    with cupy.cuda.Device(index):
        a = cupy.ones((256, 256), dtype=cupy.float32)
        (a @ a).sum().item()  # creates the context, the cuBLAS handle and its workspace
        del a
        cupy.get_default_memory_pool().free_all_blocks()
        cupy.cuda.runtime.deviceSynchronize()
        used = process_gpu_bytes(index)
        held = cupy.get_default_memory_pool().total_bytes()  # buffers still alive are not overhead
    if used is None:
        raise RuntimeError("NVML does not list this process on the device (containerised PID namespace?)")
    return used - held
