"""The metrics exporter in its own process, so scrapes cost the training nothing.

A scrape served from a thread of the job process takes the GIL and a core
from the training step (measured: docs/benchmarks.md). Here the job writes its
JobState's numbers into a shared array after each step (a few microseconds),
and a separate process serves /metrics from them with the same JobCollector,
measuring the job's RSS and NVML usage by its pid. The exporter process exits
when the job stops it, or when the job dies (its end of the pipe closes). It
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
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import types

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
    the array's own (its memory and identity). publish(state) ships that one of them."""

    def __init__(self, state: JobState, port: int, host: str = "127.0.0.1", trials=()):
        ctx = mp.get_context("spawn")  # not fork: the job may already run BLAS and CUDA threads
        self._states = [state, *(t for _, t in trials)]
        self._slot = {id(st): i for i, st in enumerate(self._states)}
        self._raw = ctx.RawArray("d", _SIZE * len(self._states))
        self._arr = np.frombuffer(self._raw, dtype=np.float64).reshape(len(self._states), _SIZE)
        for st, row in zip(self._states, self._arr, strict=True):
            _pack(st, row)
        static = [{k: getattr(st, k) for k in STATIC} for st in self._states]
        names = [str(name) for name, _ in trials]
        sock = listen(host, port)  # OSError (a port in use) here, in the job, before anything starts
        self.port = sock.getsockname()[1]
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(self._raw, json.dumps({"states": static, "trials": names}),
                                                      os.getpid(), sock, child),
                                 name="memtrain-exporter", daemon=True)
        try:
            _start_ignoring_sigint(self._proc)  # the child gets its own copy of the socket
        finally:
            sock.close()
            child.close()

    def publish(self, state: JobState) -> None:
        _pack(state, self._arr[self._slot[id(state)]])  # one of the states it was built with

    def stop(self) -> None:
        """Ends the exporter process. One still starting (it has served nothing yet: it says
        "ready" once it serves) is terminated, so a short job never waits for its imports."""
        try:
            ready = self._conn.poll(0)
            self._conn.send("stop")
        except (OSError, BrokenPipeError):
            ready = True  # it has exited already: join() returns at once
        if not ready:
            self._proc.terminate()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), IPv6 for an IPv6 host."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=64)


def _start_ignoring_sigint(proc) -> None:
    """proc.start() with SIGINT blocked in this thread: the child inherits the blocked mask
    through fork and exec, so a Ctrl-C while it imports (before _child ignores SIGINT)
    cannot end it with a KeyboardInterrupt traceback. A SIGINT meanwhile reaches the
    job once the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        _start_without_main(proc)
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    # and ignored, where this thread may set it: an ignored signal stays ignored through exec and a
    # Python started so installs no KeyboardInterrupt handler (the blocked mask alone did not keep
    # a Ctrl-C in the first ~0.1 s out of the spawned interpreter's start-up)
    main = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        _start_without_main(proc)
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _start_without_main(proc) -> None:
    """proc.start() with a bare __main__ in sys.modules for the moment it takes: spawn hands the
    child the job's main module to run first as __mp_main__ (`memtrain train` is memtrain.cli,
    so the child imported click and every command module, ~45 ms of CPU on a core the job's
    first epochs want, issue 22); the child needs only this module, which its target names."""
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        proc.start()
    finally:
        sys.modules["__main__"] = real


def _child(raw, static_json, job_pid, sock, conn) -> None:  # pragma: no cover - runs in the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the job, which stops this process
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent; now ignored
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from memtrain.metrics import JobCollector, serve_socket  # noqa: PLC0415

    static = json.loads(static_json)
    states = [JobState(**st) for st in static["states"]]
    arr = np.frombuffer(raw, dtype=np.float64).reshape(len(states), _SIZE)

    class MirrorCollector(JobCollector):
        def collect(self):
            for row, st in zip(arr, states, strict=True):
                _unpack(row, st)  # the job's numbers as of its last step (each trial's, in an array)
            return super().collect()

    registry = CollectorRegistry()
    registry.register(MirrorCollector(states[0], pid=job_pid, trials=list(zip(static["trials"], states[1:],
                                                                             strict=True))))
    server, _ = serve_socket(sock, registry)
    try:
        conn.send("ready")
        conn.recv()  # "stop", or EOFError when the job has died
    except (EOFError, OSError):
        pass
    # no server.shutdown() and no interpreter teardown: they cost the job's stop() 0.5 s (serve_forever's
    # poll interval) and 0.1 s; this process has nothing to flush, its serving thread ends with it
    server.server_close()
    os._exit(0)
