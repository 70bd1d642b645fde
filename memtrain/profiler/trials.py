"""`memtrain estimate --trials K`: the memory of K trials of one setting trained as one array.

The array's plan (memory/trials.py) is K times a trial's buffers plus its data
set once and the process overhead once, so it is linear in K:
total(K) = fixed + K x per_trial. With a budget the largest K that fits follows
by division (the margin kept free as autobatch keeps it).
"""

from __future__ import annotations

from memtrain.errors import ConfigError
from memtrain.memory.budget import with_margin
from memtrain.memory.trials import TRIAL_OBJECT_BYTES, array_plan
from memtrain.profiler.estimate import SCHEMA
from memtrain.validate import check_scalar

MAX_TRIALS = 1_000_000


def array_report(setting, report: dict, trials: int, *, budget: int | None = None, margin=None) -> dict:
    """{"trials", "total", "categories", "fixed", "per_trial", "separate", "saved"} (and
    "max_trials" with a budget): the array of `trials` trials of `report`'s plan (estimate.report:
    its optimizer and batch size, over `setting`) beside the same trials as separate jobs (each
    with its own data set, process and objects)."""
    k = check_scalar(trials, "trials", int, min_val=1, max_val=MAX_TRIALS)
    if report.get("schema") != SCHEMA:  # a table of several optimizers or batch sizes
        raise ConfigError("trials: an array's estimate is of one plan; give one --optimizer and one --batch-size")
    if setting.inference or not report.get("optimizer"):
        raise ConfigError("trials: an array trains; --inference has no trial array")
    one = setting.with_optimizer(report["optimizer"]["name"]).plan(report["batch_size"])
    plan_at = lambda n: array_plan([one] * n, overhead_bytes=one.overhead_bytes,  # noqa: E731
                                   overhead_source=one.overhead_source)
    arr = plan_at(k)
    per_trial = plan_at(2).total - plan_at(1).total
    fixed = plan_at(1).total - per_trial
    # a separate job holds its own data set, process overhead and the same Python objects per trial
    separate = k * (one.total + TRIAL_OBJECT_BYTES)
    out = {"trials": k, "batch_size": one.batch_size, "total": arr.total, "categories": arr.by_category(),
           "fixed": fixed, "per_trial": per_trial, "separate": separate, "saved": separate - arr.total}
    if budget is not None:
        room, _ = with_margin(one.device, budget, margin)
        out["max_trials"] = {"budget": budget, "after_margin": room,
                             "trials": max(0, (room - fixed) // per_trial) if room > fixed else 0}
    return out
