"""`memtrain sweep`: plan every trial's memory, schedule them, run them, keep results.

1. Expand the space into trials (space.py) and build each trial's job.
2. Plan each trial's memory with the trainer's own plan (Setting(...).plan(batch));
   a trial that does not fit the budget is reported and skipped, never run.
3. Hand the rest to the service's scheduler (select/runner.py): a trial starts when its
   plan fits the budget beside the running ones, at most `workers` at once, in worker
   processes (in this process with one worker); one killed by a signal resumes from its
   checkpoint.
4. Append one JSON line per finished trial to OUTPUT_DIR/results.jsonl with a
   single os.write on an O_APPEND descriptor and an fsync, so a killed sweep
   loses no finished trial; `--resume` skips the trials already there.
5. Rank by the validation metric; the test metrics are reported, never used
   to choose (course, "Regularisation").
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from memtrain.errors import ConfigError, JobFailed, MemtrainError
from memtrain.jsonable import plain
from memtrain.nn.scores import ALL as SCORES
from memtrain.profiler.autobatch import auto_batch
from memtrain.render import _table, score_cell
from memtrain.select import fuse as fuse_mod
from memtrain.select import space as sp
from memtrain.select.compare import summarize
from memtrain.train.job import Job
from memtrain.train.jobplan import counted_overhead, data_rows, footprint, is_resident, job_setting
from memtrain.units import format_bytes

RECORD_SCHEMA = "memtrain.sweep-trial/1"
RESULTS = "results.jsonl"


@dataclass
class TrialPlan:
    trial: sp.Trial
    cfg: object  # JobConfig
    planned_bytes: int  # what the trial reserves: its plan at its batch plus the overhead, or its whole limit for "auto"
    batch: object  # int or "auto"
    reason: str = ""  # why it cannot run (empty when it can)
    overhead: tuple = (0, "none")  # (bytes, source) in planned_bytes: each trial's process (CPU) or CUDA context
    plan: object = None  # its MemoryPlan at its batch (None for "auto"): an array's plan stacks these
    resident: bool = True  # its data set is held in memory (a trial array needs that)


# -- planning -------------------------------------------------------------------------------


def plan_trials(sweep, trials, *, output_dir, budget: int, device_kind: str, metrics_port=None) -> list:
    """Each trial's job and the memory it needs. Raises ConfigError (naming the trial)
    for a value the job would refuse, before anything runs."""
    rows = {}
    out = []
    over = counted_overhead(device_kind)  # one figure for every trial: each runs in its own process
    for t in trials:
        try:
            cfg = sp.trial_config(sweep, t, output_dir=output_dir, metrics_port=metrics_port)
            tp = _plan_trial(t, cfg, rows, budget, device_kind, over)
        except MemtrainError as exc:
            raise ConfigError(f"trial {t.id} {_params_text(t.params)}: {exc}") from None
        out.append(tp)
    return out


def _plan_trial(t, cfg, rows, budget, device_kind, over) -> "TrialPlan":
    spec, d = cfg.model_spec(), cfg.data
    key = (d.dataset, d.validation, d.validation_dataset, d.test, cfg.seed, spec.dtype.name, spec.output.name,
           spec.sizes[-1], d.label_column)
    if key not in rows:
        rows[key] = data_rows(cfg)
    r = rows[key]
    if r.n_features != spec.sizes[0]:
        raise ConfigError(f"model.layers: the first size must equal the data's {r.n_features} features, "
                          f"got {spec.sizes[0]}")
    limit = cfg.training.memory_limit  # the trial's job decides with its own limit when it has one
    resident = is_resident(device_kind, r.nbytes, budget if limit is None else min(limit, budget), d.resident_share)
    setting = job_setting(cfg, device_kind, r if resident else None)
    batch = cfg.training.batch_size
    one = footprint(setting.plan(1).total, over[0])
    if batch == "auto":
        reserve = budget if limit is None else min(limit, budget)
        cfg = cfg.with_overrides({"training.memory_limit": reserve})  # the job's auto batch fits what was reserved
        reason = "" if one <= reserve else (f"needs {format_bytes(one)} at batch 1; the budget is "
                                           f"{format_bytes(budget)}")
        return TrialPlan(t, cfg, reserve if not reason else one, batch, reason, over)
    plan = setting.plan(batch)
    total = footprint(plan.total, over[0])
    reason = ""
    if one > budget:
        reason = f"needs {format_bytes(one)} even at batch 1; the budget is {format_bytes(budget)}"
    elif total > budget:
        reason = (f"needs {format_bytes(total)} at batch {batch}; the budget is {format_bytes(budget)} "
                  "(batch_size = \"auto\" would fit)")
    return TrialPlan(t, cfg, total, batch, reason, over, plan, resident)


# -- results.jsonl -----------------------------------------------------------------------------


def append_result(path, record: dict) -> None:
    """One line, one os.write on an O_APPEND descriptor, then fsync: a killed sweep
    leaves whole lines (at worst a last line cut short, which read_results skips)."""
    line = (json.dumps(record, default=plain, allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # an earlier line was cut short: start a fresh one
        if os.write(fd, line) != len(line):
            raise OSError(f"{path}: short write")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_results(path) -> tuple:
    """(records, warnings); a malformed line (a write cut short) is skipped with a warning."""
    p = Path(path)
    if not p.exists():
        return [], []
    records, warnings = [], []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if rec.get("schema") != RECORD_SCHEMA or "trial" not in rec:
                raise ConfigError("not a trial record")
        except ValueError:
            warnings.append(f"{p}:{n}: skipped a malformed line (a write cut short?)")
            continue
        records.append(rec)
    return records, warnings


# -- running -------------------------------------------------------------------------------


def run_trial(cfg) -> dict:
    """One trial's job, its log (JSON lines) in its output dir; returns the job's summary
    and its training rows. Module level so worker processes can import it."""
    d = cfg.output_dir
    d.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    job = Job(cfg, log_format="json", progress=False, stream=buf, install_signals=False, batch_solver=auto_batch)
    try:
        summary = job.run()
        status, error = "finished", None
    except JobFailed as exc:
        summary, status, error = {}, "failed", str(exc)
    finally:
        (d / "log.jsonl").write_text(buf.getvalue())
    return {"status": status, "error": error, "summary": summary, "train_rows": job.train_rows}


def make_record(sweep, tp: TrialPlan, outcome: dict) -> dict:
    s = summarize("", outcome["summary"], outcome["train_rows"], None) if outcome["summary"] else None
    score = None
    if s:
        if sweep.metric == "val_loss":
            score = s["best_val_loss"]
        else:  # the best the metric reached in any epoch (lowest RMSE/MAE, highest accuracy/R^2)
            seen = [h[sweep.metric] for h in s["history"] if h.get(sweep.metric) is not None]
            score = sp.METRICS[sweep.metric](seen) if seen else None
    rec = {"schema": RECORD_SCHEMA, "sweep": sweep.name, "trial": tp.trial.id, "index": tp.trial.index,
           "params": tp.trial.params, "status": outcome["status"], "error": outcome["error"],
           "metric": sweep.metric, "score": score, "base": sweep.base_hash(), "finished_at": round(time.time(), 3)}
    if s:
        rec.update({k: s[k] for k in ("best_val_loss", "best_loss_epoch", "final_val_loss", "test_loss", "epochs",
                                      "seconds", "samples_per_second", "batch_size", "planned_bytes",
                                      "planned_by_category", "measured_peak_bytes")})
        rec.update({f"{p}{k}": s[f"{p}{k}"] for p in ("best_val_", "final_val_", "test_") for k in SCORES})
        rec["history"] = [{k: v for k, v in h.items() if k in ("epoch", "train_loss", "val_loss", "val_accuracy")
                           or k.startswith("val_") and v is not None} for h in s["history"]]
    return rec


def run_sweep(sweep, *, output_dir, budget: int, budget_source: str = "given", workers: int | None = 1,
              device_kind: str = "cpu", resume: bool = False, dry_run: bool = False, metrics_port=None,
              runner=None, log=print, executor=None, max_attempts: int = 2, fuse: bool = True) -> dict:
    """Plan, print the schedule, run it (unless dry_run), and return the report.

    The trials go to the service's scheduler (select/runner.py) with one device: `budget`
    bytes, at most `workers` trials at once (None: no count limit, with an executor that
    places by itself). They run in worker processes (memtrain.launch.local), through
    `executor` when one is given (Ray), or in this process one at a time with one worker
    or a `runner(cfg) -> outcome` given from code (default run_trial).

    With `fuse` (and no runner), trials of one shape run as one trial array (select/fuse.py):
    one task, its plan the array's, one worker; each trial's run dir and result line as alone."""
    out = Path(output_dir)
    plans = plan_trials(sweep, sp.expand(sweep), output_dir=out, budget=budget, device_kind=device_kind,
                        metrics_port=metrics_port)
    results_path = out / RESULTS
    records, warnings = read_results(results_path)
    for w in warnings:
        log(f"warning   {w}")
    _check_earlier(sweep, records, results_path, resume, dry_run)
    done = {r["trial"] for r in records} if resume else set()
    runnable = [tp for tp in plans if not tp.reason and tp.trial.id not in done]
    in_process = executor is None and (runner is not None or workers == 1)
    fuse = fuse and runner is None
    arrays = [g for g in fuse_mod.groups(runnable, device_kind) if len(g) > 1] if fuse else []
    log(schedule_text(sweep, plans, done, budget, budget_source, 1 if in_process else workers,
                      "this process" if in_process else (executor.name if executor else "worker processes"), arrays))
    if dry_run:
        return report(sweep, records, plans)
    out.mkdir(parents=True, exist_ok=True)
    for tp, outcome in _run(runnable, device_kind, budget, budget_source, workers, runner, executor, max_attempts,
                            log, fuse):
        rec = make_record(sweep, tp, outcome)
        append_result(results_path, rec)
        records.append(rec)
        log(f"trial     {tp.trial.id} {_params_text(tp.trial.params)}: {rec['status']}"
            + (f", {sweep.metric} {rec['score']:.4f}" if rec["score"] is not None else "")
            + (f" ({rec['error']})" if rec["error"] else ""))
    return report(sweep, records, plans)


def _check_earlier(sweep, records, results_path, resume, dry_run) -> None:
    if records and not resume and not dry_run:
        raise ConfigError(f"output-dir: {results_path} already holds {len(records)} trial(s) of an earlier sweep; "
                         "pass --resume to continue it, or choose another --output-dir (nothing was overwritten)")
    other = {r.get("base") for r in records} - {sweep.base_hash()}
    if records and other:
        raise ConfigError(f"output-dir: {results_path} holds trials of a different base job; "
                         "choose another --output-dir")


def _run(plans, device_kind, budget, budget_source, workers, runner, executor, max_attempts, log, fuse=False):
    """Yields (TrialPlan, outcome) as trials end, through the scheduler."""
    import os  # noqa: PLC0415

    from memtrain.select import runner as rn  # noqa: PLC0415

    tasks, members = _tasks(plans, device_kind, fuse)
    log = _retry_text(log, tasks, members)
    if executor is None and (runner is not None or workers == 1):
        from memtrain.launch.inprocess import InProcessExecutor  # noqa: PLC0415

        executor, workers = InProcessExecutor(lambda launch: _call(members[launch.job_id], runner, launch.run_dir)), 1
    elif executor is None:
        from memtrain.launch.local import LocalExecutor  # noqa: PLC0415

        executor = LocalExecutor()
    threads = 1 if hasattr(executor, "admits") or not workers else max(1, (os.cpu_count() or 1) // workers)
    # each trial's (or array's) bytes hold its process overhead; the scheduler adds it back as it
    # does for a service job, and tells the worker the figure it was admitted with
    over = plans[0].overhead if plans else (0, "none")
    dev = rn.device(device_kind, budget, budget_source, workers, threads, over)
    for task, job, value in rn.run_tasks(tasks, dev, executor, max_attempts=max_attempts, log=log):
        group = members[task.id]
        if not isinstance(task.cfg, fuse_mod.ArrayConfig):
            yield group[0], value if value is not None else rn.written_outcome(job)
            continue
        outcomes = value if value is not None else _array_outcomes(job, len(group), rn)
        for tp, outcome in zip(group, outcomes, strict=True):
            if outcome["status"] != "stopped":  # a stopped trial has no result: it runs again on --resume
                yield tp, outcome


def _tasks(plans, device_kind, fuse) -> tuple:
    """The scheduler's tasks (a lone trial, or an array of trials of one shape) and each one's trials."""
    from memtrain.select import runner as rn  # noqa: PLC0415

    tasks, members = [], {}
    for group in fuse_mod.groups(plans, device_kind) if fuse else [[tp] for tp in plans]:
        if len(group) == 1:
            tp = group[0]
            tasks.append(rn.Task(tp.trial.id, tp.cfg, tp.planned_bytes - tp.overhead[0]))
            members[tp.trial.id] = group
            continue
        task_id = fuse_mod.array_task_id(group)
        run_dir = Path(group[0].cfg.output_dir).parent.parent / fuse_mod.ARRAYS / task_id
        cfg = fuse_mod.ArrayConfig(tuple(tp.cfg for tp in group), run_dir)
        tasks.append(rn.Task(task_id, cfg, fuse_mod.array_bytes(group)))
        members[task_id] = group
    return tasks, members


def _retry_text(log, tasks, members):
    """The scheduler's retry line, with what a retried array does (train/arrayjob.py)."""
    from memtrain.train.arrayjob import CHECKPOINTS  # noqa: PLC0415

    arrays = {t.id: (len(members[t.id]), t.cfg.run_dir / CHECKPOINTS) for t in tasks
              if isinstance(t.cfg, fuse_mod.ArrayConfig)}

    def say(line: str) -> None:
        task = line[len("retry     "):].split(":", 1)[0] if line.startswith("retry     ") else None
        if task in arrays:
            n, where = arrays[task]
            line += (f"; the array's {n} trials resume from its newest checkpoint in {where}, each trial's epochs "
                     "after it trained again")
        log(line)

    return say


