"""Sweeps through the service: POST /sweeps (`memtrain submit SWEEP.toml`).

A sweep file arrives with its base job inline (the service reads no client files). It is
checked as `memtrain sweep` checks it (select/space.py: the same one-line errors), expanded
into trials, and each trial is checked and planned as a submitted job file is
(planning.validate: data paths confined to --data-root, the service's max_runtime). The
trials that fit are grouped by select/fuse.py, as `memtrain sweep` groups them: same-shape
trials become one trial array (one job, one worker process, admitted by the array's plan,
memory/trials.py, plus one process overhead), the others lone jobs. The sweep's record and
all its jobs are stored in one transaction, so a restarted service has them all.

An array's trials write their run dirs as lone jobs do (run.json, history.csv, model-final.npz)
under `<run dir>/trials/<trial id>`, so `memtrain runs`, `evaluate` and `predict` take them.
Cancelling one trial writes its index to the array's STOP_TRIALS file, which the array's
worker reads (launch/worker.py TrialStops): that trial stops with a checkpoint, the others
train on.
"""

from __future__ import annotations

import threading
from pathlib import Path

from memtrain.config import JobConfig
from memtrain.errors import MemtrainError
from memtrain.launch.worker import EXIT, STOP_TRIALS, read_json, request_trial_stop
from memtrain.memory.trials import array_plan
from memtrain.scheduling.scheduler import JobConflict, finite
from memtrain.scheduling.store import ACTIVE, JobRow, now
from memtrain.select import fuse
from memtrain.select import space as sp
from memtrain.service import planning, recovery
from memtrain.units import format_bytes

MAX_TRIALS = 1024  # trials one sweep may expand to: each is a planned job
TRIALS_DIR = "trials"  # an array's trials' run dirs: <run dir>/trials/<trial id>
_STOPS = threading.Lock()  # one writer of a STOP_TRIALS file at a time


# -- submission -------------------------------------------------------------------------------------


def parse(body: bytes, content_type: str) -> tuple:
    """(the sweep file as a dict, its priority) from a TOML or JSON body, through the pydantic
    SweepSubmission; SubmissionError with one line."""
    from pydantic import ValidationError  # noqa: PLC0415 - the service's models, not the core's

    from memtrain.service.models import SweepSubmission  # noqa: PLC0415 - the service's models, not the core's

    data = planning.parse_data(body, content_type)
    if isinstance(data.get("base"), str):  # before the model, whose message would be "expected a dict"
        raise planning.SubmissionError(f"base: {data['base']!r} is a path, and the service reads no client files; "
                                       "send the base job inline as a [base] table (`memtrain submit SWEEP.toml` "
                                       "inlines it)")
    try:
        model = SweepSubmission.model_validate(data)
    except ValidationError as exc:
        raise planning.SubmissionError(planning.first_error(exc.errors(include_url=False),
                                                            SweepSubmission.model_fields)) from None
    return model.sweep_dict(), model.priority


def check(data: dict) -> tuple:
    """(the Sweep, its trials): the sweep file's own checks, in `memtrain sweep`'s words."""
    try:
        sweep = sp.from_sweep_dict(data, default_name="sweep")
        trials = sp.expand(sweep)
    except MemtrainError as exc:
        raise planning.SubmissionError(str(exc)) from None
    if len(trials) > MAX_TRIALS:
        raise planning.SubmissionError(f"space: {len(trials)} trials; this service takes at most {MAX_TRIALS} per "
                                       "sweep (split it, or use a random search with fewer trials)")
    sweep.name = planning.sanitize_name(sweep.name)
    return sweep, trials


def plan_trial(svc, sweep, trial) -> tuple:
    """(TrialPlan, Checked, planning.Plan, device) of one trial, checked as a submitted job."""
    from memtrain.select import sweep as sw  # noqa: PLC0415 - the trainer loads with the first sweep
    s = svc.settings
    try:
        cfg = sp.trial_config(sweep, trial, output_dir=".")  # its dirs are the service's (rows below)
        checked = planning.validate(cfg.to_dict(), data_roots=s.data_roots, max_runtime=s.max_runtime,
                                    device_kinds=sorted({d.kind for d in svc.devices}))
    except planning.SubmissionError as exc:
        raise planning.SubmissionError(f"trial {trial.id} {sw._params_text(trial.params)}: {exc}") from None
    device = max((d for d in svc.devices if d.kind == checked.device_kind), key=lambda d: d.budget_bytes)
    p = planning.plan(checked, device.budget_bytes)
    reason = ""
    if device.footprint(p.min_total if checked.batch == "auto" else p.total) > device.budget_bytes:
        reason = planning.never_fits_message(checked, p, device.overhead_bytes, {device.name: device.budget_bytes})
    memory, resident = (None, True) if checked.batch == "auto" else planning.memory_plan(checked, device.budget_bytes)
    tp = sw.TrialPlan(trial, _without_runtime(checked.config), p.total, checked.batch, reason,
                      (device.overhead_bytes, device.overhead_source), memory, resident)
    return tp, checked, p, device


