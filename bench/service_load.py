#!/usr/bin/env python3
"""API load on 127.0.0.1: the service's CPU per GET /jobs page at 50, 300 and 1,000 stored jobs,
then two training jobs' step throughput while GET /jobs is polled at a fixed rate, against
the same jobs without load.

    python bench/service_load.py                               # 300 GET /jobs per second, 4 x 15 s
    python bench/service_load.py --rate 300 --seconds 20 --stored 50,300,1000 --requests 2000

CPU per request: utime + stime of the `memtrain serve` process (/proc/PID/stat; its jobs
are other processes) over a run of sequential requests on one keep-alive connection, less
the same process's idle rate (its scheduler ticks) over the same time, divided by the
requests. Three kinds: the default page (100 newest jobs, answered from the view cache
while nothing changes), the same with If-None-Match (304), and pages the cache cannot
hold (each request a new cursor above every job: a query, 100 job views and a
serialisation each). The stored jobs are copies of one real finished job's row, written
into the store before the service starts (finished jobs are what accumulates).

The load requests come from this process: one thread driving 4 keep-alive sockets with
selectors, each request sent at its time (i / rate) on a free connection and its answer read
whole into one buffer. Plain polls (no If-None-Match) that act as the client they claim to be:
by default `Accept-Encoding: gzip`, as browsers, requests and httpx send, each gzip answer
inflated; `--encoding identity` sends no Accept-Encoding (the plain 150 KB body each time).
Like a client's pool, a connection the server closed while it sat idle is noticed (it turns
readable) and replaced before it is used (a reconnect, counted apart from errors). It runs on the same
cores as the service and the jobs, so on a small machine its own CPU time (reported, as
`load_generator` cores) is part of what the jobs lose; it is not the service's cost. Step throughput = steps per epoch
/ the epoch's seconds, from the jobs' JSON log, over the epochs that ended inside the
measuring window.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import statistics
import sys
import tempfile
import time
import zlib
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
    """steps/s of each epoch of the job that ran wholly within [t0, t1] (one that began in the window
    before would credit the window with time it was not measuring)."""
    steps_per_epoch = None
    out = []
    for line in (state_dir / "jobs" / job_id / "job.log").read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "data":
            steps_per_epoch = -(-rec["train"] // PROBE["training"]["batch_size"])
        if rec.get("event") == "epoch" and rec.get("seconds") and t0 <= rec["time"] - rec["seconds"] and rec["time"] <= t1:
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


class Raw:
    """One keep-alive connection sending prepared GETs: a client that costs little CPU, so the
    machine's cores go to the service and the jobs (http.client costs several times more)."""

    def __init__(self, port: int):
        self.port = port
        self.sock, self.buf = socket.create_connection(("127.0.0.1", port), timeout=30), b""

    def get(self, path: str, headers: str = "") -> tuple:
        """(status, body bytes, ETag or None)."""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise OSError("connection closed")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        length = int(m.group(1)) if m else 0
        while len(rest) < length:
            rest += self.sock.recv(1 << 16)
        self.buf = rest[length:]
        etag = re.search(rb"(?i)\r\netag: *(\S+)", head)
        return int(head[9:12]), rest[:length], etag.group(1).decode() if etag else None

    def close(self):
        self.sock.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list:
    return [round(v, 2) for v in os.getloadavg()]


def store_copies(state_dir: Path, template, n: int) -> None:
    """n copies of a finished job's row in the service's store (the service is stopped)."""
    from memtrain.scheduling.store import Store  # noqa: PLC0415

    store = Store(state_dir / "memtrain.sqlite")
    have = len(store.list())
    row = template.columns()
    for i in range(have, n):
        store.insert({**row, "id": f"c{i:07d}", "name": f"copy{i}"})
    store.close()


def per_request_cpu(s, requests: int) -> dict:
    """Service CPU per GET /jobs of each kind (ms, its idle rate taken off), bytes, wall p50."""
    pid = s.proc.pid
    c = Raw(s.port)
    _, _, etag = c.get("/jobs")
    for _ in range(50):  # warm: the first answers build the cache, import the page's code
        c.get("/jobs")
    t0, c0 = time.perf_counter(), cpu_seconds(pid)
    time.sleep(3)
    idle = (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)
    kinds = {"page": ("/jobs", ""), "page_gzip": ("/jobs", "Accept-Encoding: gzip\r\n"),
             "not_modified": ("/jobs", f"If-None-Match: {etag}\r\n"), "uncached": (None, "")}
    out = {"idle_cpu_share": round(idle, 4), "load_average_before": load_average()}
    for k, (path, headers) in kinds.items():
        lat, size = [], 0
        t0, c0 = time.perf_counter(), cpu_seconds(pid)
        for i in range(requests):
            t = time.perf_counter()
            status, body, _ = c.get(path or f"/jobs?cursor={10**9 + i}", headers)
            lat.append(time.perf_counter() - t)
            assert status == (304 if "If-None" in headers else 200), (status, body[:200])
            size = len(body)
        took = time.perf_counter() - t0
        busy = cpu_seconds(pid) - c0 - idle * took
        out[k] = {"cpu_ms_per_request": round(1000 * busy / requests, 3), "bytes": size,
                  "p50_ms": round(1000 * pct(lat, 0.5), 2), "requests": requests}
    out["load_average_after"] = load_average()
    c.close()
    return out


