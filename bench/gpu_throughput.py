"""GPU training throughput and peak memory: memtrain (CUDA graph on and off)
against PyTorch eager, with the cuBLAS GEMM rate measured in the same run.

    python bench/gpu_throughput.py --out OUT/throughput.json [--time-limit 150] [--tf32] [--dry-run]

For 784-256-10 B=128, 784-1024-1024-10 B=256 and 4096-4096-4096-4096 B=4096,
ReLU, softmax cross-entropy, float32, SGD (lr 0.01) and Adam (1e-3, 0.9,
0.999, 1e-8): samples/s of full training steps on one fixed batch resident on
the device (both frameworks copy it into the step's input buffers; no host
transfer), the achieved FLOP/s (6 B sum(n_i k_i) per step: forward GEMMs,
and both backward GEMMs) as a share of a 4096^3 GEMM measured here, and the
peak device memory: CuPy pool high-water mark against
torch.cuda.max_memory_allocated. memtrain reads its loss back once per
timed round in graph mode (loss_every = steps), every step otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from gpu_common import Deadline, backend_for, versions, write

CONFIGS = [("784-256-10", [784, 256, 10], 128), ("784-1024-1024-10", [784, 1024, 1024, 10], 256),
           ("4096x4", [4096, 4096, 4096, 4096], 4096)]
OPTIMIZERS = {"sgd": {"lr": 0.01}, "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}}


def flops_per_step(layers, batch) -> int:
    return 6 * batch * sum(n * k for n, k in zip(layers[:-1], layers[1:]))


def gemm_rate(backend, n: int, reps: int) -> float:
    """FLOP/s of an n^3 float32 GEMM on this device (NumPy's BLAS in a dry run)."""
    xp = backend.xp
    a = xp.ones((n, n), dtype=np.float32)
    c = xp.empty((n, n), dtype=np.float32)
    xp.matmul(a, a, out=c)
    _sync(backend)
    t0 = time.perf_counter()
    for _ in range(reps):
        xp.matmul(a, a, out=c)
    _sync(backend)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def _sync(backend):
    if backend.is_cuda:
        backend.xp.cuda.Device(backend.index).synchronize()


def memtrain_run(backend, layers, batch, opt, graph, x, y, steps) -> dict:
    from memtrain import MLP, Trainer  # noqa: PLC0415

    peak = _pool_peak(backend)
    with peak:
        model = MLP(layers, activation="relu", output="softmax", seed=0, device=backend)
        trainer = Trainer(model, opt, batch, cuda_graph=graph, loss_every=steps if graph else 1, **OPTIMIZERS[opt])
        xd, yd = backend.xp.asarray(x), backend.xp.asarray(y)

        def fill(v, lo, hi):  # the resident batch into the step's buffers (a device copy)
            v.x[...] = xd
            v.y[...] = yd

        for _ in range(3):  # warm-up: compiles the kernels; in graph mode, warms up and captures
            trainer._step(batch, fill)
        _sync(backend)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = trainer._step(batch, fill)
        _sync(backend)
        seconds = time.perf_counter() - t0
    g = trainer._graph
    return {"seconds": seconds, "loss": float(loss), "peak_bytes": peak.value(),
            "graph_replays": g.graph.replays if g else 0, "graph_off_reason": g.graph.disabled if g else None}


class _pool_peak:
    """CuPy pool high-water mark during the block (the plan's allocations included)."""

    def __init__(self, backend):
        self.backend, self.hook = backend, None

    def __enter__(self):
        if self.backend.is_cuda:
            from memtrain.memory.measure import active_pool, pool_peak_hook  # noqa: PLC0415

            pool = active_pool(self.backend.xp)
            pool.free_all_blocks()
            self.hook = pool_peak_hook(pool)
            self.hook.__enter__()
        return self

    def __exit__(self, *exc):
        if self.hook is not None:
            self.hook.__exit__(*exc)
        return False

    def value(self):
        return self.hook.peak if self.hook is not None else None


def torch_run(torch, layers, batch, opt, x, y, steps) -> dict:
    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    mods = []
    for i in range(1, len(layers)):
        mods.append(torch.nn.Linear(layers[i - 1], layers[i]))
        if i < len(layers) - 1:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods).to(dev)
    h = OPTIMIZERS[opt]
    o = (torch.optim.Adam(model.parameters(), lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"])
         if opt == "adam" else torch.optim.SGD(model.parameters(), lr=h["lr"]))
    xd, yd = torch.from_numpy(x).to(dev), torch.from_numpy(y.astype(np.int64)).to(dev)
    xb, yb = torch.empty_like(xd), torch.empty_like(yd)

    def step():
        xb.copy_(xd)
        yb.copy_(yd)
        o.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        o.step()
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "loss": float(loss.item()),
            "peak_bytes": int(torch.cuda.max_memory_allocated(dev))}


def _torch():
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-limit", type=float, default=150.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tf32", action="store_true", help="TF32 for float32 matmuls (memtrain and torch alike)")
    ap.add_argument("--models", default=",".join(c[0] for c in CONFIGS),
                    help="comma list of " + ", ".join(c[0] for c in CONFIGS))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    unknown = set(args.models.split(",")) - {c[0] for c in CONFIGS}
    if unknown:
        ap.error(f"--models: unknown {', '.join(sorted(unknown))}")
    from memtrain.backend import set_tf32  # noqa: PLC0415

    backend = backend_for(args.dry_run)
    deadline = Deadline(args.time_limit)
    torch = None if args.dry_run else _torch()
    set_tf32(backend, args.tf32 and backend.is_cuda)  # a dry run on the CPU only records the request
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    gemm = gemm_rate(backend, 256 if args.dry_run else 4096, 3 if args.dry_run else 20)
    rows = []
    for label, layers, batch in (c for c in CONFIGS if c[0] in args.models.split(",")):
        if args.dry_run:
            layers, batch = [max(2, n // 64) for n in layers], 8
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, layers[0])).astype(np.float32)
        y = rng.integers(0, layers[-1], batch).astype(np.intp)
        steps = 3 if args.dry_run else args.steps
        for opt in OPTIMIZERS:
            runs = [("memtrain", g) for g in ((False,) if not backend.is_cuda else (False, True))]
            runs += [("torch", None)] if torch is not None else []
            for framework, graph in runs:
                what = f"{label} {opt} {framework}{'' if graph is None else ' graph ' + ('on' if graph else 'off')}"
                if not deadline.allows(what):
                    continue
                r = (memtrain_run(backend, layers, batch, opt, graph, x, y, steps) if framework == "memtrain"
                     else torch_run(torch, layers, batch, opt, x, y, steps))
                rate = flops_per_step(layers, batch) * steps / r["seconds"]
                row = {"model": label, "batch": batch, "optimizer": opt, "framework": framework, "graph": graph,
                       "samples_per_s": batch * steps / r["seconds"], "flops": rate, "gemm_share": rate / gemm,
                       "tf32": args.tf32, **r}
                rows.append(row)
                print(f"{what}: {row['samples_per_s']:,.0f} samples/s, {rate / 1e12:.2f} TFLOP/s "
                      f"({row['gemm_share']:.0%} of GEMM), peak {r['peak_bytes']}", flush=True)
    write(args.out, {"part": "throughput", "dry_run": args.dry_run, "versions": versions(backend),
                     "gemm_flops": gemm, "tf32": args.tf32, "torch": getattr(torch, "__version__", None),
                     "rows": rows, "skipped": deadline.skipped})
    return 0


if __name__ == "__main__":
    sys.exit(main())
