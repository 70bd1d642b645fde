"""The largest feasible batch, solved on the plan and confirmed by one real step.

1. Budget = --memory-limit, or the device's free memory now (NVML on a GPU,
   MemAvailable on the CPU), minus a safety margin.
2. Analytic B: the largest B with plan(B).total <= budget (memory/batch.py),
   rounded down to --multiple-of. No allocation.
3. Probe: ONE real training step at B (model, trainer with every buffer of the
   plan, forward, backward and the first optimizer update), measuring the peak.
   If it fits the limit (the margin is for what the plan cannot see), B is
   confirmed. If the measured peak is over the limit, the limit is corrected
   by the measured discrepancy and B solved again; after
   an out-of-memory error (no measurement to correct with), B shrinks by 2%.
   Then one more probe. An untested B is never returned.

Lightning's batch-size finder doubles from 2 and needs a dozen or more trial
runs; the plan makes one probe the usual case (docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from memtrain.errors import ConfigError
from memtrain.memory.batch import largest_batch, round_batch
from memtrain.memory.budget import auto_budget, with_margin
from memtrain.memory.measure import active_pool
from memtrain.nn.mlp import MLP
from memtrain.profiler.verify import profile, random_batch
from memtrain.train.jobplan import batch_cap, solve
from memtrain.train.trainer import Trainer, oom_errors
from memtrain.units import format_bytes

OOM_SHRINK = 0.98


@dataclass
class Probe:
    batch_size: int
    planned: int
    measured: int | None
    outcome: str  # "fits", "over budget", "out of memory"
    seconds: float


@dataclass
class AutoBatch:
    analytic: int
    confirmed: int
    budget: int
    budget_source: str
    margin: int
    probes: list = field(default_factory=list)
    seconds: float = 0.0
    eval_batch: int = 0
    throughput: list = field(default_factory=list)  # (batch, samples/s) with --objective throughput
    objective: str = "memory"
    cap: int | None = None  # no batch above this was solved or probed (training rows, max_batch_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema"] = "memtrain.autobatch/1"
        d["probes_used"] = len(self.probes)
        return d


def solve_budget(backend, memory_limit: int | None, already_allocated: int = 0) -> tuple:
    """(raw budget, where it came from): the given limit, or the device's default."""
    if memory_limit is not None:
        return int(memory_limit), "given"
    return auto_budget(backend, already_allocated)


def _cap(max_batch, dataset_size):
    """No batch larger than the training set or max_batch_size is ever solved or probed."""
    return batch_cap(dataset_size, max_batch)


def _solve(setting, budget: int, multiple_of, max_batch=None) -> int:
    return solve(setting, budget, multiple_of=multiple_of, max_batch=max_batch).batch_size


def probe(setting, batch_size: int, budget: int, backend) -> Probe:
    """One real step at `batch_size` (everything allocated, first update included)."""
    plan = setting.plan(batch_size)
    planned = plan.total
    t0 = time.perf_counter()
    try:
        r = profile(setting, batch_size, steps=1, backend=backend)
    except oom_errors():
        r = None
    _release(backend)  # after the except block, whose traceback held the failed probe's buffers
    if r is None:
        return Probe(batch_size, planned, None, "out of memory", time.perf_counter() - t0)
    # like with like: a CUDA profile adds the device overhead it measured (the context, outside the
    # pool); the plan being solved charges its own (none in a job, whose budget is free memory with
    # the context already taken, or a pool cap). The measured context is swapped for the plan's.
    measured = r["measured_total"] - r.get("overhead", {}).get("bytes", 0) + plan.overhead_bytes
    outcome = "fits" if measured <= budget else "over budget"
    return Probe(batch_size, planned, measured, outcome, time.perf_counter() - t0)


def _release(backend):
    if backend.is_cuda:
        active_pool(backend.xp).free_all_blocks()


