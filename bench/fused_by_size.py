"""A training step's time on the fused numba kernels against the NumPy reference path, by model
size: where `training.fused = "auto"` draws its line (memtrain/config.py FUSED_MIN_PARAMETERS).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        NUMBA_NUM_THREADS=1 MEMTRAIN_CPU_THREADS=1 python bench/fused_by_size.py

One process; each model (ReLU, Adam) on random data of 2,000 rows: one epoch of warm-up, then
the best of three 2-epoch fits, per step. numba's own fixed cost (its import and target context,
~1-2 s per process) is not in these figures: it is what a small model's saving is set against.
"""

from __future__ import annotations

import time

import numpy as np

from memtrain.nn.mlp import MLP
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer
from memtrain.train.trainer import Trainer

CASES = [((64, 128, 10), 128), ((64, 128, 10), 32), ((784, 32, 20, 10), 128), ((784, 256, 10), 128),
         ((784, 512, 512, 10), 128)]


def step_seconds(layers, batch: int, fused: bool, rows: int = 2000) -> float:
    spec = ModelSpec.create(layers, activation="relu")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, layers[0])).astype(np.float32)
    y = rng.integers(0, layers[-1], rows)
    tr = Trainer(MLP.from_spec(spec, seed=0), make_optimizer("adam", lr=1e-3), batch, fused=fused)
    tr.attach_data(X, y)
    tr.fit(epochs=1)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        tr.fit(epochs=2)
        best = min(best, (time.perf_counter() - t) / (2 * -(-rows // batch)))
    return best


def main() -> None:
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    print("BLAS: " + "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                               f"{i.get('num_threads')} threads" for i in threadpool_info() if i.get("user_api") == "blas"))
    for layers, batch in CASES:
        fused, ref = step_seconds(layers, batch, True), step_seconds(layers, batch, False)
        params = sum(a * b + b for a, b in zip(layers, layers[1:]))
        print(f"{'-'.join(map(str, layers)):18s} batch {batch:4d}  {params:9,d} parameters  fused {fused * 1e6:8.0f} us  "
              f"numpy {ref * 1e6:8.0f} us  saved {(ref - fused) * 1e6:8.0f} us a step", flush=True)


if __name__ == "__main__":
    main()
