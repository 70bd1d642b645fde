"""What Ray costs a memtrain job: start overhead and makespan, Ray vs plain local processes.

1. Start overhead: one job at a time on an idle machine; seconds from the moment the
   job is handed over (RayExecutor.start, or Popen of the same worker) to its `plan`
   log event, the last thing the worker logs before its first training step. The
   difference between the two is what Ray adds (actor creation and placement).
2. Makespan: N identical jobs; Ray's memory resource holds `--concurrency` of them at
   once (each asks for its plan + overhead), against a plain FIFO of local worker
   processes with the same concurrency. Both run the same worker with one BLAS thread.

Prints a JSON summary (and writes it to --json). The local Ray instance's start-up
time is reported apart: a cluster is started once, not per job.

    python bench/ray_executor.py --jobs 8 --concurrency 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
OVERHEAD = 64 << 20  # stands in for the interpreter's resident memory (the CPU plan has no overhead)


def job(d, epochs):
    return {"name": "bench", "seed": 0, "device": "cpu", "model": {"layers": [64, 256, 256, 10]},
            "optimizer": {"name": "adam", "lr": 0.003}, "training": {"batch_size": 32, "epochs": epochs},
            "data": {"dataset": "digits", "validation": 0.2, "test": 0.2},
            "checkpoint": {"dir": f"{d}/ckpt", "every_steps": 0}, "output": {"dir": f"{d}/out"}}


def plan_time(log) -> float | None:
    for line in Path(log).read_text().splitlines():
        if line.startswith("{") and json.loads(line)["event"] == "plan":
            return json.loads(line)["time"]
    return None


def local_start(d, config):
    d.mkdir(parents=True)
    (d / "launch.json").write_text(json.dumps({"job_id": d.name, "config": config}))
    log = open(d / "log.jsonl", "wb")
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "memtrain.launch.worker", str(d / "launch.json")], stdout=log,
                         stderr=subprocess.STDOUT, env={**os.environ, **THREADS})
    return p, t0, log


def local_fifo(dirs, configs, concurrency):
    """Plain local processes, at most `concurrency` at once, started in order."""
    t0, queue, running, starts = time.time(), list(zip(dirs, configs)), [], {}
    while queue or running:
        while queue and len(running) < concurrency:
            d, c = queue.pop(0)
            p, starts[d], log = local_start(d, c)
            running.append((p, log))
        for p, log in list(running):
            if p.poll() is not None:
                assert p.returncode == 0, p.returncode
                log.close()
                running.remove((p, log))
        time.sleep(0.02)
    return time.time() - t0, starts


def ray_run(ex, dirs, configs, planned):
    from memtrain.launch.executor import Launch, Resources  # noqa: PLC0415

    t0, handles, starts = time.time(), [], {}
    for d, c in zip(dirs, configs):
        starts[d] = time.time()
        handles.append(ex.start(Launch(job_id=d.name, config=c, run_dir=str(d), log_path=str(d / "log.jsonl"),
                                       resources=Resources(planned, OVERHEAD, 1), env=THREADS)))
    pending = list(handles)
    while pending:
        for h in list(pending):
            e = ex.poll(h)
            if e is not None:
                assert e.ok, e
                pending.remove(h)
        time.sleep(0.02)
    return time.time() - t0, starts, handles


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="lone starts timed per executor")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args(argv)
    import ray  # noqa: PLC0415

    from memtrain.launch.ray import RayExecutor  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="memtrain-ray-bench-"))
    # the plan of one job, from a lone local run (also warms the page cache for both sides)
    p, _, log = local_start(root / "warm", job(root / "warm", args.epochs))
    assert p.wait() == 0
    log.close()
    planned = next(json.loads(x)["total"] for x in (root / "warm" / "log.jsonl").read_text().splitlines()
                   if x.startswith("{") and json.loads(x)["event"] == "plan")

    t = time.time()
    ray.init(address="local", num_cpus=args.jobs, _memory=int((args.concurrency + 0.5) * (planned + OVERHEAD)),
             object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False, logging_level="error")
    ray_init_s = time.time() - t
    ex = RayExecutor()

    lone = {"local": [], "ray": []}
    for i in range(args.repeats):  # alternate, so both see the same background load
        d = root / f"lone-local-{i}"
        p, t0, log = local_start(d, job(d, 1))
        assert p.wait() == 0
        log.close()
        lone["local"].append(plan_time(d / "log.jsonl") - t0)
        d = root / f"lone-ray-{i}"
        _, starts, _ = ray_run(ex, [d], [job(d, 1)], planned)
        lone["ray"].append(plan_time(d / "log.jsonl") - starts[d])

    dirs = {k: [root / f"{k}-{i}" for i in range(args.jobs)] for k in ("local", "ray")}
    make_local, _ = local_fifo(dirs["local"], [job(d, args.epochs) for d in dirs["local"]], args.concurrency)
    make_ray, _, handles = ray_run(ex, dirs["ray"], [job(d, args.epochs) for d in dirs["ray"]], planned)
    spans = [(ex.details(h)["started_at"], ex.details(h)["ended_at"]) for h in handles]
    ex.close()
    ray.shutdown()

    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
                      f"{platform.python_version()}, Ray {ray.__version__}",
           "job": "digits 64-256-256-10 adam batch 32, one BLAS thread", "planned_bytes": planned,
           "ray_init_s": round(ray_init_s, 2),
           "start_to_plan_s": {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                                   "max": round(max(v), 3)} for k, v in lone.items()},
           "ray_start_overhead_s": round(statistics.median(lone["ray"]) - statistics.median(lone["local"]), 3),
           "makespan": {"jobs": args.jobs, "concurrency": args.concurrency, "epochs": args.epochs,
                        "local_s": round(make_local, 2), "ray_s": round(make_ray, 2),
                        "ray_over_local": round(make_ray / make_local, 3),
                        "ray_most_at_once": _most_at_once(spans)}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


def _most_at_once(spans) -> int:
    running = most = 0
    for _, step in sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1])):
        running += step
        most = max(most, running)
    return most


if __name__ == "__main__":
    main()
