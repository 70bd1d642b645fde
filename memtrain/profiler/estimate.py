"""`memtrain estimate` as a library: reports built from the plan, never a second formula.

Every number here is a sum over MemoryPlan buffers (memory/plan.py), the same
plan the Trainer allocates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from memtrain.config import fused_for, load, merge
from memtrain.errors import ConfigError
from memtrain.memory.batch import BatchFit, check_batch_rows, parse_batch_sizes
from memtrain.memory.budget import cpu_free, default_cpu_budget, with_margin
from memtrain.memory.measure import gpu_free_bytes
from memtrain.memory.plan import CATEGORIES, MemoryPlan
from memtrain.nn.spec import ModelSpec
from memtrain.optim import OPTIMIZERS, make_optimizer
from memtrain.train.jobplan import (
    batch_cap,
    batch_multiple,
    data_rows,
    device_overhead,
    is_resident,
    job_setting,
    process_overhead,
    solve,
)
from memtrain.train.setting import Setting
from memtrain.units import format_bytes

SCHEMA = "memtrain.estimate/1"
TABLE_SCHEMA = "memtrain.estimate-table/1"


def all_optimizer_names() -> list:
    """The registry's 12, lookahead as lookahead:adam (its default inner optimizer)."""
    return [n if n != "lookahead" else "lookahead:adam" for n in OPTIMIZERS]


def linear_terms(setting: Setting) -> tuple:
    """(fixed, per_sample) with total(B) = fixed + B * per_sample (+ CUDA rounding)."""
    one = setting.plan(1)  # batched buffers are exactly proportional to B (tests/test_plan.py)
    per_sample = sum(b.nbytes for b in one.buffers if b.batched)
    fixed = one.total - sum(one.allocated(b) for b in one.buffers if b.batched)
    return fixed, per_sample


def fit(setting: Setting, raw_budget: int, multiple_of=None, power_of_two=False, max_batch=None,
        margin=None) -> BatchFit:
    """The largest batch for `raw_budget` less the safety margin: autobatch's solve, margin and cap."""
    budget, _ = with_margin(setting.device, raw_budget, margin)
    return solve(setting, budget, multiple_of=multiple_of, power_of_two=power_of_two, max_batch=max_batch)


def multipliers(plan: MemoryPlan) -> dict:
    """Each category relative to the parameter vector (course: momentum triples, Adam quadruples)."""
    p = plan.allocated(plan.get("params"))
    cats = plan.by_category()
    out = {c: cats[c] / p for c in CATEGORIES}
    # the course's quantity: the weights, their gradient and the optimizer state (not the
    # early-stopping copy or the accumulation buffer, which the categories still show)
    grads = plan.allocated(plan.get("grads")) if "grads" in plan.names() else 0
    out["params_grads_state"] = (p + grads + cats["optimizer_state"]) / p
    return out


