#!/usr/bin/env python3
"""A seeded trace of mixed jobs submitted at once to `memtrain serve`: packed by plan vs one at a time.

    python bench/service_trace.py --jobs 30 --budget 3GiB              # CPU
    python bench/service_trace.py --jobs 30 --budget 1GiB --max-jobs 6  # memory binds, not job slots
    python bench/service_trace.py --device cuda --budget 20GiB          # a GPU (cuda:0)
    python bench/service_trace.py --jobs 10 --executor ray              # local vs Ray, both packed

Runs the trace twice on fresh state dirs: packed (the service's default: as many jobs
as the budget and the job slots allow) and exclusive (--max-jobs-per-device 1: FIFO,
one job at a time with all the cores). Reports both makespans, the highest sampled sum
of the running jobs' measured memory (resident set of their processes, from their
progress files) against the budget, the highest and mean committed bytes / budget while
jobs ran, and OOMs (failed jobs whose reason names memory, and the trainer's OOM
recoveries). Samples /devices every 0.25 s. Also: for the first jobs (as many as there
are job slots, so they start at once), seconds from their submission to the worker's
`plan` event: the whole cost of getting a job going, Ray's placement included.

With --executor ray the second run is not exclusive but the same packed trace through
`memtrain serve --executor ray`, on a local Ray instance this script starts with the
budget as its memory resource and one CPU per job slot (so Ray, like the local
scheduler, runs at most that many jobs and never more than the budget's plans). Both
runs then also report each job's start overhead: seconds from the executor starting it
(the mtime of the launch file written just before the worker process is spawned: by
the local executor, or by the Ray actor once Ray placed it) to the worker's `plan`
event, the last line it writes before its first training step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_common import Serve, call, machine, report_out  # noqa: E402

MODELS = [  # (layers, data set): 64-feature models on digits, 784-feature ones on synthetic data
    ([64, 32, 10], "digits"), ([64, 128, 10], "digits"), ([64, 256, 256, 10], "digits"),
    ([784, 256, 10], "synthetic:classification(2000, 784, 10)"),
    ([784, 512, 512, 10], "synthetic:classification(2000, 784, 10)"),
    ([784, 2048, 2048, 10], "synthetic:classification(2000, 784, 10)"),
]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad", "nadam", "lookahead:adam"]
BATCHES = [32, 64, 128, 256, "auto"]


def trace(n: int, seed: int, device: str) -> list:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        layers, data = rng.choice(MODELS)
        opt = rng.choice(OPTIMIZERS)
        jobs.append({"name": f"t{i:02d}-{'-'.join(map(str, layers))}-{opt.replace(':', '_')}", "seed": i,
                     "device": device, "model": {"layers": layers}, "optimizer": {"name": opt},
                     "training": {"epochs": rng.randint(1, 3), "batch_size": rng.choice(BATCHES)},
                     "data": {"dataset": data}})
    return jobs


def run(jobs: list, state_dir: Path, serve_args: list, slots: int = 2) -> dict:
    with Serve(state_dir, *serve_args) as s:
        (dev,) = call(s.url + "/devices")[1][:1]
        budget = dev["capacity_bytes"]
        t0 = time.time()
        ids, posted = [], []
        for j in jobs:
            posted.append(time.time())
            status, out = call(s.url + "/jobs", "POST", j)
            if status != 201:
                raise SystemExit(f"{j['name']}: {out}")
            ids.append(out["id"])
        peak_measured = peak_committed = 0
        committed_samples = []
        while True:
            d = call(s.url + "/devices")[1][0]
            peak_measured = max(peak_measured, d["measured_bytes"])
            peak_committed = max(peak_committed, d["committed_bytes"])
            if d["jobs"]:
                committed_samples.append(d["committed_bytes"] / budget)
            listed = call(s.url + "/jobs")[1]
            if all(j["state"] not in ("queued", "running") for j in listed):
                break
            time.sleep(0.25)
        makespan = time.time() - t0
    states = [j["state"] for j in listed]
    memory_failures = [j["reason"] for j in listed if j["state"] == "failed" and "emory" in (j["reason"] or "")]
    recoveries = sum((j["result"] or {}).get("oom_recoveries", 0) for j in listed)
    starts = start_overheads(state_dir, ids)
    first = [plan_time(state_dir, i) - t for i, t in zip(ids[:slots], posted[:slots])]
    return {"makespan_s": round(makespan, 1),
            "start_overhead_s": {"median": round(statistics.median(starts), 2), "max": round(max(starts), 2)}
            if starts else None,
            "submit_to_first_step_s": [round(x, 2) for x in first], "budget_bytes": budget, "overhead_bytes": dev["overhead_bytes"],
            "overhead_source": dev["overhead_source"], "max_jobs": dev["max_jobs"],
            "peak_measured_bytes": peak_measured, "peak_measured_over_budget": round(peak_measured / budget, 3),
            "peak_committed_over_budget": round(peak_committed / budget, 3),
            "mean_committed_over_budget": round(sum(committed_samples) / max(1, len(committed_samples)), 3),
            "succeeded": states.count("succeeded"), "failed": states.count("failed"),
            "ooms": len(memory_failures) + recoveries,
            "failures": [j["reason"] for j in listed if j["state"] == "failed"][:5],
            "auto_batches": sorted(j["batch_size"] for j in listed if j["batch_request"] == "auto")}


def start_overheads(state_dir: Path, ids: list) -> list:
    """Per job: the plan event's time less the newest launch file's mtime (see the docstring)."""
    out = []
    for job_id in ids:
        d = state_dir / "jobs" / job_id
        launches = sorted(d.glob("launch*.json"), key=lambda p: p.stat().st_mtime)
        if not launches or not (d / "job.log").exists():
            continue
        t0 = launches[-1].stat().st_mtime
        plans = [e["time"] for e in map(_event, (d / "job.log").read_text().splitlines())
                 if e and e.get("event") == "plan" and e["time"] >= t0 - 1]
        if plans:
            out.append(plans[-1] - t0)
    return out


def plan_time(state_dir: Path, job_id: str) -> float:
    log = state_dir / "jobs" / job_id / "job.log"
    return next((e["time"] for e in map(_event, log.read_text().splitlines()) if e and e.get("event") == "plan"),
                float("nan"))


def _event(line: str):
    try:
        return json.loads(line) if line.startswith("{") else None
    except ValueError:
        return None


def ray_args(budget: str, slots: int) -> tuple:
    """A local Ray instance whose memory resource is the budget: (serve arguments, its shutdown)."""
    import ray  # noqa: PLC0415

    from memtrain.units import parse_bytes  # noqa: PLC0415

    ctx = ray.init(address="local", num_cpus=slots, _memory=parse_bytes(budget, "budget"),
                   object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False, logging_level="error")
    return ["--executor", "ray", "--ray-address", ctx.address_info["gcs_address"], "--budget", f"ray={budget}"], ray.shutdown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", default="3GiB", help="the device's budget (--budget DEVICE=SIZE of the service)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--max-jobs", type=int, help="--max-jobs-per-device of the packed run (default: the service's)")
    ap.add_argument("--state-dir", type=Path, help="keep the state dirs here (default: a temporary dir)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--executor", default="local", choices=["local", "ray"],
                    help="ray: the second run is the packed trace through Ray instead of the exclusive one")
    a = ap.parse_args(argv)
    jobs = trace(a.jobs, a.seed, a.device)
    dev = "cpu" if a.device == "cpu" else "cuda:0"
    base = a.state_dir or Path(tempfile.mkdtemp(prefix="service-trace-"))
    common = ["--devices", dev, "--budget", f"{dev}={a.budget}"]
    report = {"machine": machine(), "jobs": a.jobs, "max_jobs": a.max_jobs, "seed": a.seed, "device": dev, "budget": a.budget,
              "models": sorted({"-".join(map(str, j["model"]["layers"])) for j in jobs})}
    packed = common + (["--max-jobs-per-device", str(a.max_jobs)] if a.max_jobs else [])
    slots = a.max_jobs or os.cpu_count() or 1
    report["packed"] = run(jobs, base / "packed", packed, slots)
    print(json.dumps({"packed": report["packed"]}), flush=True)
    if a.executor == "ray":
        args, shutdown = ray_args(a.budget, slots)
        try:
            report["ray"] = run(jobs, base / "ray", ["--devices", "cpu", *args], slots)
        finally:
            shutdown()
        report["ray_over_local"] = round(report["ray"]["makespan_s"] / report["packed"]["makespan_s"], 2)
    else:
        report["exclusive"] = run(jobs, base / "exclusive", [*common, "--max-jobs-per-device", "1"], 1)
        report["speedup"] = round(report["exclusive"]["makespan_s"] / report["packed"]["makespan_s"], 2)
    return report_out(report, a.json)


if __name__ == "__main__":
    sys.exit(main())
