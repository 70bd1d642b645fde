"""Training-step throughput of an MLP on the CPU: memtrain against PyTorch eager, each in its own process.

What is measured
    Samples per second of one full training step (forward pass, softmax cross-entropy loss
    as the batch mean, backward pass and the optimizer update) for an MLP with ReLU hidden
    layers (default 784-1024-1024-10, batch 256, float32), per optimizer (default adam and
    sgd), for memtrain (one row per variant: its fused numba CPU path and/or its NumPy
    reference path) and PyTorch eager; and, in the same run, the GEMM limit: the samples/s
    the step's matrix products alone would allow at the BLAS rate measured on this machine.

Why this method
    The previous version timed rounds of a fixed 50 steps with both frameworks in one
    process. On small models such a round lasts ~50 ms, too short for PyTorch to reach its
    steady state, and the frameworks shared one process's thread pools. It flattered memtrain:
    784-256-10, batch 128, Adam gave 2.15x with 50-step rounds, 1.22x with 500-step rounds, and
    1.18x with each framework in its own process and 1,500-step rounds (issue 17). Hence:

How
    * Every framework runs in its own persistent worker process (bench/throughput_worker.py,
      one per memtrain variant and one for torch), which imports only its framework and is
      driven over JSON lines on a pipe. The GEMM rounds run in the (first) memtrain worker,
      with NumPy's matmul, i.e. memtrain's BLAS.
    * Rounds are timed, not counted: a round runs whole steps until at least --round-seconds
      (default 0.5 s) have passed, timed with time.perf_counter around the loop;
      samples/s = steps x batch / elapsed.
    * Warm-up by time too: each worker steps for --warmup seconds (default 1 s) and then runs
      one untimed round (its rate is kept in --json as warmup_samples_per_s, to show whether
      the worker was steady). The GEMM set gets one untimed round.
    * Then --repeats cycles (default 7), each: one GEMM round, one round of each memtrain
      variant, one torch round, each after --settle seconds of idle (default 0.1 s: the
      previous worker's BLAS and OpenMP threads spin for a while after their last call and
      would otherwise take CPU from the next round). The rounds alternate, so all see the same background load.
      Per framework the median and the best (maximum) samples/s are reported, and memtrain's
      ratio to torch of the medians and of the bests. The median is the headline figure; the
      best is the least disturbed by other processes on a shared machine.
    * The GEMM limit: the step's products are, per layer i (sizes n_{i-1} -> n_i, batch B),
      forward h W (B x n_{i-1} x n_i), backward h^T delta and, above the first layer,
      delta W^T (memtrain/nn/step.py: the input needs no gradient), each 2 m n k FLOP.
      A GEMM round runs that set, on preallocated operands with memtrain's transposed views,
      until --round-seconds have passed: GEMM-limit samples/s = B / (seconds per set), and
      the rate in GFLOP/s (sgemm for float32, dgemm for float64). Each framework's share of
      the limit = its median samples/s / the limit's median samples/s (the best's share uses
      the bests). This is an upper bound for memtrain: the products alone, with warm caches.
      It is NumPy's BLAS; PyTorch calls its own (MKL/oneDNN), so torch's share is against
      memtrain's limit and can exceed 100%.
    * Same data, architecture, loss and hyper-parameters in every worker: a fixed batch
      (standard-normal inputs, labels uniform in [0, C), seed 0) held on the host; SGD
      lr=0.01; Adam lr=1e-3, betas (0.9, 0.999), eps=1e-8. PyTorch otherwise keeps its
      defaults (zero_grad(set_to_none=True), the optimizer implementation torch picks, which
      is reported); its loop does not call loss.item(), while memtrain's step returns the loss.
      Initial weights differ (each framework's own initialiser); the work per step does not.
    * --threads N sets OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS in every worker's environment before
      start-up, and torch.set_num_threads(N) and threadpoolctl's limit in every worker. By
      default each framework keeps its own choice; the thread counts are reported.
    * --profile then runs one more round of memtrain steps under cProfile in each memtrain
      worker and prints the self time per memtrain function.
    * The output ends with markdown table rows for docs/benchmarks.md and the exact command.
      --json PATH keeps every round (in the order run, with start times), the machine (CPU,
      cores, BLAS libraries and versions, torch version and threads, numba version, date in
      UTC, load average before and after) and the configuration.

    The GPU benchmark is bench/gpu_throughput.py; this script is CPU only (its former
    --device cuda was dropped with the move to worker processes).

Examples
    .venv/bin/python bench/throughput.py
    .venv/bin/python bench/throughput.py --layers 784,256,10 --batch-size 128 --optimizer adam --json out.json
    .venv/bin/python bench/throughput.py --memtrain-variants fused,numpy --peer none --profile
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput_worker import OPTIMIZER_HYPER, THREAD_ENV_VARS, flop_per_step, gemm_shapes  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput_worker.py")
VARIANTS = ("fused", "numpy")


# -- arguments -------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, exit status 2 (argparse's usage block would come first otherwise)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive sizes, got {text!r}")
    return sizes


def _name_list(choices):
    def parse(text: str) -> list[str]:
        names = [s.strip().lower() for s in text.split(",") if s.strip()]
        if not names or any(n not in choices for n in names) or len(set(names)) < len(names):
            raise argparse.ArgumentTypeError(f"expected a comma list of distinct names from "
                                             f"{', '.join(choices)}, got {text!r}")
        return names
    return parse


def _number(kind, low: float, strict: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (strict and value == low) or value != value:
            bound = f"> {low}" if strict else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=_int_list, default=[784, 1024, 1024, 10],
                   help="layer sizes, input to output (default 784,1024,1024,10)")
    p.add_argument("--batch-size", type=_number(int, 1, False), default=256, help="rows per step (default 256)")
    p.add_argument("--optimizer", type=_name_list(tuple(OPTIMIZER_HYPER)), default=["adam", "sgd"],
                   help="comma list of adam, sgd (default adam,sgd)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="default float32")
    p.add_argument("--peer", choices=["auto", "torch", "none"], default="auto",
                   help="PyTorch eager as the peer: auto (default) runs it when torch is importable, "
                        "torch requires it, none leaves it out")
    p.add_argument("--memtrain-variants", type=_name_list(VARIANTS), default=None,
                   help="comma list of fused (the numba CPU path) and numpy (the NumPy reference path), one "
                        "worker each (default: fused where this memtrain has it, else numpy)")
    p.add_argument("--round-seconds", type=_number(float, 0, True), default=0.5,
                   help="a round runs whole steps until at least this long (default 0.5)")
    p.add_argument("--warmup", type=_number(float, 0, False), default=1.0,
                   help="seconds of untimed steps per worker before its untimed first round (default 1)")
    p.add_argument("--repeats", type=_number(int, 1, False), default=7,
                   help="timed rounds per framework, alternating (default 7)")
    p.add_argument("--settle", type=_number(float, 0, False), default=0.1,
                   help="seconds of idle before each round, so the previous worker's BLAS/OpenMP threads, "
                        "which spin a while after their last call, are asleep (default 0.1)")
    p.add_argument("--threads", type=_number(int, 1, False), default=None,
                   help="threads for every worker: thread environment variables, torch.set_num_threads, "
                        "threadpoolctl (default: each framework's own choice)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, cProfile one round of memtrain steps per variant and optimizer")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="write every round, the machine's details and the configuration here")
    args = p.parse_args(argv)
    if args.peer == "torch" and importlib.util.find_spec("torch") is None:
        p.error("--peer torch: PyTorch is not importable here (pip install torch==2.13.0, or --peer auto)")
    args.with_torch = args.peer == "torch" or (args.peer == "auto" and importlib.util.find_spec("torch") is not None)
    return args


# -- the worker processes --------------------------------------------------------
class WorkerError(RuntimeError):
    """A worker process exited; its own traceback went to stderr."""


class WorkerProcess:
    def __init__(self, label: str, kind: str, variant: str | None, threads: int | None):
        self.label, self.kind, self.variant = label, kind, variant
        env = dict(os.environ)
        if threads is not None:  # before start-up: OpenBLAS, OpenMP and numba read them when they load
            env.update({k: str(threads) for k in THREAD_ENV_VARS})
        self.proc = subprocess.Popen([sys.executable, WORKER, kind], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def call(self, op: str, **request) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **request}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it exited: readline says so below
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"the {self.label} worker exited with status {self.proc.wait()} "
                              f"during {op!r} (its stderr is above)")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_workers(args) -> list[WorkerProcess]:
    """memtrain workers first (one per variant), then torch; all start at once, then say hello."""
    variants = args.memtrain_variants or [None]  # None: decided once the worker says what it supports
    workers = [WorkerProcess(f"memtrain-{v}", "memtrain", v, args.threads) for v in variants]
    if args.with_torch:
        workers.append(WorkerProcess("torch", "torch", None, args.threads))
    try:
        for w in workers:
            w.hello = w.call("hello", threads=args.threads)
        fused = workers[0].hello["fused_supported"]
        if args.memtrain_variants is None:
            workers[0].variant = "fused" if fused else "numpy"
            workers[0].label = f"memtrain-{workers[0].variant}"
        elif "fused" in args.memtrain_variants and not fused:
            raise VariantError("--memtrain-variants: fused needs a memtrain whose Trainer takes fused= "
                               "(this one has the NumPy reference path only); use numpy")
    except BaseException:
        for w in workers:
            w.close()
        raise
    return workers


class VariantError(ValueError):
    """A memtrain variant this memtrain does not have (a usage error: exit status 2)."""


# -- the schedule ----------------------------------------------------------------
def warm_up(workers, args, opt: str) -> dict:
    """Build every worker's model for `opt` and warm it up; returns label -> implementation and warm-up rate."""
    out = {}
    for w in workers:
        built = w.call("build", layers=args.layers, batch=args.batch_size, optimizer=opt, dtype=args.dtype,
                       variant=w.variant)
        warm = w.call("warmup", seconds=args.warmup, round_seconds=args.round_seconds)
        out[w.label] = {"implementation": built["implementation"],
                        "warmup_samples_per_s": warm["steps"] * args.batch_size / warm["elapsed_s"]}
    warm = workers[0].call("gemm", seconds=args.round_seconds)
    out["gemm"] = {"warmup_samples_per_s": warm["steps"] * args.batch_size / warm["elapsed_s"]}
    return out


