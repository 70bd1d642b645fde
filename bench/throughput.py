"""Training-step throughput of an MLP: memtrain against PyTorch eager, in one process.

What is measured
    Samples per second of one full training step, i.e. forward pass, softmax
    cross-entropy loss (batch mean), backward pass and the optimizer update,
    for an MLP with ReLU hidden layers (default 784-1024-1024-10, batch 256,
    float32), for each optimizer asked for (default: adam and sgd).

How
    * Both frameworks train on the same fixed batch (standard-normal inputs,
      labels uniform in [0, C)), held on the host as a NumPy array, for every
      step. memtrain's ``Trainer.step(xb, yb)`` copies it into the plan's
      batch buffer; PyTorch wraps it with ``torch.from_numpy`` (no copy on the
      CPU; one host-to-device copy per step on CUDA, like memtrain's).
    * Same architecture, loss and hyper-parameters: SGD lr=0.01; Adam lr=1e-3,
      betas (0.9, 0.999), eps=1e-8. PyTorch otherwise runs with its defaults
      (``zero_grad(set_to_none=True)``, and the foreach/for-loop optimizer
      implementation that torch picks for the device; the one it picked is
      reported). Initial weights differ (each framework's own initialiser),
      which does not change the work done per step.
    * Each framework first runs ``--warmup`` untimed steps. Then ``--repeats``
      rounds of ``--steps`` timed steps follow, alternating memtrain and
      PyTorch round by round so that both see the same background load.
      Each round is timed with ``time.perf_counter`` around the whole loop
      (after a device synchronisation on CUDA, before and after).
      The reported figure is the best (maximum) samples/s over the rounds,
      which is the least disturbed by other processes on a small, shared
      machine; the median and every round's figure go to ``--json``.
    * memtrain's ``step`` returns the loss as a Python float, which on CUDA
      synchronises the host with the device every step; the PyTorch loop does
      not call ``loss.item()`` (the idiomatic fast eager loop).
    * ``--threads N`` sets torch.set_num_threads(N) and limits NumPy's BLAS to
      N threads through threadpoolctl; by default both keep their own choice,
      which is printed along with the BLAS libraries, versions and CPU model.
    * ``--profile`` then runs ``--steps`` more memtrain steps under cProfile and
      prints the self time per memtrain function (forward, backward, optimizer...).

Examples
    python bench/throughput.py --peer torch
    python bench/throughput.py --peer torch --layers 784,256,10 --batch-size 128 --json out.json
    python bench/throughput.py --profile --optimizer adam
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import memtrain
from memtrain import MLP, Trainer, get_backend
from memtrain.errors import DeviceError
from memtrain.memory.measure import cpu_model

# Hyper-parameters shared by both frameworks (memtrain's defaults, passed explicitly).
OPTIMIZER_HYPER = {
    "sgd": {"lr": 0.01},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
}
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# -- arguments ---------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive sizes, got {text!r}")
    return sizes


def _optimizer_list(text: str) -> list[str]:
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in OPTIMIZER_HYPER]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(OPTIMIZER_HYPER)}, got {text!r}")
    return names


def _positive(text: str) -> int:
    return _at_least(text, 1)


def _non_negative(text: str) -> int:
    return _at_least(text, 0)


def _at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=_int_list, default=[784, 1024, 1024, 10],
                   help="layer sizes, input to output (default 784,1024,1024,10)")
    p.add_argument("--batch-size", type=_positive, default=256, help="rows per step (default 256)")
    p.add_argument("--optimizer", type=_optimizer_list, default=["adam", "sgd"],
                   help="comma list of adam, sgd (default adam,sgd)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default float32")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu (NumPy, torch CPU) or cuda (memtrain's CuPy backend, torch.cuda); default cpu")
    p.add_argument("--peer", choices=["torch"], default=None, help="also run this framework (PyTorch eager)")
    p.add_argument("--steps", type=_positive, default=50, help="timed steps per round (default 50)")
    p.add_argument("--warmup", type=_non_negative, default=5, help="untimed steps before the first round (default 5)")
    p.add_argument("--repeats", type=_positive, default=5, help="timed rounds; the best is reported (default 5)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="CPU threads for NumPy's BLAS (threadpoolctl) and torch.set_num_threads "
                        "(default: leave as is)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, cProfile --steps memtrain steps per optimizer and print where the time goes")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results and the machine's details here")
    return p.parse_args(argv)


# -- the machine (cpu_model comes from memtrain.memory.measure) ----------------


def native_libraries() -> list[dict]:
    """BLAS and OpenMP libraries loaded in this process, with their thread counts (threadpoolctl)."""
    try:
        import threadpoolctl  # noqa: PLC0415 - optional
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "architecture", "threading_layer", "filepath")
    return [{k: lib.get(k) for k in keep} for lib in threadpoolctl.threadpool_info()]


def numpy_blas() -> str:
    """NumPy's build-time BLAS, from numpy.show_config (used when threadpoolctl is missing)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no mode="dicts"
        return "unknown (see numpy.show_config())"


