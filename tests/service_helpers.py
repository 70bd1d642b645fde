"""A real `memtrain serve` for the service tests: uvicorn on 127.0.0.1 and a free port,
in a thread of the test process (or, for the restart test, a process of its own)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# without the service extra every test module that imports these helpers is skipped, with the
# reason, instead of stopping the whole collection (a GPU machine's `pytest -m gpu` has no extra)
uvicorn = pytest.importorskip("uvicorn", reason="the service tests need the service extra (memtrain[service])")
pytest.importorskip("fastapi", reason="the service tests need the service extra (memtrain[service])")

from memtrain.launch.executor import Handle  # noqa: E402
from memtrain.service.app import create_app  # noqa: E402 - after the extra is known to be there
from memtrain.service.core import Service, Settings
from memtrain.service.server import uvicorn_config

OVERHEAD = 200 * 1024**2  # given (about what overhead.json measures here), so fresh state dirs skip measuring


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digits_job(name="d", epochs=2, batch=32, seed=0, **extra) -> dict:
    """The NumPy step (fused = false): its worker does not import numba (~0.8 s of CPU less per job
    started); what these tests check is the service, and the fused step is tested on its own."""
    job = {"name": name, "seed": seed, "model": {"layers": [64, 16, 10]}, "optimizer": {"name": "adam", "lr": 0.01},
           "training": {"epochs": epochs, "batch_size": batch, "fused": False}}
    for key, value in extra.items():
        job.setdefault(key, {}).update(value) if isinstance(value, dict) else job.__setitem__(key, value)
    return job


class ThreadServer:
    def __init__(self, state_dir, **settings):
        settings.setdefault("devices", "cpu")
        settings.setdefault("budgets", {"cpu": 2 * 1024**3})
        settings.setdefault("cpu_overhead", OVERHEAD)
        settings.setdefault("tick", 0.1)
        self.port = free_port()
        self.settings = Settings(state_dir=state_dir, port=self.port, **settings)
        self.service = Service(self.settings)
        self.app = create_app(self.settings, self.service)
        self.url = f"http://127.0.0.1:{self.port}"
        # the service's own uvicorn settings (its request timeout), as `memtrain serve` runs it
        self.server = uvicorn.Server(uvicorn_config(self.app, self.settings, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        ex = self.settings.executor
        sched = self.service.scheduler
        sched._stop.set()  # no job starts any more: one admitted while these are killed would outlive the test
        sched._wake.set()
        sched._thread.join(10)
        for job in self.service.store.list("running"):
            if job.ref:
                ex.kill(self.service.scheduler.handle(job))
        self.server.should_exit = True
        self.thread.join(20)
        for proc in list(ex._children.values()):
            proc.wait(20)

    def request(self, method, path, body=None, content_type="application/json", token=None, raw=False):
        return request(self.url, method, path, body, content_type, token, raw)

    def wait(self, job_id, states=("succeeded", "failed", "cancelled"), timeout=60, token=None):
        return wait_for(self.url, job_id, states, timeout, token)


def request(url, method, path, body=None, content_type="application/json", token=None, raw=False):
    """(status, parsed JSON or text)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, data, ctype = resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, data, ctype = exc.code, exc.read(), exc.headers.get_content_type()
    if raw or ctype != "application/json":
        return status, data.decode()
    return status, json.loads(data)


def wait_for(url, job_id, states, timeout=60, token=None):
    deadline = time.time() + timeout
    while True:
        status, job = request(url, "GET", f"/jobs/{job_id}", token=token)
        assert status == 200, job
        if job["state"] in states:
            return job
        assert time.time() < deadline, f"job {job_id} still {job['state']}: {job['reason']}"
        time.sleep(0.1)


class ProcessServer:
    """`memtrain serve` as its own process (so it can be killed with SIGKILL)."""

    def __init__(self, state_dir, *args, port=None):
        self.state_dir, self.args = Path(state_dir), list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        cmd = [sys.executable, "-m", "memtrain.cli", "serve", "--state-dir", str(self.state_dir), "--port",
               str(self.port), "--devices", "cpu", "--overhead", str(OVERHEAD), "--log-level", "warning", *self.args]
        self.log = open(self.state_dir.parent / f"serve-{self.port}.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                if request(self.url, "GET", "/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            assert self.proc.poll() is None, (self.state_dir.parent / f"serve-{self.port}.log").read_text()
            assert time.time() < deadline, "memtrain serve did not start"
            time.sleep(0.1)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.log.close()


def kill_group(ref: str) -> None:
    pid = json.loads(ref)["pid"]
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Scripted:
    """An executor that records launches and cancels; poll answers from `exits`, adopt from `alive`.
    A handle it gave out must come back whole (what the scheduler stored and read back)."""

    name = "scripted"

    def __init__(self):
        self.launches, self.cancelled, self.exits, self.alive = [], [], {}, set()
        self.handles, self.cancelled_handles = {}, []
        self.on_start = None  # called with the Launch before start returns (the launch-before-commit window)

    def start(self, launch):
        if self.on_start is not None:
            self.on_start(launch)
        self.launches.append(launch)
        target = f"127.0.0.1:{launch.metrics_port}" if launch.metrics_port else None
        h = self.handles[launch.job_id] = Handle(launch.job_id, self.name, json.dumps({"n": len(self.launches)}),
                                                 target)
        return h

    def _check(self, handle):
        given = self.handles.get(handle.job_id)
        # the metrics target may be stored as the address Prometheus scrapes (--job-metrics-address)
        assert given is None or (handle.executor, handle.ref) == (given.executor, given.ref), handle

    def poll(self, handle):
        self._check(handle)
        return self.exits.get(handle.job_id)

    def cancel(self, handle):
        self._check(handle)
        self.cancelled.append(handle.job_id)
        self.cancelled_handles.append(handle)

    def adopt(self, handle):
        self._check(handle)
        return handle.job_id in self.alive

    def close(self):
        self.closed = True