def run_rounds(workers, args) -> list[dict]:
    """--repeats cycles of: a GEMM round (in the first memtrain worker), then one round per worker.
    Returns the rounds in the order they ran."""
    rounds = []
    for repeat in range(args.repeats):
        for who, w, op in [("gemm", workers[0], "gemm"), *((w.label, w, "round") for w in workers)]:
            time.sleep(args.settle)
            r = w.call(op, seconds=args.round_seconds)
            r["samples_per_s"] = r["steps"] * args.batch_size / r["elapsed_s"]
            if who == "gemm":
                r["gflops"] = r["steps"] * r.pop("flop_per_step") / r["elapsed_s"] / 1e9
            rounds.append({"index": len(rounds), "repeat": repeat, "who": who, **r})
    return rounds


def summarise(rounds: list[dict], warm: dict, with_torch: bool) -> tuple[dict, dict]:
    """Per framework: median, best, every round's rate, ratio to torch, share of the GEMM limit."""
    def stats(who):
        rates = [r["samples_per_s"] for r in rounds if r["who"] == who]
        return {"median": statistics.median(rates), "best": max(rates), "rates": rates}

    gemm = {**warm.pop("gemm"), **stats("gemm")}
    gflops = [r["gflops"] for r in rounds if r["who"] == "gemm"]
    gemm.update(gflops_median=statistics.median(gflops), gflops_best=max(gflops))
    frameworks = {}
    for label, info in warm.items():
        f = frameworks[label] = {**info, **stats(label)}
        f["last_loss"] = [r["loss"] for r in rounds if r["who"] == label][-1]
        f["share_of_gemm_limit"] = f["median"] / gemm["median"]
        f["share_of_gemm_limit_best"] = f["best"] / gemm["best"]
    if with_torch:
        t = frameworks["torch"]
        for label, f in frameworks.items():
            if label != "torch":
                f["vs_torch_median"] = f["median"] / t["median"]
                f["vs_torch_best"] = f["best"] / t["best"]
    return frameworks, gemm


