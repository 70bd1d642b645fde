"""memtrain's autobatch against a Lightning-style batch-size search, under a real memory cap.

    python bench/autobatch_vs_doubling.py [--caps 96MiB,384MiB,1536MiB]

Every trial is a fresh process (bench/rlimit_child.py) capped with RLIMIT_AS
at CAP bytes above its post-import baseline, running one real training step of
MLP 784-512-256-10 / Adam / float32. For each cap:
- true max: bisection over real trials (the reference);
- Lightning-style search, as PyTorch Lightning's BatchSizeFinder does it:
  "power" mode doubles from 2 until a trial fails and keeps the last size
  that ran; "binsearch" then bisects between the last success and the
  failure. Its trial count is what a user pays;
- memtrain autobatch: the plan's analytic B, then confirmation probes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memtrain.units import parse_bytes  # noqa: E402

CHILD = Path(__file__).with_name("rlimit_child.py")
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1", "OPENBLAS_NUM_THREADS": "1",
       "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def child(*args) -> str:
    out = subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True, env=ENV,
                         check=True)
    return out.stdout.strip().splitlines()[-1]


class Trials:
    def __init__(self, cap):
        self.cap, self.count, self.seconds = cap, 0, 0.0

    def fits(self, b: int) -> bool:
        t0 = time.perf_counter()
        ok = child("trial", b, self.cap) == "fits"
        self.count += 1
        self.seconds += time.perf_counter() - t0
        return ok


def doubling(cap) -> dict:
    """Lightning's power mode from init_val=2, then its binsearch refinement."""
    t = Trials(cap)
    b = 2
    while t.fits(b):
        b *= 2
    low, high = b // 2, b
    power = {"result": low, "trials": t.count, "seconds": t.seconds}
    while high - low > 1:
        mid = (low + high) // 2
        if t.fits(mid):
            low = mid
        else:
            high = mid
    return {"power": power, "binsearch": {"result": low, "trials": t.count, "seconds": t.seconds}}


def true_max(cap) -> int:
    t = Trials(cap)
    lo, hi = 1, 2
    while t.fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if t.fits(mid) else (lo, mid)
    return lo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="96MiB,384MiB,1536MiB")
    args = ap.parse_args()
    print("| cap | true max B | memtrain analytic B | memtrain confirmed B | memtrain probes | memtrain s "
          "| doubling (power) B | trials | s | doubling + binsearch B | trials | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for text in args.caps.split(","):
        cap = parse_bytes(text)
        ref = true_max(cap)
        t0 = time.perf_counter()
        auto = json.loads(child("auto", cap))
        auto_s = time.perf_counter() - t0
        d = doubling(cap)
        print(f"| {text} | {ref:,} | {auto['analytic']:,} | {auto['confirmed']:,} ({auto['confirmed'] / ref:.1%}) "
              f"| {auto['probes_used']} | {auto_s:.1f} | {d['power']['result']:,} | {d['power']['trials']} "
              f"| {d['power']['seconds']:.1f} | {d['binsearch']['result']:,} | {d['binsearch']['trials']} "
              f"| {d['binsearch']['seconds']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
