"""Sweep files: a base job, a search space, and the trials they expand to.

    name = "digits-lr"             # optional; default: the file's stem
    base = "job.toml"              # a job file (relative to this file), or an inline [base] table

    [search]
    method = "random"              # "grid" (lists only) or "random"
    trials = 20                    # random only
    seed = 0                       # random only
    metric = "val_loss"            # val_loss, val_rmse, val_mae (lowest wins), val_accuracy, val_r2 (highest)

    [space]
    lr = {log_uniform = [1e-4, 1e-1]}
    optimizer = ["adam", "nadam", "momentum"]
    dropout = {uniform = [0.0, 0.5]}

A hyper-parameter's name maps to one job-config key (PARAMS), or is written
as that key itself ("optimizer.beta1", "schedule.warmup"). A trial's id is a
hash of its parameters, so the same parameters are the same trial on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memtrain.config import SECTIONS, JobConfig, from_dict, load, merge, read_toml, section_keys
from memtrain.errors import ConfigError
from memtrain.validate import check_scalar

# Short names -> job-config keys. `dropout` is special (see _dropout).
PARAMS = {
    "lr": "optimizer.lr",
    "optimizer": "optimizer.name",
    "layers": "model.layers",
    "activation": "model.activation",
    "dropout": "model.dropout",
    "l1": "model.l1",
    "l2": "model.l2",
    "init": "model.init",
    "dtype": "model.dtype",
    "batch_size": "training.batch_size",
    "epochs": "training.epochs",
    "patience": "training.patience",
    "clip_norm": "training.clip_norm",
    "schedule": "schedule.name",
    "warmup": "schedule.warmup",
}
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
# what a sweep may rank on, and which way is better (val_rmse, val_mae, val_r2: a linear output's scores)
METRICS = {"val_loss": min, "val_accuracy": max, "val_rmse": min, "val_mae": min, "val_r2": max}
DEFAULT_PATIENCE = 5
SWEEP_KEYS = {"name", "base", "search", "space"}
SEARCH_KEYS = {"method", "trials", "seed", "metric"}


@dataclass
class Trial:
    index: int
    params: dict
    id: str = ""

    def __post_init__(self):
        self.id = self.id or trial_id(self.params)


@dataclass
class Sweep:
    name: str
    base: JobConfig
    space: dict
    method: str = "grid"
    trials: int | None = None
    seed: int = 0
    metric: str = "val_loss"
    source: str = ""
    base_text: str = field(default="", repr=False)  # canonical JSON of the base: resume refuses another base

    def base_hash(self) -> str:
        return hashlib.sha256(self.base_text.encode()).hexdigest()[:12]


def trial_id(params: dict) -> str:
    """Stable: the same parameters give the same id in any order and any run."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def load_sweep(path) -> Sweep:
    p = Path(path)
    data = read_toml(p, "sweep")
    return from_sweep_dict(data, source=str(path), default_name=p.stem, root=p.parent)


def from_sweep_dict(data: dict, *, source="", default_name="sweep", root=Path(".")) -> Sweep:
    where = f"sweep {source}: " if source else "sweep: "
    bad = set(data) - SWEEP_KEYS
    if bad:
        raise ConfigError(f"{where}unknown key(s) {', '.join(sorted(bad))}; expected {', '.join(sorted(SWEEP_KEYS))}")
    base = data.get("base")
    if base is None:
        raise ConfigError(f"{where}base: missing; give base = \"job.toml\" or an inline [base] table")
    if isinstance(base, str):
        bp = Path(base) if Path(base).is_absolute() else Path(root) / base
        cfg = load(bp)
        base_data = read_toml(bp)  # load() has read it once: it is readable UTF-8 TOML
    elif isinstance(base, dict):
        cfg = from_dict(base, source=f"{source} [base]" if source else "[base]")
        base_data = base
    else:
        raise ConfigError(f"{where}base: expected a job file path or a [base] table, got {base!r}")
    search = data.get("search", {})
    if not isinstance(search, dict):
        raise ConfigError(f"{where}[search] must be a table")
    bad = set(search) - SEARCH_KEYS
    if bad:
        raise ConfigError(f"{where}unknown key(s) in [search]: {', '.join(sorted(bad))}; "
                         f"expected {', '.join(sorted(SEARCH_KEYS))}")
    method = search.get("method", "grid")
    if method not in ("grid", "random"):
        raise ConfigError(f"{where}search.method: expected grid or random, got {method!r}")
    metric = search.get("metric", "val_loss")
    if metric not in METRICS:
        raise ConfigError(f"{where}search.metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    trials = search.get("trials")
    if method == "random":
        try:
            check_scalar(trials, "search.trials", int, min_val=1)
        except ConfigError:
            raise ConfigError(f"{where}search.trials: random search needs a positive number of trials, "
                              f"got {trials!r}") from None
    elif trials is not None:
        raise ConfigError(f"{where}search.trials: only for method = \"random\" (a grid runs every combination)")
    seed = search.get("seed", 0)
    try:
        check_scalar(seed, "search.seed", int)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}space: empty; declare at least one hyper-parameter, e.g. lr = [1e-3, 3e-4]")
    for name, values in space.items():
        _check_dimension(where, name, values, method)
    return Sweep(name=str(data.get("name", default_name)), base=cfg, space=dict(space), method=method,
                 trials=trials, seed=seed, metric=metric, source=source,
                 base_text=json.dumps(base_data, sort_keys=True, default=str))


