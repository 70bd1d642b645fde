"""LocalExecutor: each job is a worker process on this machine, in its own session
(so its own process group, and it outlives a killed service), its stdout/stderr
appended to the job's log file.

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
import signal
import subprocess
import sys
from pathlib import Path

from memtrain.launch.executor import Exit, Handle, Launch
from memtrain.launch.worker import EXIT, read_json


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


class LocalExecutor:
    name = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self._children: dict = {}  # pid -> Popen, for processes this object started

    def start(self, launch: Launch) -> Handle:
        run_dir = Path(launch.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / EXIT).unlink(missing_ok=True)  # an earlier attempt's
        spec = run_dir / "launch.json"
        spec.write_text(json.dumps(launch.to_dict(), indent=1))
        env = {**os.environ, **{str(k): str(v) for k, v in launch.env.items()}}
        with open(launch.log_path, "ab") as log:
            proc = subprocess.Popen([self.python, "-m", "memtrain.launch.worker", str(spec)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(run_dir),
                                    start_new_session=True)
        self._children[proc.pid] = proc
        start = process_start_time(proc.pid)
        ref = json.dumps({"pid": proc.pid, "start": start, "run_dir": str(run_dir), "log": launch.log_path})
        target = f"{launch.metrics_host}:{launch.metrics_port}" if launch.metrics_port else None
        return Handle(launch.job_id, self.name, ref, target)

    def poll(self, handle: Handle) -> Exit | None:
        ref = json.loads(handle.ref)
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
        pass  # the jobs run on (a restarted service adopts them); their Popen objects stay to be reaped

    @staticmethod
    def _alive(ref: dict) -> bool:
        start = process_start_time(ref["pid"])
        return start is not None and start == ref.get("start")


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"
