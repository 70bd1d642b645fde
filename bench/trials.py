"""Many small trials: a trial array against one process per trial, a loop, and PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/trials.py [--runs 3] [--quick]

Scenarios (every trial: Adam, batch 32, its own learning rate, log-spaced 1e-4..0.75, and
its own data order; the data set loaded by memtrain's loader from the same job config):
- sweep:  32 trials of the digits MLP 64-128-10, 20 epochs, validation every epoch (issue 22)
- course: K in {1, 8, 32, 128} trials of 784-32-20-10 on synthetic data of MNIST's shape
- wide:   K in {1, 8, 32, 128} trials of 784-256-10 on the same kind of data

Ways, each run in a fresh process (wall time from its start, imports and data included;
CPU seconds (user + system) and peak RSS of its whole process tree), medians of --runs:
- array:      memtrain.train.trials.TrialArray, one process
- loop:       memtrain Trainer per trial, one after another, one process
- processes:  `memtrain train` per trial, 2 at a time (as `memtrain sweep` runs them today)
- service:    `memtrain serve --budget cpu=1GiB` started in a fresh state dir, then the K trials as one
              sweep file (`memtrain submit SWEEP.toml --wait`: the service runs them as trial arrays);
              "train s" is the submit's own time (submission to the ranked results), "wall" includes
              the service's start; the sweep's patience is the epoch count (no early stop: the same
              work as the other ways)
- torch_loop: PyTorch, trials one after another, one process (when torch imports)
- torch_func: PyTorch torch.func ensemble (stack_module_state + vmap(grad(functional_call)),
              all K stepped together, per-trial learning rate), one process (when torch imports)
PyTorch runs from --torch-path when given (a directory holding torch), else when importable.
Every child prints the BLAS it ran (threadpoolctl): library, kernel (architecture), threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "sweep": {"layers": [64, 128, 10], "dataset": "digits", "validation": 0.2, "epochs": 20},
    "course": {"layers": [784, 32, 20, 10], "dataset": "synthetic:classification(6000, 784, 10)",
               "validation": 0.0, "epochs": 2},
    "wide": {"layers": [784, 256, 10], "dataset": "synthetic:classification(2000, 784, 10)", "validation": 0.0,
             "epochs": 1},
}
WAYS = ("array", "loop", "processes", "service", "torch_loop", "torch_func")
SERVICE_BUDGET = "cpu=1GiB"


def learning_rates(k: int) -> list:
    if k == 1:
        return [1e-3]
    lo, hi = -4.0, __import__("math").log10(0.75)
    return [10 ** (lo + (hi - lo) * i / (k - 1)) for i in range(k)]


def job_dict(scenario: str, lr: float, name: str, out: str) -> dict:
    s = SCENARIOS[scenario]
    return {"name": name, "seed": 0, "device": "cpu",
            "model": {"layers": s["layers"], "activation": "relu", "output": "softmax", "dtype": "float32"},
            "optimizer": {"name": "adam", "lr": lr},
            "training": {"batch_size": 32, "epochs": s["epochs"], "measure": "off"},
            "data": {"dataset": s["dataset"], "validation": s["validation"], "test": 0.0, "standardize": True},
            "checkpoint": {"every_minutes": 0.0}, "output": {"dir": out}}


def toml(job: dict) -> str:
    """The job dict as TOML (scalars, lists and one level of tables are all it holds)."""
    value = lambda v: json.dumps(v)  # noqa: E731 - JSON strings, numbers, lists and booleans are TOML's too
    top = [f"{k} = {value(v)}" for k, v in job.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
              for k, v in job.items() if isinstance(v, dict)]
    return "\n".join(top + tables) + "\n"


def blas(way: str) -> list:
    """The BLAS libraries loaded (threadpoolctl) and, for the torch ways, torch's own (its MKL is
    linked in, where threadpoolctl does not see it)."""
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    if way == "service":  # the training runs in the service's workers: the same NumPy, their own thread count
        import numpy  # noqa: F401, PLC0415 - loads the BLAS the workers load, for threadpoolctl to name
    out = [f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')} threads {i.get('num_threads')}"
           for i in threadpool_info() if i.get("user_api") == "blas"]
    if way == "service":  # serve's default: one job per core, cores // jobs = 1 thread each
        out = [o.rsplit(" threads ", 1)[0] + " threads 1 per service worker" for o in out]
    if way.startswith("torch"):
        import torch  # noqa: PLC0415

        out.insert(0, f"torch {torch.__version__} mkl {torch.backends.mkl.is_available()} "
                      f"threads {torch.get_num_threads()}")
    return out


# -- the ways (each runs in its own child process) ----------------------------------------------


def load(scenario: str):
    from memtrain.config import from_dict  # noqa: PLC0415
    from memtrain.train.job import load_job_data  # noqa: PLC0415

    cfg = from_dict(job_dict(scenario, 1e-3, "bench", tempfile.gettempdir()))
    return cfg, load_job_data(cfg)


def way_array(scenario: str, k: int) -> float:
    from memtrain.config import from_dict  # noqa: PLC0415
    from memtrain.train.trials import TrialArray, setting_from_config  # noqa: PLC0415

    _, ds = load(scenario)
    n = len(ds.X_train)
    settings = [setting_from_config(from_dict(job_dict(scenario, lr, "t", "/tmp")), n, 32) for lr in learning_rates(k)]
    val = (ds.X_val, ds.y_val) if ds.X_val is not None and len(ds.X_val) else None
    t0 = time.perf_counter()
    TrialArray(settings, ds.X_train, ds.y_train, val, batch_size=32).train()
    return time.perf_counter() - t0


def way_loop(scenario: str, k: int) -> float:
    from memtrain import MLP, Trainer  # noqa: PLC0415

    cfg, ds = load(scenario)
    val = (ds.X_val, ds.y_val) if ds.X_val is not None and len(ds.X_val) else None
    t0 = time.perf_counter()
    for lr in learning_rates(k):
        model = MLP.from_spec(cfg.model_spec(), seed=0)
        Trainer(model, "adam", 32, seed=0, lr=lr).fit(ds.X_train, ds.y_train, cfg.training.epochs, validation=val)
    return time.perf_counter() - t0


def way_processes(scenario: str, k: int) -> float:
    """`memtrain train` per trial, 2 at a time (the sweep's default)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, lr in enumerate(learning_rates(k)):
            p = Path(tmp) / f"t{i}.toml"
            p.write_text(toml(job_dict(scenario, lr, f"t{i}", str(Path(tmp) / f"t{i}"))))
            files.append(p)
        running: list = []
        for p in files:
            while len(running) >= 2:
                running = [r for r in running if r.poll() is None] or running
                if len(running) >= 2:
                    time.sleep(0.01)
            running.append(subprocess.Popen([sys.executable, "-m", "memtrain.cli", "train", str(p), "--no-progress"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp))
        for r in running:
            r.wait()
    return time.perf_counter() - t0


def sweep_toml(scenario: str, k: int) -> str:
    """The K trials as a sweep file over the learning rate, its base job inline ([base] tables)."""
    base = job_dict(scenario, 1e-3, "base", "unused")
    del base["output"]  # the service places each trial's run dir
    base["training"]["patience"] = SCENARIOS[scenario]["epochs"]  # no early stop: the other ways' work
    value = json.dumps  # JSON strings, numbers, lists and booleans are TOML's too
    lines = ['name = "bench"', "[space]", f"lr = {value(learning_rates(k))}", "[base]"]
    lines += [f"{key} = {value(v)}" for key, v in base.items() if not isinstance(v, dict)]
    for key, table in base.items():
        if isinstance(table, dict):
            lines += [f"[base.{key}]"] + [f"{kk} = {value(vv)}" for kk, vv in table.items()]
    return "\n".join(lines) + "\n"


def way_service(scenario: str, k: int) -> float:
    """The K trials as one sweep through `memtrain serve` (1 GiB CPU budget): `memtrain submit --wait`."""
    import socket  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        url = f"http://127.0.0.1:{port}"
        serve = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "serve", "--state-dir", str(Path(tmp) / "s"),
                                  "--port", str(port), "--devices", "cpu", "--budget", SERVICE_BUDGET,
                                  "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=5).read()
                    break
                except OSError:
                    if serve.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"memtrain serve did not start: {serve.stderr.read().decode()[-2000:]}")
                    time.sleep(0.1)
            sweep = Path(tmp) / "sweep.toml"
            sweep.write_text(sweep_toml(scenario, k))
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "memtrain.cli", "submit", str(sweep), "--wait", "--server", url],
                                 capture_output=True, text=True)
            took = time.perf_counter() - t0
            if out.returncode != 0 or " succeeded " not in out.stdout:
                raise RuntimeError(f"memtrain submit failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            return took
        finally:
            serve.terminate()
            serve.wait(60)


def _torch_data(scenario: str):
    import torch  # noqa: PLC0415

    _, ds = load(scenario)
    X, y = torch.from_numpy(ds.X_train), torch.from_numpy(ds.y_train.astype("int64"))
    val = None
    if ds.X_val is not None and len(ds.X_val):
        val = torch.from_numpy(ds.X_val), torch.from_numpy(ds.y_val.astype("int64"))
    return X, y, val


def _torch_model(sizes, seed):
    import torch  # noqa: PLC0415

    torch.manual_seed(seed)
    layers = []
    for i in range(1, len(sizes)):
        layers.append(torch.nn.Linear(sizes[i - 1], sizes[i]))
        if i < len(sizes) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def way_torch_loop(scenario: str, k: int) -> float:
    import torch  # noqa: PLC0415

    X, y, val = _torch_data(scenario)
    sizes, epochs = SCENARIOS[scenario]["layers"], SCENARIOS[scenario]["epochs"]
    t0 = time.perf_counter()
    for i, lr in enumerate(learning_rates(k)):
        model = _torch_model(sizes, i)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        g = torch.Generator().manual_seed(i)
        for _ in range(epochs):
            order = torch.randperm(len(X), generator=g)
            for s in range(0, len(X), 32):
                idx = order[s : s + 32]
                opt.zero_grad(set_to_none=False)
                torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
            if val is not None:
                with torch.no_grad():
                    torch.nn.functional.cross_entropy(model(val[0]), val[1])
    return time.perf_counter() - t0


def way_torch_func(scenario: str, k: int) -> float:
    """The torch.func ensemble, Adam by hand over the stacked parameters with a per-trial rate."""
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: PLC0415

    X, y, val = _torch_data(scenario)
    sizes, epochs = SCENARIOS[scenario]["layers"], SCENARIOS[scenario]["epochs"]
    t0 = time.perf_counter()
    models = [_torch_model(sizes, i) for i in range(k)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, xb, yb):
        return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (xb,)), yb)

    grads_of = vmap(grad(loss))
    lr = torch.tensor(learning_rates(k), dtype=torch.float32)
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    gens = [torch.Generator().manual_seed(i) for i in range(k)]
    t, b1, b2 = 0, 0.9, 0.999
    for _ in range(epochs):
        orders = torch.stack([torch.randperm(len(X), generator=g) for g in gens])
        for s in range(0, len(X), 32):
            idx = orders[:, s : s + 32]
            gr = grads_of(params, buffers, X[idx], y[idx])
            t += 1
            with torch.no_grad():
                for n, p in params.items():
                    m[n].mul_(b1).add_(gr[n], alpha=1 - b1)
                    v[n].mul_(b2).addcmul_(gr[n], gr[n], value=1 - b2)
                    step = (lr / (1 - b1 ** t)).view(-1, *[1] * (p.dim() - 1))
                    p.sub_(step * m[n] / ((v[n] / (1 - b2 ** t)).sqrt() + 1e-8))
        if val is not None:
            with torch.no_grad():
                vmap(lambda p, b: functional_call(base, (p, b), (val[0],)))(params, buffers)
    return time.perf_counter() - t0


