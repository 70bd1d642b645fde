"""Training-step time with and without the Prometheus exporter under scrape load.

    python bench/exporter_overhead.py [--layers 784,1024,1024,10] [--batch-size 256] [--rate 200]
                                      [--in-process] [--pin]

The job process trains (Trainer.step on a fixed batch) and, after each step,
updates its JobState and publishes it, as `memtrain train` does. The exporter
runs as `memtrain train` runs it: its own process (memtrain/exporter.py), or
with --in-process as a thread of the job (memtrain.metrics.serve). In the
"scraped" rounds a separate process requests /metrics `--rate` times a second
(a new connection each time, as Prometheus does). Rounds alternate between
quiet and scraped so both see the same background load; the result is the
median step time of each condition and their ratio.

--pin puts the job on CPU 0 with one BLAS thread and the exporter and the
scraper on CPU 1: the exporter's own cost to the job, without the load
generator competing for the job's cores (on a 2-core machine it otherwise
must).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memtrain import MLP, Trainer  # noqa: E402
from memtrain.exporter import Exporter  # noqa: E402
from memtrain.metrics import serve  # noqa: E402
from memtrain.train.state import JobState  # noqa: E402


def scraper(url: str, rate: float, stop, counter, cpus) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    period = 1.0 / rate
    nxt = time.perf_counter()
    while not stop.is_set():
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
        counter.value += 1
        nxt += period
        delay = nxt - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def control_server(port_out, cpus, payload_bytes) -> None:
    """A plain HTTP server with a payload of the exposition's size: the load without memtrain."""
    import http.server  # noqa: PLC0415

    if cpus:
        os.sched_setaffinity(0, cpus)
    body = b"x" * payload_bytes

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    port_out.value = srv.server_address[1]
    srv.serve_forever()


def timed_steps(trainer, state, publish, X, y, steps: int) -> list:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = trainer.step(X, y)
        state.steps, state.train_loss = trainer.steps, loss  # what the job loop does per step
        state.step_durations.observe(time.perf_counter() - t0)
        publish(state)
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="784,1024,1024,10")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rate", type=float, default=200.0, help="scrapes per second")
    ap.add_argument("--steps", type=int, default=100, help="steps per round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per condition")
    ap.add_argument("--in-process", action="store_true", help="serve from a thread of the job process")
    ap.add_argument("--pin", action="store_true", help="job on CPU 0 (1 BLAS thread), exporter and scraper on CPU 1")
    ap.add_argument("--control", action="store_true",
                    help="scrape a plain HTTP server (same payload size) instead: the load generator's own cost")
    args = ap.parse_args()
    if args.pin and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        # BLAS reads its thread count at import: start again with one thread
        os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        os.execv(sys.executable, [sys.executable, *sys.argv])
    job_cpus, side_cpus = ({0}, {1}) if args.pin else (None, None)
    sizes = [int(s) for s in args.layers.split(",")]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch_size, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], args.batch_size)
    trainer = Trainer(MLP(sizes), "adam", args.batch_size)
    state = JobState(job="bench", model=args.layers, optimizer="adam", dtype="float32", state="training")
    state.planned_bytes = trainer.plan.by_category()
    if args.in_process:
        server, _ = serve(state, 0)
        port, publish = server.server_address[1], lambda s: None
    else:
        exporter = Exporter(state, 0)
        port, publish = exporter.port, exporter.publish
        if side_cpus:
            os.sched_setaffinity(exporter._proc.pid, side_cpus)
    if job_cpus:
        os.sched_setaffinity(0, job_cpus)
    url = f"http://127.0.0.1:{port}/metrics"
    if args.control:
        size = len(urllib.request.urlopen(url, timeout=5).read())
        port_box = mp.Value("i", 0)
        ctrl = mp.Process(target=control_server, args=(port_box, side_cpus, size), daemon=True)
        ctrl.start()
        while not port_box.value:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{port_box.value}/metrics"
    timed_steps(trainer, state, publish, X, y, 10)  # warm-up
    quiet, scraped, served = [], [], 0
    for _ in range(args.rounds):
        quiet += timed_steps(trainer, state, publish, X, y, args.steps)
        stop, counter = mp.Event(), mp.Value("i", 0)
        proc = mp.Process(target=scraper, args=(url, args.rate, stop, counter, side_cpus))
        proc.start()
        time.sleep(0.5)  # let the scraper reach its rate
        t0, c0 = time.perf_counter(), counter.value
        scraped += timed_steps(trainer, state, publish, X, y, args.steps)
        served += counter.value - c0
        achieved = (counter.value - c0) / (time.perf_counter() - t0)
        stop.set()
        proc.join()
    if args.in_process:
        server.shutdown()
        server.server_close()
    else:
        exporter.stop()
    q, s = statistics.median(quiet), statistics.median(scraped)
    where = "a thread of the job" if args.in_process else "its own process"
    if args.control:
        where += " (idle: the scrapes went to a plain HTTP server, the control)"
    pin = "job on CPU 0 with 1 BLAS thread, exporter and scraper on CPU 1" if args.pin else "no pinning"
    print(f"model {args.layers}, batch {args.batch_size}, adam, float32; {args.rounds} rounds x {args.steps} steps each")
    print(f"exporter in {where}; {pin}")
    print(f"median step without scrapes: {q * 1e3:.3f} ms")
    print(f"median step with scrapes:    {s * 1e3:.3f} ms  ({served} scrapes served, last round {achieved:.0f}/s)")
    print(f"slowdown: {(s / q - 1):+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