def measure(workers, args, opt: str) -> dict:
    warm = warm_up(workers, args, opt)
    rounds = run_rounds(workers, args)
    frameworks, gemm = summarise(rounds, warm, args.with_torch)
    result = {"model": "-".join(map(str, args.layers)), "batch": args.batch_size, "optimizer": opt,
              "dtype": args.dtype, "flop_per_step": flop_per_step(args.layers, args.batch_size),
              "gemm_shapes": gemm_shapes(args.layers, args.batch_size),
              "frameworks": frameworks, "gemm_limit": gemm, "rounds": rounds}
    result["flop_per_sample"] = result["flop_per_step"] / args.batch_size
    if args.profile:
        result["profile"] = {w.label: w.call("profile", seconds=args.round_seconds)["rows"]
                             for w in workers if w.kind == "memtrain"}
    return result


# -- the machine -------------------------------------------------------------------
def cpu_model() -> str:
    # memtrain.memory.measure.cpu_model's twin: this parent process imports neither NumPy nor
    # memtrain, so that no BLAS thread pool of its own competes with the workers it times
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def command_line(argv: list[str]) -> str:
    """The command as run, with the interpreter as a path relative to here when it is inside."""
    python = os.path.relpath(sys.executable)
    return shlex.join([sys.executable if python.startswith("..") else python, sys.argv[0], *argv])


