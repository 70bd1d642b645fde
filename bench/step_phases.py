"""Where a memtrain CPU training step's time goes, phase by phase.

Runs the calls of `Trainer._step_inside` (fused path by default) on a
Trainer's own buffers with `time.perf_counter` between phases, for
`--steps` steps after `--warmup`, and prints the mean milliseconds per phase
and its share. To show the mirror is the real step, a second Trainer from the
same initial weights runs the same number of ordinary `Trainer.step` calls,
and the two parameter vectors must be bit-identical at the end (the script
exits 1 otherwise). The GEMM phases are also timed alone, on the same shapes
and transposed views, which gives the step's GEMM limit here, and so is the
optimizer update (back to back, its data in this core's cache).

Examples
    python bench/step_phases.py                                   # 784-1024-1024-10, B=256, adam and sgd
    python bench/step_phases.py --layers 784,256,10 --batch-size 128 --optimizer adam
    python bench/step_phases.py --no-fused                        # the NumPy reference path
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np

from memtrain import MLP, Trainer
from memtrain.nn import step
from memtrain.nn.mlp import _copy_in

PHASES = ("batch copy", "GEMM forward", "bias + activation", "loss + dL/dz", "GEMM dW", "output bias sum",
          "GEMM dA", "activation backward (+ bias sums)", "gradient norm", "optimizer update")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="784,1024,1024,10", help="layer sizes (default 784,1024,1024,10)")
    p.add_argument("--batch-size", type=int, default=256, help="default 256")
    p.add_argument("--optimizer", default="adam,sgd", help="comma list (default adam,sgd)")
    p.add_argument("--steps", type=int, default=300, help="timed steps (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (default 30)")
    p.add_argument("--no-fused", action="store_true", help="the NumPy reference path instead of the fused kernels")
    a = p.parse_args(argv)
    try:
        a.layers = [int(s) for s in a.layers.split(",")]
    except ValueError:
        p.error(f"--layers: expected comma-separated integers, got {a.layers!r}")
    if len(a.layers) < 3 or min(a.layers) < 1 or a.batch_size < 1 or a.steps < 1 or a.warmup < 0:
        p.error("--layers needs a hidden layer; sizes, --batch-size and --steps must be positive")
    return a


def timed_step(tr, X, y, T) -> None:
    """One step of Trainer._step_inside (no accumulation, dropout or penalty), phase by phase."""
    pc, spec, model, cpu = time.perf_counter, tr.spec, tr.model, tr.kernels.activations
    act, L, B = spec.activation, spec.n_layers, len(X)
    tr.kernels.begin()
    t = pc()
    v = tr.buffers.at(B)
    _copy_in(v.x, X)
    _copy_in(v.y, y)
    T["batch copy"] += pc() - t
    h = v.x
    for i in range(1, L + 1):
        W, b, alpha = model.layers[i]
        t = pc()
        np.matmul(h, W, out=v.z[i])
        T["GEMM forward"] += pc() - t
        t = pc()
        if i < L and cpu is not None:
            cpu.bias_activation_forward(act, v.z[i], b, v.a[i], alpha)
        else:
            v.z[i] += b
            if i < L:
                act.forward(v.z[i], v.a[i], v.scratch[i], alpha)
        h = v.a[i] if i < L else h
        T["bias + activation"] += pc() - t
    t = pc()
    loss = step.loss_sum(spec, v) / B
    spec.output.delta(v.out, v.y, v.rows, v.index)
    T["loss + dL/dz"] += pc() - t
    _timed_backward(tr, v, T)
    t = pc()
    step.clip_by_norm(tr.grads, tr.clip_norm)
    T["gradient norm"] += pc() - t
    t = pc()
    lr = tr.schedule(tr.steps)
    tr.kernels.optimizer_step(tr.optimizer, model.params, tr.grads, tr.arrays, lr, spec.layout)
    tr.steps += 1
    T["optimizer update"] += pc() - t
    return loss


def _timed_backward(tr, v, T) -> None:
    pc, spec, model, cpu = time.perf_counter, tr.spec, tr.model, tr.kernels.activations
    act, L, delta = spec.activation, spec.n_layers, v.out
    for i in range(L, 0, -1):
        W, _, _ = model.layers[i]
        gW, gb, _ = tr.glayers[i]
        t = pc()
        np.matmul((v.a[i - 1] if i > 1 else v.x).T, delta, out=gW)
        T["GEMM dW"] += pc() - t
        if cpu is None or i == L:
            t = pc()
            np.sum(delta, axis=0, out=gb)
            T["output bias sum" if i == L else "activation backward (+ bias sums)"] += pc() - t
        if i > 1:
            t = pc()
            np.matmul(delta, W.T, out=v.dA[i - 1])
            T["GEMM dA"] += pc() - t
            _, gb_below, galpha = tr.glayers[i - 1]
            alpha = model.layers[i - 1][2]
            t = pc()
            if cpu is not None:
                cpu.activation_backward(act, v.z[i - 1], v.a[i - 1], v.dA[i - 1], alpha, galpha, gb_below)
            else:
                act.backward(v.z[i - 1], v.a[i - 1], v.dA[i - 1], v.scratch[i - 1], alpha, galpha)
            T["activation backward (+ bias sums)"] += pc() - t
            delta = v.z[i - 1]


def gemm_alone(layers, B, steps: int) -> float:
    """ms of the step's GEMMs timed alone (same shapes and transposed views), best of 5 rounds."""
    rng = np.random.default_rng(0)
    hs = [rng.standard_normal((B, n)).astype(np.float32) for n in layers]
    Ws = [rng.standard_normal((a, b)).astype(np.float32) for a, b in zip(layers, layers[1:])]
    outs = [np.empty((B, b), np.float32) for b in layers[1:]]
    gWs = [np.empty_like(W) for W in Ws]
    dAs = [np.empty_like(h) for h in hs]
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(max(1, steps // 5)):
            for i, W in enumerate(Ws):
                np.matmul(hs[i], W, out=outs[i])
                np.matmul(hs[i].T, outs[i], out=gWs[i])
                if i > 0:
                    np.matmul(outs[i], W.T, out=dAs[i])
        best = min(best, (time.perf_counter() - t) / max(1, steps // 5))
    return best * 1e3


def run(args, optimizer: str) -> bool:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch_size, args.layers[0])).astype(np.float32)
    y = rng.integers(0, args.layers[-1], args.batch_size)
    fused = not args.no_fused
    mirror, real = (Trainer(MLP(args.layers, seed=0), optimizer, args.batch_size, fused=fused) for _ in range(2))
    T = defaultdict(float)
    for _ in range(args.warmup):
        timed_step(mirror, X, y, T)
        real.step(X, y)
    T.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        timed_step(mirror, X, y, T)
    total = (time.perf_counter() - t0) / args.steps * 1e3
    t0 = time.perf_counter()
    for _ in range(args.steps):
        real.step(X, y)
    real_ms = (time.perf_counter() - t0) / args.steps * 1e3
    same = bool(np.array_equal(mirror.model.params, real.model.params))
    _print(args, optimizer, fused, T, total, real_ms, gemm_alone(args.layers, args.batch_size, args.steps), same)
    print(f"| the optimizer update alone, {args.steps} in a row | {update_alone(mirror, args.steps):.3f} | "
          "(its data stay in this core's cache) |")
    print(f"Python-level calls per Trainer.step (cProfile): {calls_per_step(real, X, y):.0f}")
    return same


def calls_per_step(tr, X, y, steps: int = 50) -> float:
    """Function calls cProfile counts per Trainer.step (NumPy's C functions included)."""
    import cProfile  # noqa: PLC0415
    import pstats  # noqa: PLC0415

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        tr.step(X, y)
    prof.disable()
    return pstats.Stats(prof).total_calls / steps


def update_alone(tr, steps: int) -> float:
    """ms of one optimizer update repeated back to back (after the comparison above)."""
    spec = tr.spec
    t = time.perf_counter()
    for _ in range(steps):
        tr.kernels.optimizer_step(tr.optimizer, tr.model.params, tr.grads, tr.arrays, 1e-6, spec.layout)
    return (time.perf_counter() - t) / steps * 1e3


def _print(args, optimizer, fused, T, total, real_ms, gemm_ms, same) -> None:
    name = "-".join(map(str, args.layers))
    print(f"\n{name} B={args.batch_size} {optimizer} ({'fused' if fused else 'NumPy reference'}): "
          f"{total:.3f} ms per phased step, {real_ms:.3f} ms per Trainer.step; parameters "
          f"{'bit-identical' if same else 'DIFFER'}")
    print("| phase | ms/step | share |\n|---|---|---|")
    for phase in PHASES:
        if phase in T:
            ms = T[phase] / args.steps * 1e3
            print(f"| {phase} | {ms:.3f} | {100 * ms / total:.1f}% |")
    in_step = sum(T[p] for p in ("GEMM forward", "GEMM dW", "GEMM dA")) / args.steps * 1e3
    print(f"| all GEMMs in the step | {in_step:.3f} | {100 * in_step / total:.1f}% |")
    print(f"| the same GEMMs alone (best of 5) | {gemm_ms:.3f} | GEMM limit {args.batch_size / gemm_ms * 1e3:,.0f} "
          f"samples/s; this step {args.batch_size / real_ms * 1e3:,.0f} "
          f"({100 * gemm_ms / real_ms:.0f}% of it) |")


def main(argv=None) -> int:
    args = parse_args(argv)
    ok = [run(args, name.strip()) for name in args.optimizer.split(",") if name.strip()]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