ENCODINGS = {"gzip": "Accept-Encoding: gzip\r\n", "identity": ""}


class Lean:
    """One keep-alive connection of the load generator: a prepared GET, the answer read with
    recv_into into one buffer (no copies of a 150 KB body), its end found from Content-Length;
    a gzip answer inflated, as an HTTP client does before handing the body over."""

    def __init__(self, port: int, request: bytes):
        self.sock, self.request = socket.create_connection(("127.0.0.1", port), timeout=30), request
        self.sock.setblocking(False)
        self.buf = bytearray(1 << 18)
        self.have, self.need, self.sent, self.status, self.body = 0, None, 0.0, 0, 0

    def send(self) -> None:
        self.have, self.need, self.sent = 0, None, time.perf_counter()
        self.sock.sendall(self.request)  # a few dozen bytes: the socket's buffer takes them at once

    def read(self) -> bool:
        """Take what arrived; True once the whole answer is in (and inflated, if gzip)."""
        if self.have == len(self.buf):
            self.buf += bytearray(len(self.buf))
        n = self.sock.recv_into(memoryview(self.buf)[self.have:])
        if n == 0:
            raise OSError("connection closed")
        self.have += n
        if self.need is None:
            end = self.buf.find(b"\r\n\r\n", 0, self.have)
            if end < 0:
                return False
            head = bytes(self.buf[:end])
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            self.need, self.status = end + 4 + (int(m.group(1)) if m else 0), int(head[9:12])
            self.gzip = re.search(rb"(?i)\r\ncontent-encoding: *gzip", head) is not None
            self.start = end + 4
        if self.have < self.need:
            return False
        body = memoryview(self.buf)[self.start:self.need]
        self.body = len(zlib.decompress(body, 16 + zlib.MAX_WBITS)) if self.gzip else len(body)
        return True


