"""JobState: what a running job knows about itself, read by the metrics
exporter at scrape time (metrics.py) and by the progress display.

The job loop writes plain attributes; the exporter only reads them, so no
lock is needed for single values (a scrape may see a step's values half
updated, which a monitoring view tolerates).
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


@dataclass
class JobState:
    job: str = "memtrain"
    model: str = ""  # e.g. "784-1024-1024-10 relu softmax"
    optimizer: str = ""
    dtype: str = ""
    device: str = "cpu"
    state: str = "planning"  # one of JOB_STATES
    planned_bytes: dict = field(default_factory=dict)  # category -> bytes (the plan's by_category())
    memory_budget: float = float("nan")  # bytes the plan was sized to fit: the limit, or free memory at start
    batch_size: int = 0
    micro_batch_size: int = 0
    oom_recoveries: int = 0
    steps: int = 0
    samples: int = 0
    epoch: int = 0
    train_loss: float = float("nan")
    validation_loss: float = float("nan")
    validation_accuracy: float = float("nan")
    learning_rate: float = float("nan")
    gradient_norm: float = float("nan")
    nonfinite_steps: int = 0
    checkpoints: int = 0
    last_checkpoint_time: float = float("nan")  # unix seconds
    step_durations: StepHistogram = field(default_factory=StepHistogram)
    started: float = field(default_factory=time.time)
    gpu_index: int | None = None  # the CUDA device the job runs on, for the NVML readings
    gpu_pci_bus_id: str = ""  # the same device as NVML names it (the exporter process has no CuPy)
    gpu_uuid: str = ""  # NVML's uuid of that device, so dashboards can join a job to its GPU
    measured: dict = field(default_factory=dict)  # source -> bytes the job loop measured (e.g. cupy_pool_peak)

    def set_state(self, state: str) -> None:
        if state not in JOB_STATES:
            raise ConfigError(f"state: expected one of {', '.join(JOB_STATES)}, got {state!r}")
        self.state = state
