"""Step time of the demo job with training.measure = off, sampled (the default) and exact.

Each run is a fresh process (tracemalloc is process-wide) that trains the demo job
(docs/example-job.toml: 64-128-10 on digits, batch 128, CPU, no metrics server)
for --epochs epochs and records the wall time of every step (Job.on_step to
Job.on_step, so an epoch end and its checkpoint fall on the next epoch's first step:
the median leaves those out). The modes are interleaved over --rounds rounds so
that a busy machine slows them alike. Prints the median and mean step time per
mode and the overhead against off.

    .venv/bin/python bench/tracing_overhead.py --epochs 30 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("off", "sampled", "exact")

CHILD = r"""
import io, json, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from memtrain.config import load, merge
from memtrain.profiler.autobatch import auto_batch
from memtrain.train.job import Job
mode, epochs = sys.argv[2], int(sys.argv[3])
cfg = merge(load(sys.argv[1] + "/docs/example-job.toml"), {"device": "cpu", "training.epochs": epochs,
            "training.measure": mode, "output.dir": tempfile.mkdtemp(prefix="trace-bench-")})
d = cfg.to_dict()
cfg = merge(cfg, {"training": {**d["training"], "patience": None}, "metrics": {**d["metrics"], "port": None}})
job = Job(cfg, progress=False, stream=io.StringIO(), install_signals=False, batch_solver=auto_batch)
times, last = [], [None]
real = job.on_step
def on_step(tr, loss):
    now = time.perf_counter()
    if last[0] is not None:
        times.append(now - last[0])
    r = real(tr, loss)
    last[0] = time.perf_counter()  # the callback's own work (logging, a checkpoint) is not the step's
    return r
job.on_step = on_step
s = job.run()
print(json.dumps({"times": times, "peak": s["measured_peak_bytes"], "plan": s["planned_bytes"]}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    times = {m: [] for m in MODES}
    peaks = {}
    for _ in range(a.rounds):
        for mode in MODES:
            out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), mode, str(a.epochs)], capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.splitlines()[-1])
            times[mode].extend(r["times"])
            peaks[mode] = (r["peak"], r["plan"])
    base = statistics.median(times["off"])
    print(f"demo job (64-128-10, digits, batch 128, CPU), {a.epochs} epochs x {a.rounds} rounds per mode")
    print(f"{'measure':8}  {'steps':>6}  {'median ms':>9}  {'mean ms':>8}  {'vs off':>7}  peak / plan")
    for mode in MODES:
        t = times[mode]
        med = statistics.median(t)
        peak, plan = peaks[mode]
        shown = "-" if peak is None else f"{peak:,} / {plan:,} B ({peak / plan - 1:+.1%})"
        print(f"{mode:8}  {len(t):6}  {med * 1e3:9.3f}  {statistics.fmean(t) * 1e3:8.3f}  "
              f"{med / base - 1:+7.1%}  {shown}")


if __name__ == "__main__":
    main()
