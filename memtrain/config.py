"""Job files (TOML) as a typed JobConfig: one frozen dataclass per section, each
owning its defaults and the checks of its values.

Unknown sections and keys are errors that name them (typos are common), and
malformed TOML reports its line and column. Command-line flags override the
file through `merge` (the one place that does it); `to_dict`/`from_dict`
round-trip exactly, as JSON (the service stores configs and ships them to
workers).

    name = "digits"
    seed = 0
    device = "auto"
    priority = 0                 # memtrain serve: higher starts first

    [model]
    layers = [64, 128, 10]
    activation = "relu"          # see memtrain.nn.activations.ACTIVATIONS
    output = "softmax"           # softmax | sigmoid | linear
    dropout = false              # true (keep 0.8/0.5) or [input_keep, hidden_keep]
    dtype = "float32"

    [optimizer]
    name = "adam"                # any of memtrain.OPTIMIZERS, or "lookahead:<inner>"
    lr = 0.001                   # further keys: that optimizer's hyper-parameters

    [schedule]
    name = "cosine"
    warmup = 100

    [training]
    batch_size = 32
    epochs = 30
    patience = 5
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from memtrain.errors import ConfigError
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer
from memtrain.optim.schedules import make_schedule
from memtrain.units import MAX_BATCH, MAX_DURATION, MAX_EPOCHS, parse_bytes, parse_duration
from memtrain.validate import check_scalar

DEFAULT_NAME = "memtrain"
MAX_LINGER = 3600.0  # seconds


def _set(obj, name, value):
    object.__setattr__(obj, name, value)  # frozen dataclasses normalise in __post_init__


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple | None = None  # None: must come from a flag
    activation: str = "relu"
    output: str = "softmax"
    dropout: bool | tuple | None = None  # None/False off, True the course's 0.8/0.5, or (input, hidden) keep
    init: str = "auto"
    bias_init: float = 0.0
    dtype: str = "float32"
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self):
        _set(self, "layers", _tuple(self.layers))
        _set(self, "dropout", _tuple(self.dropout))
        if self.layers is not None:
            self.spec()  # names, sizes and dtype fail here, before anything runs

    def spec(self):
        if self.layers is None:
            raise ConfigError("model.layers: missing; expected a list like [784, 128, 10]")
        return ModelSpec.create(self.layers, activation=self.activation, output=self.output, dropout=self.dropout,
                                init=self.init, bias_init=self.bias_init, dtype=self.dtype, l1=self.l1, l2=self.l2)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    hyper: tuple = ()  # that optimizer's hyper-parameters as sorted (key, value) pairs; a dict is accepted

    def __post_init__(self):
        _set(self, "name", str(self.name))
        items = self.hyper.items() if isinstance(self.hyper, dict) else self.hyper
        _set(self, "hyper", tuple(sorted((str(k), _tuple(v)) for k, v in items)))  # hashable, picklable
        self.make()  # bad names and hyper-parameters fail here

    def make(self):
        return make_optimizer(self.name, **dict(self.hyper))

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.hyper}}

    @classmethod
    def from_dict(cls, d: dict) -> "OptimizerConfig":
        d = dict(d)
        return cls(d.pop("name", "adam"), d)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "constant"
    warmup: int = 0
    milestones: tuple = (30, 60, 90)
    gamma: float | None = None
    period: int | None = None
    mult: float = 1.0
    total_steps: int | None = None  # None: the job's epochs x steps per epoch

    def __post_init__(self):
        _set(self, "milestones", _tuple(self.milestones))
        self.make(1e-3, self.total_steps or 1)  # a bad schedule fails before the data is loaded

    def make(self, lr, total_steps):
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs["total_steps"] = self.total_steps or total_steps
        return make_schedule(kwargs.pop("name"), lr, **kwargs)


def _batch(name, value, *, allow_none=False):
    if value == "auto" or (value is None and allow_none):
        return value
    try:
        value = check_scalar(value, name, int, min_val=1)
    except ConfigError:
        raise ConfigError(f"{name}: expected auto or a positive integer, got {value!r}") from None
    return _at_most(name, value, MAX_BATCH)


def _at_most(name, value, limit):
    """The upper bound apart from the type check, so that check's message stays the plain one."""
    if value is not None and value > limit:
        raise ConfigError(f"{name}: expected at most {limit:,}, got {value!r}")
    return value


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int | str = 32  # or "auto": the largest that fits, probed
    max_batch_size: int | None = None
    micro_batch_size: int | str | None = None  # or "auto"; None: no accumulation
    epochs: int = 10
    clip_norm: float | None = None
    patience: int | None = None  # early stopping (keeps the best weights)
    max_nonfinite: int = 10
    memory_limit: int | None = None  # bytes; a job file may say "2GiB"
    measure: str = "sampled"  # CPU: tracemalloc on the first steps ("sampled"), every step ("exact") or "off"
    cuda_graph: bool | None = None  # replay the GPU step as a CUDA graph; None: on where supported, never on the CPU
    tf32: bool = False  # TF32 Tensor Cores for float32 matmuls on a GPU
    fused: bool | str = "auto"  # CPU: memtrain's fused kernels (numba); false: the NumPy reference; auto: by size
    max_runtime: float | None = None  # seconds (a job file may say "2h"): stop with a checkpoint after this long

    def __post_init__(self):
        _set(self, "batch_size", _batch("training.batch_size", self.batch_size))
        _set(self, "micro_batch_size", _batch("training.micro_batch_size", self.micro_batch_size, allow_none=True))
        _set(self, "max_batch_size", check_scalar(self.max_batch_size, "training.max_batch_size", int, min_val=1,
                                                  max_val=MAX_BATCH, allow_none=True))
        _set(self, "epochs", _at_most("training.epochs", check_scalar(self.epochs, "training.epochs", int, min_val=1),
                                      MAX_EPOCHS))
        _set(self, "clip_norm", check_scalar(self.clip_norm, "training.clip_norm", float, min_val=0,
                                             include_boundaries="neither", allow_none=True))
        _set(self, "patience", check_scalar(self.patience, "training.patience", int, min_val=1, allow_none=True))
        _set(self, "max_nonfinite", check_scalar(self.max_nonfinite, "training.max_nonfinite", int, min_val=1))
        if self.memory_limit is not None:
            _set(self, "memory_limit", parse_bytes(self.memory_limit, "training.memory_limit"))
        _set(self, "measure", _measure(self.measure))
        _set(self, "cuda_graph", _bool("training.cuda_graph", self.cuda_graph, allow_none=True))
        _set(self, "tf32", _bool("training.tf32", self.tf32))
        _set(self, "fused", self.fused if self.fused == "auto" and isinstance(self.fused, str)
             else _bool("training.fused", self.fused, expected='true, false or "auto"'))
        if self.max_runtime is not None:
            _set(self, "max_runtime", parse_duration(self.max_runtime, "training.max_runtime"))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    label_column: str | None = None
    validation: float = 0.2
    validation_dataset: str | None = None
    test: float = 0.2
    standardize: bool = True
    resident_share: float = 0.25  # CUDA: the data set is kept on the device up to this share of the budget

    def __post_init__(self):
        _set(self, "dataset", str(self.dataset))
        _set(self, "standardize", _bool("data.standardize", self.standardize))
        _set(self, "resident_share", check_scalar(self.resident_share, "data.resident_share", float, min_val=0,
                                                  max_val=1))


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str | None = None  # default OUTPUT_DIR/checkpoints
    every_steps: int = 0
    every_minutes: float = 10.0
    min_interval: float = 10.0  # seconds between epoch-end checkpoints (0: every epoch); the last epoch always
    keep: int = 3
    resume: bool = True

    def __post_init__(self):
        _set(self, "dir", None if self.dir is None else str(self.dir))
        _set(self, "every_steps", check_scalar(self.every_steps, "checkpoint.every_steps", int, min_val=0))
        _set(self, "every_minutes", check_scalar(self.every_minutes, "checkpoint.every_minutes", float, min_val=0))
        _set(self, "min_interval", check_scalar(self.min_interval, "checkpoint.min_interval", float, min_val=0,
                                                max_val=MAX_DURATION))
        _set(self, "keep", check_scalar(self.keep, "checkpoint.keep", int, min_val=1))
        _set(self, "resume", _bool("checkpoint.resume", self.resume))


