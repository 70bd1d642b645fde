"""Every fact a job's memory depends on, defined once, below everything that uses it.

The Job (train/job.py), estimate, autobatch, compare, sweep and the service all ask here:
- the data set: its rows (`data_rows`, from array headers when it can), loading it
  (`load_job_data`), its bytes (`data_bytes`), resident or streamed (`is_resident`);
- the batch: its cap (`batch_cap`: the training rows and max_batch_size), the GPU's
  multiple of 8 (`batch_multiple`), the one solve on the plan (`solve`);
- the budget (`Budget`, `job_budget`): the limit, where it came from, the safety margin and
  the overhead counted against it: on the CPU the process overhead (the interpreter,
  NumPy, the kernels, the exporter: `process_overhead`), on a GPU the device overhead (the
  CUDA context: `device_overhead`); `footprint` is a plan plus that overhead;
- the Setting the Job builds (`job_setting`) and a whole job's plan before it runs (`plan_job`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from memtrain.errors import ConfigError, DataError
from memtrain.memory import overhead as ovh
from memtrain.memory import overhead_cache
from memtrain.memory.batch import check_batch_rows, largest_batch
from memtrain.memory.budget import default_margin
from memtrain.memory.plan import MemoryPlan
from memtrain.train.setting import Setting
from memtrain.units import format_bytes

GPU_BATCH_MULTIPLE = 8  # GEMM tiles: a GPU batch is rounded down to a multiple of this


# -- the data set -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataRows:
    """What the plan needs from a data set: its shape, not its values."""

    n_features: int
    n_train: int
    n_val: int
    nbytes: int  # the training and validation arrays (what a GPU keeps resident)
    n_test: int = 0  # held in host memory until the final evaluation: in a CPU job's plan


def load_job_data(cfg):
    """The job's data set, split as the job splits it; its features must match the model's inputs."""
    from memtrain.data import load_dataset  # noqa: PLC0415 - the data loaders only when a job loads data

    d, spec = cfg.data, cfg.model_spec()
    ds = load_dataset(d.dataset, dtype=spec.dtype.name, label_column=d.label_column, validation=d.validation,
                      validation_source=d.validation_dataset, test=d.test, standardize=d.standardize, seed=cfg.seed,
                      output=spec.output.name, n_outputs=spec.sizes[-1])
    if ds.n_features != spec.sizes[0]:
        raise DataError(f"model.layers: the first size must equal the data's {ds.n_features} features "
                        f"({ds.name}), got {spec.sizes[0]}")
    return ds


def data_bytes(ds) -> int:
    """The bytes of a loaded data set that a resident plan holds (training and validation splits)."""
    return sum(a.nbytes for a in (ds.X_train, ds.y_train, ds.X_val, ds.y_val) if a is not None)


def test_bytes(ds) -> int:
    """The test split's bytes: a CPU job holds them from loading until its final evaluation."""
    return sum(a.nbytes for a in (ds.X_test, ds.y_test) if a is not None)


def rows_of(ds) -> DataRows:
    return DataRows(ds.n_features, len(ds.X_train), 0 if ds.X_val is None else len(ds.X_val), data_bytes(ds),
                    0 if ds.X_test is None else len(ds.X_test))


def resident_rows_of(device_kind: str, n_train: int, n_val: int, n_test: int) -> tuple:
    """The data rows a job's plan holds: training and validation; on the CPU also the test split,
    which the process holds from loading until the final evaluation (a GPU plan is device memory,
    and the test split stays on the host)."""
    return (n_train, n_val) + ((n_test,) if device_kind == "cpu" and n_test else ())


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
    return rows_of(load_job_data(cfg))


def is_resident(device_kind: str, nbytes: int, limit: int | None, share: float) -> bool:
    """Is the data set in the plan? On the CPU always (it is in host memory either way); on a GPU
    when it takes at most `share` (data.resident_share) of the memory `limit`, else it is streamed
    batch by batch (and without a limit it is streamed)."""
    if device_kind != "cuda":
        return True
    return limit is not None and nbytes <= float(share) * limit


# -- the batch ---------------------------------------------------------------------------------