def per_layer(plan: MemoryPlan, spec) -> list:
    """Per layer: its parameters, and the activations it keeps per sample, with its share of the total."""
    rows = []
    total = plan.total
    for i in range(0, spec.n_layers + 1):
        groups = [g for g in spec.layout if g.layer == i]
        n_params = sum(g.size for g in groups)
        param_bytes = n_params * spec.dtype.itemsize
        acts = [b for b in plan.buffers if b.layer == i and b.category == "activations"]
        per_sample = sum(b.nbytes // plan.rows for b in acts)
        act_bytes = sum(plan.allocated(b) for b in acts)
        if i == 0 and not acts:
            continue
        rows.append({
            "layer": i,
            "shape": "input" if i == 0 else f"{spec.sizes[i - 1]}x{spec.sizes[i]}",
            "parameters": n_params,
            "parameter_bytes": param_bytes,
            "activation_bytes_per_sample": per_sample,
            "activation_bytes": act_bytes,
            "share": (param_bytes + act_bytes) / total if total else 0.0,
        })
    return rows


def data_parallel(plan: MemoryPlan, gpus: int) -> dict:
    """Per-GPU memory for N data-parallel GPUs (each with this batch): optimizer
    state replicated on every GPU, or sharded N ways (ZeRO stage 1). Estimate only."""
    cats = plan.by_category()
    state = cats["optimizer_state"]
    return {
        "gpus": gpus,
        "replicated_per_gpu": plan.total,
        "sharded_per_gpu": plan.total - state + -(-state // gpus),
        "saved_per_gpu": state - -(-state // gpus),
    }


def report(setting: Setting, batch_size: int, *, budget: int | None = None, budget_source: str = "",
           multiple_of=None, power_of_two=False, with_per_layer=False, gpus=None, max_batch=None,
           margin=None) -> dict:
    """The full estimate of one (model, optimizer, batch): JSON-ready, schema memtrain.estimate/1."""
    plan = setting.plan(batch_size)
    spec = setting.spec
    fixed, per_sample = linear_terms(setting)
    out = {
        "schema": SCHEMA,
        "mode": plan.mode,
        "model": {**spec.identity(), "dropout": list(spec.dropout) if spec.dropout else None,
                  "description": spec.describe()},
        "optimizer": None if setting.inference else _optimizer_info(setting),
        "device": plan.device,
        "batch_size": plan.batch_size,
        "categories": plan.by_category(),
        "total": plan.total,
        "multipliers": multipliers(plan),
        # counted against the device's memory: the process (CPU) or the CUDA context (GPU)
        "overhead": {"bytes": plan.overhead_bytes, "source": plan.overhead_source,
                     "kind": "device" if plan.device == "cuda" else "process"},
        "formula": {"fixed": fixed, "per_sample": per_sample, "rounding": plan.device == "cuda"},
        "buffers": [
            {"name": b.name, "category": b.category, "shape": list(b.shape), "dtype": b.dtype, "nbytes": b.nbytes,
             "allocated": plan.allocated(b), "layer": b.layer, "batched": b.batched}
            for b in plan.buffers
        ],
    }
    if budget is not None:
        f = fit(setting, budget, multiple_of, power_of_two, max_batch, margin)
        out["max_batch"] = _fit_info(f, budget_source, budget)
    if with_per_layer:
        out["per_layer"] = per_layer(plan, spec)
    if gpus:
        out["data_parallel"] = data_parallel(plan, gpus)
    return out


def table(setting: Setting, optimizers: list, batch_sizes: list, *, budget: int | None = None,
          budget_source: str = "", multiple_of=None, power_of_two=False, max_batch=None, margin=None) -> dict:
    """One row per (optimizer, batch), sorted by total; schema memtrain.estimate-table/1."""
    rows = []
    for name in optimizers:
        s = setting.with_optimizer(name)
        f = fit(s, budget, multiple_of, power_of_two, max_batch, margin) if budget is not None else None
        opt = s.make_optimizer()
        for b in batch_sizes:
            plan = s.plan(b)
            m = multipliers(plan)
            rows.append({
                "optimizer": name,
                "slots": [sl.name for sl in opt.all_slots()],
                "batch_size": b,
                "categories": plan.by_category(),
                "total": plan.total,
                "state_multiplier": m["optimizer_state"],
                "params_grads_state_multiplier": m["params_grads_state"],
                "max_batch": f.batch_size if f else None,
            })
    rows.sort(key=lambda r: (r["total"], r["optimizer"]))
    return {"schema": TABLE_SCHEMA, "model": setting.spec.identity(), "device": setting.device,
            "budget": budget, "budget_source": budget_source or None, "rows": rows}


def _optimizer_info(setting: Setting) -> dict:
    opt = setting.make_optimizer()
    fused = setting.fused or setting.device == "cuda"  # a GPU step always runs its fused kernels
    return {
        "name": setting.optimizer,
        "hyper": opt.hyper,
        "slots": [{"name": s.name, "kind": s.kind, "dtype": s.dtype or setting.spec.dtype.name}
                  for s in opt.all_slots()],
        # the NumPy reference path's chunk scratch rows; the fused kernels need none
        "scratch_arrays": 0 if fused else opt.scratch_count,
        "kernels": "fused" if fused else "numpy",
    }


def _fit_info(f: BatchFit, source: str, raw: int) -> dict:
    return {"budget": f.budget, "budget_source": source, "memory_limit": raw, "margin": raw - f.budget,
            "batch_size": f.batch_size, "total": f.total,
            "utilisation": f.utilisation, "headroom": f.budget - f.total if f.batch_size else 0,
            "shortfall": f.shortfall}


# -- from user input ----------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What to estimate: the plan's Setting and, from a job file, what `train` would run."""

    setting: Setting
    batches: list | None  # a job file's fixed batch size
    cfg: object = None  # the merged JobConfig, when a job file was given
    n_train: int | None = None  # its training rows (the auto batch's cap)


def build_setting(*, config=None, layers=None, activation=None, output=None, dropout=None, dtype=None,
                  optimizer=None, device="cpu", overhead=None, inference=False, backend=None,
                  budget=None, fused=None) -> Request:
    """The Setting from a job file and/or flags; flags win. With a job file it is the
    Setting the Job builds (its data set resident in the plan, as `train` holds it).

    The plan's overhead is what the device's memory holds besides the buffers: on a GPU the
    device overhead (`backend` is the resolved CUDA Backend when a GPU is present, then it is
    measured, else None: cached or assumed), on the CPU the process overhead (measured once per
    machine) when a memory limit is given; --overhead gives it."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    cfg = load(config) if config else None
    limited = budget is not None or (cfg is not None and cfg.training.memory_limit is not None)
    over, source = _overhead(kind, overhead, backend, limited)
    single = optimizer if optimizer and optimizer != "all" and "," not in optimizer else None
    if config:
        cfg = merge(cfg, {"model.layers": layers, "model.activation": activation, "model.output": output,
                          "model.dropout": dropout, "model.dtype": dtype, "optimizer.name": single,
                          "training.fused": fused})
        return _job_request(cfg, kind, int(over), source, inference, budget)
    model = {k: v for k, v in (("activation", activation), ("output", output), ("dropout", dropout),
                               ("dtype", dtype)) if v is not None}
    if layers is None:
        raise ConfigError("layers: missing; pass --layers 784,128,10 or --config job.toml")
    spec = ModelSpec.create(layers, **model)
    setting = Setting(spec, single or "adam", (), kind, int(over), source, bool(inference),
                      fused=fused_for("auto" if fused is None else fused, spec))
    setting.make_optimizer()  # validate the name now
    return Request(setting, None)


def _overhead(kind: str, given, backend, limited: bool) -> tuple:
    """(bytes, source) the plan holds besides its buffers: --overhead; on a GPU its device overhead;
    on the CPU the process overhead when a memory limit is given (the job's whole memory: the
    process is in it), else none (a budget read from the free memory now is read by a process
    that is loaded already)."""
    if given is not None:
        return given, "given"
    if kind == "cuda":
        return device_overhead(kind, backend)
    return process_overhead() if limited else (0, "none")


def _job_request(cfg, kind, over, source, inference, budget) -> Request:
    rows = data_rows(cfg)
    limit = cfg.training.memory_limit
    budget = limit if budget is None else (budget if limit is None else min(budget, limit))
    resident = is_resident(kind, rows.nbytes, budget, cfg.data.resident_share)
    setting = job_setting(cfg, kind, rows if resident else None, over, source)
    if inference:
        setting = dataclasses.replace(setting, inference=True, keep_best=False, resident_rows=None)
    setting.make_optimizer()
    batch = cfg.training.batch_size
    return Request(setting, [batch] if isinstance(batch, int) else None, cfg, rows.n_train)


def estimate(req: Request, optimizer, batch_size, *, memory=None, max_batch=False, backend=None, margin=None,
             multiple_of=None, power_of_two=False, per_layer=False, gpus=None) -> dict:
    """`memtrain estimate`: one report, or a table for several optimizers or batches.
    The budget and the batch are resolved as autobatch and `train` resolve them."""
    names = optimizer_names(optimizer, req.setting.optimizer)
    if req.setting.inference and len(names) > 1:
        raise ConfigError("optimizer: --inference has no optimizer; give one --optimizer")
    auto = req.cfg is not None and not batch_size and req.batches is None and not req.setting.inference
    want_fit = memory is not None or max_batch or backend is not None or auto
    budget, source = resolve_budget(memory, req.setting.device, backend, want_fit, req.cfg)
    batches = batch_sizes(req, batch_size, budget, auto, multiple_of, power_of_two, margin)
    opts = {"budget": budget, "budget_source": source, "multiple_of": multiple_of, "power_of_two": power_of_two,
            "max_batch": req.cfg.training.max_batch_size if req.cfg is not None else None, "margin": margin}
    if len(names) > 1 or len(batches) > 1:
        return table(req.setting, names, batches, **opts)
    return report(req.setting.with_optimizer(names[0]), batches[0], with_per_layer=per_layer, gpus=gpus, **opts)


def optimizer_names(optimizer: str | None, default: str) -> list:
    """--optimizer: one name, a list sgd,adam (as compare takes), or all."""
    if not optimizer:
        return [default]
    if optimizer == "all":
        return all_optimizer_names()
    names = [n.strip() for n in optimizer.split(",")]
    if not all(names):
        raise ConfigError(f"optimizer: expected a name, a list like sgd,adam or all, got {optimizer!r}")
    for n in names:
        make_optimizer(n)  # an unknown name fails here, naming it
    return names


def batch_sizes(req: Request, text, budget, auto: bool, multiple_of=None, power_of_two=False, margin=None) -> list:
    """The batches to show: --batch-size; else a job file's auto batch solved as `train`
    solves it (same solver, margin and cap); else the job file's; else the largest that
    fits a given --memory-limit; else 32."""
    if text:
        batches = parse_batch_sizes(text)
        if req.cfg is not None and len(batches) == 1:  # the job's own run: refused as train refuses it
            check_batch_rows(batches[0], req.n_train, "batch-size")
        return batches
    if auto:
        t = req.cfg.training  # the Job's solve: its overhead is in this plan, its margin is the limit's
        b = fit(req.setting, budget, batch_multiple(req.setting.device),
                max_batch=batch_cap(req.n_train, t.max_batch_size), margin=margin).batch_size
        if not b:
            raise ConfigError(f"memory-limit: {format_bytes(budget)} less the safety margin is too small for "
                              "batch 1 of this job's plan")
        return [b]
    if req.batches:
        check_batch_rows(req.batches[0], req.n_train)
        return req.batches
    if budget is not None:
        f = fit(req.setting, budget, multiple_of, power_of_two, margin=margin)
        if not f.batch_size:
            raise ConfigError(f"memory-limit: {format_bytes(budget)} less the safety margin is too small for "
                              f"batch 1 of this plan; it needs {format_bytes(f.shortfall)} "
                              f"({f.shortfall:,} B) more")
        return [f.batch_size]
    return [32]


def resolve_budget(memory, device: str, backend, want: bool, cfg=None):
    """(budget bytes, where it came from) or (None, "") when no largest batch is asked for.
    Without --memory-limit: a job file's memory_limit, else the free memory (CUDA) or the
    CPU's default share of it, as autobatch."""
    if memory is not None:
        return memory, "given"
    if cfg is not None and cfg.training.memory_limit is not None:
        return cfg.training.memory_limit, "the job file's memory_limit"
    if str(device).startswith("cuda"):
        if backend is None:
            if want:
                raise ConfigError("memory-limit: no CUDA device is visible to read free memory from; "
                                  "pass --memory-limit SIZE")
            return None, ""
        return gpu_free_bytes(backend.index), f"free on {backend.name} now, NVML"
    if want:
        return default_cpu_budget(*cpu_free())
    return None, ""
