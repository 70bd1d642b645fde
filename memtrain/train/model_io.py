"""A trained model on disk: model.npz (parameters) + model.json (spec, data
preprocessing, metrics, and the .npz's SHA-256), written atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from memtrain.errors import ModelFileError
from memtrain.jsonable import plain
from memtrain.nn.mlp import MLP
from memtrain.nn.spec import ModelSpec
from memtrain.train import checkpoint as ckpt

FORMAT = "memtrain.model/2"
_V1 = "memtrain.model/1"  # activation as display text "swish(beta=2)": converted on load
_V1_TEXT = re.compile(r"^(\w+)(?:\((\w+)=([^)]+)\))?$")


def save_model(path: Path, model, meta: dict) -> None:
    """model.npz (parameters) + model.json (the spec as fields, data preprocessing, metrics)."""
    ckpt.atomic_write(path.with_suffix(".npz"), lambda f: np.savez(f, params=model.backend.to_numpy(model.params)))
    info = {"format": FORMAT, "sha256": ckpt.sha256_file(path.with_suffix(".npz")),
            "model": {**model.spec.fields(), "n_params": model.spec.n_params,
                      "description": model.spec.describe()}, **meta}
    ckpt.atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(info, indent=1, default=plain).encode()))


def load_model(path, device="cpu"):
    """(MLP, metadata) from a model saved by a job; checks the checksum."""
    p = Path(path)
    npz, js = p.with_suffix(".npz"), p.with_suffix(".json")
    for f in (npz, js):
        if not f.exists():
            raise ModelFileError(f"model: {f} not found (a model is a .npz with its .json beside it)")
    try:
        meta = json.loads(js.read_text())
    except ValueError as exc:
        raise ModelFileError(f"model: {js} is not valid JSON ({exc})") from None
    if meta.get("format") not in (FORMAT, _V1):
        raise ModelFileError(f"model: {js} is not a memtrain model (format {meta.get('format')!r})")
    if ckpt.sha256_file(npz) != meta["sha256"]:
        raise ModelFileError(f"model: {npz} does not match the checksum in {js.name} (corrupt or replaced)")
    spec = ModelSpec.from_fields(meta["model"] if meta["format"] == FORMAT else _from_v1(js, meta["model"]))
    model = MLP.from_spec(spec, device=device, initialise=False)
    with np.load(npz, allow_pickle=False) as z:
        params = z["params"]
    if params.shape != (spec.n_params,):
        raise ModelFileError(f"model: {npz} holds {params.shape[0]} parameters, the spec needs {spec.n_params}")
    model.params[...] = params if isinstance(model.params, np.ndarray) else model.backend.xp.asarray(params)
    return model, meta


def _from_v1(js, m: dict) -> dict:
    """A memtrain.model/1 spec as fields: its activation text carried the parameter with 6
    significant digits (`:g`), which is what such a model was described with."""
    match = _V1_TEXT.match(m["activation"])
    if not match:
        raise ModelFileError(f"model: {js} (format {_V1}) names an activation memtrain cannot read: "
                             f"{m['activation']!r}; train it again")
    name, key, value = match.groups()
    params = {} if key is None or name == "abs" else {key: float(value)}
    return {**m, "activation": {"name": name, "params": params}}
