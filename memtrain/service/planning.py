"""The service's one bridge to memtrain's job API: validate, plan, place run paths.

Everything the service knows about job configs, data sets and memory plans goes
through this module (the typed JobConfig, train/jobplan.py's data rows, cap and plan),
so the rest of the service handles plain dicts (JobConfig.to_dict) and byte counts.

- `parse_body`: a submission's bytes (TOML or JSON) -> the pydantic JobSubmission (`submission`).
- `validate`: dict -> a checked job (name sanitised, data paths confined to the
  data roots, service-owned keys refused), with the rows of its data set.
- `plan`: bytes by category at its batch (or at batch 1 for `batch_size = "auto"`),
  as plan_job plans it, and `largest_batch` under a byte budget (the "never fits" message and the auto
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

from memtrain.config import JobConfig
from memtrain.errors import DataError, MemtrainError
from memtrain.memory.batch import largest_batch as solve_batch
from memtrain.units import format_bytes, format_duration

SERVICE_KEYS = {("checkpoint", "dir"), ("output", "dir"), ("metrics", "port"), ("metrics", "host")}
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
    rows: tuple  # (n_train, n_val, n_test) of the data set, as the job will split it (2 in older stores)
    data_bytes: int


@dataclass(frozen=True)
class Plan:
    by_category: dict
    total: int
    batch_size: int | None  # None for auto (the plan is then the one at batch 1)
    min_total: int  # the plan at batch 1


# -- parsing and validation --------------------------------------------------------------

MAX_DEPTH = 16  # a job file nests 3 deep ([optimizer] hyper-parameters holding a list)
_TOO_DEEP = f"body: nested more than {MAX_DEPTH} levels deep; a job file is a few tables of plain values"


def parse_body(body: bytes, content_type: str):
    """The body, JSON or TOML, parsed and validated by the JobSubmission model (one line per error)."""
    return submission(_parse(body, content_type))


def parse_data(body: bytes, content_type: str) -> dict:
    """The body, JSON or TOML, as a dict (a sweep file's too): one line per error (SubmissionError)."""
    return _parse(body, content_type)


def _parse(body: bytes, content_type: str) -> dict:
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
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            raise SubmissionError(_TOO_DEEP) from None
    elif kind in ("application/json", ""):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SubmissionError(f"body: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:  # json's C decoder stops at the interpreter's recursion limit
            raise SubmissionError(_TOO_DEEP) from None
    else:
        raise SubmissionError(f"Content-Type: expected application/toml or application/json, got {kind!r}")
    if not isinstance(data, dict):
        raise SubmissionError(f"body: expected a table/object of job settings, got {type(data).__name__}")
    if _depth(data) > MAX_DEPTH:  # what parses may still be too deep for the recursive checks after it
        raise SubmissionError(_TOO_DEEP)
    return data


def submission(data: dict):
    """`data` through the pydantic JobSubmission (strict types, no unknown top-level key); its first
    error as one line naming the field, in the job file's own words (SubmissionError)."""
    from pydantic import ValidationError  # noqa: PLC0415

    from memtrain.service.models import JobSubmission  # noqa: PLC0415 - the service's models, not the core's

    try:
        return JobSubmission.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        typed = errors[0]["type"] not in ("extra_forbidden", "missing", "dict_type")
        line = typed and _job_words(data)  # the job's own check names ranges ("from -1000000 to ...")
        raise SubmissionError(line or _first_error(errors, JobSubmission.model_fields)) from None


def _job_words(data: dict) -> str | None:
    """The job file's own check's line for `data` (what `memtrain train` would say), or None."""
    try:
        JobConfig.from_dict(_without_service_keys(data))
    except (ValueError, TypeError, KeyError) as exc:  # MemtrainError is a ValueError
        return str(exc).removeprefix("config: ")
    return None


def first_error(errors: list, fields) -> str:
    """One line for pydantic's errors of any submission model (a job's, a sweep's)."""
    return _first_error(errors, fields)


_EXPECTED = {"int_type": "an integer", "string_type": "a string"}


def _first_error(errors: list, fields) -> str:
    """One line for pydantic's errors: unknown keys first (as the job file's own check words them)."""
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return f"unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(fields))}"
    e = errors[0]
    field = ".".join(map(str, e["loc"]))
    if e["type"] == "missing":
        return f"{field}: missing; expected {fields[field].description or 'a value'}"
    if e["type"] == "dict_type":
        return f"[{field}] must be a table, got {_short(e['input'])}"
    return f"{field}: expected {_EXPECTED.get(e['type'], e['msg'])}, got {_short(e['input'])}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _depth(value) -> int:
    """How deeply lists and dicts nest in `value` (iterative: the value may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def sanitize_name(name) -> str:
    """Letters, digits, '.', '_' and '-' only (it becomes a label and part of file names)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip(".-")[:NAME_MAX]
    return text or "job"


def validate(data: dict, *, data_roots=(), device_kinds=("cpu",), max_runtime: float | None = None) -> Checked:
    """Check a submitted job as the worker would, before anything is written.
    Raises SubmissionError naming the field and what was expected."""
    data = _without_service_keys(data)
    if isinstance(data.get("checkpoint"), dict) and data["checkpoint"].get("resume", True) is not True:
        raise SubmissionError("checkpoint.resume: the service resumes retried jobs from their checkpoints; "
                              "expected true or unset")
    try:
        cfg = JobConfig.from_dict(data)
        cfg = cfg.with_overrides({"name": sanitize_name(cfg.name if "name" in data else "job")})
        kind = _device_kind(cfg.device, device_kinds)
        _check_job(cfg)
        cfg = _bound_runtime(cfg, max_runtime)
        cfg = _confine_data(cfg, data_roots)
        rows = _data_rows(cfg)
    except SubmissionError:
        raise
    except DataError as exc:  # the line without the file's contents: the client may not read the file
        raise SubmissionError(exc.public) from None
    except (ValueError, TypeError, KeyError) as exc:  # MemtrainError is a ValueError
        raise SubmissionError(str(exc).removeprefix("config: ")) from None
    from memtrain.train.jobplan import batch_cap  # noqa: PLC0415 - the trainer loads with the first job

    t = cfg.training
    max_batch = batch_cap(rows.n_train, t.max_batch_size)
    return Checked(cfg.name, cfg.to_dict(), kind, t.batch_size, max_batch, (rows.n_train, rows.n_val, rows.n_test),
                   rows.nbytes)


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


def restore(job) -> Checked:
    """The Checked of a stored job (its `checked` column)."""
    d = dict(job.checked)
    d["rows"] = tuple(d["rows"])
    return Checked(**d)


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
    """What the job checks before its first step and JobConfig cannot (the schedule at the
    optimizer's own lr), here so a bad job is a 422, not a failed run."""
    cfg.schedule.make(cfg.optimizer.make().lr, 1)
    t = cfg.training
    if isinstance(t.batch_size, int) and isinstance(t.micro_batch_size, int) and t.micro_batch_size > t.batch_size:
        raise SubmissionError(f"training.micro_batch_size: {t.micro_batch_size} is larger than the batch size "
                              f"{t.batch_size}")  # the Job's own check, before it is queued
    if t.micro_batch_size == "auto":  # the job's own probe: it would not be in a shared budget
        raise SubmissionError('training.micro_batch_size: expected a positive integer (the service does not '
                              'probe "auto"), got \'auto\'')


def _bound_runtime(cfg, limit):
    """training.max_runtime: the service's --max-runtime for a job that sets none; a longer one is refused
    (the service's bound is the operator's, as a batch scheduler's partition time limit is)."""
    own = cfg.training.max_runtime
    if limit is None:
        return cfg
    if own is None:
        return cfg.with_overrides({"training.max_runtime": limit})
    if own > limit:
        raise SubmissionError(f"training.max_runtime: {format_duration(own)} is longer than this service allows "
                              f"(memtrain serve --max-runtime {format_duration(limit)}); expected at most that")
    return cfg


def _confine_data(cfg, roots):
    """Every data source that is not built in (data.builtin_source: "digits" exactly, or the
    synthetic: grammar, which read no file) is a path, and every path goes through `confined`.
    Returns the config with them as resolved absolute paths, so the worker opens exactly the
    files checked here (an IDX images file alone becomes the explicit pair, so its labels file,
    found beside it, is checked too)."""
    from memtrain.data import IDX_NAME, builtin_source, idx_labels_path  # noqa: PLC0415 - NumPy with the first job

    overrides = {}
    for key in ("dataset", "validation_dataset"):
        source = getattr(cfg.data, key)
        if source is None:
            continue
        if not isinstance(source, str):
            raise SubmissionError(f"data.{key}: expected a source string, got {source!r}")
        if builtin_source(source):
            continue
        field = f"data.{key}"
        paths = [confined(field, p.strip(), roots) for p in source.split(",")]
        if len(paths) == 1 and IDX_NAME.search(paths[0].name.lower().removesuffix(".gz")):
            paths.append(confined(field, str(idx_labels_path(paths[0])), roots))
        overrides[field] = ",".join(map(str, paths))
    return cfg.with_overrides(overrides) if overrides else cfg


def confined(field: str, text: str, roots) -> Path:
    """The one confinement rule: `text` (relative paths are relative to the first root) resolved,
    symlinks and '..' included, must be a root or inside one. Raises SubmissionError otherwise."""
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


def _data_rows(cfg):
    """The shape of the job's data set, split as the job splits it (train/jobplan.py data_rows).
    Loaded once per distinct data setting and model ends (50 submissions of one data set load
    it once); a data set that does not fit the model raises the job's own DataError."""
    from memtrain.train.jobplan import data_rows  # noqa: PLC0415 - the trainer and data loaders load with the first job

    spec = cfg.model_spec()
    key = json.dumps([cfg.to_dict()["data"], cfg.seed, spec.dtype.name, spec.output.name, spec.sizes[0],
                      spec.sizes[-1]], sort_keys=True, default=str)
    with _ROWS_LOCK:
        if key not in _ROWS_CACHE:
            _ROWS_CACHE[key] = data_rows(cfg)
            if len(_ROWS_CACHE) > 256:
                _ROWS_CACHE.pop(next(iter(_ROWS_CACHE)))
        return _ROWS_CACHE[key]


# -- plans ----------------------------------------------------------------------------------------


def _job_plan(checked: Checked, budget: int, batch: int):
    """train/jobplan.py plan_job at `batch` with the memory limit the worker gets (the job's own
    memory_limit, else the device's budget: launch_config), so residency is decided as the job
    decides it; the data set is not loaded again (its shape is in `checked`)."""
    from memtrain.train.jobplan import DataRows, plan_job  # noqa: PLC0415 - the trainer loads with the first job

    cfg = JobConfig.from_dict(checked.config).with_overrides({"training.batch_size": int(batch)})
    n_train, n_val, *held = checked.rows  # a job stored before the test split was planned has no n_test
    rows = DataRows(cfg.model_spec().sizes[0], n_train, n_val, checked.data_bytes, held[0] if held else 0)
    limit = cfg.training.memory_limit if cfg.training.memory_limit is not None else budget
    # the overhead is the device's, added by Device.footprint where the service admits
    return cfg, plan_job(cfg, device_kind=checked.device_kind, budget=limit, rows=rows,
                         overhead=(0, "counted by the service per device"))


def _plan_fn(checked: Checked, budget: int):
    """batch -> the MemoryPlan the worker's trainer allocates. plan_job's Setting has no
    micro-batch; a job with training.micro_batch_size plans with it, as its Trainer does."""
    cfg, jp = _job_plan(checked, budget, 1)
    s, micro = jp.setting, cfg.training.micro_batch_size
    return lambda b: s.plan(b, micro_batch_size=micro)


def plan(checked: Checked, budget: int) -> Plan:
    """The plan at the job's batch (at batch 1 for "auto": its batch is solved at start)."""
    fn = _plan_fn(checked, budget)
    one = fn(1)
    if checked.batch == "auto":
        return Plan(one.by_category(), one.total, None, one.total)
    p = fn(checked.batch)
    return Plan(p.by_category(), p.total, checked.batch, one.total)


def memory_plan(checked: Checked, budget: int) -> tuple:
    """(the MemoryPlan at the job's fixed batch, whether its data set is resident): what a trial
    array stacks (memory/trials.py array_plan) and whether the trial may join one (select/fuse.py)."""
    _, jp = _job_plan(checked, budget, checked.batch)
    return jp.plan, jp.resident


def plan_at(checked: Checked, budget: int, batch: int) -> Plan:
    fn = _plan_fn(checked, budget)
    p = fn(batch)
    return Plan(p.by_category(), p.total, batch, fn(1).total)


def largest_batch(checked: Checked, budget: int, free: int) -> int:
    """The largest batch (capped by the data set and max_batch_size, rounded as the Job rounds:
    train/jobplan.py batch_multiple) whose plan fits `free` bytes; 0 when none does."""
    from memtrain.train.jobplan import batch_multiple  # noqa: PLC0415 - the trainer loads with the first job

    fn = _plan_fn(checked, budget)
    return solve_batch(lambda b: fn(b).total, free, multiple_of=batch_multiple(checked.device_kind),
                       max_batch=checked.max_batch).batch_size


def never_fits_message(checked: Checked, p: Plan, overhead: int, budgets: dict) -> str:
    """Why the job cannot run on any device even alone, naming the largest batch that would."""
    from memtrain.train.jobplan import footprint  # noqa: PLC0415 - the trainer loads with the first job

    device, budget = max(budgets.items(), key=lambda kv: kv[1])
    need = footprint(p.total, overhead)
    room = budget - overhead  # what a plan may take beside it
    best = largest_batch(checked, budget, room) if room > 0 else 0
    at = f"batch {p.batch_size}" if p.batch_size else "batch 1"
    kind = "device" if checked.device_kind == "cuda" else "process"
    hint = f"the largest batch that fits is {best}" if best else "not even batch 1 fits"
    return (f"never fits: needs {format_bytes(need)} at {at} (plan {format_bytes(p.total)} + {kind} overhead "
            f"{format_bytes(overhead)}); the largest budget is {format_bytes(budget)} on {device}; {hint}")


def launch_config(config: dict, run_dir, *, batch: int, memory_limit: int, metrics_port: int | None,
                  metrics_host: str = "127.0.0.1", device: str | None = None) -> dict:
    """The config the worker runs (JobConfig.to_dict): everything it writes goes under `run_dir`,
    at the chosen batch, with the device's budget as its memory limit unless it set its own."""
    run_dir = Path(run_dir)
    cfg = JobConfig.from_dict(config)
    overrides = {"training.batch_size": int(batch), "checkpoint.dir": str(run_dir / "checkpoints"),
                 "checkpoint.resume": True, "output.dir": str(run_dir / "output"), "device": device}
    if cfg.training.memory_limit is None:
        overrides["training.memory_limit"] = int(memory_limit)
    if metrics_port is not None:
        overrides.update({"metrics.port": int(metrics_port), "metrics.host": metrics_host})
    return cfg.with_overrides(overrides).to_dict()


def worker_device(kind: str) -> str:
    """The device string a worker of a `kind` device gets: CUDA_VISIBLE_DEVICES (set by the scheduler)
    names its one GPU, so it is cuda:0 whichever GPU that is; the CPU is cpu."""
    return "cuda:0" if kind == "cuda" else "cpu"


def worker_env(device) -> dict:
    """What a job's worker is told besides its config: the overhead the service admitted it with (the
    process overhead on the CPU: MEMTRAIN_PROCESS_OVERHEAD; the CUDA context: MEMTRAIN_DEVICE_OVERHEAD),
    so that the job takes it from its memory_limit as the service counted it, whatever figure this
    machine's cache holds."""
    from memtrain.memory.overhead import DEVICE_OVERHEAD_VAR, PROCESS_OVERHEAD_VAR  # noqa: PLC0415

    return {PROCESS_OVERHEAD_VAR if device.kind == "cpu" else DEVICE_OVERHEAD_VAR: str(device.overhead_bytes)}
