"""The metrics exporter in its own process, so scrapes cost the training nothing.

A scrape served from a thread of the job process takes the GIL and a core
from the training step (measured: docs/benchmarks.md). Here the job writes its
JobState's numbers into a shared array after each step (a few microseconds),
and a separate process serves /metrics from them with the same JobCollector,
measuring the job's RSS and NVML usage by its pid. The exporter process exits
when the job stops it, or when the job dies (its end of the socketpair closes). It
ignores SIGINT: a terminal's Ctrl-C reaches the whole process group, and the
job, which checkpoints first, is the one to stop it.

The job does not wait for that process to start (its interpreter, NumPy and
prometheus_client take ~0.5 s, most of a small job's training time): the job
binds the listening socket itself, so a port in use is still its own error at
once and the port is known, and hands the socket to the child. A scrape that
arrives before the child serves waits in the socket's backlog and is answered
with the job's latest numbers once it does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading

import numpy as np

from memtrain.memory.plan import CATEGORIES
from memtrain.train.state import EXPORT, JOB_STATES, MEASURED, STEP_BUCKETS, JobState

# layout of the shared array, in JobState's field order: (field, kind, width)
_WIDTH = {"scalar": 1, "state": 1, "categories": len(CATEGORIES), "sources": len(MEASURED),
          "histogram": len(STEP_BUCKETS) + 2}  # bucket counts (+Inf included) and the sum
LAYOUT = tuple((f.name, f.metadata[EXPORT], _WIDTH[f.metadata[EXPORT]]) for f in dataclasses.fields(JobState)
               if f.metadata.get(EXPORT) in _WIDTH)
STATIC = tuple(f.name for f in dataclasses.fields(JobState) if f.metadata.get(EXPORT) == "static")
_SIZE = sum(width for _, _, width in LAYOUT)
_NAN = float("nan")


def _pack_field(state, name, kind) -> list:
    value = getattr(state, name)
    if kind == "scalar":
        return [float(value)]
    if kind == "state":
        return [float(JOB_STATES.index(value))]
    if kind == "categories":
        return [float(value[c]) if c in (value or {}) else _NAN for c in CATEGORIES]
    if kind == "sources":
        return [_NAN if value.get(k) is None else float(value[k]) for k in MEASURED]
    return [float(c) for c in value.counts] + [value.total]


def _unpack_field(state, name, kind, v) -> None:
    if kind == "scalar":
        old = getattr(state, name)
        setattr(state, name, int(v[0]) if isinstance(old, int) and math.isfinite(v[0]) else v[0])
    elif kind == "state":
        state.state = JOB_STATES[int(v[0])]
    elif kind == "categories":
        setattr(state, name, {c: int(x) for c, x in zip(CATEGORIES, v) if math.isfinite(x)})
    elif kind == "sources":
        setattr(state, name, {k: int(x) for k, x in zip(MEASURED, v) if math.isfinite(x)})
    else:
        hist = getattr(state, name)
        hist.counts, hist.total = [int(c) for c in v[:-1]], v[-1]


def _pack(state: JobState, out: np.ndarray) -> None:
    vals = []
    for name, kind, _ in LAYOUT:
        vals += _pack_field(state, name, kind)
    out[:] = vals


def _unpack(src: np.ndarray, state: JobState) -> None:
    v, i = src.tolist(), 0
    for name, kind, width in LAYOUT:
        _unpack_field(state, name, kind, v[i : i + width])
        i += width


class Exporter:
    """start() the exporter process; publish(state) after each step; stop() at the end.

    `trials`, [(name, JobState)]: a trial array's exporter (one for the array's one process), whose
    scrape has every trial's training series labelled `trial` (metrics.JobCollector); `state` is
    the array's own (its memory and identity). publish(state) ships that one of them.

    The child is a plain `python -m memtrain.exporter` (subprocess), not a multiprocessing one:
    spawn cost the job ~50 ms of imports (multiprocessing, its spawn and resource tracker) and
    started a second process (the resource tracker) beside the exporter; the shared numbers are a
    memfd (or an unlinked temporary file) mapped by both, the listening socket and a socketpair
    (ready / stop; end of file when the job dies) are passed as file descriptors."""

    def __init__(self, state: JobState, port: int, host: str = "127.0.0.1", trials=()):
        self._states = [state, *(t for _, t in trials)]
        self._slot = {id(st): i for i, st in enumerate(self._states)}
        static = json.dumps({"states": [{k: getattr(st, k) for k in STATIC} for st in self._states],
                             "trials": [str(name) for name, _ in trials]}).encode()
        sock = listen(host, port)  # OSError (a port in use) here, in the job, before anything starts
        self.port = sock.getsockname()[1]
        shared = child = None
        try:
            shared, self._arr = _shared_rows(len(self._states), static)
            for st, row in zip(self._states, self._arr, strict=True):
                _pack(st, row)
            self._conn, child = socket.socketpair()
            fds = (shared.fileno(), sock.fileno(), child.fileno())
            # -P: not the working directory first on sys.path (a memtrain/ there is not the job's)
            cmd = [sys.executable, "-P", "-m", "memtrain.exporter", *map(str, fds), str(os.getpid()),
                   str(len(self._states)), str(len(static))]
            self._proc = _start_ignoring_sigint(lambda: subprocess.Popen(
                cmd, pass_fds=fds, env=_child_env(), stdin=subprocess.DEVNULL))
        except BaseException:
            if getattr(self, "_conn", None) is not None:
                self._conn.close()
            raise
        finally:
            for f in (shared, sock, child):
                if f is not None:
                    f.close()  # the child holds its own copies
        _yield_to_the_job(self._proc.pid)

    def publish(self, state: JobState) -> None:
        _pack(state, self._arr[self._slot[id(state)]])  # one of the states it was built with

    def ready(self) -> bool:
        """Whether the child serves yet (it says so once; an exited child reads as ready too)."""
        try:
            self._conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"r", or b"" at its exit
        except BlockingIOError:
            return False
        return True

    def stop(self) -> None:
        """Ends the exporter process. One still starting (it has served nothing yet: it says
        "ready" once it serves) is terminated, so a short job never waits for its imports."""
        try:
            ready = self.ready()
            self._conn.sendall(b"s")
        except OSError:
            ready = True  # it has exited already: wait() returns at once
        if not ready:
            self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the child imports this memtrain


def _child_env() -> dict:
    """The job's environment, with the directory this memtrain was imported from first on PYTHONPATH
    (a checkout run from its root, or put on sys.path by a test: -P leaves the working directory out),
    unless it is a site directory the child's interpreter searches anyway (an installed memtrain)."""
    if _PACKAGE_ROOT in {*site.getsitepackages(), site.getusersitepackages()}:
        return dict(os.environ)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))}


