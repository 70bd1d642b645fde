"""A trained model on disk: model.npz (parameters) + model.json (spec, data
preprocessing, metrics, and the .npz's SHA-256), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memtrain.errors import ModelFileError
from memtrain.jsonable import plain
from memtrain.nn.mlp import MLP
from memtrain.nn.spec import ModelSpec
from memtrain.train import checkpoint as ckpt


def save_model(path: Path, model, meta: dict) -> None:
    """model.npz (parameters) + model.json (spec, data preprocessing, metrics)."""
    ckpt.atomic_write(path.with_suffix(".npz"), lambda f: np.savez(f, params=model.backend.to_numpy(model.params)))
    info = {"format": "memtrain.model/1", "sha256": ckpt.sha256_file(path.with_suffix(".npz")),
            "model": {**model.spec.identity(), "dropout": list(model.spec.dropout) if model.spec.dropout else None,
                      "l1": model.spec.l1, "l2": model.spec.l2}, **meta}
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
    if meta.get("format") != "memtrain.model/1":
        raise ModelFileError(f"model: {js} is not a memtrain model (format {meta.get('format')!r})")
    if ckpt.sha256_file(npz) != meta["sha256"]:
        raise ModelFileError(f"model: {npz} does not match the checksum in {js.name} (corrupt or replaced)")
    m = meta["model"]
    spec = ModelSpec.create(m["sizes"], m["activation"].split("(")[0] if "(" in m["activation"] else m["activation"],
                            m["output"], m.get("dropout"), dtype=m["dtype"], l1=m.get("l1", 0), l2=m.get("l2", 0))
    model = MLP.from_spec(spec, device=device, initialise=False)
    with np.load(npz, allow_pickle=False) as z:
        params = z["params"]
    if params.shape != (spec.n_params,):
        raise ModelFileError(f"model: {npz} holds {params.shape[0]} parameters, the spec needs {spec.n_params}")
    model.params[...] = params if isinstance(model.params, np.ndarray) else model.backend.xp.asarray(params)
    return model, meta
