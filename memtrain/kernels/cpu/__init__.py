"""memtrain's fused CPU kernels (numba): the CPU twin of the CUDA kernels.

One update function per optimizer and one fused bias + activation forward /
activation backward per activation, like memtrain/kernels/{optim,activation}.py
for the GPU: each element is read and written once, so the CPU plan needs no
optimizer chunk scratch and no activation scratch (memory/plan.py). The NumPy
code in memtrain/optim and memtrain/nn/activations.py stays the reference these
kernels are tested against (tests/test_cpu_kernels.py).

Importing this package imports nothing heavy; numba is imported by the modules
below it, which the trainer loads only when it builds a fused CPU step.
"""

import os

from memtrain.errors import ConfigError

THREADS_VAR = "MEMTRAIN_CPU_THREADS"


def threads_from_env() -> int:
    """Threads for the fused kernels: MEMTRAIN_CPU_THREADS, default 1 (checked without numba,
    so a job can refuse a bad value before it creates anything; scalar.threads() caps it).

    One, because the step's GEMMs already use every core through BLAS: on the
    2-core development machine two kernel threads made the 784-1024-1024-10 Adam
    step 2.3x slower with numba's OpenMP layer (its threads spin after a region
    while OpenBLAS's want the cores) and no faster with its workqueue layer
    (docs/benchmarks.md). A many-core machine with a large model may gain from more."""
    raw = os.environ.get(THREADS_VAR, "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{THREADS_VAR}: expected a positive integer, got {raw!r}")
    return n