# -- output ------------------------------------------------------------------------
def display(label: str) -> str:
    return label.replace("memtrain-", "memtrain ") if label.startswith("memtrain-") else label


def _n(x: float) -> str:
    return f"{x:,.0f}"


def print_result(r: dict, blas: str) -> None:
    for label, f in r["frameworks"].items():
        print(f"{r['optimizer']:5s} {display(label):16s} {f['implementation']}")
        print(f"      rounds {' '.join(_n(v) for v in f['rates'])} samples/s: median {_n(f['median'])}, "
              f"best {_n(f['best'])} (warm-up round {_n(f['warmup_samples_per_s'])}); last loss {f['last_loss']:.4f}")
    g = r["gemm_limit"]
    print(f"{r['optimizer']:5s} {'GEMM limit':16s} NumPy {blas}, {len(r['gemm_shapes'])} products, "
          f"{r['flop_per_sample'] / 1e6:.3g} MFLOP per sample")
    print(f"      rounds {' '.join(_n(v) for v in g['rates'])} samples/s: median {_n(g['median'])} "
          f"({g['gflops_median']:.1f} GFLOP/s), best {_n(g['best'])} ({g['gflops_best']:.1f} GFLOP/s)")


def print_profile(r: dict) -> None:
    for label, rows in r.get("profile", {}).items():
        print(f"\n{display(label)} {r['optimizer']} step, cProfile self time per function "
              f"(ufunc calls such as matmul count toward their caller; the profiler adds overhead):")
        for row in rows:
            print(f"  {row['ms_per_step']:7.3f} ms/step  {100 * row['share']:5.1f}%  {row['function']}")


