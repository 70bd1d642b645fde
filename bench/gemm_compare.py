"""One GEMM shape timed with NumPy's BLAS and with PyTorch's, each in its own process.

Why: bench/throughput.py measures the GEMM limit with NumPy's BLAS (OpenBLAS in the
NumPy wheel), which memtrain uses; PyTorch's CPU wheel brings MKL. This says whether
the two libraries run the step's products at the same rate on this machine.

Examples
    python bench/gemm_compare.py                        # 256x1024 @ 1024x1024, float32
    python bench/gemm_compare.py --shape 256,784,1024 --calls 50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import json, sys, time
lib, m, k, n, calls, rounds = sys.argv[1], *map(int, sys.argv[2:7])
if lib == "numpy":
    import numpy as np
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    mm = lambda: np.matmul(a, b, out=out)
else:
    import torch
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    mm = lambda: torch.mm(a, b, out=out)
for _ in range(5):
    mm()
best = float("inf")
for _ in range(rounds):
    t = time.perf_counter()
    for _ in range(calls):
        mm()
    best = min(best, (time.perf_counter() - t) / calls)
print(json.dumps({"lib": lib, "ms": best * 1e3, "gflops": 2 * m * k * n / best / 1e9}))
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="256,1024,1024", help="M,K,N of (M x K) @ (K x N) (default 256,1024,1024)")
    p.add_argument("--calls", type=int, default=20, help="products per round (default 20)")
    p.add_argument("--rounds", type=int, default=7, help="rounds; the best is reported (default 7)")
    a = p.parse_args(argv)
    try:
        m, k, n = (int(s) for s in a.shape.split(","))
    except ValueError:
        p.error(f"--shape: expected M,K,N, got {a.shape!r}")
    if min(m, k, n, a.calls, a.rounds) < 1:
        p.error("--shape, --calls and --rounds must be positive")
    for lib in ("numpy", "torch"):
        r = subprocess.run([sys.executable, "-c", CHILD, lib, str(m), str(k), str(n), str(a.calls), str(a.rounds)],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            print(f"{lib}: not run ({(r.stderr.strip().splitlines() or ['failed'])[-1]})")
            continue
        out = json.loads(r.stdout)
        print(f"{lib:6s} {m}x{k} @ {k}x{n} float32: {out['ms']:.3f} ms ({out['gflops']:.0f} GFLOP/s), best of "
              f"{a.rounds} x {a.calls}, {time.strftime('%H:%M:%S', time.gmtime())} UTC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
