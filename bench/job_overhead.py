"""A small job's fixed cost: wall time of `memtrain train` against its training time.

    env -u PYTHONDONTWRITEBYTECODE -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python bench/job_overhead.py [--runs 5] [--epochs 100] [--intercept] [--source DIR] [--json PATH]

The job is docs/example-job.toml (the digits MLP 64-128-10, Adam, cosine schedule, auto batch,
checkpoints every 50 steps and at epoch ends (checkpoint.min_interval), metrics on a free port) without early stopping, for
`--epochs` epochs. Each run is a fresh `memtrain train` process with its own output directory and a
JSON log; one warm-up run first (numba's on-disk cache of the kernels, the page cache) is not
counted. `--source DIR` runs the memtrain checkout in DIR (e.g. an exported older commit) instead
of this one, so two versions can be compared under the same conditions.

Training time is the job's own epoch timings: the sum of `seconds` in history.jsonl (each epoch's
steps, the step callbacks and the interval checkpoints they write included; the validation pass
after the steps not). Fixed overhead = wall time of the process - training time. The breakdown
comes from the JSON log's timestamps (1 ms resolution):
  start-up + data     process start -> the `data` event (interpreter, imports, config, device, data set)
  batch (autobatch)   -> `autobatch` (the plan solved, one probe step: numba and its kernels loaded)
  metrics exporter    -> `metrics`
  per-epoch writes    sum over the epochs that end with a checkpoint of `checkpoint` - `epoch` (history
                      line, epoch-end checkpoint; the history line of an epoch without one is in the next)
  validation, other   the rest of the loop: validation passes, trainer build, epoch bookkeeping
  finish              last epoch's checkpoint -> `summary` (test evaluation, models, run.json, history.csv)
  exit                `summary` -> process exit (exporter stopped, interpreter shut down)
It prints the median of each over the runs, the ratio overhead / training, the BLAS kernel
(threadpoolctl), whether Python writes bytecode (a user's does; PYTHONDONTWRITEBYTECODE=1 with no
bytecode yet makes every run compile memtrain's modules again) and the load average, which matters on a
shared machine.

--intercept: each run is followed by the same job for 1 epoch. What a job pays once, whatever its
length, is then the intercept of wall time against epochs: per epoch = (wall(N) - wall(1)) / (N - 1)
(the steps, the validation pass, the history line: all the work an epoch brings), once = wall(1) -
per epoch; printed as once / (N x per epoch), beside the ratio above (which counts the validation
passes as overhead, since the epochs' own timings leave them out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("start-up + data", "batch (autobatch)", "metrics exporter", "per-epoch writes", "validation, other",
         "finish", "exit")


def job_file(directory: Path, source: Path) -> Path:
    """docs/example-job.toml without early stopping (every epoch runs)."""
    text = (source / "docs" / "example-job.toml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("patience")]
    path = directory / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_once(job: Path, out: Path, epochs: int, source: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    cmd = [sys.executable, "-m", "memtrain.cli", "train", str(job), "--epochs", str(epochs), "--metrics-port", "0",
           "--output-dir", str(out), "--log-format", "json"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    t1 = time.time()
    if r.returncode != 0:
        raise SystemExit(f"memtrain train failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return breakdown(t0, t1, events, history)


def breakdown(t0: float, t1: float, events: list, history: list) -> dict:
    first = {}
    for e in events:
        first.setdefault(e["event"], e["time"])
    ends = [e["time"] for e in events if e["event"] == "checkpoint" and e.get("reason") == "epoch"]
    training = sum(h["seconds"] for h in history)
    # an epoch's end that writes a checkpoint (every epoch before checkpoint.min_interval; now the
    # last one and one per interval): `epoch` event -> its `checkpoint` event
    writes = sum(c["time"] - e["time"] for e, c in zip(events, events[1:])
                 if e["event"] == "epoch" and c["event"] == "checkpoint" and c.get("reason") == "epoch")
    loop_start = first.get("metrics", first.get("autobatch", first["data"]))
    parts = {
        "start-up + data": first["data"] - t0,
        "batch (autobatch)": first.get("autobatch", first["data"]) - first["data"],
        "metrics exporter": first.get("metrics", loop_start) - first.get("autobatch", first["data"]),
        "per-epoch writes": writes,
        "validation, other": (ends[-1] - loop_start) - training - writes,
        "finish": first["summary"] - ends[-1],
        "exit": t1 - first["summary"],
    }
    wall = t1 - t0
    return {"wall": wall, "training": training, "overhead": wall - training, "parts": parts,
            "epochs": len(history)}


def blas() -> str:
    import numpy  # noqa: F401, PLC0415 - loads the BLAS threadpoolctl reports
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                     f"{i.get('num_threads')} threads" for i in threadpool_info() if i.get("user_api") == "blas")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="counted runs (median), after one warm-up run")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--source", type=Path, default=ROOT, help="the memtrain checkout to run (default: this one)")
    ap.add_argument("--json", type=Path, help="write every run's figures here")
    ap.add_argument("--intercept", action="store_true", help="a 1-epoch run after each run: the one-time cost")
    a = ap.parse_args()
    if a.intercept and a.epochs < 2:
        ap.error("--intercept needs --epochs of 2 or more")
    source = a.source.resolve()
    bytecode = "not written (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "written"
    print(f"memtrain from {source}; BLAS: {blas()}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; bytecode {bytecode}; "
          f"cores: {os.cpu_count()}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="job-overhead-") as tmp:
        d = Path(tmp)
        job = job_file(d, source)
        for i in range(a.runs + 1):
            load = os.getloadavg()[0]
            r = run_once(job, d / f"run{i}", a.epochs, source)
            r["load"] = load
            tag = "warm-up" if i == 0 else f"run {i}"
            print(f"{tag:8s} wall {r['wall']:.2f} s  training {r['training']:.2f} s ({r['epochs']} epochs)  "
                  f"overhead {r['overhead']:.2f} s  load average {load:.1f}")
            if a.intercept:
                r["wall_1"] = run_once(job, d / f"run{i}-1", 1, source)["wall"]
                print(f"{'':8s} wall {r['wall_1']:.2f} s (1 epoch)")
            if i:
                runs.append(r)
    report(runs)
    if a.intercept:
        report_intercept(runs, a.epochs)
    if a.json:
        a.json.write_text(json.dumps({"source": str(source), "blas": blas(), "runs": runs}, indent=1))


def report(runs: list) -> None:
    med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "training", "overhead")}
    print(f"\nmedian of {len(runs)} runs:")
    print(f"  wall time          {med['wall']:6.2f} s")
    print(f"  training           {med['training']:6.2f} s  (sum of the epochs' own timings)")
    print(f"  fixed overhead     {med['overhead']:6.2f} s  = wall - training")
    for p in PARTS:
        print(f"    {p:18s} {statistics.median(r['parts'][p] for r in runs):6.2f} s")
    print(f"  overhead / training: {med['overhead'] / med['training']:.2f}x  (median wall - median training; target <= 0.5x)")
    print(f"  load average while running: {min(r['load'] for r in runs):.1f}-{max(r['load'] for r in runs):.1f}")


def report_intercept(runs: list, epochs: int) -> None:
    n, one = statistics.median(r["wall"] for r in runs), statistics.median(r["wall_1"] for r in runs)
    per_epoch = (n - one) / (epochs - 1)
    once = one - per_epoch
    print(f"  by intercept: wall {n:.2f} s ({epochs} epochs), {one:.2f} s (1 epoch): {per_epoch * 1e3:.1f} ms "
          f"per epoch (validation pass included), {once:.2f} s once")
    if per_epoch > 0:
        print(f"  once / {epochs} epochs of per-epoch work: {once / (epochs * per_epoch):.2f}x")
    else:
        print("  per epoch <= 0: the 1-epoch runs took as long as the long ones (a loaded machine?)")


if __name__ == "__main__":
    main()
