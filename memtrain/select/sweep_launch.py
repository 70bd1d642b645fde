"""`memtrain sweep --executor ray`: the planned trials run through an Executor.

Instead of packing trials into local waves, every trial becomes one Launch whose
resources are its plan; the executor (Ray) starts it as soon as a node has that much
memory free, so the cluster, not this process, decides how many run at once. Each
trial's worker writes its JSON log to OUTPUT_DIR/trials/ID/log.jsonl on the shared
storage; the trial's outcome (summary, training rows) is read back from that log,
so results.jsonl has the same records as a local sweep. A trial whose node or Ray
worker died is started again up to `max_attempts` times and resumes from its
checkpoint (trial jobs always resume).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.launch.executor import Launch, Resources
from memtrain.launch.resources import THREAD_VARS, NeverFits
from memtrain.units import format_bytes


def device_kind(executor, requested: str) -> str:
    """The trials' device kind on the cluster: "cuda" for cuda devices, "cpu" for cpu,
    and for "auto" whether the cluster has GPUs (this machine may have none)."""
    if requested.startswith("cuda"):
        return "cuda"
    if requested == "auto" and hasattr(executor, "ray"):
        return "cuda" if executor.ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    return "cpu"


def cluster_budget(executor, requested: str, limit: int | None) -> tuple:
    """(device kind, budget, where the budget came from) for a sweep on a cluster: a
    trial must fit one node. On the CPU the budget is the largest node's Ray memory
    (or --memory-limit); on GPUs --memory-limit (one GPU's capacity) is required,
    since Ray does not report GPU memory."""
    kind = device_kind(executor, requested)
    if limit is not None:
        return kind, limit, "--memory-limit"
    if kind == "cuda":
        raise MemtrainError("--memory-limit: needed with --executor ray on GPUs (one GPU's capacity; Ray does not "
                            "report GPU memory)")
    return kind, executor.largest_memory(), f"the largest {executor.name} node's memory resource"


def _absolute(config: dict) -> dict:
    """Paths as every node sees them on the shared storage (the worker's cwd is its run dir)."""
    config = json.loads(json.dumps(config))
    config["output"]["dir"] = str(Path(config["output"]["dir"]).resolve())
    config["checkpoint"]["dir"] = str(Path(config["checkpoint"]["dir"]).resolve())
    data = config.get("data", {})
    for key in ("dataset", "validation_dataset"):
        if isinstance(data.get(key), str) and Path(data[key]).exists():
            data[key] = str(Path(data[key]).resolve())
    return config


def trial_launch(tp, *, device_kind: str = "cpu", capacity: int | None = None, threads: int = 1) -> Launch:
    """One attempt of one trial. The trial's plan already counts the per-process
    overhead (plan_trials), so overhead_bytes is 0; `threads` is its BLAS threads and
    the CPUs it reserves."""
    config = _absolute(tp.cfg.to_dict())
    d = Path(config["output"]["dir"])
    return Launch(job_id=tp.cfg.name, config=config, run_dir=str(d), log_path=str(d / "log.jsonl"),
                  device="cuda:0" if device_kind == "cuda" else "cpu",
                  resources=Resources(planned_bytes=int(tp.planned_bytes), overhead_bytes=0, num_cpus=threads,
                                      device_capacity_bytes=capacity if device_kind == "cuda" else None),
                  env={v: str(threads) for v in THREAD_VARS})


def outcome_from_log(log_path, ended) -> dict:
    """The outcome run_trial would have returned, read from the worker's JSON log:
    the last summary, the data event's training rows, and the Exit's reason."""
    summary, rows = None, None
    try:
        lines = Path(log_path).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "data" and rows is None:
            rows = event.get("train")
        elif event.get("event") == "summary":
            summary = {k: v for k, v in event.items() if k not in ("time", "event")}
    if ended.ok and summary is not None:
        return {"status": "finished", "error": None, "summary": summary, "train_rows": rows}
    error = ended.reason or ("stopped before finishing" if ended.ok else f"exit status {ended.code}")
    return {"status": "failed", "error": error, "summary": {}, "train_rows": rows}


def run_trials(plans, executor, launch_for, *, workers=None, max_attempts: int = 2, log=print, poll_s: float = 0.2):
    """Yields (TrialPlan, outcome) as trials end. At most `workers` trials are handed to
    the executor at once (None: all; the executor queues what does not fit yet). A
    trial killed by a signal it did not ask for (its node or worker died) is started
    again, up to max_attempts in all; on an error or Ctrl-C the running trials are
    cancelled (SIGTERM: they checkpoint) before this returns."""
    queue, running = list(plans), {}
    try:
        while queue or running:
            while queue and (workers is None or len(running) < workers):
                tp = queue.pop(0)
                try:
                    h = executor.start(launch_for(tp))
                except NeverFits as exc:
                    yield tp, {"status": "failed", "error": str(exc), "summary": {}, "train_rows": None}
                    continue
                running[h.ref] = (tp, h, 1)
            for ref, (tp, h, attempt) in list(running.items()):
                ended = executor.poll(h)
                if ended is None:
                    continue
                del running[ref]
                if ended.signal is not None and attempt < max_attempts:
                    log(f"retry     {tp.trial.id}: {ended.reason or 'killed by signal ' + str(ended.signal)}; "
                        f"attempt {attempt + 1}/{max_attempts} resumes from its checkpoint")
                    h2 = executor.start(launch_for(tp))
                    running[h2.ref] = (tp, h2, attempt + 1)
                    continue
                yield tp, outcome_from_log(launch_for(tp).log_path, ended)
            time.sleep(poll_s)
    finally:
        _stop(executor, [h for _, h, _ in running.values()])


def _stop(executor, handles, grace_s: float = 30.0):
    for h in handles:
        executor.cancel(h)
    deadline = time.monotonic() + grace_s
    while handles and time.monotonic() < deadline:
        handles = [h for h in handles if executor.poll(h) is None]
        time.sleep(0.1)


def schedule_text(sweep, plans, done, budget, budget_source, workers, executor_name, params_text) -> str:
    """The plan as printed before a sweep through an executor: no waves, the cluster places."""
    ready = [tp for tp in plans if not tp.reason and tp.trial.id not in done]
    lines = [f"sweep     {sweep.name}: {sweep.method} search, {len(plans)} trial(s): "
             f"{len(done & {tp.trial.id for tp in plans})} finished, {len(ready)} to run, "
             f"{sum(1 for tp in plans if tp.reason)} skipped",
             f"budget    {format_bytes(budget)} per node ({budget_source}); {executor_name} starts each trial when a "
             "node has its planned memory free" + ("" if workers is None else f", at most {workers} at a time")]
    for tp in ready:
        lines.append(f"trial     {tp.trial.id} {params_text(tp.trial.params)} {format_bytes(tp.planned_bytes)}")
    for tp in plans:
        if tp.reason:
            lines.append(f"skipped   {tp.trial.id} {params_text(tp.trial.params)}: {tp.reason}")
    return "\n".join(lines)
