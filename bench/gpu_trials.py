"""Trial arrays on a GPU: K trials of the course model trained as one (train/trials.py), with the
optimizer update one launch per optimizer group ("grouped") against one per trial ("per_trial",
the update before issue 22's fused group kernel), K doubling up to the largest that fits.

    python bench/gpu_trials.py --out OUT/trials.json [--time-limit 30] [--dry-run]

Every trial: 784-32-20-10, ReLU, softmax, float32, Adam with its own learning rate (log-spaced
1e-4..0.75), batch 32, its own data order, on 1,024 synthetic rows resident on the device (32
steps an epoch). Per K and way: the second epoch's wall time (the first compiles and warms),
trial-steps per second, and memtrain's kernel launches per array step (counted at the
launcher: memtrain's own kernels; CuPy's GEMMs and copies are not counted). `k_max` is the
largest K whose array plan (memory/trials.py) fits 90% of the device's free memory; K doubles
from 1 while the part's time allows (the per-trial Python of an array step grows with K).
The dry run runs the same control flow on the CPU with toy K (numba; no launches to count).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter

import numpy as np
from gpu_common import Deadline, backend_for, versions, write

LAYERS, BATCH, ROWS = [784, 32, 20, 10], 32, 1024


def rates(k: int) -> list:
    lo, hi = -4.0, math.log10(0.75)
    return [1e-3] if k == 1 else [10 ** (lo + (hi - lo) * i / (k - 1)) for i in range(k)]


def settings(k: int) -> list:
    from memtrain.nn.spec import ModelSpec  # noqa: PLC0415
    from memtrain.train.trials import TrialSetting  # noqa: PLC0415

    spec = ModelSpec.create(LAYERS, "relu", "softmax", dtype="float32")
    return [TrialSetting(spec, "adam", {"lr": lr}, seed=i, epochs=2) for i, lr in enumerate(rates(k))]


def k_max(backend, free_bytes: int) -> int:
    """The largest K whose array plan fits 90% of `free_bytes`: fixed + K x per_trial."""
    from memtrain.memory.plan import training_plan  # noqa: PLC0415
    from memtrain.memory.trials import array_plan  # noqa: PLC0415
    from memtrain.optim import make_optimizer  # noqa: PLC0415

    s = settings(1)[0]
    plan = training_plan(s.spec, make_optimizer("adam"), BATCH, backend.kind, dataset_size=ROWS,
                         resident_rows=(ROWS, 0), fused=backend.is_cuda)
    one, two = array_plan([plan]).total, array_plan([plan, plan]).total
    per_trial = two - one
    return max(0, int((0.9 * free_bytes - (one - per_trial)) // per_trial))


class Counting:
    """kernels/dispatch.py's Launcher, counting launches per method."""

    def __init__(self, inner):
        self.inner, self.counts = inner, Counter()

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def counted(*args, **kw):
            self.counts[name] += 1
            return fn(*args, **kw)

        return counted


def run(backend, k: int, way: str, X, y) -> dict:
    from memtrain.kernels import dispatch  # noqa: PLC0415
    from memtrain.train.trials import TrialArray  # noqa: PLC0415

    counter = Counting(dispatch.default_launcher()) if backend.is_cuda else None
    if counter is not None:
        dispatch._DEFAULT[:] = [counter]
    array = TrialArray(settings(k), X, y, batch_size=BATCH, device=backend)
    if way == "per_trial":
        array._groups = []  # every trial's own update kernel, as before the group kernel
    seconds, launches = {}, {}

    def on_epoch(result, record):
        if result.index == 0:
            seconds[record["epoch"]] = record["seconds"]
            if counter is not None:
                launches[record["epoch"]] = sum(counter.counts.values())

    try:
        array.train(on_epoch=on_epoch)
    finally:
        if counter is not None:
            dispatch._DEFAULT[:] = [counter.inner]
    steps = ROWS // BATCH
    per_step = None if counter is None else (launches[2] - launches[1]) / steps
    return {"k": k, "way": way, "seconds": seconds[2], "steps": steps, "trial_steps_per_s": k * steps / seconds[2],
            "launches_per_step": per_step}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    backend = backend_for(args.dry_run)
    deadline = Deadline(args.time_limit)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((ROWS, LAYERS[0])).astype(np.float32), rng.integers(0, LAYERS[-1], ROWS)
    free = backend.xp.cuda.Device(backend.index).mem_info[0] if backend.is_cuda else 64 * 1024**2
    kmax = k_max(backend, free)
    rows, ks, last = [], [1, 2, 4] if args.dry_run else [4**i for i in range(12)], (1, 0.0)
    payload = {"part": "trials", "dry_run": args.dry_run, "versions": versions(backend), "k_max": kmax,
               "free_bytes": int(free), "rows": rows, "skipped": deadline.skipped}
    for k in (k for k in ks if k <= kmax):
        for way in ("grouped", "per_trial"):
            # a run's time grows about linearly in K: start one only where its estimate fits
            if deadline.allows(f"K={k} {way}") and deadline.left() > 1.5 * last[1] * k / last[0]:
                t0 = time.perf_counter()
                rows.append(run(backend, k, way, X, y))
                last = (k, time.perf_counter() - t0)
                print(rows[-1], flush=True)
            elif f"K={k} {way}" not in deadline.skipped:
                deadline.skipped.append(f"K={k} {way}")
            write(args.out, payload)  # after every row: the shell's timeout may still stop a long one
    return 0


if __name__ == "__main__":
    sys.exit(main())
