"""`memtrain compare`: the same model, data, seed and epoch budget with each optimizer.

Each run is a normal job (memtrain.train.job.Job) on a copy of the JobConfig
with `optimizer = {"name": NAME}`: the file's hyper-parameters belong to its
own optimizer, so only an explicit `lr` is carried over. By default the runs, which differ
in their optimizer only, train as one trial array (train/arrayjob.py), each ending as it
would alone; --no-fuse runs one job per optimizer. Rows are ranked by
the best validation loss; the test accuracy is reported, never used to rank
(course, "Regularisation": choosing on the test set is not allowed).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from memtrain.errors import ConfigError, JobFailed
from memtrain.jsonable import plain
from memtrain.memory.trials import array_plan
from memtrain.nn.scores import ALL as SCORES
from memtrain.nn.scores import REGRESSION
from memtrain.optim import make_optimizer
from memtrain.profiler.autobatch import auto_batch
from memtrain.render import _table, score_cell
from memtrain.select import fuse as fuse_mod
from memtrain.select.fuse import ArrayConfig
from memtrain.train.job import Job
from memtrain.train.jobplan import load_job_data, rows_of
from memtrain.units import format_bytes

REPORT_SCHEMA = "memtrain.compare/1"


def parse_optimizers(text: str) -> list:
    """"adam,sgd,lookahead:adam" -> names, validated against the registry."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ConfigError("optimizers: expected a comma-separated list like adam,sgd,momentum, got nothing")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"optimizers: {', '.join(dup)} given more than once")
    for n in names:
        try:
            make_optimizer(n)
        except ValueError as exc:
            raise ConfigError(f"optimizers: {str(exc).removeprefix('optimizer: ')}") from None
    return names


def run_config(cfg, name: str, *, lr=None, epochs=None, output_dir, checkpoint_dir):
    """The JobConfig of one optimizer's run: a copy, its own output dir, no metrics
    port, a fresh checkpoint dir and no resume."""
    return cfg.with_overrides({
        "optimizer": {"name": name} if lr is None else {"name": name, "lr": float(lr)},
        "training.epochs": epochs,
        "output": {"dir": str(Path(output_dir) / "compare" / name.replace(":", "-"))},
        # its checkpoints are thrown away: only the one per epoch the job always writes, no
        # interval ones whose fsync would be counted in the epoch times being compared
        "checkpoint": {"dir": str(checkpoint_dir), "resume": False, "every_steps": 0, "every_minutes": 0, "keep": 1},
        "metrics": {},
    })


def _job_runner(cfg) -> tuple:
    """(summary, training rows) of one run; a run that failed (diverged) is summarized from its run dir."""
    job = Job(cfg, log_format="json", progress=False, stream=io.StringIO(), install_signals=False,
              batch_solver=auto_batch)
    try:
        return job.run(), job.train_rows
    except JobFailed as exc:
        return failed_summary(cfg, str(exc)), job.train_rows


def _array_runner(cfgs) -> list:
    """(summary, training rows) of each run of an array (train/arrayjob.py), in order: each run's
    Job writes its run dir as alone, a failed one too."""
    from memtrain.train.arrayjob import ArrayRun  # noqa: PLC0415 - the trial array loads only when used

    outcomes = ArrayRun(cfgs).run()
    return [(o["summary"] if o["status"] == "finished" else failed_summary(c, o["error"] or o["status"]),
             o["train_rows"]) for c, o in zip(cfgs, outcomes, strict=True)]


