"""Prometheus exporter: a Collector that reads a JobState (and measures memory)
at scrape time, and `serve()` to expose it over HTTP. Reference: docs/metrics.md.

Nothing in `memtrain/__init__.py` imports this module: prometheus_client is
loaded only when a job asks for metrics. CuPy is never imported here; its pool
is read only when the job already imported it.
"""

from __future__ import annotations

import math
import sys
import threading
import tracemalloc
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, MetricsHandler, disable_created_metrics, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)

from memtrain.memory import measure
from memtrain.memory.plan import CATEGORIES
from memtrain.train.state import JOB_STATES, JobState

PREFIX = "memtrain_"
# Every family collect() may yield (each only once its value is known); tests/test_metrics.py
# checks that a full scrape yields exactly these.
FAMILIES = (
    ("memory_planned_bytes", "gauge"), ("memory_budget_bytes", "gauge"), ("memory_measured_bytes", "gauge"),
    ("memory_estimate_error_ratio", "gauge"),
    ("gpu_memory_total_bytes", "gauge"), ("gpu_memory_used_bytes", "gauge"), ("gpu_memory_free_bytes", "gauge"),
    ("gpu_utilization_ratio", "gauge"), ("gpu_temperature_celsius", "gauge"), ("gpu_power_watts", "gauge"),
    ("gpu", "info"),
    ("batch_size", "gauge"), ("micro_batch_size", "gauge"), ("oom_recoveries", "counter"), ("steps", "counter"),
    ("samples", "counter"), ("epoch", "gauge"), ("step_duration_seconds", "histogram"), ("train_loss", "gauge"),
    ("validation_loss", "gauge"), ("validation_accuracy", "gauge"), ("validation_rmse", "gauge"),
    ("validation_mae", "gauge"), ("validation_r2", "gauge"), ("learning_rate", "gauge"),
    ("gradient_norm", "gauge"), ("nonfinite_steps", "counter"), ("checkpoints", "counter"),
    ("last_checkpoint_timestamp_seconds", "gauge"), ("job_start_timestamp_seconds", "gauge"),
    ("job_state", "stateset"), ("job", "info"),
)
_FAMILY_TYPES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily,
                 "info": InfoMetricFamily, "stateset": StateSetMetricFamily}


TRIAL = "trial"  # the label of a trial array's per-trial series (docs/metrics.md, "Trial arrays")