# -- measuring ------------------------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and every descendant (from /proc)."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def child_main(way: str, scenario: str, k: int) -> None:
    peak = [0]
    done = threading.Event()

    def sample():  # the process tree's RSS (the processes way's trials are its children)
        while not done.wait(0.05):
            peak[0] = max(peak[0], tree_rss(os.getpid()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    train = globals()[f"way_{way}"](scenario, k)
    done.set()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # CPU seconds of the whole tree (children are counted once reaped: the service's workers by it):
    # what the way costs whatever else the machine runs, beside the wall time, which depends on it
    cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
    print(json.dumps({"train_seconds": train, "peak_rss": max(peak[0], own), "cpu_seconds": cpu, "blas": blas(way)}))


def measure(way: str, scenario: str, k: int, env: dict) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", way, scenario, str(k)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{way} {scenario} K={k} failed:\n{out.stderr[-2000:]}")
    return {"wall": wall, **json.loads(out.stdout.strip().splitlines()[-1])}


def torch_env(torch_path: str | None) -> dict | None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), torch_path, env.get("PYTHONPATH")]))
    ok = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True).returncode == 0
    return env if ok else None


def plan_runs(args) -> list:
    runs = [("sweep", 32)] if "sweep" in args.scenarios else []
    runs += [(s, k) for s in ("course", "wide") if s in args.scenarios for k in args.ks]
    return runs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=3, help="runs of each (median)")
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--scenarios", default="sweep,course,wide")
    ap.add_argument("--ks", default="1,8,32,128")
    ap.add_argument("--max-processes", type=int, default=32, help="run the processes way only up to this K")
    ap.add_argument("--slow-runs", type=int, help="runs of the loop, processes and torch_loop ways (default --runs)")
    ap.add_argument("--threads", type=int, help="threads for every way's BLAS, OpenMP, numba and torch "
                    "(default: each framework's own choice)")
    ap.add_argument("--torch-path", help="a directory holding torch, added to the torch ways' PYTHONPATH")
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child[0], args.child[1], int(args.child[2]))
        return
    args.ks = [int(k) for k in args.ks.split(",")]
    args.scenarios = args.scenarios.split(",")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.threads:
        names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                 "MEMTRAIN_CPU_THREADS")
        env.update(dict.fromkeys(names, str(args.threads)))
        os.environ.update(dict.fromkeys(names, str(args.threads)))
    tenv = torch_env(args.torch_path)
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}; torch: "
          f"{'yes' if tenv else 'not importable, its ways are skipped'}; {os.cpu_count()} CPUs; threads "
          f"{args.threads or 'default'}; medians of n runs")
    print(f"{'scenario':8s} {'K':>4s} {'way':11s} {'n':>2s} {'wall s':>8s} {'train s':>8s} {'cpu s':>7s} "
          f"{'peak RSS MiB':>13s}  BLAS")
    for scenario, k in plan_runs(args):
        for way in args.ways.split(","):
            if (way.startswith("torch") and tenv is None) or (way == "processes" and k > args.max_processes):
                continue
            n = args.slow_runs if (args.slow_runs and way in ("loop", "processes", "torch_loop")) else args.runs
            rs = [measure(way, scenario, k, tenv if way.startswith("torch") else env) for _ in range(n)]
            med = {f: statistics.median(r[f] for r in rs) for f in ("wall", "train_seconds", "cpu_seconds", "peak_rss")}
            print(f"{scenario:8s} {k:4d} {way:11s} {len(rs):2d} {med['wall']:8.2f} {med['train_seconds']:8.2f} "
                  f"{med['cpu_seconds']:7.2f} {med['peak_rss'] / 2**20:13.0f}  {'; '.join(rs[0]['blas'])}", flush=True)


if __name__ == "__main__":
    main()
