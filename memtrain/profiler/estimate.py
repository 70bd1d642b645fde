"""`memtrain estimate` as a library: reports built from the plan, never a second formula.

Every number here is a sum over MemoryPlan buffers (memory/plan.py), the same
plan the Trainer allocates.
"""

from __future__ import annotations

import dataclasses

from memtrain.config import load
from memtrain.errors import ConfigError
from memtrain.memory import overhead as ovh
from memtrain.memory.batch import BatchFit, largest_batch
from memtrain.memory.measure import gpu_free_bytes, mem_available
from memtrain.memory.plan import CATEGORIES, MemoryPlan
from memtrain.nn.spec import ModelSpec
from memtrain.optim import OPTIMIZERS
from memtrain.train.setting import Setting

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


def fit(setting: Setting, budget: int, multiple_of=None, power_of_two=False) -> BatchFit:
    return largest_batch(lambda b: setting.plan(b).total, budget, multiple_of=multiple_of, power_of_two=power_of_two)


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
           multiple_of=None, power_of_two=False, with_per_layer=False, gpus=None) -> dict:
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
        "overhead": {"bytes": plan.overhead_bytes, "source": plan.overhead_source},
        "formula": {"fixed": fixed, "per_sample": per_sample, "rounding": plan.device == "cuda"},
        "buffers": [
            {"name": b.name, "category": b.category, "shape": list(b.shape), "dtype": b.dtype, "nbytes": b.nbytes,
             "allocated": plan.allocated(b), "layer": b.layer, "batched": b.batched}
            for b in plan.buffers
        ],
    }
    if budget is not None:
        f = fit(setting, budget, multiple_of, power_of_two)
        out["max_batch"] = _fit_info(f, budget_source)
    if with_per_layer:
        out["per_layer"] = per_layer(plan, spec)
    if gpus:
        out["data_parallel"] = data_parallel(plan, gpus)
    return out


def table(setting: Setting, optimizers: list, batch_sizes: list, *, budget: int | None = None,
          budget_source: str = "", multiple_of=None, power_of_two=False) -> dict:
    """One row per (optimizer, batch), sorted by total; schema memtrain.estimate-table/1."""
    rows = []
    for name in optimizers:
        s = setting.with_optimizer(name)
        f = fit(s, budget, multiple_of, power_of_two) if budget is not None else None
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
    return {
        "name": setting.optimizer,
        "hyper": opt.hyper,
        "slots": [{"name": s.name, "kind": s.kind, "dtype": s.dtype or setting.spec.dtype.name}
                  for s in opt.all_slots()],
        "scratch_arrays": opt.scratch_count,
    }


def _fit_info(f: BatchFit, source: str) -> dict:
    return {"budget": f.budget, "budget_source": source, "batch_size": f.batch_size, "total": f.total,
            "utilisation": f.utilisation, "headroom": f.budget - f.total if f.batch_size else 0,
            "shortfall": f.shortfall}


# -- from user input ----------------------------------------------------------


def build_setting(*, config=None, layers=None, activation=None, output=None, dropout=None, dtype=None,
                  optimizer=None, device="cpu", overhead=None, inference=False, backend=None):
    """(Setting, default batch sizes) from a job file and/or flags; flags win.

    `backend` is the resolved CUDA Backend when a GPU is present (then the
    overhead is measured), else None (assumed overhead on "cuda")."""
    cfg = load(config) if config else None
    model = dataclasses.asdict(cfg.model) if cfg else {}
    for key, value in (("layers", layers), ("activation", activation), ("output", output),
                       ("dropout", dropout), ("dtype", dtype)):
        if value is not None:
            model[key] = value
    if model.get("layers") is None:
        raise ConfigError("layers: missing; pass --layers 784,128,10 or --config job.toml")
    model.pop("init", None), model.pop("bias_init", None)  # no effect on memory
    spec = ModelSpec.create(model.pop("layers"), **model)
    opt_name = optimizer or (cfg.optimizer_name() if cfg else "adam")
    hyper = tuple(sorted(cfg.optimizer_hyper().items())) if cfg and not optimizer else ()
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if overhead is not None:
        over, source = overhead, "given"
    elif kind == "cuda":  # measured once per GPU model and cached (memory/overhead_cache.py)
        from memtrain.memory.overhead_cache import cuda_overhead  # noqa: PLC0415 - only an estimate for cuda reads the cache

        over, source = cuda_overhead(backend)
    else:
        over, source = ovh.assumed(kind)
    keep_best = bool(cfg and cfg.training.patience)
    batches = None
    if cfg and isinstance(cfg.training.batch_size, int):
        batches = [cfg.training.batch_size]
    setting = Setting(spec, opt_name if opt_name != "all" else "adam", hyper, kind, int(over), source,
                      bool(inference), keep_best)
    if opt_name != "all":
        setting.make_optimizer()  # validate the name and hyper-parameters now
    return setting, batches


def resolve_budget(memory, device: str, backend, want: bool):
    """(budget bytes, where it came from) or (None, "") when no largest batch is asked for."""
    if memory is not None:
        return memory, "given"
    if str(device).startswith("cuda"):
        if backend is None:
            if want:
                raise ConfigError("memory: no CUDA device is visible to read free memory from; pass --memory SIZE")
            return None, ""
        return gpu_free_bytes(backend.index), f"free on {backend.name} now, NVML"
    if want:
        return mem_available(), "MemAvailable now"
    return None, ""
