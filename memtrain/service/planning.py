"""The service's one bridge to memtrain's job API: validate, plan, place run paths.

Everything the service knows about job configs, data sets and memory plans goes
through this module (memtrain.config, memtrain.memory.estimate/plan, the job's
defaults), so the rest of the service handles plain dicts and byte counts.

- `parse_body`: a submission's bytes (TOML or JSON) -> dict.
- `validate`: dict -> a checked job (name sanitised, data paths confined to the
  data roots, service-owned keys refused), with the rows of its data set.
- `plan`: bytes by category at its batch (or at batch 1 for `batch_size = "auto"`),
  and `largest_batch` under a byte budget (the "never fits" message and the auto
  batch solved at start time).
- `launch_config`: the config the worker runs: checkpoint/output dirs under the
  job's run dir, the service's metrics port, the chosen batch.
"""

from __future__ import annotations

import json
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.units import format_bytes

SERVICE_KEYS = {("checkpoint", "dir"), ("output", "dir"), ("metrics", "port"), ("metrics", "host")}
BUILTIN_PREFIXES = ("digits", "synthetic:")
NAME_MAX = 64


class SubmissionError(MemtrainError):
    """A job the service refuses at submission (HTTP 422, exit 2 in the CLI)."""


class NeverFits(SubmissionError):
    """The job's plan exceeds every device's budget, even alone."""


@dataclass(frozen=True)
class Checked:
    """A validated submission: `config` is the JSON form the worker will run."""

    name: str
    config: dict
    device_kind: str  # cpu | cuda
    batch: object  # int or "auto"
    max_batch: int  # the data set's training rows, or training.max_batch_size if smaller
    rows: tuple  # (n_train, n_val) of the data set, as the job will split it
    data_bytes: int


@dataclass(frozen=True)
class Plan:
    by_category: dict
    total: int
    batch_size: int | None  # None for auto (the plan is then the one at batch 1)
    min_total: int  # the plan at batch 1


# -- parsing and validation --------------------------------------------------------------