def machine_info(torch) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas(),
        "memtrain": memtrain.__version__,
        "native_libraries": native_libraries(),
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV_VARS},
    }
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_mkl"] = torch.backends.mkl.is_available()
        info["torch_mkldnn"] = torch.backends.mkldnn.is_available()
    return info


# -- the two frameworks --------------------------------------------------------
class MemtrainRunner:
    name = "memtrain"

    def __init__(self, layers, batch, optimizer, dtype, device, x, y):
        self.model = MLP(layers, activation="relu", output="softmax", dtype=dtype, seed=0, device=device)
        hyper = OPTIMIZER_HYPER[optimizer]
        kwargs = {"lr": hyper["lr"]}
        if optimizer == "adam":
            kwargs.update(beta1=hyper["betas"][0], beta2=hyper["betas"][1], eps=hyper["eps"])
        self.trainer = Trainer(self.model, optimizer, batch_size=batch, seed=0, **kwargs)
        self.x, self.y = x, y
        self.xp = self.model.backend.xp
        self.is_cuda = self.model.backend.is_cuda
        self.impl = self.trainer.optimizer.describe()
        self.loss = float("nan")

    def step(self) -> None:
        self.loss = self.trainer.step(self.x, self.y)

    def sync(self) -> None:
        if self.is_cuda:
            self.xp.cuda.get_current_stream().synchronize()

    def last_loss(self) -> float:
        return float(self.loss)