class JobCollector:
    """Collector over one JobState (prometheus client_python's Collector protocol:
    `collect()` yields metric families). Register it on a registry you own:

        registry = CollectorRegistry()
        registry.register(JobCollector(state))

    measure_gpu=False makes no NVML or CuPy call (tests, or a scrape that must
    not touch the driver); the state's own values and the CPU readings remain.

    `trials`, [(name, JobState)], makes it a trial array's collector: `state` is the array's
    (its memory, measured once for its one process, and its identity, `memtrain_job_info` with
    an empty `trial`), and every training and job family has one series per trial, labelled
    `trial` with its name. Without trials no family has a `trial` label.
    """

    def __init__(self, state: JobState, *, measure_gpu: bool = True, pid: int | None = None, trials=()):
        self.state = state
        self.measure_gpu = measure_gpu
        self.pid = pid  # the job's process when this collector runs in another (memtrain/exporter.py)
        self.trials = list(trials)

    def describe(self):
        """The families collect() can yield, without measuring anything (a registry checks
        names with this when the collector is registered)."""
        return [_FAMILY_TYPES[kind](PREFIX + name, "") for name, kind in FAMILIES
                if self.measure_gpu or not name.startswith("gpu")]

    def collect(self):
        s = self.state
        yield from self._memory(s)
        if self.measure_gpu:
            yield from _gpus()
        if not self.trials:
            yield from _labelled([], [([], s)])
            return
        series = [([str(name)], t) for name, t in zip(trial_labels([n for n, _ in self.trials]),
                                                       (t for _, t in self.trials), strict=True)]
        yield from _labelled([TRIAL], series, array=s)

    # -- memory ----------------------------------------------------------------------------------

    def _memory(self, s):
        planned = dict(s.planned_bytes or {})
        if planned:
            fam = GaugeMetricFamily(PREFIX + "memory_planned_bytes",
                                    "Bytes the memory plan reserves, per category (absent until planned).",
                                    labels=["category"])
            for cat in CATEGORIES:
                fam.add_metric([cat], float(planned.get(cat, 0)))
            yield fam

        budget = getattr(s, "memory_budget", math.nan)
        if math.isfinite(budget):
            yield GaugeMetricFamily(PREFIX + "memory_budget_bytes",
                                    "Bytes the job's plan was sized to fit: its memory limit, or the device's "
                                    "free memory when it started (absent until known).", value=float(budget))

        measured = self._measured(s)
        if measured:
            fam = GaugeMetricFamily(PREFIX + "memory_measured_bytes",
                                    "Memory measured, or reported by the job, per source.", labels=["source"])
            for source, nbytes in measured.items():
                fam.add_metric([source], float(nbytes))
            yield fam

        ratio = _estimate_error(s, planned, measured)
        if ratio is not None:
            yield GaugeMetricFamily(PREFIX + "memory_estimate_error_ratio",
                                    "Measured peak / planned - 1 (CUDA: CuPy pool peak vs the plan without "
                                    "overhead; CPU: tracemalloc peak vs the plan).", value=ratio)

    def _measured(self, s) -> dict:
        out = {}
        reported = getattr(s, "measured", None) or {}
        on_cuda = str(s.device).startswith("cuda")
        if on_cuda and self.measure_gpu and "cupy" in sys.modules:  # never import it: a CPU job must stay CPU
            out.update(_quiet(_cupy_pool, s.gpu_index) or {})
        if on_cuda and reported.get("cupy_pool_peak") is not None:
            out["cupy_pool_peak"] = reported["cupy_pool_peak"]
        for key in ("cupy_pool_used", "cupy_pool_total"):  # reported by a job whose exporter runs apart
            if on_cuda and key not in out and reported.get(key) is not None:
                out[key] = reported[key]
        bus = getattr(s, "gpu_pci_bus_id", "")
        if on_cuda and self.measure_gpu and s.gpu_index is not None and ("cupy" in sys.modules or bus):
            nbytes = _quiet(_nvml_process, s.gpu_index, self.pid, bus)
            if nbytes is not None:
                out["nvml_process"] = nbytes
        if reported.get("python_objects") is not None:  # the job loop's, apart from the plan's peak
            out["python_objects"] = reported["python_objects"]
        if reported.get("tracemalloc_peak") is not None:
            out["tracemalloc_peak"] = reported["tracemalloc_peak"]
        elif tracemalloc.is_tracing():
            out["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
        nbytes = _quiet(measure.rss, self.pid)
        if nbytes is not None:
            out["rss"] = nbytes
        return out


def _estimate_error(s, planned: dict, measured: dict) -> float | None:
    total = sum(planned.values())
    if str(s.device).startswith("cuda"):
        if "cupy_pool_peak" not in measured:
            return None
        # The pool holds the plan's buffers; the CUDA context and library handles
        # (the "overhead" category) live outside it.
        base, peak = total - planned.get("overhead", 0), measured["cupy_pool_peak"]
    elif "tracemalloc_peak" in measured:  # host memory only: comparable with a CPU job's plan alone
        base, peak = total, measured["tracemalloc_peak"]
    else:
        return None
    return peak / base - 1 if base > 0 else None


def _cupy_pool(gpu_index) -> dict:
    cupy = sys.modules["cupy"]
    pool = cupy.get_default_memory_pool()
    # The pool answers for the calling thread's current device, and a scrape
    # runs on the server's thread, whose current device is 0.
    if gpu_index is None:
        return {"cupy_pool_used": pool.used_bytes(), "cupy_pool_total": pool.total_bytes()}
    with cupy.cuda.Device(gpu_index):
        return {"cupy_pool_used": pool.used_bytes(), "cupy_pool_total": pool.total_bytes()}


def _nvml_process(gpu_index, pid=None, bus=""):
    if not measure.nvml_state().ok:
        return None
    return measure.process_gpu_bytes(gpu_index, pid, bus or None)


def _quiet(fn, *args):
    """A measurement that fails (driver gone, device reset, no /proc) is left out of
    the scrape instead of failing it."""
    try:
        return fn(*args)
    except Exception:
        return None


# -- GPUs (NVML) ------------------------------------------------------------------------------------

_GPU_GAUGES = (  # (name, help, key in measure.gpu_list()'s dicts, already in base units)
    ("gpu_memory_total_bytes", "GPU memory in total, as NVML reports it.", "memory_total"),
    ("gpu_memory_used_bytes", "GPU memory in use by all processes, as NVML reports it.", "memory_used"),
    ("gpu_memory_free_bytes", "GPU memory free, as NVML reports it.", "memory_free"),
    ("gpu_utilization_ratio", "Fraction of the last sample period a kernel ran (NVML utilization.gpu / 100).",
     "utilization"),
    ("gpu_temperature_celsius", "GPU core temperature.", "temperature_c"),
    ("gpu_power_watts", "GPU power draw.", "power_w"),
)


def _gpus():
    gpus = _quiet(measure.gpu_list, False) or []
    if not gpus:
        return
    families = {}
    for name, doc, _ in _GPU_GAUGES:
        families[name] = GaugeMetricFamily(PREFIX + name, doc, labels=["gpu", "uuid"])
    info = InfoMetricFamily(PREFIX + "gpu", "Each GPU NVML sees (value 1); gpu is NVML's index.",
                            labels=["gpu", "uuid"])
    for g in gpus:
        try:
            labels = [str(g["index"]), str(g["uuid"])]
            for name, _, key in _GPU_GAUGES:
                if g.get(key) is not None:  # e.g. power is not supported on every board
                    families[name].add_metric(labels, float(g[key]))
            info.add_metric(labels, {"name": str(g["name"]), "pci_bus_id": str(g["pci_bus_id"]),
                                     "driver_version": str(g["driver_version"])})
        except (KeyError, TypeError, ValueError):
            continue
    for fam in families.values():
        if fam.samples:
            yield fam
    if info.samples:
        yield info


# -- families ---------------------------------------------------------------------------------------


def _training(s) -> tuple:
    """(kind, name, help, value) of a JobState's training and job families, in exposition order;
    a gauge whose value is None or NaN is left out (unknown)."""
    return (
        ("gauge", "batch_size", "Rows per optimizer step (absent until the batch size is chosen).",
         s.batch_size or None),
        ("gauge", "micro_batch_size", "Rows per forward/backward pass; below batch_size when gradients "
         "are accumulated (absent until the batch size is chosen).", s.micro_batch_size or None),
        ("counter", "oom_recoveries", "Out-of-memory errors recovered by halving the micro-batch.", s.oom_recoveries),
        ("counter", "steps", "Optimizer steps taken (the trainer's count; a resumed job continues it).", s.steps),
        ("counter", "samples", "Training samples processed by this run.", s.samples),
        ("gauge", "epoch", "Epochs completed.", s.epoch),
        ("histogram", "step_duration_seconds", "Wall time per optimizer step, callback to callback.",
         s.step_durations),
        ("gauge", "train_loss", "Training loss of the last step.", s.train_loss),
        ("gauge", "validation_loss", "Validation loss after the last completed epoch.", s.validation_loss),
        ("gauge", "validation_accuracy", "Validation accuracy (0..1) after the last completed epoch.",
         s.validation_accuracy),
        ("gauge", "validation_rmse", "Validation root mean squared error (regression: a linear output) after "
         "the last completed epoch.", s.validation_rmse),
        ("gauge", "validation_mae", "Validation mean absolute error (regression) after the last completed epoch.",
         s.validation_mae),
        ("gauge", "validation_r2", "Validation coefficient of determination R^2 (regression) after the last "
         "completed epoch.", s.validation_r2),
        ("gauge", "learning_rate", "Learning rate of the last applied update.", s.learning_rate),
        ("gauge", "gradient_norm", "L2 norm of the last step's gradient, before clipping.", s.gradient_norm),
        ("counter", "nonfinite_steps", "Steps skipped because the loss or the gradient was not finite.",
         s.nonfinite_steps),
        ("counter", "checkpoints", "Checkpoints written by this run.", s.checkpoints),
        ("gauge", "last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint this run wrote.",
         s.last_checkpoint_time),
        ("gauge", "job_start_timestamp_seconds", "Unix time this run of the job started.", s.started),
        ("stateset", "job_state", "The job's current state.", {name: s.state == name for name in JOB_STATES}),
        ("info", "job", "The job's identity (value 1).", _identity(s)),
    )


def _identity(s) -> dict:
    return {"job": str(s.job), "model": str(s.model), "optimizer": str(s.optimizer), "dtype": str(s.dtype),
            "device": str(s.device), "gpu_uuid": str(getattr(s, "gpu_uuid", ""))}


def _labelled(labelnames: list, series: list, array=None):
    """The training and job families over `series`, [(label values, JobState)], each family declared
    once with `labelnames` and one sample (set) per state whose value is known; a family no state
    knows is left out. `array`: a trial array's own state, whose identity joins memtrain_job_info
    with an empty trial label."""
    families: dict = {}
    for values, s in series:
        for kind, name, doc, value in _training(s):
            if kind == "gauge" and (value is None or (isinstance(value, float) and math.isnan(value))):
                continue
            fam = families.get(name)
            if fam is None:
                fam = families[name] = _FAMILY_TYPES[kind](PREFIX + name, doc, labels=labelnames)
            _add(fam, kind, values, value)
    if array is not None:
        fam = families.setdefault("job", InfoMetricFamily(PREFIX + "job", "", labels=labelnames))
        fam.add_metric([""] * len(labelnames), _identity(array))
    return list(families.values())


def _add(fam, kind: str, values: list, value) -> None:
    if kind == "histogram":
        # no created timestamp (as for counters): no _created sample
        fam.add_metric(values, [(le, float(n)) for le, n in value.cumulative()], sum_value=float(value.total))
    elif kind in ("stateset", "info"):
        fam.add_metric(values, value)
    else:
        fam.add_metric(values, float(value))


def trial_labels(names) -> list:
    """Each trial's `trial` label: its name, made unique with "#<position>" where names repeat
    (two series of one family must differ in a label)."""
    names = [str(n) for n in names]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


# -- serving ----------------------------------------------------------------------------------------


def serve(state: JobState, port: int, host: str = "127.0.0.1", registry=None) -> tuple:
    """Serve `registry` (default: a new CollectorRegistry holding a JobCollector over
    `state`) at http://host:port/metrics from a daemon thread.

    Returns (server, thread): `server.server_address[1]` is the bound port (useful
    with port=0); stop with `server.shutdown(); server.server_close()`. Raises
    OSError when the address cannot be bound (e.g. the port is in use).
    """
    disable_created_metrics()  # only instrumented metrics have _created; the JobCollector emits none
    if registry is None:
        registry = CollectorRegistry()
        registry.register(JobCollector(state))
    return start_http_server(port, addr="127.0.0.1" if host is None else host, registry=registry)


def serve_socket(sock, registry) -> tuple:
    """Serve `registry` at /metrics on `sock`, a socket already listening (the job bound it:
    memtrain/exporter.py), from a daemon thread. Returns (server, thread), as serve() does."""
    disable_created_metrics()

    class Server(ThreadingHTTPServer):
        address_family = sock.family

    server = Server(sock.getsockname()[:2], MetricsHandler.factory(registry), bind_and_activate=False)
    server.socket.close()  # the one it made; requests come to the job's socket
    server.socket, server.server_address = sock, sock.getsockname()
    thread = threading.Thread(target=server.serve_forever, name="memtrain-metrics", daemon=True)
    thread.start()
    return server, thread
