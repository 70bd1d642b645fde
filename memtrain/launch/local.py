"""LocalExecutor: each job is a worker process on this machine, in its own session
(so its own process group, and it outlives a killed service), its stdout/stderr
appended to the job's log file.

With `warm=True` (or MEMTRAIN_WARM_WORKERS=1 in the environment) a CPU job's worker is
forked from a warm process that has already imported NumPy and the trainer
(launch/forkserver.py): the same worker, its own process and session, without the
interpreter start and imports (~1-2 s of a small job). Until that process is ready, for a
GPU job, and whenever it cannot fork, the worker is started plainly.

The handle's ref is JSON {"pid", "start", "run_dir"}: `start` is the process start
time from /proc/PID/stat (clock ticks since boot), so a pid the kernel has recycled
for another process is never mistaken for the job. A process this executor started
is waited on (its exit status or signal is exact); one it adopted after a restart is
not its child, so its end is read from the worker's exit.json, and a process gone
without one was killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memtrain.launch.executor import Exit, Handle, Launch
from memtrain.launch.forkserver import STATUS
from memtrain.launch.worker import EXIT, read_json

STATUS_WAIT = 5.0  # seconds a forked worker's end may go without its STATUS before it reads as killed


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat; None when there is no such process (or it is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def last_error_line(log_path) -> str | None:
    """The last line of the log that reads as an error (the worker prints `error: ...`)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        s = line.strip()
        if s.startswith("error:") or "Error" in s.split(":")[0]:
            return s[:500]
    return next((s.strip()[:500] for s in reversed(lines) if s.strip()), None)


# what a forked child sets at run time (thread pools) or reads only once it runs (numba, memtrain's
# own MEMTRAIN_* settings, none read at import); any other difference from the server's environment
# (PYTHONPATH, a sitecustomize, MALLOC_* read by the C library at exec) needs a fresh interpreter:
# that launch starts plainly
RUNTIME_ENV = frozenset({"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"})


def _startup_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in RUNTIME_ENV and not k.startswith("MEMTRAIN_")}


