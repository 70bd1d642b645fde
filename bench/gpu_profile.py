"""Planned vs measured training memory on a GPU: a reduced grid for bench/gpu_suite.sh.

    python bench/gpu_profile.py --out OUT/profile.json [--time-limit 90] [--dry-run]

3 models x 4 optimizers x float32/float16, 3 real steps each: the plan's total
against the CuPy pool's peak and NVML's process usage (memtrain.profiler.verify.profile,
with the CUDA overhead measured once per GPU model).
"""

from __future__ import annotations

import argparse
import sys
import time

from gpu_common import Deadline, backend_for, versions, write

MODELS = [("784-256-10", [784, 256, 10], 128), ("784-1024-1024-10", [784, 1024, 1024, 10], 256),
          ("4096x4", [4096, 4096, 4096, 4096], 512)]
OPTIMIZERS = ["sgd", "adam", "rprop", "lookahead:adam"]
DTYPES = ["float32", "float16"]


def _profile_fn():
    from memtrain.profiler.verify import profile  # noqa: PLC0415

    return profile


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-limit", type=float, default=90.0)
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, 1 step: the control flow only")
    args = ap.parse_args(argv)
    from memtrain.nn.spec import ModelSpec  # noqa: PLC0415
    from memtrain.train.setting import Setting  # noqa: PLC0415

    backend = backend_for(args.dry_run)
    deadline, profile, rows = Deadline(args.time_limit), _profile_fn(), []
    for label, layers, batch in MODELS:
        if args.dry_run:
            layers, batch = [max(2, n // 64) for n in layers], 8
        for opt in OPTIMIZERS:
            for dtype in DTYPES:
                what = f"{label} {opt} {dtype}"
                if not deadline.allows(what):
                    continue
                t0 = time.perf_counter()
                spec = ModelSpec.create(layers, dtype=dtype)
                r = profile(Setting(spec, opt, device=backend.kind), batch, steps=1 if args.dry_run else 3,
                            backend=backend)
                rows.append({"model": label, "batch": batch, "optimizer": opt, "dtype": dtype,
                             "planned": r["planned_total"], "measured": r["measured_total"],
                             "error": r["error_ratio"], "source": r.get("source"),
                             "nvml_process": r.get("nvml_process"), "nvml_error": r.get("nvml_error_ratio"),
                             "overhead": r.get("overhead"), "ok": r["ok"],
                             "seconds": round(time.perf_counter() - t0, 2)})
                print(f"{what}: planned {r['planned_total']:,} measured {r['measured_total']:,} "
                      f"error {r['error_ratio']:+.3%}", flush=True)
    write(args.out, {"part": "profile", "dry_run": args.dry_run, "versions": versions(backend), "rows": rows,
                     "skipped": deadline.skipped})
    return 0 if args.dry_run or all(r["ok"] for r in rows) else 1  # toy sizes: the flow, not the numbers


if __name__ == "__main__":
    sys.exit(main())
