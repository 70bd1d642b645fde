"""Where a small job's start-up goes: the parts docs/benchmarks.md names, each measured here.

    env -u PYTHONDONTWRITEBYTECODE -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python bench/startup_parts.py [--runs 9]

- wall time of fresh interpreters (median of --runs, alternated): `pass`; `import numpy, click`;
  the modules `memtrain train` imports; the same ending in os._exit (what quickexit.py skips)
- the dataclasses a 1-epoch job of docs/example-job.toml defines: how many, and the time in
  dataclasses' class processing (a wrapper around `dataclasses._process_class`; it adds a little)
- the digits table: parsed from scikit-learn's file (read_table) and loaded from memtrain's
  cache (cached_table), min of 15 in one process
It prints the BLAS kernel (threadpoolctl) and whether bytecode is written.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB_MODULES = "import memtrain.cli, memtrain.train.job, memtrain.profiler.autobatch"
CODES = {"interpreter": "pass", "numpy + click": "import numpy, click", "memtrain train's modules": JOB_MODULES,
         "the same, then os._exit": JOB_MODULES + "; import os; os._exit(0)"}
DATACLASSES = """
import dataclasses, sys, time
orig, spent = dataclasses._process_class, []
def timed(cls, *a, **k):
    t = time.perf_counter(); out = orig(cls, *a, **k); spent.append(time.perf_counter() - t); return out
dataclasses._process_class = timed
sys.argv = ["memtrain", "train", sys.argv[1], "--epochs", "1", "--metrics-port", "0", "--output-dir", sys.argv[2]]
from memtrain.cli import main
try:
    main()
except SystemExit:
    pass
print(len(spent), sum(spent), file=sys.stderr)
"""
DIGITS = """
import timeit
from memtrain.data.digits import cached_table, digits_file, read_table
p = digits_file(); cached_table(p)
print(min(timeit.repeat(lambda: read_table(p), number=1, repeat=15)),
      min(timeit.repeat(lambda: cached_table(p), number=1, repeat=15)))
"""


def wall(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args()
    import numpy  # noqa: F401 - loads the BLAS threadpoolctl reports
    from threadpoolctl import threadpool_info

    blas = "; ".join(f"{i['internal_api']} {i['version']} {i['architecture']}" for i in threadpool_info()
                     if i.get("user_api") == "blas")
    print(f"BLAS: {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; bytecode "
          f"{'not ' if sys.dont_write_bytecode else ''}written; load average {os.getloadavg()[0]:.1f}")
    times = {name: [] for name in CODES}
    for _ in range(a.runs):  # alternated, so a drift of the machine's speed reaches every part alike
        for name, code in CODES.items():
            times[name].append(wall(code))
    for name, ts in times.items():
        print(f"{name:28s} {1000 * statistics.median(ts):6.1f} ms  (median of {a.runs})")
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "-c", DATACLASSES, str(ROOT / "docs" / "example-job.toml"), out],
                           capture_output=True, text=True, check=True, cwd=ROOT)
    n, spent = r.stderr.split()[-2:]
    print(f"dataclasses a 1-epoch job defines: {n}, {1000 * float(spent):.1f} ms in their class processing")
    parse, cached = map(float, subprocess.run([sys.executable, "-c", DIGITS], capture_output=True, text=True,
                                              check=True, cwd=ROOT).stdout.split())
    print(f"digits table: parsed {1000 * parse:.2f} ms, from the cache {1000 * cached:.2f} ms (min of 15)")


if __name__ == "__main__":
    main()
