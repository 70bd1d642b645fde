"""Estimated vs measured training memory over a grid (the table in docs/memory-model.md).

    python bench/memory_verification.py [--device cpu|cuda] [--steps 3] [--markdown]

For every model x optimizer x dtype: the plan's total, the measured peak
(CPU: tracemalloc; CUDA: CuPy pool peak, and NVML process usage with the
measured device overhead), and the error. Exits 1 if any run is over the
tolerance (0.5% or 64 KiB, whichever is larger).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from memtrain.backend import get_backend
from memtrain.memory.measure import cpu_model
from memtrain.nn.spec import ModelSpec
from memtrain.profiler.estimate import Setting, all_optimizer_names
from memtrain.profiler.verify import profile

GRID = [
    ("784-256-10 relu", dict(layer_sizes=[784, 256, 10]), 128),
    ("784-1024-1024-10 gelu dropout", dict(layer_sizes=[784, 1024, 1024, 10], activation="gelu", dropout=True), 256),
    ("4096-4096-4096-4096 relu", dict(layer_sizes=[4096, 4096, 4096, 4096]), 512),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtypes", default="float16,float32,float64")
    ap.add_argument("--models", default="all", help="comma list of grid indexes (0,1,2) or all")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    backend = get_backend(args.device)
    grid = GRID if args.models == "all" else [GRID[int(i)] for i in args.models.split(",")]
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.node() and cpu_model()}, numpy {np.__version__}, "
          f"device {backend.name}, {args.steps} steps", file=sys.stderr)
    header = ["model", "batch", "optimizer", "dtype", "planned B", "measured peak B", "error", "step temporaries B"]
    if backend.is_cuda:
        header += ["NVML process B", "NVML error"]
    rows, worst, failed = [], 0.0, 0
    for label, model, batch in grid:
        for dtype in args.dtypes.split(","):
            for opt in all_optimizer_names():
                spec = ModelSpec.create(**model, dtype=dtype)
                setting = Setting(spec, opt, device=backend.kind)
                r = profile(setting, batch, steps=args.steps, backend=backend)
                worst = max(worst, abs(r["error_ratio"]))
                failed += not r["ok"]
                row = [label, batch, opt, dtype, f"{r['planned_total']:,}", f"{r['measured_total']:,}",
                       f"{r['error_ratio']:+.4%}", f"{r['step_transient']:,}"]
                if backend.is_cuda:
                    row += [f"{r['nvml_process']:,}" if r.get("nvml_process") else "n/a",
                            "n/a" if r.get("nvml_error_ratio") is None else f"{r['nvml_error_ratio']:+.3%}"]
                rows.append(row)
                if not args.markdown:
                    print("  ".join(str(c) for c in row), flush=True)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
    print(f"\n{len(rows)} runs, worst |error| {worst:.4%}, over tolerance: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