def _call(group, runner, run_dir):
    """In this process: a lone trial's outcome, or an array's list of outcomes (its checkpoints
    in its run dir, as a worker process keeps them)."""
    if len(group) == 1:
        return (runner or run_trial)(group[0].cfg)
    from memtrain.train.arrayjob import run_array  # noqa: PLC0415

    return run_array([tp.cfg for tp in group], run_dir=run_dir)


def _array_outcomes(job, n: int, rn) -> list:
    """An array worker's outcomes from its exit record; when it has none (the worker failed or
    was killed past its retries), every trial failed with the scheduler's reason."""
    from memtrain.launch.worker import EXIT, read_json  # noqa: PLC0415

    written = read_json(Path(job.run_dir) / EXIT) or {}
    result = written.get("result") if isinstance(written.get("result"), dict) else {}
    outcomes = result.get("array")
    if job.state == "succeeded" and isinstance(outcomes, list) and len(outcomes) == n:
        return outcomes
    return [{"status": "failed", "error": job.reason or job.state, "summary": {}, "train_rows": None}] * n


# -- report --------------------------------------------------------------------------------


def report(sweep, records, plans) -> dict:
    """Finished trials ranked by the validation metric (best first), and the skipped ones."""
    latest = {}
    for r in records:
        latest[r["trial"]] = r  # a trial re-run after a cut-short line: the last record counts
    rows = list(latest.values())
    sign = 1 if sp.METRICS[sweep.metric] is min else -1
    rows.sort(key=lambda r: (r["score"] is None, sign * (r["score"] or 0.0), r["index"]))
    skipped = [{"trial": tp.trial.id, "index": tp.trial.index, "params": tp.trial.params, "reason": tp.reason,
                "planned_bytes": tp.planned_bytes} for tp in plans if tp.reason]
    best = rows[0] if rows and rows[0]["score"] is not None else None
    return {"schema": "memtrain.sweep/1", "sweep": sweep.name, "method": sweep.method, "metric": sweep.metric,
            "params": list(sweep.space), "trials": len(plans), "rows": rows, "skipped": skipped,
            "best": None if best is None else best["trial"],
            "note": "ranked by the validation metric; test metrics are reported, never used to choose"}