@dataclass(frozen=True)
class MetricsConfig:
    port: int | None = None  # None: no metrics; 0: any free port
    host: str = "127.0.0.1"
    linger: float = 0.0  # seconds the final metrics stay served after the job ends

    def __post_init__(self):
        _set(self, "port", check_scalar(self.port, "metrics.port", int, min_val=0, max_val=65535, allow_none=True))
        _set(self, "host", str(self.host))
        # a final scrape needs a scrape interval or two; an endless linger would hold the job's memory for ever
        _set(self, "linger", _at_most("metrics.linger", check_scalar(self.linger, "metrics.linger", float, min_val=0),
                                      MAX_LINGER))


@dataclass(frozen=True)
class OutputConfig:
    dir: str | None = None  # default runs/NAME

    def __post_init__(self):
        _set(self, "dir", None if self.dir is None else str(self.dir))


def _measure(value) -> str:
    """training.measure: "sampled", "exact" or "off"; true means the default (sampled), false off."""
    if value is True or value is False:
        return "sampled" if value else "off"
    if value not in ("sampled", "exact", "off"):
        raise ConfigError(f"training.measure: expected sampled, exact, off, true or false, got {value!r}")
    return value


def _bool(name, value, *, allow_none=False, expected="true or false") -> bool | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")
    return value


