"""Auto batch size on a GPU under a hard CuPy pool limit, against brute force.

    python bench/gpu_autobatch.py --out OUT/autobatch.json [--time-limit 60] [--dry-run]

The pool gets a real cap (MemoryPool.set_limit): allocations past it raise
OutOfMemoryError. memtrain's auto batch (plan solved for B, then confirmed by
real steps) is compared with the largest multiple of 8 that real steps find
by bisection, and the probes each needed are counted.
"""

from __future__ import annotations

import argparse
import sys
import time

from gpu_common import Deadline, backend_for, versions, write


def _autobatch_mod():
    from memtrain.profiler import autobatch  # noqa: PLC0415

    return autobatch


def _brute_force(ab, setting, backend, limit, upper, deadline) -> tuple:
    """Largest multiple of 8 rows that runs under the cap, by bisection with real steps."""
    lo, hi, probes = 0, upper // 8 + 1, 0
    while hi - lo > 1 and deadline.allows("brute force bisection"):
        mid = (lo + hi) // 2
        probes += 1
        lo, hi = (mid, hi) if ab.probe(setting, 8 * mid, limit, backend).outcome == "fits" else (lo, mid)
    return 8 * lo, probes, hi - lo <= 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--limit", default=512 * 1024**2, type=int, help="pool cap in bytes (default 512 MiB)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    from memtrain.nn.spec import ModelSpec  # noqa: PLC0415
    from memtrain.train.setting import Setting  # noqa: PLC0415

    backend = backend_for(args.dry_run)
    deadline, ab = Deadline(args.time_limit), _autobatch_mod()
    # dry run: toy sizes (32 MiB on a CUDA backend, the stand-in's: a CUDA margin alone is 8 MiB)
    toy_limit = (32 if backend.is_cuda else 4) * 1024**2
    layers, limit = ([784, 2048, 2048, 10], args.limit) if not args.dry_run else ([64, 128, 10], toy_limit)
    setting = Setting(ModelSpec.create(layers), "adam", device=backend.kind)
    restore = None
    if backend.is_cuda:
        cp = backend.xp
        pool = cp.cuda.MemoryPool()
        cp.cuda.set_allocator(pool.malloc)
        pool.set_limit(size=limit)
        restore = lambda: cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)  # noqa: E731
    try:
        t0 = time.perf_counter()
        r = ab.auto_batch(setting, backend, memory_limit=limit, multiple_of=8)
        auto_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        brute, brute_probes, complete = _brute_force(ab, setting, backend, limit, 2 * r.analytic + 16, deadline)
        brute_s = time.perf_counter() - t0
    finally:
        if restore:
            restore()
    row = {"model": "-".join(map(str, layers)), "optimizer": "adam", "limit": limit, "analytic": r.analytic,
           "confirmed": r.confirmed, "probes": len(r.probes), "auto_seconds": round(auto_s, 2),
           "brute_force": brute, "brute_force_probes": brute_probes, "brute_force_complete": complete,
           "brute_seconds": round(brute_s, 2), "confirmed_share": r.confirmed / brute if brute else None}
    print(row, flush=True)
    write(args.out, {"part": "autobatch", "dry_run": args.dry_run, "versions": versions(backend), "rows": [row],
                     "skipped": deadline.skipped})
    return 0


if __name__ == "__main__":
    sys.exit(main())
