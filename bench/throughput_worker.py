"""The child process of bench/throughput.py: one framework, driven over JSON lines.

Not run by hand. bench/throughput.py starts one worker per framework (memtrain, once per
variant, and PyTorch) as ``python bench/throughput_worker.py memtrain|torch`` and keeps it for
the whole run. It writes one JSON request per line to the worker's stdin and reads one JSON
reply per line; the replies go to the worker's original stdout, which is kept for them alone
(anything a library prints lands on stderr instead, so it cannot break the protocol).

Only the standard library is imported at the top of this module: the torch worker never
loads memtrain and the memtrain worker never loads torch (each sees its own framework's
thread pools only). Thread limits come from the parent as environment variables, set before
start-up, and ``hello``'s ``threads`` (torch.set_num_threads and threadpoolctl).

Requests (``op``) and their replies:
    hello    {threads}                   -> versions and libraries of this process
    build    {layers, batch, optimizer, dtype, variant} -> {implementation}
    warmup   {seconds, round_seconds}    -> steps for `seconds`, then one untimed round
    round    {seconds}                   -> one timed round: whole steps until >= seconds
    gemm     {seconds}                   -> (memtrain only) the step's GEMMs alone, as a round
    profile  {seconds}                   -> (memtrain only) cProfile self time per function
    info     {}                          -> the native libraries now loaded, with thread counts
    quit     {}                          -> exits
A worker that fails exits with its traceback on stderr; the parent reports the exit.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time

# Hyper-parameters shared by both frameworks (memtrain's defaults, passed explicitly).
OPTIMIZER_HYPER = {
    "sgd": {"lr": 0.01},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
}


def gemm_shapes(layers: list[int], batch: int) -> list[dict]:
    """The matrix products of one training step, in memtrain's order (memtrain/nn/step.py):
    forward z_i = h_{i-1} W_i; backward gW_i = h_{i-1}^T delta_i and, above the first layer,
    dA_{i-1} = delta_i W_i^T (the input needs no gradient). (m, k, n): an (m x k)(k x n) product."""
    out = [{"name": f"forward h{i - 1}@W{i}", "m": batch, "k": layers[i - 1], "n": layers[i]}
           for i in range(1, len(layers))]
    for i in range(len(layers) - 1, 0, -1):
        out.append({"name": f"backward h{i - 1}^T@delta{i}", "m": layers[i - 1], "k": batch, "n": layers[i]})
        if i > 1:
            out.append({"name": f"backward delta{i}@W{i}^T", "m": batch, "k": layers[i], "n": layers[i - 1]})
    return out


def flop_per_step(layers: list[int], batch: int) -> int:
    """2 m n k per product (a multiply and an add per term)."""
    return sum(2 * s["m"] * s["k"] * s["n"] for s in gemm_shapes(layers, batch))


def run_for(step, seconds: float) -> dict:
    """Whole steps until at least `seconds` have passed; perf_counter around the loop."""
    start_unix = time.time()
    steps = 0
    t0 = time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return {"steps": steps, "elapsed_s": elapsed, "start_unix": start_unix, "end_unix": time.time()}


def make_batch(layers, batch, dtype):
    """The same fixed batch in every worker: standard-normal inputs, labels uniform in [0, C)."""
    import numpy as np  # noqa: PLC0415 - both frameworks need it; still nothing else at module level

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, layers[0])).astype(dtype)
    y = rng.integers(0, layers[-1], size=batch).astype(np.intp)
    return x, y


def native_libraries() -> list[dict]:
    """BLAS and OpenMP libraries loaded in this process, with their thread counts (threadpoolctl)."""
    try:
        import threadpoolctl  # noqa: PLC0415 - optional
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "architecture", "threading_layer", "filepath")
    return [{k: lib.get(k) for k in keep} for lib in threadpoolctl.threadpool_info()]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- memtrain --------------------------------------------------------------------
class MemtrainRunner:
    def __init__(self, layers, batch, optimizer, dtype, variant):
        from memtrain import MLP, Trainer  # noqa: PLC0415 - the memtrain worker only

        self.model = MLP(layers, activation="relu", output="softmax", dtype=dtype, seed=0, device="cpu")
        hyper = OPTIMIZER_HYPER[optimizer]
        kwargs = {"lr": hyper["lr"]}
        if optimizer == "adam":
            kwargs.update(beta1=hyper["betas"][0], beta2=hyper["betas"][1], eps=hyper["eps"])
        if fused_supported():
            kwargs["fused"] = variant == "fused"
        self.trainer = Trainer(self.model, optimizer, batch_size=batch, seed=0, **kwargs)
        self.x, self.y = make_batch(layers, batch, dtype)
        self.impl = f"{self.trainer.optimizer.describe()}, {variant} path"
        self.loss = float("nan")

    def step(self) -> None:
        self.loss = self.trainer.step(self.x, self.y)

    def last_loss(self) -> float:
        return float(self.loss)


def fused_supported() -> bool:
    """Whether this memtrain's Trainer takes fused= (the numba CPU path; issue 17)."""
    import inspect  # noqa: PLC0415 - the memtrain worker only

    from memtrain import Trainer  # noqa: PLC0415 - the memtrain worker only

    return "fused" in inspect.signature(Trainer.__init__).parameters