def _without_runtime(config: dict) -> JobConfig:
    """The trial's config as select/fuse.py groups it: the service bounds an array's run time from
    outside (its row's training.max_runtime, the sum of its trials': _array_runtime), not per trial."""
    d = {**config, "training": {k: v for k, v in config["training"].items() if k != "max_runtime"}}
    return JobConfig.from_dict(d)


def chunks(group: list, device) -> list:
    """A group of same-shape trials as arrays whose plans each fit the device's budget."""
    out, cur = [], []
    for tp in group:
        if cur and device.footprint(fuse.array_bytes(cur + [tp])) > device.budget_bytes:
            out.append(cur)
            cur = []
        cur.append(tp)
    return out + ([cur] if cur else [])


def submit(svc, body: bytes, content_type: str, user: str) -> dict:
    """Check, plan, group and store a sweep; its answer (models.SweepSubmitted)."""
    data, priority = parse(body, content_type)
    sweep, trials = check(data)
    planned = [plan_trial(svc, sweep, t) for t in trials]
    runnable = [x for x in planned if not x[0].reason]
    if not runnable:
        raise planning.NeverFits(f"never fits: none of the {len(trials)} trial(s) fits this service's devices; "
                                 f"trial {planned[0][0].trial.id}: {planned[0][0].reason}")
    by_trial = {x[0].trial.id: x for x in runnable}
    sweep_id, t = svc._new_id(), now()
    rows, entries = [], []
    for group in fuse.groups([x[0] for x in runnable], runnable[0][3].kind):
        device = by_trial[group[0].trial.id][3]
        for part in chunks(group, device) if len(group) > 1 else [group]:
            row = (_array_row if len(part) > 1 else _lone_row)(svc, part, by_trial, device)
            _check_quota(svc, row, device, user)
            rows.append({**row, "sweep": sweep_id, "trials": len(part), "user": user, "priority": priority,
                         "state": "queued", "max_attempts": svc.settings.max_attempts, "submitted_at": t,
                         "queued_at": t})
            entries += _entries(row, part)
    skipped = [{"trial": x[0].trial.id, "index": x[0].trial.index, "params": x[0].trial.params,
                "reason": x[0].reason, "planned_bytes": x[0].planned_bytes} for x in planned if x[0].reason]
    data = {**data, "name": sweep.name}
    record = {"sweep": data, "trials": entries, "skipped": skipped, "count": len(trials)}
    _store(svc, {"id": sweep_id, "name": sweep.name, "record": record, "user": user, "submitted_at": t}, rows)
    return {"id": sweep_id, "name": sweep.name, "trials": len(trials), "skipped": skipped,
            "jobs": [{"id": r["id"], "trials": r["trials"], "state": "queued", "planned_bytes": r["planned_bytes"],
                      "device": None} for r in rows]}


def _array_row(svc, part, by_trial, device) -> dict:
    """One trial array's row: its config is every trial's under "array" (launch/worker.py runs it
    with train/arrayjob.py), each trial's output and checkpoints under <run dir>/trials/<id>."""
    job_id = svc._new_id()
    run_dir = svc.settings.storage / "jobs" / job_id
    configs = []
    for tp in part:
        d = run_dir / TRIALS_DIR / tp.trial.id
        configs.append(tp.cfg.with_overrides({"output.dir": str(d), "checkpoint.dir": str(d / "checkpoints"),
                                              "checkpoint.resume": True}).to_dict())
    plan = array_plan([tp.plan for tp in part])
    batch = part[0].batch
    config = {"array": configs, "output": {"dir": str(run_dir)}, "checkpoint": {"dir": str(run_dir)},
              "training": {"batch_size": batch, "max_runtime": _array_runtime(part, by_trial)},
              "data": {}}
    return {"id": job_id, "name": f"{part[0].cfg.name.rsplit('-', 1)[0]}-{fuse.array_task_id(part)}",
            "config": config, "checked": {"array": [_trial_entry(tp, job_id, run_dir) for tp in part]},
            "device_kind": device.kind, "batch_request": batch, "batch_size": batch,
            "planned": plan.by_category(), "planned_bytes": plan.total, "min_bytes": plan.total,
            "run_dir": str(run_dir)}


def _array_runtime(part: list, by_trial: dict) -> float | None:
    """The array's run-time bound: it does the work of its K trials at once, so the sum of theirs
    (each the trial's own training.max_runtime or the service's default); None if one has none."""
    limits = [by_trial[tp.trial.id][1].config["training"].get("max_runtime") for tp in part]
    return None if any(x is None for x in limits) else float(sum(limits))


