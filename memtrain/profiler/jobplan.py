"""The memory of a whole job before it runs: what a scheduler (sweep, the service)
needs to decide whether and where a job fits, without allocating anything.

`plan_job(cfg, device_kind=..., budget=...)` loads the job's data set only to count
its rows (the data set is part of the plan when it is resident), builds the same
Setting the Job builds, and returns the plan at the job's batch size; for
`batch_size = "auto"` the batch is the one the Job's auto batch solves: the largest
whose plan fits the budget less the safety margin, at most the training rows and
max_batch_size (the analytic solve; the Job then confirms it with a real probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memtrain.errors import ConfigError, DataError
from memtrain.memory.batch import check_batch_rows
from memtrain.memory.budget import with_margin
from memtrain.memory.plan import MemoryPlan
from memtrain.profiler.autobatch import solve
from memtrain.train.job import data_bytes, load_job_data, resident_rows_of
from memtrain.train.setting import Setting
from memtrain.units import format_bytes


@dataclass(frozen=True)
class DataRows:
    """What the plan needs from a data set: its shape, not its values."""

    n_features: int
    n_train: int
    n_val: int
    nbytes: int  # the training and validation arrays (what a GPU keeps resident)
    n_test: int = 0  # held in host memory until the final evaluation: in a CPU job's plan


@dataclass(frozen=True)
class JobPlan:
    setting: Setting
    batch_size: int | None  # None: "auto" and not even batch 1 fits the budget
    plan: MemoryPlan  # at batch_size (at batch 1 when nothing fits)
    rows: DataRows
    resident: bool  # the data set is in the plan (always on the CPU)
    reason: str = ""  # why it cannot run within the budget; "" when it can

    @property
    def total(self) -> int:
        return self.plan.total

    def by_category(self) -> dict:
        return self.plan.by_category()


def data_rows(cfg) -> DataRows:
    """The shape of the job's data set as the job splits it: a large .npz from its array headers
    (nothing decompressed: the service's process never holds a job's data), anything else loaded."""
    from memtrain.data import header_rows  # noqa: PLC0415 - the data loaders only when a job's data is counted

    d, spec = cfg.data, cfg.model_spec()
    got = header_rows(d.dataset, dtype=spec.dtype.name, output=spec.output.name, validation=d.validation,
                      test=d.test, validation_source=d.validation_dataset)
    if got is not None:
        features, n_train, n_val, nbytes, n_test = got
        if features != spec.sizes[0]:
            raise DataError(f"model.layers: the first size must equal the data's {features} features "
                            f"({Path(d.dataset).name}), got {spec.sizes[0]}")
        return DataRows(features, n_train, n_val, nbytes, n_test)
    ds = load_job_data(cfg)
    return DataRows(ds.n_features, len(ds.X_train), 0 if ds.X_val is None else len(ds.X_val), data_bytes(ds),
                    0 if ds.X_test is None else len(ds.X_test))


def job_setting(cfg, device_kind: str, resident_rows: DataRows | None, overhead_bytes: int = 0,
                overhead_source: str = "none") -> Setting:
    """The Setting the Job builds for `cfg`: its plan without the batch size."""
    return Setting(cfg.model_spec(), cfg.optimizer.name, cfg.optimizer.hyper, device_kind,
                   overhead_bytes=overhead_bytes, overhead_source=overhead_source,
                   keep_best=bool(cfg.training.patience), fused=cfg.training.fused,
                   resident_rows=None if resident_rows is None else resident_rows_of(
                       device_kind, resident_rows.n_train, resident_rows.n_val, resident_rows.n_test))


def solve_auto(setting, raw_budget: int, device_kind: str, n_train: int, max_batch_size=None) -> int:
    """The batch a job's auto batch solves to (0: none fits): the same solver, margin and
    cap (training rows, max_batch_size) as memtrain.profiler.autobatch.auto_batch."""
    caps = [c for c in (max_batch_size, n_train) if c]
    budget, _ = with_margin(device_kind, raw_budget)
    return solve(setting, budget, multiple_of=8 if device_kind == "cuda" else None,
                 max_batch=min(caps) if caps else None).batch_size


def plan_job(cfg, *, device_kind: str = "cpu", budget: int | None = None, overhead_bytes: int = 0,
             overhead_source: str = "none", rows: DataRows | None = None) -> JobPlan:
    """The plan of `cfg` (a JobConfig) on a `device_kind` ("cpu" or "cuda") device with
    `budget` bytes (None: unbounded; "auto" then needs a budget). `rows` skips loading
    the data set when its shape is known (sweep plans many trials on one data set)."""
    rows = rows or data_rows(cfg)
    limit = cfg.training.memory_limit
    if budget is not None and limit is not None:
        budget = min(budget, limit)
    elif budget is None:
        budget = limit
    resident = device_kind == "cpu" or (budget is not None and rows.nbytes <= cfg.data.resident_share * budget)
    setting = job_setting(cfg, device_kind, rows if resident else None, overhead_bytes, overhead_source)
    batch = cfg.training.batch_size
    if batch == "auto":
        if budget is None:
            raise ConfigError("budget: a job with batch_size = \"auto\" is planned against a memory budget")
        batch = solve_auto(setting, budget, device_kind, rows.n_train, cfg.training.max_batch_size) or None
    else:
        check_batch_rows(batch, rows.n_train)
    plan = setting.plan(batch or 1)
    reason = ""
    if budget is not None and (batch is None or plan.total > budget):
        reason = f"needs {format_bytes(plan.total)} at batch {batch or 1}; the budget is {format_bytes(budget)}"
    return JobPlan(setting, batch, plan, rows, resident, reason)