class WarmWorkers:
    """The fork server (launch/forkserver.py) of one executor: started at once, used once ready."""

    def __init__(self, python: str):
        self.env = _startup_env(dict(os.environ))  # what the server's interpreter started with
        self.dir = tempfile.mkdtemp(prefix="memtrain-warm-")
        self.socket = os.path.join(self.dir, "s")
        self.proc = subprocess.Popen([python, "-m", "memtrain.launch.forkserver", self.socket],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, spec: Path, run_dir: Path, log: str, env: dict) -> int | None:
        """The forked worker's pid; None when the server is not ready, cannot fork, or the launch
        needs an interpreter started with another environment."""
        if not (self.alive() and os.path.exists(self.socket)) or _startup_env(env) != self.env:
            return None
        request = {"spec": str(spec), "run_dir": str(run_dir), "log": str(log), "env": env}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(self.socket)
                s.sendall(json.dumps(request).encode() + b"\n")
                answer = json.loads(s.makefile("rb").readline() or b"{}")
        except (OSError, ValueError):
            return None
        return answer.get("pid")

    def close(self) -> None:
        """The server goes; the jobs it forked run on (their own sessions), as plain workers do."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalExecutor:
    name = "local"

    def __init__(self, python: str | None = None, *, warm: bool | None = None):
        self.python = python or sys.executable
        self._children: dict = {}  # pid -> Popen, for processes this object started
        self._gone_since: dict = {}  # pid -> when a forked worker was first seen gone without its STATUS
        self._forked: set = set()  # pids this executor's fork server forked (not adopted after a restart)
        if warm is None:
            warm = os.environ.get("MEMTRAIN_WARM_WORKERS", "") == "1"
        self.warm = WarmWorkers(self.python) if warm else None

    def start(self, launch: Launch) -> Handle:
        run_dir = Path(launch.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / EXIT).unlink(missing_ok=True)  # an earlier attempt's
        (run_dir / STATUS).unlink(missing_ok=True)
        spec = run_dir / "launch.json"
        spec.write_text(json.dumps(launch.to_dict(), indent=1))
        env = {**os.environ, **{str(k): str(v) for k, v in launch.env.items()}}
        # a GPU job never forks: CUDA must not be initialised in a process that forks
        pid = self.warm.fork(spec, run_dir, launch.log_path, env) if (
            self.warm is not None and launch.device == "cpu") else None
        if pid is None:
            with open(launch.log_path, "ab") as log:
                proc = subprocess.Popen([self.python, "-m", "memtrain.launch.worker", str(spec)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=str(run_dir), start_new_session=True)
            self._children[proc.pid] = proc
            pid = proc.pid
        start = process_start_time(pid)
        ref = {"pid": pid, "start": start, "run_dir": str(run_dir), "log": launch.log_path}
        if pid not in self._children:
            ref["forked"] = True
            self._forked.add(pid)
        target = f"{launch.metrics_host}:{launch.metrics_port}" if launch.metrics_port else None
        return Handle(launch.job_id, self.name, json.dumps(ref), target)

    def _forked_exit(self, ref: dict) -> Exit | None:
        """A forked worker's end: the fork server's STATUS (its wait status, exact), or, with the
        server gone or silent for STATUS_WAIT seconds, the worker's own exit.json."""
        status = read_json(Path(ref["run_dir"]) / STATUS)
        if status is not None:
            self._gone_since.pop(ref["pid"], None)
            self._forked.discard(ref["pid"])
            return self._exit(ref, -status["signal"] if "signal" in status else status["code"])
        if self._alive(ref):
            return None
        first = self._gone_since.setdefault(ref["pid"], time.monotonic())
        ours = ref["pid"] in self._forked  # forked by this executor's server: its STATUS can still come
        if ours and self.warm.alive() and time.monotonic() - first < STATUS_WAIT:
            return None  # reaped a moment ago: its STATUS is on the way
        self._gone_since.pop(ref["pid"], None)
        self._forked.discard(ref["pid"])
        return self._exit(ref, None)

    def poll(self, handle: Handle) -> Exit | None:
        ref = json.loads(handle.ref)
        if ref.get("forked"):
            return self._forked_exit(ref)
        proc = self._children.get(ref["pid"])
        if proc is not None:
            code = proc.poll()
            if code is None:
                return None
            del self._children[ref["pid"]]
            return self._exit(ref, code)
        if self._alive(ref):
            return None
        return self._exit(ref, None)

    def _exit(self, ref: dict, code: int | None) -> Exit:
        written = read_json(Path(ref["run_dir"]) / EXIT)
        if code is not None and code < 0:
            return Exit(None, -code, f"killed by {_signame(-code)}")
        if code is None:  # not our child: only the worker's own record says how it ended
            if written is None:
                return Exit(None, signal.SIGKILL, "the worker ended without an exit record (killed)")
            code = written["code"]
        if code == 0:
            return Exit(0)
        reason = (written or {}).get("reason") or last_error_line(ref.get("log", "")) or f"exit status {code}"
        return Exit(code, None, reason)

    def cancel(self, handle: Handle) -> None:
        ref = json.loads(handle.ref)
        if ref["pid"] in self._children or self._alive(ref):
            try:
                # the worker only: it checkpoints and stops its metrics exporter itself
                os.kill(ref["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self, handle: Handle) -> None:
        """SIGKILL to the job's whole process group (tests, and a service told to give up on a job)."""
        ref = json.loads(handle.ref)
        if self._alive(ref):
            try:
                os.killpg(ref["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass

    def adopt(self, handle: Handle) -> bool:
        try:
            ref = json.loads(handle.ref)
        except ValueError:
            return False
        return self._alive(ref)

    def close(self) -> None:
        # the jobs run on (a restarted service adopts them); their Popen objects stay to be reaped
        if self.warm is not None:
            self.warm.close()

    @staticmethod
    def _alive(ref: dict) -> bool:
        start = process_start_time(ref["pid"])
        return start is not None and start == ref.get("start")


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"