def schedule_text(sweep, plans, done, budget, budget_source, workers, where: str, arrays=()) -> str:
    """The plan as printed before a sweep starts: each trial's memory; the scheduler starts a trial
    when its plan fits the budget beside the running ones."""
    ready = [tp for tp in plans if not tp.reason and tp.trial.id not in done]
    at_once = "" if workers is None else f", at most {workers} at a time"
    lines = [f"sweep     {sweep.name}: {sweep.method} search, {len(plans)} trial(s): "
             f"{len(done & {tp.trial.id for tp in plans})} finished, {len(ready)} to run, "
             f"{sum(1 for tp in plans if tp.reason)} skipped",
             f"budget    {format_bytes(budget)} ({budget_source}); a trial starts in {where} when its plan fits "
             f"beside the running ones{at_once}"]
    if plans:
        nbytes, source = plans[0].overhead
        lines.append(f"overhead  {format_bytes(nbytes)} per trial ({source}), in each trial's bytes")
    for tp in ready:
        lines.append(f"trial     {tp.trial.id} {_params_text(tp.trial.params)} {format_bytes(tp.planned_bytes)}")
    for g in arrays:
        lines.append(f"array     {fuse_mod.array_task_id(g)}: {len(g)} trials of one shape trained as one "
                     f"(--no-fuse: one job each), {format_bytes(fuse_mod.array_bytes(g) + g[0].overhead[0])}: "
                     + " ".join(tp.trial.id for tp in g))
    for tp in plans:
        if tp.reason:
            lines.append(f"skipped   {tp.trial.id} {_params_text(tp.trial.params)}: {tp.reason}")
    return "\n".join(lines)


