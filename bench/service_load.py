#!/usr/bin/env python3
"""API load on 127.0.0.1: 50 concurrent submissions, then GET /jobs/{id} at a fixed rate,
while two training jobs run; their step throughput against the same jobs without load.

    python bench/service_load.py                     # 500 requests/s for 30 s
    python bench/service_load.py --rate 200 --seconds 10

The requests come from this process (threads with keep-alive connections, paced per
thread), on the same cores as the service and the jobs: on a small machine the load
generator's own CPU time is part of what the jobs lose. Step throughput = steps per
epoch / the epoch's seconds, from the jobs' JSON log, over the epochs that ended inside
the measuring window.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_common import Serve, call, machine, report_out  # noqa: E402

PROBE = {"device": "cpu", "model": {"layers": [784, 512, 10]}, "optimizer": {"name": "adam"},
         "training": {"epochs": 10000, "batch_size": 64},
         "data": {"dataset": "synthetic:classification(3000, 784, 10)"}}
SMALL = {"device": "cpu", "model": {"layers": [64, 16, 10]}, "training": {"epochs": 1, "batch_size": 32}}


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def epochs_in(state_dir: Path, job_id: str, t0: float, t1: float) -> list:
    """steps/s of each epoch of the job that ended within [t0, t1]."""
    steps_per_epoch = None
    out = []
    for line in (state_dir / "jobs" / job_id / "job.log").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "data":
            steps_per_epoch = -(-rec["train"] // PROBE["training"]["batch_size"])
        if rec.get("event") == "epoch" and t0 <= rec["time"] <= t1 and rec.get("seconds"):
            out.append(steps_per_epoch / rec["seconds"])
    return out


def start_probes(s, n=2) -> list:
    ids = [call(s.url + "/jobs", "POST", {**PROBE, "name": f"probe{i}"})[1]["id"] for i in range(n)]
    deadline = time.time() + 120
    while not all((call(f"{s.url}/jobs/{i}")[1]["progress"].get("epoch") or 0) >= 1 for i in ids):
        if time.time() > deadline:
            raise SystemExit("the probe jobs did not start")
        time.sleep(0.2)
    return ids


def stop(s, ids):
    for i in ids:
        call(f"{s.url}/jobs/{i}", "DELETE")
    while any(call(f"{s.url}/jobs/{i}")[1]["state"] == "running" for i in ids):
        time.sleep(0.2)


def load(port: int, ids: list, rate: float, seconds: float, threads: int = 10) -> dict:
    lat, errors, lock = [], [], threading.Lock()
    per_thread = rate / threads
    t_end = time.time() + seconds

    def worker(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        rng = random.Random(k)
        nxt = time.time()
        while True:
            nxt += 1 / per_thread
            if nxt > t_end:
                break
            time.sleep(max(0.0, nxt - time.time()))
            t = time.perf_counter()
            try:
                conn.request("GET", f"/jobs/{rng.choice(ids)}")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except OSError as exc:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with lock:
                    errors.append(repr(exc))
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
                if not ok and len(errors) < 1000:
                    errors.append("status")

    t0 = time.time()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.time() - t0
    return {"requests": len(lat), "achieved_rate": round(len(lat) / took, 1), "errors": len(errors),
            "p50_ms": round(1000 * pct(lat, 0.5), 2), "p99_ms": round(1000 * pct(lat, 0.99), 2),
            "max_ms": round(1000 * max(lat), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--submissions", type=int, default=50)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="service-load-"))
    report = {"machine": machine(), "rate": a.rate, "seconds": a.seconds, "submissions": a.submissions}
    with Serve(state / "s", "--devices", "cpu", "--budget", "cpu=3GiB") as s:
        # no load: the probes alone, measured over the same length of time
        probes = start_probes(s)
        t0 = time.time()
        time.sleep(a.seconds)
        quiet = [v for i in probes for v in epochs_in(s.state_dir, i, t0, time.time())]
        stop(s, probes)
        # load: the probes again, 50 concurrent submissions (they queue: both job slots are taken), GETs
        probes = start_probes(s)
        sub_lat = []

        def submit(k):
            t = time.perf_counter()
            status, out = call(s.url + "/jobs", "POST", {**SMALL, "name": f"load{k}"})
            sub_lat.append(time.perf_counter() - t)
            return status, out.get("id")

        with ThreadPoolExecutor(a.submissions) as ex:
            results = list(ex.map(submit, range(a.submissions)))
        ids = probes + [i for st, i in results if st == 201]
        t0 = time.time()
        report["gets"] = load(s.port, ids, a.rate, a.seconds)
        loaded = [v for i in probes for v in epochs_in(s.state_dir, i, t0, time.time())]
        report["submit"] = {"ok": sum(st == 201 for st, _ in results), "errors": sum(st != 201 for st, _ in results),
                            "p50_ms": round(1000 * pct(sub_lat, 0.5), 1), "p99_ms": round(1000 * pct(sub_lat, 0.99), 1)}
        stop(s, probes)
    report["steps_per_s"] = {"no_load": round(statistics.mean(quiet), 1) if quiet else None,
                             "under_load": round(statistics.mean(loaded), 1) if loaded else None,
                             "epochs_measured": [len(quiet), len(loaded)]}
    if quiet and loaded:
        report["steps_per_s"]["ratio"] = round(statistics.mean(loaded) / statistics.mean(quiet), 3)
    return report_out(report, a.json)


if __name__ == "__main__":
    sys.exit(main())