# training.fused = "auto": the fused CPU kernels from this many parameters on. Below it the NumPy
# reference path runs: importing numba and loading its target context costs ~1-2 s per process,
# while for the demo's 9,610-parameter model the kernels save ~10-30 us of a step (900 steps:
# < 0.05 s); at ~200k parameters they save ~1 ms a step (docs/benchmarks.md, "A small job's fixed cost")
FUSED_MIN_PARAMETERS = 100_000


def fused_for(value, spec) -> bool:
    """training.fused as the step runs it: true, false, or "auto" by the model's size. The plan
    (its scratch buffers) and the trainer both take it from here, so the plan stays exact."""
    return spec.n_params >= FUSED_MIN_PARAMETERS if value == "auto" else bool(value)


SECTIONS = {"model": ModelConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
            "training": TrainingConfig, "data": DataConfig, "checkpoint": CheckpointConfig,
            "metrics": MetricsConfig, "output": OutputConfig}
TOP_LEVEL = ("name", "seed", "device", "priority")
PRIORITY_RANGE = 10**6


def section_keys(section: str) -> set | None:
    """The keys a section takes (None: any, for the optimizer's hyper-parameters)."""
    if section == "optimizer":
        return None
    return {f.name for f in dataclasses.fields(SECTIONS[section])}