class TorchRunner:
    name = "torch"

    def __init__(self, torch, layers, batch, optimizer, dtype, device, x, y):
        self.torch = torch
        nn = torch.nn
        self.device = torch.device(device)
        modules = []
        for i in range(1, len(layers)):
            modules.append(nn.Linear(layers[i - 1], layers[i]))
            if i < len(layers) - 1:
                modules.append(nn.ReLU())
        self.model = nn.Sequential(*modules).to(device=self.device, dtype=getattr(torch, dtype))
        self.model.train()
        params = list(self.model.parameters())
        hyper = OPTIMIZER_HYPER[optimizer]
        if optimizer == "adam":
            self.opt = torch.optim.Adam(params, **hyper)
        else:
            self.opt = torch.optim.SGD(params, **hyper)
        self.impl = f"{type(self.opt).__name__}({_hyper_text(hyper)}), {_torch_impl(torch, params)}"
        # The host batch as tensors: shared memory on the CPU, copied to the device every step on CUDA.
        self.x_host, self.y_host = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        self.is_cuda = self.device.type == "cuda"
        self.loss = None

    def step(self) -> None:
        x, y = self.x_host, self.y_host
        if self.is_cuda:
            x, y = x.to(self.device), y.to(self.device)
        self.opt.zero_grad()
        loss = self.torch.nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.loss = loss

    def sync(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    def last_loss(self) -> float:
        return float(self.loss.item()) if self.loss is not None else float("nan")


def _hyper_text(hyper: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in hyper.items())


def _torch_impl(torch, params) -> str:
    """Which optimizer implementation torch picks by default for these parameters."""
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach  # noqa: PLC0415 - private helper
        fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    except Exception:  # the private helper moved: say only that torch chose
        return "implementation: torch default"
    return "fused" if fused else "foreach" if foreach else "for-loop (single-tensor)"


def import_torch():
    try:
        import torch  # noqa: PLC0415 - optional peer
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return torch, None


# -- timing --------------------------------------------------------------------
def time_round(runner, steps: int) -> float:
    """Seconds for `steps` training steps, the device idle before and after."""
    runner.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    runner.sync()
    return time.perf_counter() - t0


def measure(runners, *, batch: int, steps: int, warmup: int, repeats: int) -> dict:
    """name -> samples/s of every round; rounds alternate between the runners."""
    for r in runners:
        for _ in range(warmup):
            r.step()
        r.sync()
    rates = {r.name: [] for r in runners}
    for _ in range(repeats):
        for r in runners:
            rates[r.name].append(steps * batch / time_round(r, steps))
    return rates


def profile_steps(runner, steps: int, top: int = 12) -> list[dict]:
    """Self time per Python function over `steps` steps, largest first (cProfile).

    NumPy ufunc calls (matmul, multiply, ...) are not separate entries: their
    time counts toward the memtrain function that made them, so the rows read
    as forward / backward / activation / optimizer / loss phases.
    """
    import cProfile  # noqa: PLC0415 - only with --profile
    import pstats  # noqa: PLC0415

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        runner.step()
    runner.sync()
    prof.disable()
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    root = os.path.dirname(os.path.dirname(os.path.abspath(memtrain.__file__)))
    return [{"function": f"{os.path.relpath(file, root) if file.startswith(root) else file}:{line}({name})",
             "ms_per_step": tottime / steps * 1e3, "share": tottime / stats.total_tt}
            for (file, line, name), (_, _, tottime, _, _) in rows]


def summarise(rates: list[float]) -> dict:
    return {"best": max(rates), "median": statistics.median(rates), "rounds": rates}


# -- output ----------------------------------------------------------------------
def print_machine(info: dict, device: str) -> None:
    print(f"date      {info['date']}")
    print(f"cpu       {info['cpu']} ({info['logical_cpus']} logical CPUs), "
          f"load average {', '.join(f'{x:.2f}' for x in info['load_average'] or [])}")
    print(f"python    {info['python']}   numpy {info['numpy']} (BLAS {info['numpy_blas']})   "
          f"memtrain {info['memtrain']}" + (f"   torch {info['torch']}" if "torch" in info else ""))
    for lib in info["native_libraries"]:
        where = os.path.basename(lib["filepath"] or "")
        extra = f", {lib['architecture']}" if lib.get("architecture") else ""
        print(f"native    {lib['internal_api']} {lib['version'] or ''} ({where}{extra}): "
              f"{lib['num_threads']} threads")
    if "torch" in info:
        print(f"torch     {info['torch_threads']} intra-op threads, MKL {info['torch_mkl']}, "
              f"oneDNN {info['torch_mkldnn']}")
    env = ", ".join(f"{k}={v}" for k, v in info["thread_env"].items() if v is not None) or "none set"
    print(f"env       thread variables: {env}")
    if info.get("threads_requested") is not None:
        print(f"threads   --threads {info['threads_requested']}: torch.set_num_threads and threadpoolctl's BLAS "
              f"limit (the variables above, set before start-up, would do the same)")
    print(f"device    {device}")


def print_table(results: list[dict], has_peer: bool) -> None:
    headers = ["model", "batch", "optimizer", "memtrain samples/s"]
    if has_peer:
        headers += ["torch samples/s", "memtrain/torch"]
    rows = []
    for r in results:
        row = [r["model"], str(r["batch"]), r["optimizer"], f"{r['memtrain']['best']:,.0f}"]
        if has_peer:
            row += [f"{r['torch']['best']:,.0f}", f"{r['ratio']:.2f}x"]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def print_profiles(results: list[dict]) -> None:
    for r in results:
        rows = r["memtrain"]["profile"]
        print(f"\nmemtrain {r['optimizer']} step, cProfile self time per function "
              f"(ufunc calls such as matmul count toward their caller; the profiler adds overhead):")
        for row in rows:
            print(f"  {row['ms_per_step']:7.3f} ms/step  {100 * row['share']:5.1f}%  {row['function']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        get_backend(args.device)  # fail early, and plainly, when CuPy or the GPU is missing
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    torch = None
    if args.peer == "torch":
        torch, why = import_torch()
        if torch is None:
            print(f"note: --peer torch asked for, but PyTorch cannot be imported ({why}); "
                  "running memtrain alone. Install it with: pip install torch==2.13.0", file=sys.stderr)
        elif args.device == "cuda" and not torch.cuda.is_available():
            print("note: PyTorch has no CUDA device here; running memtrain alone", file=sys.stderr)
            torch = None

    limits = None
    if args.threads is not None:
        if torch is not None:
            torch.set_num_threads(args.threads)
        try:
            import threadpoolctl  # noqa: PLC0415 - optional
            limits = threadpoolctl.threadpool_limits(args.threads)
        except ImportError:
            print(f"note: threadpoolctl is missing, so NumPy's BLAS keeps its thread count; set "
                  f"{', '.join(THREAD_ENV_VARS)}={args.threads} in the environment instead", file=sys.stderr)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, args.layers[0])).astype(args.dtype)
    y = rng.integers(0, args.layers[-1], size=args.batch_size).astype(np.intp)
    model_name = "-".join(map(str, args.layers))

    info = machine_info(torch)
    info["threads_requested"] = args.threads
    print_machine(info, args.device)
    print(f"run       {args.steps} timed steps x {args.repeats} rounds (best reported), "
          f"{args.warmup} warm-up steps, {args.dtype}\n")

    results = []
    for opt in args.optimizer:
        runners = [MemtrainRunner(args.layers, args.batch_size, opt, args.dtype, args.device, x, y)]
        if torch is not None:
            runners.append(TorchRunner(torch, args.layers, args.batch_size, opt, args.dtype, args.device, x, y))
        rates = measure(runners, batch=args.batch_size, steps=args.steps, warmup=args.warmup, repeats=args.repeats)
        result = {"model": model_name, "batch": args.batch_size, "optimizer": opt, "dtype": args.dtype,
                  "device": args.device}
        for r in runners:
            result[r.name] = {**summarise(rates[r.name]), "implementation": r.impl, "last_loss": r.last_loss()}
            print(f"{opt:5s} {r.name:9s} {r.impl}; rounds: "
                  f"{', '.join(f'{v:,.0f}' for v in rates[r.name])} samples/s; last loss {r.last_loss():.4f}")
        if args.profile:
            result["memtrain"]["profile"] = profile_steps(runners[0], args.steps)
        if torch is not None:
            result["ratio"] = result["memtrain"]["best"] / result["torch"]["best"]
            result["ratio_median"] = result["memtrain"]["median"] / result["torch"]["median"]
        results.append(result)

    print()
    print_table(results, torch is not None)
    if args.profile:
        print_profiles(results)
    if limits is not None:
        limits.restore_original_limits()

    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        with open(args.json, "w") as f:
            json.dump({"machine": info, "config": config, "results": results}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