def _lone_row(svc, part, by_trial, device) -> dict:
    """A lone trial's row: an ordinary job (as POST /jobs stores it), of the sweep."""
    _, checked, p, _ = by_trial[part[0].trial.id]
    job_id = svc._new_id()
    return {"id": job_id, "name": checked.name, "config": checked.config, "checked": planning.to_json(checked),
            "device_kind": checked.device_kind, "batch_request": checked.batch, "batch_size": p.batch_size,
            "planned": p.by_category, "planned_bytes": p.total, "min_bytes": p.min_total,
            "run_dir": str(svc.settings.storage / "jobs" / job_id)}


def _trial_entry(tp, job_id: str, run_dir: Path) -> dict:
    return {"trial": tp.trial.id, "index": tp.trial.index, "params": tp.trial.params, "job": job_id,
            "run_dir": str(run_dir / TRIALS_DIR / tp.trial.id)}


def _entries(row: dict, part: list) -> list:
    if "array" in row["checked"]:
        return row["checked"]["array"]
    tp = part[0]
    return [{"trial": tp.trial.id, "index": tp.trial.index, "params": tp.trial.params, "job": row["id"],
             "run_dir": str(Path(row["run_dir"]) / "output")}]


def _check_quota(svc, row, device, user: str) -> None:
    limit = svc.scheduler.limits.limit(user)
    need = device.footprint(row["min_bytes"] if row["batch_request"] == "auto" else row["planned_bytes"])
    if limit is not None and need > limit:
        raise planning.NeverFits(f"never fits user {user}'s quota: job {row['name']} needs {format_bytes(need)} "
                                 f"(plan and process overhead), the quota is {format_bytes(limit)}")


def _store(svc, sweep: dict, rows: list) -> None:
    """Each job's record in its dir (what --recover rebuilds from), then the sweep and its rows in one
    transaction; the records go again when the rows cannot be stored."""
    from memtrain.errors import DiskFull  # noqa: PLC0415 - only on this path

    written = []
    try:
        for row in rows:
            written.append(row)
            recovery.write_job_file(row)
            recovery.write_sweep_file(row, sweep)
        svc.store.insert_sweep(sweep, rows)
    except OSError as exc:
        for row in written:
            recovery.remove_job_file(row)
        raise DiskFull(f"{svc.settings.storage}: cannot write the sweep's job records ({exc.strerror or exc}); "
                       "free some space and submit again (the jobs already stored are intact)") from None
    except BaseException:
        for row in written:
            recovery.remove_job_file(row)
        raise


# -- launch -------------------------------------------------------------------------------------


def launch_config(config: dict, device, port: int | None, metrics_host: str) -> dict:
    """An array's config as its worker runs it: each trial on the worker's device with the device's
    budget as its memory limit (as planning.launch_config gives a lone job), its dirs as stored, and
    the service's metrics port: the array serves every trial there, labelled `trial`
    (train/arraymetrics.py)."""
    trials = []
    for c in config["array"]:
        cfg = JobConfig.from_dict(c)
        over = {"device": planning.worker_device(device.kind)}
        if port is not None:
            over.update({"metrics.port": int(port), "metrics.host": metrics_host})
        if cfg.training.memory_limit is None:
            over["training.memory_limit"] = int(device.budget_bytes)
        trials.append(cfg.with_overrides(over).to_dict())
    return {**config, "array": trials}


def stored_result(result: dict | None) -> dict | None:
    """What the store keeps of an array's exit record: each trial's status and summary without its
    history and training rows (GET /sweeps/{id} reads those from exit.json)."""
    if not result or not isinstance(result.get("array"), list):
        return result
    slim = []
    for o in result["array"]:
        o = o if isinstance(o, dict) else {}
        summary = o.get("summary") if isinstance(o.get("summary"), dict) else {}
        slim.append({"status": o.get("status"), "error": o.get("error"),
                     **{k: v for k, v in summary.items() if not isinstance(v, (list, dict))}})
    return {**result, "array": slim}


# -- views --------------------------------------------------------------------------------------


def trial_entries(svc, job: JobRow) -> list:
    """The trials a sweep's job runs ({"trial", "index", "params", "job", "run_dir"}), [] for another job."""
    if not job.sweep:
        return []
    if job.trials and job.trials > 1:
        return list(job.checked.get("array") or [])
    rec = svc.store.sweep(job.sweep) or {}
    return [e for e in rec.get("trials", []) if e["job"] == job.id]


_OUTCOME_STATE = {"finished": "succeeded", "failed": "failed", "stopped": "cancelled", "cancelled": "cancelled"}