def table_rows(results: list[dict], blas: str) -> list[list[str]]:
    rows = [["model", "batch", "optimizer", "framework", "median samples/s", "best samples/s",
             "vs torch (median)", "vs torch (best)", "share of GEMM limit (median)"]]
    for r in results:
        head = [r["model"], str(r["batch"]), r["optimizer"]]
        for label, f in r["frameworks"].items():
            ratio = [f"{f[k]:.2f}x" if k in f else "" for k in ("vs_torch_median", "vs_torch_best")]
            rows.append(head + [display(label), _n(f["median"]), _n(f["best"]), *ratio,
                                f"{100 * f['share_of_gemm_limit']:.0f}%"])
        g = r["gemm_limit"]
        rows.append(head + [f"GEMM limit ({blas}, {g['gflops_median']:.0f} GFLOP/s)", _n(g["median"]),
                            _n(g["best"]), "", "", "100%"])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def print_machine(machine: dict) -> None:
    loads = {k: ", ".join(f"{x:.2f}" for x in machine[k] or []) for k in ("load_before", "load_after")}
    print(f"machine   {machine['cpu']} ({machine['logical_cpus']} logical CPUs), python {machine['python']}; "
          f"load average {loads['load_before']} before, {loads['load_after']} after")
    for label, w in machine["workers"].items():
        if w["kind"] == "memtrain":
            what = (f"memtrain {w['memtrain']}, numpy {w['numpy']} (BLAS {w['numpy_blas']}), "
                    f"numba {w['numba'] or 'not installed'}")
        else:
            what = (f"torch {w['torch']}, {w['torch_threads']} intra-op threads, MKL {w['torch_mkl']}, "
                    f"oneDNN {w['torch_mkldnn']}")
        env = ", ".join(f"{k}={v}" for k, v in w["thread_env"].items() if v is not None) or "no thread variables"
        print(f"{display(label):16s} pid {w['pid']}: {what}; {env}")
        for lib in w.get("native_libraries", []):
            arch = f", {lib['architecture']}" if lib.get("architecture") else ""
            print(f"{'':16s} {lib['internal_api']} {lib['version'] or ''} "
                  f"({os.path.basename(lib['filepath'] or '')}{arch}): {lib['num_threads']} threads")


# -- main ----------------------------------------------------------------------------
def run(args, argv: list[str]) -> dict:
    """Start the workers, measure every optimizer, stop the workers; returns the --json report."""
    machine = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
               "load_before": load_average()}
    blas = "sgemm" if args.dtype == "float32" else "dgemm"
    print(f"date      {machine['date']}\ncommand   {command_line(argv)}")
    print(f"method    rounds of >= {args.round_seconds:g} s, {args.repeats} per framework, alternating, each "
          f"framework in its own process; {args.warmup:g} s warm-up + 1 untimed round; {args.dtype}\n")
    load = machine["load_before"]
    if load and load[0] > 0.5:
        print(f"note      load average {load[0]:.2f} on {machine['logical_cpus']} logical CPUs before the run: other "
              "processes compete for the cores (OpenMP pools such as torch's suffer most when a core is taken); "
              "the rounds alternate, so all frameworks see it, but a quiet machine's figures differ\n")
    workers = start_workers(args)
    try:
        results = []
        for opt in args.optimizer:
            results.append(measure(workers, args, opt))
            print_result(results[-1], blas)
        machine["workers"] = {w.label: {**w.hello, **w.call("info")} for w in workers}
    finally:
        for w in workers:
            w.close()
    machine["load_after"] = load_average()
    config = {k: v for k, v in vars(args).items() if k != "json"}
    config["memtrain_variants"] = [w.variant for w in workers if w.kind == "memtrain"]
    return {"command": command_line(argv), "machine": machine, "config": config, "results": results,
            "blas_routine": blas}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        report = run(args, argv)
    except VariantError as exc:
        print(f"{os.path.basename(sys.argv[0])}: error: {exc}", file=sys.stderr)
        return 2
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print_machine(report["machine"])
    for r in report["results"]:
        print_profile(r)
    print("\nFor docs/benchmarks.md (samples/s; shares are of the GEMM limit measured in the same run):\n")
    print_table(table_rows(report["results"], report["blas_routine"]))
    print(f"\ncommand: {report['command']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