class GemmSet:
    """The step's GEMMs alone (gemm_shapes), with NumPy's matmul into preallocated outputs as
    memtrain calls it: the transposed operands are views, so BLAS gets the same transpose flags."""

    def __init__(self, layers, batch, dtype):
        import numpy as np  # noqa: PLC0415 - the memtrain worker only

        rng = np.random.default_rng(1)
        self.np = np
        self.calls = []
        h = [rng.standard_normal((batch, n)).astype(dtype) for n in layers[:-1]]
        w = [None] + [rng.standard_normal((layers[i - 1], layers[i])).astype(dtype) for i in range(1, len(layers))]
        delta = [None] + [rng.standard_normal((batch, n)).astype(dtype) for n in layers[1:]]
        for i in range(1, len(layers)):
            self.calls.append((h[i - 1], w[i], np.empty((batch, layers[i]), dtype)))
        for i in range(len(layers) - 1, 0, -1):
            self.calls.append((h[i - 1].T, delta[i], np.empty_like(w[i])))
            if i > 1:
                self.calls.append((delta[i], w[i].T, np.empty((batch, layers[i - 1]), dtype)))
        self.flop = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in self.calls)
        assert self.flop == flop_per_step(layers, batch)

    def step(self) -> None:
        matmul = self.np.matmul
        for a, b, out in self.calls:
            matmul(a, b, out=out)


def profile_steps(runner, seconds: float, top: int = 12) -> list[dict]:
    """Self time per Python function over `seconds` of steps, largest first (cProfile).

    NumPy ufunc calls (matmul, multiply, ...) are not separate entries: their time counts
    toward the memtrain function that made them, so the rows read as forward / backward /
    activation / optimizer / loss phases."""
    import cProfile  # noqa: PLC0415 - only with --profile
    import pstats  # noqa: PLC0415

    import memtrain  # noqa: PLC0415 - the memtrain worker only

    prof = cProfile.Profile()
    prof.enable()
    steps = run_for(runner.step, seconds)["steps"]
    prof.disable()
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    root = os.path.dirname(os.path.dirname(os.path.abspath(memtrain.__file__)))
    return [{"function": f"{os.path.relpath(file, root) if file.startswith(root) else file}:{line}({name})",
             "ms_per_step": tottime / steps * 1e3, "share": tottime / stats.total_tt}
            for (file, line, name), (_, _, tottime, _, _) in rows]


# -- PyTorch ---------------------------------------------------------------------
class TorchRunner:
    def __init__(self, layers, batch, optimizer, dtype, variant=None):
        import torch  # noqa: PLC0415 - the torch worker only

        self.torch = torch
        nn = torch.nn
        modules = []
        for i in range(1, len(layers)):
            modules.append(nn.Linear(layers[i - 1], layers[i]))
            if i < len(layers) - 1:
                modules.append(nn.ReLU())
        self.model = nn.Sequential(*modules).to(dtype=getattr(torch, dtype))
        self.model.train()
        params = list(self.model.parameters())
        hyper = OPTIMIZER_HYPER[optimizer]
        self.opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(params, **hyper)
        hyper_text = ", ".join(f"{k}={v}" for k, v in hyper.items())
        self.impl = f"{type(self.opt).__name__}({hyper_text}), {_torch_impl(params)}"
        x, y = make_batch(layers, batch, dtype)
        # shared memory with the NumPy batch: no copy per step, like memtrain's host batch
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y.astype("int64"))
        self.loss = None

    def step(self) -> None:
        # zero_grad's default (set_to_none=True) and no loss.item(): the idiomatic fast eager loop
        self.opt.zero_grad()
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.loss = loss

    def last_loss(self) -> float:
        return float(self.loss.item()) if self.loss is not None else float("nan")