def batch_cap(n_train: int | None, max_batch_size: int | None) -> int | None:
    """No batch above this is solved, probed or run: the training rows, or max_batch_size when smaller."""
    caps = [c for c in (max_batch_size, n_train) if c]
    return min(caps) if caps else None


def batch_multiple(device_kind: str) -> int | None:
    """A GPU's batch is a multiple of 8 (rounded down; batch 0 when fewer than 8 fit); the CPU's any size."""
    return GPU_BATCH_MULTIPLE if device_kind == "cuda" else None


def solve(setting, budget: int, *, multiple_of=None, power_of_two=False, max_batch=None):
    """The one solve on the plan (estimate, autobatch, plan_job, the service): a BatchFit."""
    return largest_batch(lambda b: setting.plan(b).total, budget, multiple_of=multiple_of,
                         power_of_two=power_of_two, max_batch=max_batch)


def solve_job_batch(setting, budget: "Budget", n_train: int | None, max_batch_size: int | None) -> int:
    """The batch a job's auto batch solves to (0: none fits): the largest whose plan fits the
    budget's room less its margin, capped and rounded for the device."""
    return solve(setting, budget.for_plan, multiple_of=batch_multiple(setting.device),
                 max_batch=batch_cap(n_train, max_batch_size)).batch_size


# -- the budget and the overhead -----------------------------------------------------------------


def process_overhead() -> tuple:
    """(bytes, source) a CPU job's processes hold besides the plan: MEMTRAIN_PROCESS_OVERHEAD when set,
    else measured once per machine and Python (train/process_probe.py) and cached, else assumed."""
    return ovh.given_process() or overhead_cache.process_overhead(_measure_process)


def _measure_process() -> dict:
    """The probe job in a fresh interpreter (what a job's process loads, and nothing of this one's)."""
    with tempfile.TemporaryDirectory(prefix="memtrain-overhead-") as tmp:
        try:
            r = subprocess.run([sys.executable, "-m", "memtrain.train.process_probe", tmp], capture_output=True,
                               text=True, timeout=300, cwd=tmp, env={**os.environ, ovh.PROCESS_OVERHEAD_VAR: "0"})
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
            raise ovh.OverheadUnmeasured(f"the overhead probe failed ({exc})") from None


def device_overhead(device_kind: str, backend=None) -> tuple:
    """(bytes, source) a device takes before the first plan buffer: none on the CPU; on a GPU the
    CUDA context and cuBLAS workspace: MEMTRAIN_DEVICE_OVERHEAD when set (the service's figure for
    its worker), else measured once per GPU model and cached, else assumed."""
    if device_kind != "cuda":
        return ovh.assumed("cpu")
    return ovh.given_process(ovh.DEVICE_OVERHEAD_VAR) or overhead_cache.cuda_overhead(backend)


def counted_overhead(device_kind: str, backend=None) -> tuple:
    """(bytes, source) of the overhead a device's budget holds per job besides its plan: the process
    overhead on the CPU, the device overhead (CUDA context) on a GPU."""
    return device_overhead(device_kind, backend) if device_kind == "cuda" else process_overhead()


def footprint(plan_total: int, overhead: int) -> int:
    """What a job takes of its device's budget: its plan plus the overhead counted there."""
    return int(plan_total) + int(overhead)


@dataclass(frozen=True)
class Budget:
    """The memory a job may take on its device and what is taken from it before the plan."""

    device: str  # "cpu" or "cuda"
    limit: int  # the job's whole memory on its device
    source: str  # where the limit came from
    margin: int  # kept free for what the plan cannot see (of the whole limit)
    overhead: int  # taken from the limit first: the process overhead (CPU) or the device overhead (CUDA)
    overhead_source: str

    @property
    def room(self) -> int:
        """What the plan may take before the margin."""
        return self.limit - self.overhead

    @property
    def for_plan(self) -> int:
        return self.room - self.margin

    def footprint(self, plan_total: int) -> int:
        return footprint(plan_total, self.overhead)

    @property
    def overhead_kind(self) -> str:
        return "device" if self.device == "cuda" else "process"

    def check(self, field: str) -> None:
        """One line when the overhead alone takes the whole limit (no plan could fit)."""
        if self.room <= 0:
            what = "the CUDA context, cuBLAS workspace" if self.device == "cuda" else "the interpreter, NumPy, the kernels"
            raise ConfigError(f"{field}: {format_bytes(self.limit)} is the job's whole memory, and its "
                              f"{self.overhead_kind} overhead alone is {format_bytes(self.overhead)} "
                              f"({self.overhead_source}: {what}); expected more than that, e.g. "
                              f"{format_bytes(self.overhead + 64 * 1024**2)}")


