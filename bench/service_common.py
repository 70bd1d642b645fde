"""Shared by bench/service_trace.py and bench/service_load.py: a `memtrain serve` process
on 127.0.0.1 and a tiny HTTP client (standard library only)."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str = "GET", body=None, timeout: float = 30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Serve:
    def __init__(self, state_dir: Path, *args: str):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)

    def __enter__(self):
        self.log = open(self.state_dir / "serve.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "serve", "--state-dir",
                                      str(self.state_dir), "--port", str(self.port), "--log-level", "warning",
                                      *self.args], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120  # the first start on a state dir measures the process overhead
        while True:
            try:
                if call(self.url + "/healthz")[0] == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit((self.state_dir / "serve.log").read_text())
            time.sleep(0.2)

    def __exit__(self, *exc):
        for j in call(self.url + "/jobs")[1]:
            if j["state"] in ("queued", "running"):
                call(f"{self.url}/jobs/{j['id']}", "DELETE")
        deadline = time.time() + 60
        while any(j["state"] == "running" for j in call(self.url + "/jobs")[1]) and time.time() < deadline:
            time.sleep(0.2)
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def report_out(report: dict, path) -> int:
    """Print the report as indented JSON and, with --json PATH, write the same text there."""
    text = json.dumps(report, indent=1)
    print(text)
    if path:
        Path(path).write_text(text + "\n")
    return 0


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os  # noqa: PLC0415

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