@dataclass(frozen=True)
class JobConfig:
    name: str = DEFAULT_NAME
    seed: int = 0
    device: str = "auto"
    priority: int = 0  # memtrain serve only: higher starts first (memtrain train ignores it)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: str = field(default="", compare=False)  # where it came from, for messages only

    def __post_init__(self):
        _set(self, "name", str(self.name))
        _set(self, "seed", check_scalar(self.seed, "seed", int, min_val=0, expected="a non-negative integer"))
        _set(self, "device", str(self.device))
        _set(self, "priority", check_scalar(self.priority, "priority", int, min_val=-PRIORITY_RANGE,
                                            max_val=PRIORITY_RANGE,
                                            expected=f"an integer from {-PRIORITY_RANGE} to {PRIORITY_RANGE}"))

    @property
    def fused(self) -> bool:
        """Whether a CPU step runs the fused kernels (training.fused, "auto" resolved by size)."""
        return fused_for(self.training.fused, self.model_spec())

    def model_spec(self):
        return self.model.spec()

    def optimizer_name(self) -> str:
        return self.optimizer.name

    def optimizer_hyper(self) -> dict:
        return dict(self.optimizer.hyper)

    @property
    def output_dir(self) -> Path:
        """output.dir, else runs/NAME; a job without a name gets runs/memtrain-<hash of what it trains>, so
        two different flag-only jobs never share (and refuse) one checkpoint directory."""
        if self.output.dir:
            return Path(self.output.dir)
        return Path(f"runs/{DEFAULT_NAME}-{self.run_hash()}" if self.named_by_hash else f"runs/{self.name}")

    @property
    def named_by_hash(self) -> bool:
        """No name and no output.dir: the run's directory is named by run_hash()."""
        return self.name == DEFAULT_NAME and not self.output.dir

    def run_hash(self) -> str:
        """8 hex digits naming what the job trains: model, optimizer, schedule, data, seed and batch (not
        the epochs, so `--epochs M` trains the same run on; not where it writes or what it serves)."""
        d = self.to_dict()
        t = d["training"]
        what = {k: d[k] for k in ("model", "optimizer", "schedule", "data", "seed", "device")}
        what["training"] = {k: t[k] for k in ("batch_size", "micro_batch_size", "max_batch_size", "memory_limit")}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or self.output_dir / "checkpoints")

    def to_dict(self) -> dict:
        """Every setting, defaults included, as JSON-ready values (lists, not tuples)."""
        out = {k: getattr(self, k) for k in TOP_LEVEL}
        for name in SECTIONS:
            sec = getattr(self, name)
            d = sec.to_dict() if hasattr(sec, "to_dict") else dataclasses.asdict(sec)
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "") -> "JobConfig":
        return from_dict(data, source)

    def with_overrides(self, overrides: dict) -> "JobConfig":
        return merge(self, overrides)


def load(path) -> JobConfig:
    """Parse and validate a job file; ConfigError with file, key and what was expected."""
    return from_dict(read_toml(path, "config"), source=str(path))


def read_toml(path, what: str = "config") -> dict:
    """A TOML file as a dict; ConfigError naming `what` and the file when it cannot be read,
    is not UTF-8 text (TOML is UTF-8 only: a binary or Latin-1 file), or is not valid TOML."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: invalid TOML: {exc}") from None


def from_dict(data: dict, source: str = "") -> JobConfig:
    where = f"config {source}: " if source else "config: "
    _check_keys(data, where)
    try:
        sections = {name: _section(name, data.get(name, {})) for name in SECTIONS}
        return JobConfig(**{k: data[k] for k in TOP_LEVEL if k in data}, **sections, source=source)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}" if source else str(exc)) from None


def _section(name, d):
    cls = SECTIONS[name]
    if hasattr(cls, "from_dict"):
        return cls.from_dict(d)
    return cls(**d)


def _check_keys(data, where):
    allowed = set(TOP_LEVEL) | set(SECTIONS)
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{where}unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(allowed))}")
    for section in SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{where}[{section}] must be a table")
        keys = section_keys(section)
        bad = set(data.get(section, {})) - keys if keys is not None else set()
        if bad:
            raise ConfigError(f"{where}unknown key(s) in [{section}]: {', '.join(sorted(bad))}; "
                              f"expected {', '.join(sorted(keys))}")


def merge(cfg: JobConfig, overrides: dict) -> JobConfig:
    """A new JobConfig with `overrides` applied: "section.key" (or a top-level key) -> value,
    None meaning "not given" (the value stays). A section name replaces the whole section
    with the given table. A different "optimizer.name" drops the old optimizer's
    hyper-parameters (they were for that optimizer); an "optimizer.lr" beside it stays."""
    data = cfg.to_dict()
    given = {k: v for k, v in overrides.items() if v is not None}
    new_opt = given.get("optimizer.name")
    if new_opt is not None and new_opt != cfg.optimizer.name:
        data["optimizer"] = {"name": new_opt}
    for key, value in given.items():
        section, _, name = key.rpartition(".")
        if not section:
            data[name] = dict(value) if name in SECTIONS else value
        else:
            data[section][name] = list(value) if isinstance(value, tuple) else value
    # an error names the flag's key, not the file the other values came from
    return dataclasses.replace(from_dict(data), source=cfg.source)
