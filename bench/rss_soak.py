"""Resident memory of a long training job with the default measurement.

Runs the demo job (docs/example-job.toml: 64-128-10 on digits, batch 128; CPU, no
metrics server, no early stopping) for --minutes, epoch after epoch, checkpoints and
history as a real job writes them, and samples the process's RSS every --every
seconds into a CSV. Prints the slope of RSS over time, fitted after the first
--settle minutes (imports, the first checkpoint writes and the allocator's arenas
settle first).

    .venv/bin/python bench/rss_soak.py --minutes 30 --csv rss.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memtrain.config import load, merge  # noqa: E402
from memtrain.memory.measure import rss  # noqa: E402
from memtrain.train.job import Job  # noqa: E402


def _sample(job, rows, every, stop_at, done):
    t0 = time.monotonic()
    while not done.wait(every):
        t = time.monotonic() - t0
        rows.append((round(t, 1), rss(os.getpid()), job.state.epoch, job.state.steps))
        if time.monotonic() >= stop_at:
            job.stop("soak over")
            return


def slope(rows, settle_s):
    """Least-squares slope of RSS (bytes per hour) over the samples after settle_s."""
    pts = [(t, r) for t, r, *_ in rows if t >= settle_s and r is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt, mr = sum(t for t, _ in pts) / n, sum(r for _, r in pts) / n
    num = sum((t - mt) * (r - mr) for t, r in pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    return num / den * 3600 if den else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--settle", type=float, default=2.0, help="minutes left out of the slope")
    ap.add_argument("--measure", default="sampled", help="training.measure: sampled (default), exact or off")
    ap.add_argument("--csv", default="rss_soak.csv")
    a = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="rss-soak-"))
    cfg = merge(load(ROOT / "docs" / "example-job.toml"), {
        "device": "cpu", "training.epochs": 10**7, "training.measure": a.measure, "output.dir": str(out)})
    # no early stopping and no metrics server: a None override means "not given", so whole sections
    d = cfg.to_dict()
    cfg = merge(cfg, {"training": {**d["training"], "patience": None}, "metrics": {**d["metrics"], "port": None}})
    rows, done = [], threading.Event()
    with open(os.devnull, "w") as devnull:
        job = Job(cfg, progress=False, stream=devnull, install_signals=True)
        from memtrain.profiler.autobatch import auto_batch  # noqa: PLC0415

        job.batch_solver = auto_batch
        sampler = threading.Thread(target=_sample, args=(job, rows, a.every, time.monotonic() + a.minutes * 60,
                                                         done), daemon=True)
        sampler.start()
        try:
            job.run()
        finally:
            done.set()
    with open(a.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rss_bytes", "epoch", "steps"])
        w.writerows(rows)
    first = [r for t, r, *_ in rows if t >= a.settle * 60]
    s = slope(rows, a.settle * 60)
    print(f"measure={a.measure}: {len(rows)} samples over {rows[-1][0] / 60:.1f} min, "
          f"{rows[-1][2]:,} epochs, {rows[-1][3]:,} steps")
    if first:
        print(f"RSS after {a.settle:g} min {first[0] / 2**20:.2f} MiB, at the end {first[-1] / 2**20:.2f} MiB, "
              f"min {min(first) / 2**20:.2f}, max {max(first) / 2**20:.2f} MiB")
    if s is not None:
        print(f"slope {s / 1024:+.1f} KiB/hour (least squares after {a.settle:g} min)")
    print(f"samples: {a.csv}; run directory: {out}")


if __name__ == "__main__":
    main()
