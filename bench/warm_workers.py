"""A service job's start latency and CPU: LocalExecutor's plain worker start against a warm one.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/warm_workers.py [--runs 5]

Each way runs `--runs` 2-epoch jobs of the digits MLP 64-16-10 (Adam, batch 32, one BLAS thread)
one after another through LocalExecutor, as the service starts them, after one uncounted job:
plain (`python -m memtrain.launch.worker` per job) and warm (forked from launch/forkserver.py,
once that server is ready). It prints the medians of: start -> the job's first event after
"starting" in progress.json (its data loaded), start -> the executor reads its exit, and the
worker's CPU seconds (plain: this process's reaped children; warm: the server's wait4 of it).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from memtrain.launch.executor import Launch
from memtrain.launch.forkserver import STATUS
from memtrain.launch.local import LocalExecutor
from memtrain.launch.worker import read_json


def launch(d: Path, i: int) -> Launch:
    cfg = {"name": f"j{i}", "model": {"layers": [64, 16, 10]}, "optimizer": {"name": "adam", "lr": 0.01},
           "training": {"epochs": 2, "batch_size": 32}, "checkpoint": {"dir": str(d / "ckpt")},
           "output": {"dir": str(d / "out")}}
    return Launch(f"j{i}", cfg, str(d), str(d / "job.log"), env={"OMP_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1})


def one(ex: LocalExecutor, d: Path, i: int) -> tuple:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    h = ex.start(launch(d, i))
    first = None
    while (end := ex.poll(h)) is None:
        if first is None and (read_json(d / "progress.json") or {}).get("event") not in (None, "starting"):
            first = time.perf_counter() - t0
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    if not end.ok:
        raise SystemExit(f"job {i} failed: {end.reason}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    status = read_json(d / STATUS)
    cpu = status["cpu_seconds"] if status else (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return first, wall, cpu


def blas() -> str:
    import numpy  # noqa: F401, PLC0415 - loads the BLAS threadpoolctl reports
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                     for i in threadpool_info() if i.get("user_api") == "blas")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="counted jobs per way (median), after one uncounted")
    a = ap.parse_args()
    print(f"BLAS: {blas()}; cores: {os.cpu_count()}")
    for warm in (False, True):
        ex = LocalExecutor(warm=warm)
        while warm and not os.path.exists(ex.warm.socket):  # the server's own start is not a job's
            time.sleep(0.05)
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="warm-workers-") as tmp:
            rows = [one(ex, Path(tmp) / str(i), i) for i in range(a.runs + 1)][1:]
        ex.close()
        first, wall, cpu = (statistics.median(r[k] for r in rows) for k in range(3))
        print(f"{'warm' if warm else 'plain':5s}  start -> first event {first:.3f} s  start -> exit {wall:.3f} s  "
              f"worker CPU {cpu:.3f} s  (median of {a.runs}; load average {load:.1f}-{os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