def auto_batch(setting, backend, *, memory_limit: int | None = None, margin: int | None = None,
               multiple_of: int | None = None, max_probes: int = 4, dataset_size: int | None = None,
               already_allocated: int = 0, max_batch: int | None = None, log=None) -> AutoBatch:
    """Analytic B from the plan, capped by `max_batch` and `dataset_size` BEFORE any
    probe, confirmed by real probes (usually one) that never exceed the budget's plan.

    `already_allocated`: bytes of the plan that exist already (a job's data set,
    loaded before the free memory is read); they are counted by the plan, so
    they are added back to a measured free-memory budget, not to a given limit.
    Without `memory_limit` the CPU's budget is a stated default share of the free
    memory (memory/budget.py), never all of it."""
    t0 = time.perf_counter()
    raw, source = solve_budget(backend, memory_limit, already_allocated)
    budget, margin = with_margin(backend.kind, raw, margin)
    fit = solve(setting, budget, multiple_of=multiple_of, max_batch=_cap(max_batch, dataset_size))
    if not fit.batch_size:
        raise ConfigError(f"memory-limit: {format_bytes(raw)} less a {format_bytes(margin)} margin is too small "
                         f"for batch {multiple_of or 1}; {format_bytes(fit.shortfall)} ({fit.shortfall:,} B) more "
                         "is needed")
    analytic = b = fit.batch_size
    probes = []
    while True:
        # the margin is for what the plan cannot see; the probe checks the real limit
        p = probe(setting, b, raw, backend)
        probes.append(p)
        if log:
            log(p)
        if p.outcome == "fits":
            break
        if len(probes) >= max_probes:
            raise RuntimeError(f"autobatch: no batch size confirmed in {max_probes} probes "
                               f"(last: B={b}, {p.outcome}); pass a smaller --memory-limit")
        if p.outcome == "over budget":
            corrected = raw - (p.measured - p.planned)
            nb = _solve(setting, corrected, multiple_of, _cap(max_batch, dataset_size))
        else:
            nb = round_batch(int(b * OOM_SHRINK), multiple_of)
        step_down = multiple_of or 1
        b = min(nb, b - step_down)
        if b < 1:
            raise ConfigError("memory-limit: not even the smallest batch fits when measured")
    eval_setting = dataclasses.replace(setting, inference=True, keep_best=False, resident_rows=None)
    eval_fit = largest_batch(lambda n: eval_setting.plan(n).total, budget)
    eval_batch = min(eval_fit.batch_size, dataset_size) if dataset_size else eval_fit.batch_size
    return AutoBatch(analytic, b, budget, source, margin, probes, time.perf_counter() - t0, eval_batch,
                     cap=_cap(max_batch, dataset_size))


def fastest_batch(setting, backend, max_batch: int, *, steps: int = 3, min_gain: float = 0.05,
                  multiple_of: int | None = None, log=None) -> list:
    """samples/s at growing batch sizes <= max_batch (powers of two, then max_batch);
    stops once doubling gains less than `min_gain`. Returns [(batch, samples/s), ...]."""
    sizes, b = [], max(1, multiple_of or 1)
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes = [s for s in sizes if s >= max(1, max_batch // 256)] + [max_batch]
    rng = np.random.default_rng(0)
    results, best = [], 0.0
    for b in sizes:
        model = MLP.from_spec(setting.spec, device=backend)
        trainer = Trainer(model, setting.make_optimizer(), b, fused=setting.fused)
        X, y = random_batch(setting.spec, b, rng)
        trainer.step(X, y)  # warm-up
        _sync(backend)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step(X, y)
        _sync(backend)
        rate = b * steps / (time.perf_counter() - t0)
        results.append((b, rate))
        if log:
            log(b, rate)
        del trainer, model
        _release(backend)
        if best and rate < best * (1 + min_gain):
            break
        best = max(best, rate)
    return results


def _sync(backend):
    if backend.is_cuda:
        backend.xp.cuda.runtime.deviceSynchronize()
