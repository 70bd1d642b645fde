"""`memtrain evaluate` and `memtrain predict` on models a job saved.

A saved model carries the preprocessing its job applied (the input divisor
of image data, the training split's mean and std), and the job's data split
(source, fractions, seed), so evaluation can use the very same test rows and
new inputs are fed the way the training inputs were.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from memtrain.errors import DataError
from memtrain.train.model_io import load_model


def _prepare(X, meta) -> np.ndarray:
    prep = meta.get("preprocessing") or {}
    X = np.asarray(X, dtype=np.float64)
    if prep.get("input_divisor", 1.0) != 1.0:
        X = X / prep["input_divisor"]
    if prep.get("standardize"):
        X = (X - np.asarray(prep["mean"])) / np.asarray(prep["std"])
    return X


def evaluate_model(model_file, dataset: str, *, label_column=None, split: str = "all", device="cpu") -> dict:
    from memtrain.data import load_dataset  # noqa: PLC0415

    model, meta = load_model(model_file, device)
    spec = model.spec
    if split == "test":
        d = meta.get("data") or {}
        if d.get("dataset") != dataset:
            raise DataError(f"split: the test split is the job's ({d.get('dataset')!r}); "
                             f"use --split all for {dataset!r}")
        ds = load_dataset(dataset, dtype=spec.dtype.name, label_column=label_column, validation=d["validation"],
                          test=d["test"], standardize=d["standardize"], seed=d["seed"], output=spec.output.name,
                          n_outputs=spec.sizes[-1])
        if ds.X_test is None:
            raise DataError("split: the job kept no test split (its test fraction was 0)")
        X, y = ds.X_test, ds.y_test
    else:
        ds = load_dataset(dataset, dtype="float64", label_column=label_column, validation=0.0, test=0.0,
                          standardize=False, output=spec.output.name, n_outputs=spec.sizes[-1])
        # load_dataset already applied the source's own input divisor (digits, IDX)
        meta_no_div = {**meta, "preprocessing": {**(meta.get("preprocessing") or {}), "input_divisor": 1.0}}
        X, y = _prepare(ds.X_train, meta_no_div), ds.y_train
    if X.shape[1] != spec.sizes[0]:
        raise DataError(f"dataset: {X.shape[1]} features, the model takes {spec.sizes[0]}")
    r = model.evaluate(X, y)
    return {"model": str(model_file), "dataset": dataset, "split": split, "rows": int(len(X)), **r}


def _read_inputs(path: Path, label_column):
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise DataError(f"input: {path} has no array X (found {', '.join(z.files) or 'none'})")
            return z["X"]
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            raise DataError(f"input: {path} is empty")
        header, body = rows[0], rows[1:]
        keep = [i for i, h in enumerate(header) if h != label_column]
        try:
            return np.array([[float(r[i]) for i in keep] for r in body], dtype=np.float64)
        except (ValueError, IndexError) as exc:
            raise DataError(f"input: {path}: every row needs {len(header)} numbers ({exc})") from None
    raise DataError(f"input: expected a .npz (array X) or .csv file, got {path.name}")


def predict_file(model_file, input_file, out_file, *, label_column=None, device="cpu", batch_size=1024) -> int:
    model, meta = load_model(model_file, device)
    path = Path(input_file)
    if not path.exists():
        raise DataError(f"input: {input_file} not found")
    X = _read_inputs(path, label_column)
    if X.ndim != 2 or X.shape[1] != model.spec.sizes[0]:
        raise DataError(f"input: expected rows of {model.spec.sizes[0]} features, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise DataError(f"input: {int((~np.isfinite(X)).sum())} values are NaN or infinite")
    out = model.predict(_prepare(X, meta), batch_size=batch_size)
    target = Path(out_file)
    if target.suffix == ".npy":
        np.save(target, out)
    elif target.suffix == ".csv":
        kind = model.spec.output.name
        with open(target, "w", newline="") as f:
            w = csv.writer(f)
            if kind == "softmax":
                w.writerow(["prediction", *[f"p_{k}" for k in range(out.shape[1])]])
                for row in out:
                    w.writerow([int(np.argmax(row)), *[f"{p:.6g}" for p in row]])
            elif kind == "sigmoid":
                w.writerow(["prediction", "p_1"])
                for row in out:
                    w.writerow([int(row[0] > 0.5), f"{row[0]:.6g}"])
            else:
                w.writerow([f"y_{k}" for k in range(out.shape[1])])
                for row in out:
                    w.writerow([f"{v:.6g}" for v in row])
    else:
        raise DataError(f"out: expected a .csv or .npy file name, got {target.name}")
    return len(out)