def config_key(name: str) -> str:
    """The job-config key of a hyper-parameter: a short name or an explicit section.key."""
    if name in PARAMS:
        return PARAMS[name]
    section, _, key = name.partition(".")
    if key and (section == "optimizer" or (section in SECTIONS and key in section_keys(section))):
        return name
    raise ConfigError(f"space.{name}: unknown hyper-parameter; expected one of {', '.join(PARAMS)} "
                     f"or a job key like optimizer.beta1 or schedule.warmup")


def _check_dimension(where, name, values, method):
    config_key(name)
    if isinstance(values, list):
        if not values:
            raise ConfigError(f"{where}space.{name}: empty list; give at least one value")
        if name == "dropout":
            for v in values:
                _drop_rate(name, v)
        return
    if not isinstance(values, dict) or len(values) != 1:
        raise ConfigError(f"{where}space.{name}: expected a list of values or one distribution "
                         f"{{{' | '.join(DISTRIBUTIONS)} = [...]}}, got {values!r}")
    (kind, args), = values.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{where}space.{name}: unknown distribution {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    if method == "grid":
        raise ConfigError(f"{where}space.{name}: a distribution needs method = \"random\" in [search]; "
                         "a grid takes lists")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}space.{name}: choice needs a non-empty list")
        if name == "dropout":
            for v in args:
                _drop_rate(name, v)
        return
    if (not isinstance(args, list) or len(args) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise ConfigError(f"{where}space.{name}: {kind} needs two numbers [low, high], got {args!r}")
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{where}space.{name}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}space.{name}: log_uniform needs positive bounds, got [{low}, {high}]")
    if kind == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}space.{name}: int_uniform needs integer bounds, got [{low}, {high}]")
    if name == "dropout":
        _drop_rate(name, low)
        _drop_rate(name, high)


def expand(sweep: Sweep) -> list:
    """The trials: every combination (grid) or `trials` draws (random, seeded); a
    random draw repeating an earlier one is dropped (same id, same trial)."""
    names = list(sweep.space)
    if sweep.method == "grid":
        combos = itertools.product(*(sweep.space[n] for n in names))
        params = [dict(zip(names, c)) for c in combos]
    else:
        rng = np.random.default_rng(sweep.seed)
        params = [{n: _draw(rng, sweep.space[n]) for n in names} for _ in range(sweep.trials)]
    seen, out = set(), []
    for p in params:
        t = Trial(len(out), p)
        if t.id not in seen:
            seen.add(t.id)
            out.append(t)
    return out


def _draw(rng, dim):
    if isinstance(dim, list):
        return dim[int(rng.integers(len(dim)))]
    (kind, args), = dim.items()
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    low, high = args
    if kind == "int_uniform":
        return int(rng.integers(low, high + 1))
    if kind == "log_uniform":
        v = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        v = rng.uniform(low, high)
    return float(f"{v:.6g}")  # short, stable values in tables, ids and results.jsonl


def _drop_rate(name, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ConfigError(f"space.{name}: a drop rate in [0, 1) (the probability of dropping a hidden unit), got {p!r}")
    return float(p)


def trial_config(sweep: Sweep, trial: Trial, *, output_dir, metrics_port=None) -> JobConfig:
    """The trial's job: the base with its parameters applied, its own name, output and
    checkpoint dirs, early stopping (the base's patience or DEFAULT_PATIENCE) and
    metrics on metrics_port (the sweep's port + the trial's index) or off."""
    base = sweep.base
    overrides = {}
    for key, value in trial.params.items():
        if key == "dropout":
            # a drop rate p of hidden units: keep probability 1 - p, inputs kept; 0 is no dropout
            p = _drop_rate(key, value)
            value = False if p == 0 else [1.0, 1.0 - p]
        overrides[config_key(key)] = value
    d = Path(output_dir) / "trials" / trial.id
    overrides.update({
        "name": f"{sweep.name}-{trial.id}", "output": {"dir": str(d)},
        "checkpoint.dir": str(d / "checkpoints"), "checkpoint.resume": True,
        "training.patience": base.training.patience or DEFAULT_PATIENCE,
        "metrics": {} if metrics_port is None else {**base.to_dict()["metrics"], "port": metrics_port + trial.index},
    })
    cfg = merge(base, overrides)
    return dataclasses.replace(cfg, source=f"{sweep.source or 'sweep'} trial {trial.id}")
