"""The metrics exporter in its own process, so scrapes cost the training nothing.

A scrape served from a thread of the job process takes the GIL and a core
from the training step (measured: docs/benchmarks.md). Here the job writes its
JobState's numbers into a shared array after each step (a few microseconds),
and a separate process serves /metrics from them with the same JobCollector,
measuring the job's RSS and NVML usage by its pid. The exporter process exits
when the job stops it, or when the job dies (its end of the pipe closes).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os

import numpy as np

from memtrain.memory.plan import CATEGORIES
from memtrain.train.state import JOB_STATES, STEP_BUCKETS, JobState

SCALARS = ("batch_size", "micro_batch_size", "oom_recoveries", "steps", "samples", "epoch", "train_loss",
           "validation_loss", "validation_accuracy", "learning_rate", "gradient_norm", "nonfinite_steps",
           "checkpoints", "last_checkpoint_time", "memory_budget")
MEASURED = ("cupy_pool_used", "cupy_pool_total", "cupy_pool_peak", "tracemalloc_peak")
STATIC = ("job", "model", "optimizer", "dtype", "device", "gpu_index", "gpu_pci_bus_id", "gpu_uuid", "started")
# layout of the shared array: scalars, the state's index, planned bytes, measured bytes, histogram
_N_HIST = len(STEP_BUCKETS) + 1
_SIZE = len(SCALARS) + 1 + len(CATEGORIES) + len(MEASURED) + _N_HIST + 1
_NAN = float("nan")


def _pack(state: JobState, out: np.ndarray) -> None:
    vals = [float(getattr(state, k)) for k in SCALARS]
    vals.append(float(JOB_STATES.index(state.state)))
    planned = state.planned_bytes or {}
    vals += [float(planned[c]) if c in planned else _NAN for c in CATEGORIES]
    vals += [float(state.measured.get(k, _NAN)) if state.measured.get(k) is not None else _NAN for k in MEASURED]
    vals += [float(c) for c in state.step_durations.counts]
    vals.append(state.step_durations.total)
    out[:] = vals


def _unpack(src: np.ndarray, state: JobState) -> None:
    v = src.tolist()
    for i, k in enumerate(SCALARS):
        value = v[i]
        setattr(state, k, int(value) if isinstance(getattr(state, k), int) and math.isfinite(value) else value)
    i = len(SCALARS)
    state.state = JOB_STATES[int(v[i])]
    i += 1
    planned = {c: int(v[i + j]) for j, c in enumerate(CATEGORIES) if math.isfinite(v[i + j])}
    state.planned_bytes = planned
    i += len(CATEGORIES)
    state.measured = {k: int(v[i + j]) for j, k in enumerate(MEASURED) if math.isfinite(v[i + j])}
    i += len(MEASURED)
    state.step_durations.counts = [int(c) for c in v[i : i + _N_HIST]]
    state.step_durations.total = v[i + _N_HIST]


class Exporter:
    """start() the exporter process; publish(state) after each step; stop() at the end."""

    def __init__(self, state: JobState, port: int, host: str = "127.0.0.1"):
        ctx = mp.get_context("spawn")  # not fork: the job may already run BLAS and CUDA threads
        self._raw = ctx.RawArray("d", _SIZE)
        self._arr = np.frombuffer(self._raw, dtype=np.float64)
        _pack(state, self._arr)
        static = {k: getattr(state, k) for k in STATIC}
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(self._raw, json.dumps(static), os.getpid(), port, host, child),
                                 name="memtrain-exporter", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(30):
            self.stop()
            raise OSError("the metrics exporter process did not start within 30 s")
        kind, value = self._conn.recv()
        if kind != "ok":
            self._proc.join(5)
            raise OSError(value)
        self.port = value

    def publish(self, state: JobState) -> None:
        _pack(state, self._arr)

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()


def _child(raw, static_json, job_pid, port, host, conn) -> None:  # pragma: no cover - runs in the child
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from memtrain.metrics import JobCollector, serve  # noqa: PLC0415

    arr = np.frombuffer(raw, dtype=np.float64)
    state = JobState(**json.loads(static_json))

    class MirrorCollector(JobCollector):
        def collect(self):
            _unpack(arr, self.state)  # the job's numbers as of its last step
            return super().collect()

    registry = CollectorRegistry()
    registry.register(MirrorCollector(state, pid=job_pid))
    try:
        server, _ = serve(state, port, host=host, registry=registry)
    except OSError as exc:
        conn.send(("error", f"{exc.strerror or exc}"))
        return
    conn.send(("ok", server.server_address[1]))
    try:
        conn.recv()  # "stop", or EOFError when the job has died
    except EOFError:
        pass
    server.shutdown()
    server.server_close()