def parse_body(body: bytes, content_type: str) -> dict:
    kind = (content_type or "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("body: expected UTF-8 text (a TOML job file or its JSON form)") from None
    if kind in ("application/toml", "text/toml", "application/x-toml"):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SubmissionError(f"body: invalid TOML: {exc}") from None
    elif kind in ("application/json", ""):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SubmissionError(f"body: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    else:
        raise SubmissionError(f"Content-Type: expected application/toml or application/json, got {kind!r}")
    if not isinstance(data, dict):
        raise SubmissionError(f"body: expected a table/object of job settings, got {type(data).__name__}")
    return data


def sanitize_name(name) -> str:
    """Letters, digits, '.', '_' and '-' only (it becomes a label and part of file names)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")[:NAME_MAX]
    return text or "job"


def validate(data: dict, *, data_roots=(), device_kinds=("cpu",)) -> Checked:
    """Check a submitted job as the worker would, before anything is written.
    Raises SubmissionError naming the field and what was expected."""
    from memtrain import config  # noqa: PLC0415

    data = _without_service_keys(data)
    if isinstance(data.get("checkpoint"), dict) and data["checkpoint"].get("resume", True) is not True:
        raise SubmissionError("checkpoint.resume: the service resumes retried jobs from their checkpoints; "
                              "expected true or unset")
    try:
        cfg = config.from_dict(data)
        cfg.name = sanitize_name(cfg.name if "name" in data else "job")
        kind = _device_kind(cfg.device, device_kinds)
        _check_job(cfg)
        _confine_data(cfg, data_roots)
        n_train, n_val, data_bytes = _rows(cfg)
    except SubmissionError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise SubmissionError(str(exc).removeprefix("config: ")) from None
    batch = _batch(cfg.training.get("batch_size", 32))
    cap = cfg.training.get("max_batch_size")
    max_batch = n_train if cap is None else min(_positive("training.max_batch_size", cap), n_train)
    return Checked(cfg.name, _to_dict(cfg), kind, batch, max_batch, (n_train, n_val), data_bytes)


def _without_service_keys(data: dict) -> dict:
    """The job file less what the service sets for every job: a file written for `memtrain train`
    (with its own checkpoint/output dirs and metrics port) is accepted as it is, and its paths are
    replaced by ones under the state dir (launch_config)."""
    out = dict(data)
    for section, key in SERVICE_KEYS:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def to_json(checked: Checked) -> dict:
    return {"name": checked.name, "config": checked.config, "device_kind": checked.device_kind,
            "batch": checked.batch, "max_batch": checked.max_batch, "rows": list(checked.rows),
            "data_bytes": checked.data_bytes}


def restore(job: dict) -> Checked:
    """The Checked of a stored job (its `checked` column)."""
    d = dict(job["checked"])
    d["rows"] = tuple(d["rows"])
    return Checked(**d)


def _to_dict(cfg) -> dict:
    out = {"name": cfg.name, "seed": cfg.seed, "device": cfg.device}
    for section in ("model", "optimizer", "schedule", "training", "data", "checkpoint", "metrics", "output"):
        value = getattr(cfg, section)
        if value:
            out[section] = dict(value)
    return out


def _device_kind(device: str, kinds) -> str:
    text = str(device).strip().lower()
    want = "cuda" if text.startswith("cuda") or text == "gpu" else ("cpu" if text == "cpu" else None)
    if text not in ("auto", "cpu", "cuda", "gpu") and not re.fullmatch(r"cuda:\d+", text):
        raise SubmissionError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if want is None:
        return "cuda" if "cuda" in kinds else "cpu"
    if want not in kinds:
        raise SubmissionError(f"device: {device!r} asked for, but this service runs jobs on {', '.join(kinds)}")
    return want


def _check_job(cfg) -> None:
    """What the job checks before its first step, here so a bad job is a 422, not a failed run."""
    from memtrain.optim import make_optimizer  # noqa: PLC0415
    from memtrain.train.job import DEFAULTS, _schedule  # noqa: PLC0415

    cfg.model_spec()
    lr = make_optimizer(cfg.optimizer_name(), **cfg.optimizer_hyper()).lr
    _schedule(cfg, lr, 1)
    t = {**DEFAULTS["training"], **cfg.training}
    _positive("training.epochs", t["epochs"])
    for key in ("patience",):
        if t[key] is not None:
            _positive(f"training.{key}", t[key])
    micro = t["micro_batch_size"]
    if micro is not None:
        _positive("training.micro_batch_size", micro)  # "auto" is the job's own probe: not in a shared budget
    c = {**DEFAULTS["checkpoint"], **cfg.checkpoint}
    _positive("checkpoint.keep", c["keep"])
    if isinstance(c["every_steps"], bool) or not isinstance(c["every_steps"], int) or c["every_steps"] < 0:
        raise SubmissionError(f"checkpoint.every_steps: expected an integer >= 0, got {c['every_steps']!r}")


def _batch(value):
    if value == "auto":
        return "auto"
    return _positive("training.batch_size", value, extra=' or "auto"')


def _positive(field, value, extra="") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SubmissionError(f"{field}: expected a positive integer{extra}, got {value!r}")
    return value


def _confine_data(cfg, roots) -> None:
    """Data files must lie under a --data-root (after resolving symlinks); relative paths
    are relative to the first root. Rewrites them to absolute paths for the worker."""
    for key in ("dataset", "validation_dataset"):
        source = cfg.data.get(key)
        if source is None or (key == "dataset" and source == "digits"):
            continue
        if not isinstance(source, str):
            raise SubmissionError(f"data.{key}: expected a source string, got {source!r}")
        if source.strip().startswith(BUILTIN_PREFIXES):
            continue
        parts = [p.strip() for p in source.split(",")]
        cfg.data[key] = ",".join(str(_confined(f"data.{key}", p, roots)) for p in parts)


def _confined(field: str, text: str, roots) -> Path:
    if not roots:
        raise SubmissionError(f"{field}: {text!r} is a file, and this service reads no files (start it with "
                              "--data-root DIR); built-in sources: digits, synthetic:...")
    resolved_roots = [Path(r).resolve() for r in roots]
    p = Path(text)
    path = (p if p.is_absolute() else resolved_roots[0] / p).resolve()
    if not any(path == r or path.is_relative_to(r) for r in resolved_roots):
        raise SubmissionError(f"{field}: {text!r} is outside the data roots ({', '.join(map(str, resolved_roots))})")
    return path


_ROWS_CACHE: dict = {}
_ROWS_LOCK = threading.Lock()


def _rows(cfg) -> tuple:
    """(n_train, n_val, bytes) of the job's data set, split as the job splits it. Loaded once
    per distinct data setting (50 submissions of one data set load it once)."""
    from memtrain.select.compare import load_data  # noqa: PLC0415
    from memtrain.train.job import DEFAULTS  # noqa: PLC0415

    spec = cfg.model_spec()
    data = {**DEFAULTS["data"], **cfg.data}
    key = json.dumps([data, cfg.seed, spec.dtype.name, spec.output.name, spec.sizes[-1]], sort_keys=True,
                     default=str)
    with _ROWS_LOCK:
        if key not in _ROWS_CACHE:
            ds = load_data(cfg)
            nbytes = sum(a.nbytes for a in (ds.X_train, ds.y_train, ds.X_val, ds.y_val) if a is not None)
            _ROWS_CACHE[key] = (len(ds.X_train), 0 if ds.X_val is None else len(ds.X_val), nbytes, ds.n_features,
                                ds.name)
            if len(_ROWS_CACHE) > 256:
                _ROWS_CACHE.pop(next(iter(_ROWS_CACHE)))
        n_train, n_val, nbytes, n_features, name = _ROWS_CACHE[key]
    if n_features != spec.sizes[0]:
        raise SubmissionError(f"model.layers: the first size must equal the data's {n_features} features ({name}), "
                              f"got {spec.sizes[0]}")
    return n_train, n_val, nbytes


# -- plans ----------------------------------------------------------------------------------------


def _plan_fn(checked: Checked, resident: bool):
    from memtrain import config  # noqa: PLC0415
    from memtrain.memory.plan import training_plan  # noqa: PLC0415

    cfg = config.from_dict(checked.config)
    spec = cfg.model_spec()
    opt_name, hyper = cfg.optimizer_name(), cfg.optimizer_hyper()
    from memtrain.optim import make_optimizer  # noqa: PLC0415

    micro = cfg.training.get("micro_batch_size")
    rows = checked.rows if resident else None

    def plan(b):
        return training_plan(spec, make_optimizer(opt_name, **hyper), b, checked.device_kind,
                             micro_batch_size=None if micro is None else min(micro, b),
                             keep_best=bool(cfg.training.get("patience")), resident_rows=rows,
                             dataset_size=rows[0] if rows else None)

    return plan


def resident(checked: Checked, budget: int) -> bool:
    """As the job decides: always on the CPU; on a GPU when the data takes at most
    data.resident_share of the budget (the worker gets the same budget as memory_limit)."""
    if checked.device_kind == "cpu":
        return True
    share = float(checked.config.get("data", {}).get("resident_share", 0.25))
    return checked.data_bytes <= share * budget


def plan(checked: Checked, budget: int) -> Plan:
    fn = _plan_fn(checked, resident(checked, budget))
    one = fn(1)
    if checked.batch == "auto":
        return Plan(one.by_category(), one.total, None, one.total)
    p = fn(checked.batch)
    return Plan(p.by_category(), p.total, checked.batch, one.total)


def plan_at(checked: Checked, budget: int, batch: int) -> Plan:
    fn = _plan_fn(checked, resident(checked, budget))
    p = fn(batch)
    return Plan(p.by_category(), p.total, batch, fn(1).total)


def largest_batch(checked: Checked, budget: int, free: int) -> int:
    """The largest batch (capped by the data set and max_batch_size; a multiple of 8 on a GPU
    when that leaves one) whose plan fits `free` bytes; 0 when not even batch 1 does."""
    from memtrain.memory.batch import largest_batch as solve  # noqa: PLC0415

    fn = _plan_fn(checked, resident(checked, budget))
    fit = solve(lambda b: fn(b).total, free)
    b = min(fit.batch_size, checked.max_batch)
    if checked.device_kind == "cuda" and b >= 8:
        b -= b % 8
    return b


def never_fits_message(checked: Checked, p: Plan, overhead: int, budgets: dict) -> str:
    """Why the job cannot run on any device even alone, naming the largest batch that would."""
    device, budget = max(budgets.items(), key=lambda kv: kv[1])
    need = p.total + overhead
    room = budget - overhead
    best = largest_batch(checked, budget, room) if room > 0 else 0
    at = f"batch {p.batch_size}" if p.batch_size else "batch 1"
    hint = f"the largest batch that fits is {best}" if best else "not even batch 1 fits"
    return (f"never fits: needs {format_bytes(need)} at {at} (plan {format_bytes(p.total)} + process overhead "
            f"{format_bytes(overhead)}); the largest budget is {format_bytes(budget)} on {device}; {hint}")


def launch_config(config: dict, run_dir, *, batch: int, memory_limit: int, metrics_port: int | None,
                  metrics_host: str = "127.0.0.1") -> dict:
    """The config the worker runs: everything it writes goes under `run_dir`."""
    run_dir = Path(run_dir)
    out = json.loads(json.dumps(config))
    out.setdefault("training", {})["batch_size"] = int(batch)
    user_limit = out["training"].get("memory_limit")
    if user_limit is None:
        out["training"]["memory_limit"] = int(memory_limit)
    out["checkpoint"] = {**out.get("checkpoint", {}), "dir": str(run_dir / "checkpoints"), "resume": True}
    out["output"] = {"dir": str(run_dir / "output")}
    out["metrics"] = {**out.get("metrics", {})}
    if metrics_port is not None:
        out["metrics"].update(port=int(metrics_port), host=metrics_host)
    return out


def device_of(kind: str, name: str) -> str:
    """The device string a worker gets: CUDA_VISIBLE_DEVICES names the GPU, so it is cuda:0."""
    return "cuda:0" if kind == "cuda" else "cpu"


def probe_config(run_dir) -> dict:
    """The tiny job the per-process overhead is measured with: metrics on, like every service job, and
    the digits data set, so scikit-learn's loaders are in the process as in most jobs."""
    run_dir = Path(run_dir)
    return {"name": "overhead-probe", "seed": 0, "device": "cpu",
            "model": {"layers": [64, 8, 10]}, "optimizer": {"name": "sgd", "lr": 0.1},
            "training": {"batch_size": 16, "epochs": 2},
            "data": {"dataset": "digits"},
            "checkpoint": {"dir": str(run_dir / "checkpoints")}, "output": {"dir": str(run_dir / "output")},
            "metrics": {"port": 0, "host": "127.0.0.1"}}