def _torch_impl(params) -> str:
    """Which optimizer implementation torch picks by default for these parameters."""
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach  # noqa: PLC0415 - private helper
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    except Exception:  # the private helper moved: say only that torch chose
        return "implementation: torch default"
    return "fused" if fused else "foreach" if foreach else "for-loop (single-tensor)"


# -- the request loop ------------------------------------------------------------------
class Worker:
    def __init__(self, kind: str):
        self.kind = kind
        self.runner = None
        self.gemm = None
        self.limits = None

    def hello(self, threads=None) -> dict:
        info = {"kind": self.kind, "pid": os.getpid(), "python": platform.python_version(),
                "numpy": _version("numpy"), "threadpoolctl": _version("threadpoolctl"),
                "thread_env": {k: os.environ.get(k) for k in THREAD_ENV_VARS + REPORTED_ONLY}}
        if self.kind == "memtrain":
            import memtrain  # noqa: PLC0415 - the memtrain worker only

            info.update(memtrain=memtrain.__version__, numba=_version("numba"), numpy_blas=_numpy_blas(),
                        fused_supported=fused_supported())
        else:
            import torch  # noqa: PLC0415 - the torch worker only

            if threads is not None:
                torch.set_num_threads(threads)
            info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                        torch_mkl=torch.backends.mkl.is_available(),
                        torch_mkldnn=torch.backends.mkldnn.is_available())
        if threads is not None:
            try:
                import threadpoolctl  # noqa: PLC0415 - optional
            except ImportError:
                info["note"] = "threadpoolctl is missing: only the environment variables limit the BLAS"
            else:
                self.limits = threadpoolctl.threadpool_limits(threads)
        return info

    def build(self, layers, batch, optimizer, dtype, variant=None) -> dict:
        runner_type = MemtrainRunner if self.kind == "memtrain" else TorchRunner
        self.runner = runner_type(layers, batch, optimizer, dtype, variant)
        if self.kind == "memtrain":
            self.gemm = GemmSet(layers, batch, dtype)
        return {"implementation": self.runner.impl}

    def warmup(self, seconds, round_seconds) -> dict:
        run_for(self.runner.step, seconds)
        return run_for(self.runner.step, round_seconds)

    def round(self, seconds) -> dict:
        return {**run_for(self.runner.step, seconds), "loss": self.runner.last_loss()}

    def gemm_round(self, seconds) -> dict:
        return {**run_for(self.gemm.step, seconds), "flop_per_step": self.gemm.flop}

    def profile(self, seconds) -> dict:
        return {"rows": profile_steps(self.runner, seconds)}

    def info(self) -> dict:
        return {"native_libraries": native_libraries()}


THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# shown with the machine, never set by --threads: memtrain's kernel threads stay 1 unless asked
REPORTED_ONLY = ("MEMTRAIN_CPU_THREADS", "NUMBA_THREADING_LAYER")


def _numpy_blas() -> str:
    """NumPy's build-time BLAS, from numpy.show_config."""
    import numpy as np  # noqa: PLC0415 - the memtrain worker only

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no mode="dicts"
        return "unknown (see numpy.show_config())"


def serve(kind: str, requests, replies) -> None:
    worker = Worker(kind)
    handlers = {"hello": worker.hello, "build": worker.build, "warmup": worker.warmup, "round": worker.round,
                "gemm": worker.gemm_round, "profile": worker.profile, "info": worker.info}
    for line in requests:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            return
        replies.write(json.dumps(handlers[op](**request)) + "\n")
        replies.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("memtrain", "torch"):
        print("usage: throughput_worker.py memtrain|torch (started by bench/throughput.py)", file=sys.stderr)
        return 2
    # The replies get the original stdout to themselves; whatever else writes to fd 1 goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(argv[0], sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