def job_budget(device: str, limit: int, source: str, *, margin: int | None = None, overhead=None,
               backend=None) -> Budget:
    """The Budget of a limit on `device`. One rule on both devices: the limit is the job's whole
    memory there, and the overhead counted on the device (`counted_overhead`: the process on the CPU,
    the CUDA context on a GPU; `overhead` (bytes, source) gives it) is taken from it before the plan."""
    over, over_source = overhead if overhead is not None else counted_overhead(device, backend)
    margin = default_margin(device, int(limit)) if margin is None else int(margin)  # estimate's: of the whole limit
    return Budget(device, int(limit), source, margin, int(over), over_source)


# -- the Setting and the plan -------------------------------------------------------------------


def job_setting(cfg, device_kind: str, resident_rows: DataRows | None, overhead_bytes: int = 0,
                overhead_source: str = "none") -> Setting:
    """The Setting the Job builds for `cfg`: its plan without the batch size."""
    return Setting(cfg.model_spec(), cfg.optimizer.name, cfg.optimizer.hyper, device_kind,
                   overhead_bytes=overhead_bytes, overhead_source=overhead_source,
                   keep_best=bool(cfg.training.patience), fused=cfg.fused,
                   resident_rows=None if resident_rows is None else resident_rows_of(
                       device_kind, resident_rows.n_train, resident_rows.n_val, resident_rows.n_test))


@dataclass(frozen=True)
class JobPlan:
    setting: Setting
    batch_size: int | None  # None: "auto" and not even batch 1 fits the budget
    plan: MemoryPlan  # at batch_size (at batch 1 when nothing fits)
    rows: DataRows
    resident: bool  # the data set is in the plan (always on the CPU)
    reason: str = ""  # why it cannot run within the budget; "" when it can
    budget: Budget | None = None

    @property
    def total(self) -> int:
        return self.plan.total

    def by_category(self) -> dict:
        return self.plan.by_category()


def plan_job(cfg, *, device_kind: str = "cpu", budget: int | None = None, rows: DataRows | None = None,
             overhead: tuple | None = None) -> JobPlan:
    """The plan of `cfg` (a JobConfig) on a `device_kind` ("cpu" or "cuda") device whose limit
    is `budget` bytes or the job's memory_limit when smaller (None: unbounded; "auto" then needs
    one). `rows` skips loading the data set when its shape is known; `overhead` (bytes, source)
    is the caller's figure (the service's), else job_budget's."""
    rows = rows or data_rows(cfg)
    given = [(x, s) for x, s in ((cfg.training.memory_limit, "training.memory_limit"), (budget, "given"))
             if x is not None]
    limit, source = min(given) if given else (None, "")
    resident = is_resident(device_kind, rows.nbytes, limit, cfg.data.resident_share)
    setting = job_setting(cfg, device_kind, rows if resident else None)
    bud = job_budget(device_kind, limit, source, overhead=overhead) if limit is not None else None
    batch = cfg.training.batch_size
    if batch == "auto":
        if bud is None:
            raise ConfigError("budget: a job with batch_size = \"auto\" is planned against a memory budget")
        batch = solve_job_batch(setting, bud, rows.n_train, cfg.training.max_batch_size) or None
    else:
        check_batch_rows(batch, rows.n_train)
    plan = setting.plan(batch or 1)
    reason = ""
    if bud is not None and (batch is None or plan.total > bud.room):
        reason = (f"needs {format_bytes(plan.total)} at batch {batch or 1} plus {format_bytes(bud.overhead)} "
                  f"overhead; the budget is {format_bytes(bud.limit)}")
    return JobPlan(setting, batch, plan, rows, resident, reason, bud)