def trial_views(svc, job: JobRow, entries=None) -> list:
    """Each trial of `job` with its state: the job's while it is queued or running (a trial asked
    to stop: "stopping", or "cancelled" before it started), then its own outcome."""
    entries = trial_entries(svc, job) if entries is None else entries
    if not (job.trials and job.trials > 1):
        return [{**e, "state": job.state, "reason": job.reason} for e in entries]
    asked = stop_list(job)
    outcomes = (job.result or {}).get("array") if job.state not in ACTIVE else None
    out = []
    for i, e in enumerate(entries):
        state, reason = job.state, job.reason
        if job.state in ACTIVE and i in asked:
            state, reason = ("stopping" if job.state == "running" else "cancelled"), "cancelled on request"
        elif isinstance(outcomes, list) and i < len(outcomes) and isinstance(outcomes[i], dict):
            state = _OUTCOME_STATE.get(outcomes[i].get("status"), job.state)
            reason = outcomes[i].get("error") or (("cancelled on request" if i in asked else job.reason)
                                                  if state == "cancelled" else None)
        out.append({**e, "state": state, "reason": reason})
    return out


def stop_list(job: JobRow) -> set:
    """The trial indices asked to stop (the array's STOP_TRIALS: {"<index>": reason})."""
    asked = read_json(Path(job.run_dir) / STOP_TRIALS)
    return {int(k) for k in asked if k.isdigit()} if isinstance(asked, dict) else set()


def cancel_trial(svc, job_id: str, trial_id: str) -> dict | None:
    """Stop one trial: a lone trial's job is cancelled; an array's trial stops after its current step
    (its checkpoint saved) while the others train on. None: no such job; JobConflict: it has ended
    or is no sweep's job; KeyError: no such trial in it."""
    job = svc.store.get(job_id)
    if job is None:
        return None
    entries = trial_entries(svc, job)
    match = [i for i, e in enumerate(entries) if e["trial"] == trial_id]
    if not match:
        raise KeyError(f"job {job_id}: no trial {trial_id}" + ("" if entries else " (it runs no sweep's trials)"))
    if not (job.trials and job.trials > 1):
        svc.cancel(job_id)
        return trial_views(svc, svc.store.get(job_id), entries)[0]
    if job.state not in ACTIVE:
        raise JobConflict(f"job {job_id}: already {job.state}; trial {trial_id} has nothing to cancel")
    with _STOPS:  # one read-modify-write of the file at a time
        request_trial_stop(job.run_dir, match[0], "cancel")
        asked = stop_list(job)
    if len(asked) == len(entries):  # every trial cancelled: the array itself is
        svc.cancel(job_id)
    return trial_views(svc, svc.store.get(job_id), entries)[match[0]]


def sweep_view(svc, sweep_id: str) -> dict | None:
    """The sweep's trials ranked as `memtrain sweep` ranks them (sweep.report), every trial's state
    and run dir, and its jobs (models.SweepReport)."""
    from memtrain.select import sweep as sw  # noqa: PLC0415 - the trainer loads with the first sweep

    rec = svc.store.sweep(sweep_id)
    if rec is None:
        return None
    sweep = sp.from_sweep_dict(rec["sweep"], default_name=rec["name"])
    jobs = svc.store.sweep_jobs(sweep_id)
    records, runs = [], []
    for job in jobs:
        entries = [e for e in rec["trials"] if e["job"] == job.id]
        runs += trial_views(svc, job, entries)
        for e, outcome in zip(entries, _outcomes(job, len(entries)), strict=True):
            if outcome is not None and outcome["status"] in ("finished", "failed"):
                tp = sw.TrialPlan(sp.Trial(e["index"], e["params"], e["trial"]), None, 0, None)
                records.append(sw.make_record(sweep, tp, outcome))
    rep = sw.report(sweep, records, [])
    runs.sort(key=lambda r: r["index"])
    active = any(j.state in ACTIVE for j in jobs)
    return finite({**rep, "id": sweep_id, "trials": rec["count"], "skipped": rec["skipped"], "runs": runs,
                    "jobs": [j.id for j in jobs], "state": "running" if active else "ended"})


def _outcomes(job: JobRow, n: int) -> list:
    """Each trial's outcome (select/sweep.py's shape, with its history) once the job has ended."""
    if job.state in ACTIVE:
        return [None] * n
    if not (job.trials and job.trials > 1):
        if job.state == "cancelled":  # as an array's cancelled trial: no result, not ranked
            return [{"status": "stopped", "error": job.reason, "summary": {}, "train_rows": None}]
        from memtrain.select.runner import written_outcome  # noqa: PLC0415 - the sweep runner's reader

        return [written_outcome(job)]
    result = (read_json(Path(job.run_dir) / EXIT) or {}).get("result")
    outcomes = result.get("array") if isinstance(result, dict) else None
    if isinstance(outcomes, list) and len(outcomes) == n:
        return outcomes
    return [{"status": "failed", "error": job.reason or job.state, "summary": {}, "train_rows": None}] * n