def failed_summary(cfg, message: str) -> dict:
    """A failed run's summary, as its run dir holds it (the epochs it ended before it failed: their
    history lines, written as each epoch ended; run.json's plan), and why it failed."""
    out = Path(cfg.output_dir)
    hist = []
    with contextlib.suppress(OSError):
        for line in (out / "history.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                hist.append(json.loads(line))
    run = {}
    with contextlib.suppress(OSError, ValueError):
        run = json.loads((out / "run.json").read_text())
    return {"history": hist, "failed": message, "epochs": len(hist),
            **{k: run.get(k) for k in ("batch_size", "planned_bytes", "planned_by_category")}}


def compare(cfg, optimizers: list, *, lr=None, epochs=None, output_dir="runs", target_accuracy=None,
            runner=None, log=None, fuse: bool = True) -> dict:
    """Train `cfg` once per optimizer; the report with rows ranked by best validation loss.

    The runs go to the service's scheduler (select/runner.py) with one job slot, in this
    process (launch/inprocess.py): one after another, so their times are comparable. With
    `fuse` (and no `runner` given from code) runs that fuse (select/fuse.py group_key: all of
    them, unless the job cannot run as an array) train as one trial array, each run's dir and
    row as alone; `runner(cfg) -> (summary, training rows)` runs one optimizer's config."""
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise ConfigError(f"target-accuracy: expected a fraction in (0, 1], got {target_accuracy!r}")
    from memtrain.launch.inprocess import InProcessExecutor  # noqa: PLC0415
    from memtrain.select import runner as rn  # noqa: PLC0415

    # the first run's wall time should not include importing the data loader; its shape plans the runs
    shape = rows_of(load_job_data(cfg))
    rows = []
    with tempfile.TemporaryDirectory(prefix="memtrain-compare-", dir=_scratch()) as tmp:
        configs = {name: run_config(cfg, name, lr=lr, epochs=epochs, output_dir=output_dir,
                                    checkpoint_dir=Path(tmp) / name.replace(":", "-")) for name in optimizers}
        # before any run: one that cannot fit is one line, nothing trained
        dev, tasks = plan_runs(cfg, configs, shape, fuse=fuse and runner is None, scratch=Path(tmp))
        members = {t.id: _members(t, configs) for t in tasks}
        for t in tasks:
            if log and isinstance(t.cfg, ArrayConfig):
                log(array_line(t, members[t.id], dev))

        def run(launch):
            names = members[launch.job_id]
            if log:
                log(f"training  {launch.job_id} ...")
            if len(names) > 1:
                return _array_runner([configs[n] for n in names])
            return [(runner or _job_runner)(configs[names[0]])]

        for task, _, outcomes in rn.run_tasks(tasks, dev, InProcessExecutor(run)):
            for name, (summary, n_train) in zip(members[task.id], outcomes, strict=True):
                rows.append(summarize(name, summary, n_train, target_accuracy))
                if len(outcomes) > 1:  # the row's plan is the run's own, as alone; the array's is its log line
                    rows[-1].update(_lone_plan(configs[name], dev, shape))
                if log:
                    r = rows[-1]
                    log(f"done      {name}: best validation loss {_f(r['best_val_loss'])} "
                        f"(epoch {r['best_loss_epoch']}), {_f(r['seconds'], 1)} s"
                        + (f"; failed: {r['failed']}" if r["failed"] else ""))
    ranked = rank(rows)
    return {"schema": REPORT_SCHEMA, "job": cfg.name, "target_accuracy": target_accuracy,
            "ranked_by": "best validation loss (the test set is reported, never used to choose)", "rows": ranked}


def _lone_plan(run_cfg, dev, shape) -> dict:
    """An array's run's plan as its lone job plans it (train/jobplan.py), for its report row; the
    run's peak is not measured apart from the array's (None, "-" in the table)."""
    from memtrain.train.jobplan import plan_job  # noqa: PLC0415

    jp = plan_job(run_cfg, device_kind=dev.kind, budget=dev.budget_bytes, rows=shape,
                  overhead=(dev.overhead_bytes, dev.overhead_source))
    return {"planned_bytes": jp.total, "planned_by_category": jp.by_category(), "measured_peak_bytes": None}


def _members(task, configs) -> list:
    """The optimizers a task trains: its own, or an array's, in the order given."""
    if not isinstance(task.cfg, ArrayConfig):
        return [task.id]
    by_dir = {c.output_dir: n for n, c in configs.items()}
    return [by_dir[c.output_dir] for c in task.cfg.cfgs]


def array_line(task, names, dev) -> str:
    """The log line of an array: its plan (memory/trials.py array_plan: the runs' buffers stacked,
    the data set once) and the process overhead, counted once for the array's one process."""
    over, source = dev.overhead_bytes, dev.overhead_source
    if not over:
        from memtrain.train.jobplan import counted_overhead  # noqa: PLC0415

        over, source = counted_overhead(dev.kind)
    return (f"array     {len(names)} optimizers trained as one array (--no-fuse: one job each): plan "
            f"{format_bytes(task.planned_bytes)} + {format_bytes(over)} process overhead once ({source}) = "
            f"{format_bytes(task.planned_bytes + over)}: {' '.join(names)}")


def plan_runs(cfg, configs: dict, rows, *, fuse: bool = False, scratch=None) -> tuple:
    """(the scheduler's device, a Task per run) planned as the sweep plans its trials (train/jobplan.py
    plan_job): the device's budget is the job's memory_limit (its whole memory, the counted overhead
    taken off as the Job takes it), else the free memory now (read by this process, loaded already).
    `rows`: the data set's shape. Each task reserves its plan, or its whole room for batch "auto". Raises ConfigError naming the
    optimizer whose run cannot fit, before anything runs. One slot: the runs' times are compared.
    With `fuse`, the runs that fuse are one task, a trial array (its files under `scratch`) that
    reserves the array's plan."""
    from memtrain.backend import get_backend  # noqa: PLC0415
    from memtrain.memory.budget import device_budget  # noqa: PLC0415
    from memtrain.select import runner as rn  # noqa: PLC0415
    from memtrain.train.jobplan import counted_overhead, plan_job  # noqa: PLC0415

    limit, backend = cfg.training.memory_limit, get_backend(cfg.device)
    if limit is None:
        (budget, source), over = device_budget(backend), (0, "none (the free memory is read now)")
    else:
        budget, source, over = limit, "training.memory_limit", counted_overhead(backend.kind, backend)
    kind, runs = backend.kind, []
    for name, run_cfg in configs.items():
        jp = plan_job(run_cfg, device_kind=kind, budget=budget, rows=rows, overhead=over)
        if jp.reason:
            raise ConfigError(f"optimizer {name}: {jp.reason} ({source}); nothing was run")
        runs.append(_Run(name, run_cfg, jp))
    groups = fuse_mod.groups(runs, kind) if fuse else [[r] for r in runs]
    tasks = [t for g in groups for t in _tasks(g, scratch, budget - over[0])]
    return rn.device(kind, budget, source, 1, overhead=over), tasks


@dataclass(frozen=True)
class _Run:
    """One optimizer's planned run, as select/fuse.py groups it (by cfg and resident)."""

    name: str
    cfg: object
    jp: object  # its train/jobplan.py JobPlan

    @property
    def resident(self) -> bool:
        return self.jp.resident


def _tasks(group, scratch, room: int) -> list:
    """A group's tasks: one array, or each run alone (a group of one, or an array whose plan and
    one process overhead would not fit the budget while each run alone does)."""
    from memtrain.select import runner as rn  # noqa: PLC0415

    plan = array_plan([r.jp.plan for r in group]) if len(group) > 1 else None
    if plan is None or plan.total > room:
        return [rn.Task(r.name, r.cfg, r.jp.budget.room if r.cfg.training.batch_size == "auto" else r.jp.total,
                        r.jp.by_category()) for r in group]
    task_id = f"array-{group[0].name.replace(':', '-')}-{len(group)}"
    cfg = ArrayConfig(tuple(r.cfg for r in group), Path(scratch or tempfile.gettempdir()) / fuse_mod.ARRAYS / task_id)
    return [rn.Task(task_id, cfg, plan.total, plan.by_category())]


def summarize(name: str, s: dict, n_train, target_accuracy) -> dict:
    hist = s.get("history") or []
    losses = [(h["val_loss"], h["epoch"]) for h in hist if _finite(h.get("val_loss"))]
    best_loss, best_epoch = min(losses) if losses else (None, None)
    at_best = next((h for h in hist if h["epoch"] == best_epoch), {})
    reached = "-"
    if target_accuracy is not None:
        reached = next((h["epoch"] for h in hist if (h.get("val_accuracy") or 0) >= target_accuracy), "-")
    train_s = sum(h.get("seconds", 0.0) for h in hist)
    samples = (n_train or 0) * len(hist)
    return {
        "optimizer": name, "best_val_loss": best_loss, "best_loss_epoch": best_epoch,
        **{f"best_val_{k}": at_best.get(f"val_{k}") for k in SCORES},
        "final_val_loss": s.get("val_loss"), **{f"final_val_{k}": s.get(f"val_{k}") for k in SCORES},
        "test_loss": s.get("test_loss"), **{f"test_{k}": s.get(f"test_{k}") for k in SCORES},
        "epochs": s.get("epochs"), "epochs_to_target": reached,
        "seconds": s.get("seconds"), "train_seconds": train_s,
        "samples_per_second": samples / train_s if samples and train_s > 0 else None,
        "batch_size": s.get("batch_size"), "planned_bytes": s.get("planned_bytes"),
        "planned_by_category": dict(s.get("planned_by_category") or {}),
        "measured_peak_bytes": s.get("measured_peak_bytes"),
        "history": [history_row(h) for h in hist], "failed": s.get("failed"),
    }


def history_row(h: dict) -> dict:
    """An epoch of a report's history: the loss curve, and the regression scores where there are some."""
    row = {k: h.get(k) for k in ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds")}
    row.update({f"val_{k}": h[f"val_{k}"] for k in REGRESSION if h.get(f"val_{k}") is not None})
    return row


def rank(rows: list) -> list:
    """Lowest best validation loss first; runs without one (diverged) last, in input order."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["best_val_loss"] is None,
                                                    rows[i]["best_val_loss"] or 0.0, i))
    return [{"rank": n + 1, **rows[i]} for n, i in enumerate(order)]


# -- output --------------------------------------------------------------------------------

_CATS = (("parameters", "params"), ("gradients", "grads"), ("optimizer_state", "state"),
         ("activations", "activ."), ("workspace", "work"), ("data", "data"), ("overhead", "overhead"))


def table_text(report: dict) -> str:
    """The ranking in at most 120 columns; the plan by category and every other number are in
    --format json / csv."""
    rows = report["rows"]
    target = report.get("target_accuracy")
    headers = (["#", "optimizer", "best loss (ep)", "val best/final", "test"]
               + ([f"ep to {target:g}"] if target is not None else [])
               + ["wall s", "samples/s", "plan", "peak"])
    body = []
    for r in rows:
        body.append([r["rank"], r["optimizer"],
                     f"{_f(r['best_val_loss'])} ({r['best_loss_epoch'] if r['best_loss_epoch'] else '-'})",
                     _best_final(r), score_cell(r, "test_")]
                    + ([r["epochs_to_target"]] if target is not None else [])
                    + [_f(r["seconds"], 1), "-" if r["samples_per_second"] is None else f"{r['samples_per_second']:,.0f}"]
                    + [_b(r["planned_bytes"]), _b(r["measured_peak_bytes"])])
    fused = any(r["measured_peak_bytes"] is None and r["planned_bytes"] is not None and not r.get("failed")
                for r in rows)
    note = ("ranked by the best validation loss (best loss); the test score is reported, never used to choose\n"
            "memory: the plan and the measured peak of what it covers (CPU: tracemalloc);\n"
            + ("runs trained as one array have no peak of their own (--no-fuse measures each)\n" if fused else "")
            + "the final validation loss, the plan by category and the history: --format json or csv")
    failed = "".join(f"\nfailed    {r['optimizer']}: {r['failed']}" for r in rows if r.get("failed"))
    return _table(headers, body, ["<", "<"] + [">"] * (len(headers) - 2)) + "\n" + note + failed


def _best_final(r: dict) -> str:
    """"acc 0.9722/0.9694" (classifier) or "RMSE 0.4232/0.4301" (regression): best and final epoch."""
    kind = next((k for k in ("accuracy", "rmse") if r.get(f"best_val_{k}") is not None
                 or r.get(f"final_val_{k}") is not None), None)
    if kind is None:
        return "-"
    return f"{'acc' if kind == 'accuracy' else 'RMSE'} {_f(r.get(f'best_val_{kind}'))}/{_f(r.get(f'final_val_{kind}'))}"


def table_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=plain)


def table_csv(report: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    cats = [k for k, _ in _CATS]
    keys = ["rank", "optimizer", "best_val_loss", "best_loss_epoch", *(f"best_val_{k}" for k in SCORES),
            "final_val_loss", *(f"final_val_{k}" for k in SCORES), "test_loss", *(f"test_{k}" for k in SCORES),
            "epochs", "epochs_to_target", "seconds", "train_seconds", "samples_per_second", "batch_size"]
    w.writerow(keys + [f"planned_{k}" for k in cats] + ["planned_bytes", "measured_peak_bytes"])
    for r in report["rows"]:
        w.writerow([r[k] for k in keys] + [r["planned_by_category"].get(k, 0) for k in cats]
                   + [r["planned_bytes"], r["measured_peak_bytes"]])
    return out.getvalue().rstrip("\n")


def _scratch():
    """Memory-backed /dev/shm for the throw-away checkpoints where there is one (no disk fsync)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _f(v, digits: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _b(v) -> str:
    return "-" if v is None else format_bytes(v)