def poll(port: int, path: str, rate: float, seconds: float, connections: int = 4, encoding: str = "gzip") -> dict:
    """GET `path` at `rate` per second for `seconds`, on `connections` keep-alive connections
    driven by one thread (selectors; each socket registered once): each request leaves at its time
    on a free connection. Plain polls (no If-None-Match); `encoding` gzip: Accept-Encoding: gzip,
    answers inflated. A free connection that turns readable was closed by the server while idle
    (its keep-alive timeout): replaced, as a client's pool does, and counted as a reconnect."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{ENCODINGS[encoding]}\r\n".encode()
    sel = selectors.DefaultSelector()

    def connect():
        c = Lean(port, request)
        sel.register(c.sock, selectors.EVENT_READ, c)
        return c

    def drop(c):
        sel.unregister(c.sock)
        c.sock.close()
        return connect()

    free = [connect() for _ in range(connections)]
    busy = set()
    lat, errors, late, i, reconnects, wire, body = [], 0, 0, 0, 0, 0, 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        due = t0 + i / rate
        now = time.perf_counter()
        if due < end and due <= now and free:
            c = free.pop()
            late += now - due > 0.01
            c.send()
            busy.add(c)
            i += 1
            continue
        if due >= end and not busy:
            break
        for key, _ in sel.select(max(0.0, due - now) if due < end and free else 1.0):
            c = key.data
            if c not in busy:  # an idle one the server closed
                free.remove(c)
                free.append(drop(c))
                reconnects += 1
                continue
            try:
                done = c.read()
            except OSError:
                busy.discard(c)
                free.append(drop(c))
                errors += 1
                continue
            if done:
                busy.discard(c)
                lat.append(time.perf_counter() - c.sent)
                errors += c.status != 200
                wire, body = c.need - c.start, c.body
                free.append(c)
    took = time.perf_counter() - t0
    for c in free:
        c.sock.close()
    return {"path": path, "accept_encoding": encoding if encoding != "identity" else None,
            "answer_bytes": wire, "body_bytes": body,
            "requests": len(lat), "achieved_rate": round(len(lat) / took, 1), "errors": errors,
            "reconnects": reconnects, "late": late, "connections": connections,
            "p50_ms": round(1000 * pct(lat, 0.5), 2), "p99_ms": round(1000 * pct(lat, 0.99), 2),
            "max_ms": round(1000 * max(lat), 2)}


def window(s, probes, seconds: float, load=None) -> tuple:
    """The probes' steps/s over `seconds` (each epoch that ended in it), and the cores the service and
    this process (the load generator) took meanwhile; `load`: a function polling for `seconds`."""
    t0, c0, b0 = time.time(), cpu_seconds(s.proc.pid), cpu_seconds(os.getpid())
    gets = load() if load else time.sleep(seconds)
    took = time.time() - t0
    steps = [v for i in probes for v in epochs_in(s.state_dir, i, t0, time.time())]
    cores = ((cpu_seconds(s.proc.pid) - c0) / took, (cpu_seconds(os.getpid()) - b0) / took)
    return statistics.mean(steps), cores, gets


def slowdown(s, rate: float, seconds: float, rounds: int, encoding: str = "gzip") -> dict:
    """The probes' steps/s alone and under `rate` GET /jobs per second, `rounds` times in turn, the
    quiet window first in even rounds and second in odd ones (the machine's other load drifts: each
    round compares neighbouring windows, and the order alternates so a steady drift does not favour
    either); the median ratio."""
    out = {"rounds": []}
    probes = start_probes(s)
    for k in range(rounds):
        r = {"load_average": load_average(), "order": "quiet, polled" if k % 2 == 0 else "polled, quiet"}
        load = lambda: poll(s.port, "/jobs", rate, seconds, encoding=encoding)  # noqa: E731
        if k % 2 == 0:
            quiet, (quiet_service, _), _ = window(s, probes, seconds)
            loaded, (service, generator), r["gets"] = window(s, probes, seconds, load)
        else:
            loaded, (service, generator), r["gets"] = window(s, probes, seconds, load)
            quiet, (quiet_service, _), _ = window(s, probes, seconds)
        # what serving and asking took, in cores: on an otherwise idle machine the jobs could lose no more
        r["cores"] = {"service_quiet": round(quiet_service, 3), "service": round(service, 3),
                      "load_generator": round(generator, 3)}
        r["steps_per_s"] = [round(quiet, 1), round(loaded, 1)]
        r["ratio"] = round(loaded / quiet, 3)
        out["rounds"].append(r)
    stop(s, probes)
    out["load_average_after"] = load_average()
    out["median_ratio"] = statistics.median(r["ratio"] for r in out["rounds"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--rate", type=float, default=300, help="GET /jobs per second while the probes train")
    ap.add_argument("--seconds", type=float, default=15, help="each throughput window (quiet, loaded)")
    ap.add_argument("--rounds", type=int, default=4, help="quiet/loaded window pairs (the order alternates)")
    ap.add_argument("--stored", default="50,300,1000", help="stored job counts to measure GET /jobs at")
    ap.add_argument("--requests", type=int, default=2000, help="GETs of each kind per stored count")
    ap.add_argument("--slowdown-at", type=int, default=300, help="stored jobs during the throughput test")
    ap.add_argument("--encoding", choices=sorted(ENCODINGS), default="gzip",
                    help="what the polls accept: gzip (Accept-Encoding: gzip, as browsers, requests and httpx "
                         "send; each answer inflated) or identity (no Accept-Encoding: the plain body)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="service-load-")) / "s"
    args = ("--devices", "cpu", "--budget", "cpu=3GiB", "--overhead", "200MiB")
    import numpy  # noqa: F401, PLC0415 - loads the BLAS the jobs load (they run with the service's thread count)
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    report = {"machine": machine(), "blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "architecture")}
                                             for i in threadpool_info()], "requests": a.requests,
              "polls_accept": "gzip (answers inflated)" if a.encoding == "gzip" else "identity (no Accept-Encoding)"}
    with Serve(state, *args) as s:  # one real finished job: the row the stored copies are made of
        job_id = call(s.url + "/jobs", "POST", {**SMALL, "name": "template"})[1]["id"]
        while call(f"{s.url}/jobs/{job_id}")[1]["state"] in ("queued", "running"):
            time.sleep(0.2)
    from memtrain.scheduling.store import Store  # noqa: PLC0415

    store = Store(state / "memtrain.sqlite")
    template = store.get(job_id)
    store.close()
    report["get_jobs"] = {}
    for n in sorted(int(x) for x in a.stored.split(",")):
        store_copies(state, template, n)
        with Serve(state, *args) as s:
            report["get_jobs"][n] = per_request_cpu(s, a.requests)
            if n == a.slowdown_at:
                report["slowdown"] = {"stored_jobs": n, "rate": a.rate, "seconds": a.seconds,
                                      **slowdown(s, a.rate, a.seconds, a.rounds, a.encoding)}
    return report_out(report, a.json)


if __name__ == "__main__":
    sys.exit(main())
