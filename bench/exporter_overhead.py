"""Training-step time with and without the Prometheus exporter under scrape load.

    python bench/exporter_overhead.py [--layers 784,1024,1024,10] [--batch-size 256] [--rate 200]

The job process trains (Trainer.step on a fixed batch) and updates a JobState
after each step, as `memtrain train` does. In the "scraped" rounds the exporter
serves /metrics on 127.0.0.1 and a separate process requests it `--rate` times
a second (a new connection each time, as Prometheus does). Rounds alternate
between quiet and scraped so both see the same background load; the result is
the median step time of each condition and their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memtrain import MLP, Trainer  # noqa: E402
from memtrain.metrics import serve  # noqa: E402
from memtrain.train.state import JobState  # noqa: E402


def scraper(url: str, rate: float, stop, counter) -> None:
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


def timed_steps(trainer, state, X, y, steps: int) -> list:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = trainer.step(X, y)
        dt = time.perf_counter() - t0
        state.steps, state.train_loss = trainer.steps, loss  # what the job loop does per step
        state.step_durations.observe(dt)
        out.append(dt)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="784,1024,1024,10")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rate", type=float, default=200.0, help="scrapes per second")
    ap.add_argument("--steps", type=int, default=100, help="steps per round")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per condition")
    args = ap.parse_args()
    sizes = [int(s) for s in args.layers.split(",")]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch_size, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], args.batch_size)
    trainer = Trainer(MLP(sizes), "adam", args.batch_size)
    state = JobState(job="bench", model=args.layers, optimizer="adam", dtype="float32", state="training")
    state.planned_bytes = trainer.plan.by_category()
    server, _ = serve(state, 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    timed_steps(trainer, state, X, y, 10)  # warm-up
    quiet, scraped, served = [], [], 0
    for _ in range(args.rounds):
        quiet += timed_steps(trainer, state, X, y, args.steps)
        stop, counter = mp.Event(), mp.Value("i", 0)
        proc = mp.Process(target=scraper, args=(url, args.rate, stop, counter))
        proc.start()
        time.sleep(0.5)  # let the scraper reach its rate
        t0, c0 = time.perf_counter(), counter.value
        scraped += timed_steps(trainer, state, X, y, args.steps)
        served += counter.value - c0
        achieved = (counter.value - c0) / (time.perf_counter() - t0)
        stop.set()
        proc.join()
    server.shutdown()
    server.server_close()
    q, s = statistics.median(quiet), statistics.median(scraped)
    print(f"model {args.layers}, batch {args.batch_size}, adam, float32; {args.rounds} rounds x {args.steps} steps each")
    print(f"median step without scrapes: {q * 1e3:.3f} ms")
    print(f"median step with scrapes:    {s * 1e3:.3f} ms  ({served} scrapes served, last round {achieved:.0f}/s)")
    print(f"slowdown: {(s / q - 1):+.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