def _shared_rows(rows: int, static: bytes):
    """(an open file, rows x _SIZE float64 mapped from it, shared with the child), the static JSON after them."""
    nbytes = rows * _SIZE * 8
    if hasattr(os, "memfd_create"):
        f = open(os.memfd_create("memtrain-exporter"), "r+b")  # noqa: SIM115 - closed once the child has it
    else:  # not Linux: an unlinked temporary file (page cache)
        f = tempfile.TemporaryFile()  # noqa: SIM115
    f.truncate(nbytes + len(static))
    f.seek(nbytes)
    f.write(static)
    f.flush()
    view = mmap.mmap(f.fileno(), nbytes + len(static))
    return f, np.frombuffer(view, dtype=np.float64, count=rows * _SIZE).reshape(rows, _SIZE)


EXPORTER_NICENESS = 10


def _yield_to_the_job(pid: int) -> None:
    """The exporter at a lower CPU priority than the job (nice + EXPORTER_NICENESS): its start (an
    interpreter, NumPy, prometheus_client: ~0.2 s of CPU) and its scrapes run on the cores the job's
    BLAS threads want, and when both want a core the job's steps go first (issue 22: the exporter off
    the critical path). A scrape takes it ~1 ms; at nice 10 it still gets a tenth of a contended core."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + EXPORTER_NICENESS))
    except (AttributeError, OSError):  # not POSIX, or not allowed: it runs at the job's priority, as before
        pass


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), IPv6 for an IPv6 host."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=64)


def _start_ignoring_sigint(start):
    """start() with SIGINT blocked in this thread, and ignored where this thread may set it: the
    child inherits the blocked mask and the ignored disposition through fork and exec, so a
    Ctrl-C while it imports (before it ignores SIGINT itself) cannot end it with a
    KeyboardInterrupt traceback. A SIGINT meanwhile reaches the job once the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        return start()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    main = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        return start()
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _child(shared_fd, sock_fd, conn_fd, job_pid, rows, static_len) -> None:  # pragma: no cover - the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the job, which stops this process
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent; now ignored
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from memtrain.metrics import JobCollector, serve_socket  # noqa: PLC0415

    nbytes = rows * _SIZE * 8
    view = mmap.mmap(shared_fd, nbytes + static_len)
    static = json.loads(view[nbytes:])
    states = [JobState(**st) for st in static["states"]]
    arr = np.frombuffer(view, dtype=np.float64, count=rows * _SIZE).reshape(rows, _SIZE)

    class MirrorCollector(JobCollector):
        def collect(self):
            for row, st in zip(arr, states, strict=True):
                _unpack(row, st)  # the job's numbers as of its last step (each trial's, in an array)
            return super().collect()

    registry = CollectorRegistry()
    registry.register(MirrorCollector(states[0], pid=job_pid, trials=list(zip(static["trials"], states[1:],
                                                                             strict=True))))
    conn = socket.socket(fileno=conn_fd)
    server, _ = serve_socket(socket.socket(fileno=sock_fd), registry)
    try:
        conn.sendall(b"r")
        conn.recv(1)  # "s" (stop), or end of file when the job has died
    except OSError:
        pass
    # no server.shutdown() and no interpreter teardown: they cost the job's stop() 0.5 s (serve_forever's
    # poll interval) and 0.1 s; this process has nothing to flush, its serving thread ends with it
    server.server_close()
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover - the child: python -m memtrain.exporter FDS... PID ROWS LEN
    _child(*map(int, sys.argv[1:7]))
