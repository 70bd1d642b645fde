"""JobState: what a running job knows about itself.

The Job writes plain attributes after each step and publishes them to the
exporter process (memtrain/exporter.py), which serves them at scrape time
through the JobCollector (metrics.py); a service reads the same object. Each
field's metadata says how the exporter ships it, so the exporter's layout
follows this dataclass instead of lists kept beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from memtrain.errors import ConfigError

JOB_STATES = ("planning", "training", "evaluating", "checkpointing", "finished", "failed")
# Step-duration histogram buckets (seconds): from launch-bound small models to big GEMMs.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class StepHistogram:
    buckets: tuple = STEP_BUCKETS
    counts: list = field(default_factory=lambda: [0] * (len(STEP_BUCKETS) + 1))  # last: +Inf
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, le in enumerate(self.buckets):
            if seconds <= le:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds

    def cumulative(self) -> list:
        """[(le, cumulative count)] including "+Inf", as Prometheus exposes it."""
        out, running = [], 0
        for le, c in zip([*map(str, self.buckets), "+Inf"], self.counts):
            running += c
            out.append((le, running))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


# How the exporter ships each field to its process (memtrain/exporter.py derives the
# shared array's layout from these, in field order): "static" once at start as JSON;
# "scalar" one float; "state" the index in JOB_STATES; "categories" one float per plan
# category; "sources" one float per MEASURED source; "histogram" the bucket counts and sum.
EXPORT = "export"
# tracemalloc_peak: the CPU peak of what the plan covers; python_objects: the job loop's own Python objects
MEASURED = ("cupy_pool_used", "cupy_pool_total", "cupy_pool_peak", "tracemalloc_peak", "python_objects")


def _f(kind, default=None, **kw):
    if "default_factory" in kw:
        return field(metadata={EXPORT: kind}, **kw)
    return field(default=default, metadata={EXPORT: kind})


@dataclass
class JobState:
    job: str = _f("static", "memtrain")
    model: str = _f("static", "")  # e.g. "784-1024-1024-10 relu softmax"
    optimizer: str = _f("static", "")
    dtype: str = _f("static", "")
    device: str = _f("static", "cpu")
    state: str = _f("state", "planning")  # one of JOB_STATES
    planned_bytes: dict = _f("categories", default_factory=dict)  # category -> bytes (the plan's by_category())
    memory_budget: float = _f("scalar", float("nan"))  # bytes the plan was sized to fit: the limit, or free memory
    batch_size: int = _f("scalar", 0)
    micro_batch_size: int = _f("scalar", 0)
    oom_recoveries: int = _f("scalar", 0)
    steps: int = _f("scalar", 0)
    samples: int = _f("scalar", 0)
    epoch: int = _f("scalar", 0)
    train_loss: float = _f("scalar", float("nan"))
    validation_loss: float = _f("scalar", float("nan"))
    validation_accuracy: float = _f("scalar", float("nan"))
    validation_rmse: float = _f("scalar", float("nan"))  # regression (a linear output) only
    validation_mae: float = _f("scalar", float("nan"))
    validation_r2: float = _f("scalar", float("nan"))
    learning_rate: float = _f("scalar", float("nan"))
    gradient_norm: float = _f("scalar", float("nan"))
    nonfinite_steps: int = _f("scalar", 0)
    checkpoints: int = _f("scalar", 0)
    last_checkpoint_time: float = _f("scalar", float("nan"))  # unix seconds
    step_durations: StepHistogram = _f("histogram", default_factory=StepHistogram)
    started: float = _f("static", default_factory=time.time)
    gpu_index: int | None = _f("static", None)  # the CUDA device the job runs on, for the NVML readings
    gpu_pci_bus_id: str = _f("static", "")  # the same device as NVML names it (the exporter process has no CuPy)
    gpu_uuid: str = _f("static", "")  # NVML's uuid of that device, so dashboards can join a job to its GPU
    measured: dict = _f("sources", default_factory=dict)  # source (MEASURED) -> bytes the job loop measured

    def set_state(self, state: str) -> None:
        if state not in JOB_STATES:
            raise ConfigError(f"state: expected one of {', '.join(JOB_STATES)}, got {state!r}")
        self.state = state
