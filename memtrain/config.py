"""Job files (TOML): the model, optimizer, schedule and training settings.

Unknown sections and keys are errors that name them (typos are common), and
malformed TOML reports its line and column. Command-line flags override the
file; `merge` does that in one place.

    name = "digits"
    seed = 0
    device = "auto"

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

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from memtrain.nn.spec import ModelSpec

SCHEMA = {
    "": {"name", "seed", "device", "model", "optimizer", "schedule", "training", "data", "checkpoint", "metrics",
         "output"},
    "model": {"layers", "activation", "output", "dropout", "init", "bias_init", "dtype", "l1", "l2"},
    "schedule": {"name", "warmup", "milestones", "gamma", "period", "mult", "total_steps"},
    "training": {"batch_size", "max_batch_size", "micro_batch_size", "epochs", "clip_norm", "patience", "max_nonfinite",
                 "memory_limit", "measure", "cuda_graph", "tf32"},
    "data": {"dataset", "label_column", "validation", "validation_dataset", "test", "standardize",
             "resident_share"},
    "checkpoint": {"dir", "every_steps", "every_minutes", "keep", "resume"},
    "metrics": {"port", "host", "linger"},
    "output": {"dir"},
}
SECTIONS = ("model", "optimizer", "schedule", "training", "data", "checkpoint", "metrics", "output")


@dataclass
class JobConfig:
    name: str = "memtrain"
    seed: int = 0
    device: str = "auto"
    model: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=lambda: {"name": "adam"})
    schedule: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    source: str = ""

    def model_spec(self) -> ModelSpec:
        if "layers" not in self.model:
            raise ValueError(f"{self._where('model.layers')}: missing; expected a list like [784, 128, 10]")
        kwargs = dict(self.model)
        return ModelSpec.create(kwargs.pop("layers"), **kwargs)

    def optimizer_name(self) -> str:
        return str(self.optimizer.get("name", "adam"))

    def optimizer_hyper(self) -> dict:
        return {k: v for k, v in self.optimizer.items() if k != "name"}

    def _where(self, key: str) -> str:
        return f"{self.source}: {key}" if self.source else key


def load(path) -> JobConfig:
    """Parse and validate a job file; ValueError with file, key and what was expected."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config {path}: invalid TOML: {exc}") from None
    return from_dict(data, source=str(path))


def from_dict(data: dict, source: str = "") -> JobConfig:
    where = f"config {source}: " if source else "config: "
    unknown = set(data) - SCHEMA[""]
    if unknown:
        raise ValueError(f"{where}unknown key(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(SCHEMA['']))}")
    for section in SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ValueError(f"{where}[{section}] must be a table")
        if section in SCHEMA:
            bad = set(data.get(section, {})) - SCHEMA[section]
            if bad:
                raise ValueError(f"{where}unknown key(s) in [{section}]: {', '.join(sorted(bad))}; "
                                 f"expected {', '.join(sorted(SCHEMA[section]))}")
    cfg = JobConfig(source=source)
    cfg.name = str(data.get("name", cfg.name))
    cfg.seed = _int(where, "seed", data.get("seed", 0))
    cfg.device = str(data.get("device", cfg.device))
    cfg.model = dict(data.get("model", {}))
    cfg.optimizer = {"name": "adam", **data.get("optimizer", {})}
    for section in ("schedule", "training", "data", "checkpoint", "metrics", "output"):
        setattr(cfg, section, dict(data.get(section, {})))
    return cfg


def merge(cfg: JobConfig, overrides: dict) -> JobConfig:
    """Flags override the file: `overrides` maps "section.key" (or a top-level key) to a
    value; None means "not given" and leaves the file's value."""
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section:
            getattr(cfg, section)[name] = value
        else:
            setattr(cfg, name, value)
    return cfg


def _int(where, key, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}{key}: expected an integer, got {value!r}")
    return value