def report_text(rep: dict) -> str:
    names = rep["params"]
    headers = ["", "trial"] + names + [rep["metric"] + " (best)", "val score", "test score", "epochs", "s", "plan",
                                       "status"]
    body = []
    for r in rep["rows"]:
        mark = "*" if r["trial"] == rep["best"] else ""
        body.append([mark, r["trial"]] + [_value(r["params"].get(n)) for n in names]
                    + [_f(r["score"]), score_cell(r, "best_val_"), score_cell(r, "test_"),
                       r.get("epochs", "-"), _f(r.get("seconds"), 1),
                       "-" if r.get("planned_bytes") is None else format_bytes(r["planned_bytes"]), r["status"]])
    lines = [_table(headers, body, ["<", "<"] + ["<"] * len(names) + [">"] * 6 + ["<"])]
    if rep["best"]:
        b = rep["rows"][0]
        lines.append(f"best      * {b['trial']} {_params_text(b['params'])}: {rep['metric']} {b['score']:.4f} "
                     f"(chosen on validation; its test score {score_cell(b, 'test_')} is reported only)")
    for s in rep["skipped"]:
        lines.append(f"skipped   {s['trial']} {_params_text(s['params'])}: {s['reason']}")
    return "\n".join(lines)


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "-".join(map(str, v))
    return "-" if v is None else str(v)


def _params_text(params) -> str:
    return "(" + ", ".join(f"{k}={_value(v)}" for k, v in params.items()) + ")"


def _f(v, digits=4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
