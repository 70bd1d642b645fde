"""How much memory a plan may take: the free memory now, less a safety margin."""

from __future__ import annotations

from memtrain.memory import measure

# Safety margin when none is given: a fixed part plus 0.1% of the budget.
# CPU: tracemalloc's peak exceeded the plan by at most ~56 KiB over the whole
# verification grid (Python objects, NumPy's bounded ufunc buffers), and under
# a hard RLIMIT_AS cap the address space grew by ~0.03% more than the plan
# (page rounding and mmap headers of each buffer; bench/autobatch_vs_doubling.py).
# CUDA: an assumption, not yet measured in this project, for the pool's
# fragmentation beyond the 512-byte rounding the plan already counts.
DEFAULT_MARGIN = {"cpu": 256 * 1024, "cuda": 8 * 1024**2}
MARGIN_FRACTION = 0.001


def default_margin(kind: str, budget: int) -> int:
    return DEFAULT_MARGIN[kind] + int(MARGIN_FRACTION * budget)


def device_budget(backend) -> tuple:
    """Free memory now: (bytes, where it came from)."""
    if backend.is_cuda:
        return measure.gpu_free_bytes(backend.index), f"free on {backend.name} now (NVML)"
    return measure.mem_available(), "MemAvailable now"
