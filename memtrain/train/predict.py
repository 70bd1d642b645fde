"""`memtrain evaluate` and `memtrain predict` on models a job saved.

A saved model carries the preprocessing its job applied (the input divisor
of image data, the training split's mean and std), and the job's data split
(source, fractions, seed), so evaluation can use the very same test rows and
new inputs are fed the way the training inputs were.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import secrets
from pathlib import Path

import numpy as np

from memtrain.errors import ConfigError, DataError, ExitCode, MemtrainError
from memtrain.nn.scores import score_text
from memtrain.train.model_io import load_model


class OutputWriteError(MemtrainError):
    """The --out file could not be completed (e.g. the disk filled up): nothing was written, exit status 1."""

    exit_code = ExitCode.FAILURE


def _prepare(X, meta) -> np.ndarray:
    prep = meta.get("preprocessing") or {}
    X = np.asarray(X, dtype=np.float64)
    if prep.get("input_divisor", 1.0) != 1.0:
        X = X / prep["input_divisor"]
    if prep.get("standardize"):
        X = (X - np.asarray(prep["mean"])) / np.asarray(prep["std"])
    return X


# -- evaluate ----------------------------------------------------------------------------------


def evaluate_model(model_file, dataset: str | None = None, *, label_column=None, split: str | None = None,
                   device="cpu") -> dict:
    """Loss and scores (accuracy, or RMSE, MAE and R^2) of a saved model, and which rows they are over.

    dataset: default the job's own (the model records it). split: "test" (the job's
    held-out rows, the same ones the job scored), "all" (every row), or None: "test"
    when the data set is the job's and the job kept a test split, else "all". The
    result says which: split, rows, and seen_rows (how many of the rows the job trained
    or validated on; None when unknown, i.e. not the job's data set)."""
    if split not in (None, "test", "all"):
        raise ConfigError(f"--split: expected test or all, got {split!r}")
    model, meta = load_model(model_file, device)
    job = meta.get("data") or {}
    dataset = dataset or job.get("dataset")
    if not dataset:
        raise ConfigError(f"--dataset: {model_file} does not record its job's data set; expected --dataset")
    is_job_data = bool(job) and _same_source(dataset, job.get("dataset"))
    if is_job_data:
        X, y, split, seen = _job_rows(model, job, dataset, label_column, split)
    else:
        if split == "test":
            known = f"the job's ({job['dataset']!r})" if job else "not recorded in this model"
            raise DataError(f"--split: the test split is {known}; use --split all for {dataset!r}")
        X, y = _other_rows(model, meta, dataset, label_column)
        split, seen = "all", None
    r = model.evaluate(X, y)
    return {"model": str(model_file), "dataset": dataset, "split": split, "rows": int(len(X)),
            "seen_rows": seen, "job_data": is_job_data, **r}


def _same_source(a, b) -> bool:
    """The same data set: the same source text, or the same file by another path (./d.csv, d.csv)."""
    if a == b:
        return True
    try:
        return b is not None and Path(a).is_file() and Path(b).is_file() and os.path.samefile(a, b)
    except OSError:
        return False


def _job_rows(model, job: dict, dataset, label_column, split):
    """(X, y, split, seen rows) of the job's own data set, split exactly as the job split it."""
    from memtrain.data import check_features, load_dataset  # noqa: PLC0415

    spec = model.spec
    ds = load_dataset(dataset, dtype=spec.dtype.name, label_column=label_column or job.get("label_column"),
                      validation=job["validation"], test=job["test"], standardize=job["standardize"],
                      seed=job["seed"], output=spec.output.name, n_outputs=spec.sizes[-1])
    check_features(ds.n_features, spec.sizes[0], f"--dataset {dataset}")
    if split is None:
        split = "all" if ds.X_test is None else "test"
    if split == "test":
        if ds.X_test is None:
            raise DataError("--split: the job kept no test split (its test fraction was 0); use --split all")
        return ds.X_test, ds.y_test, "test", 0
    parts = [(X, y) for X, y in ((ds.X_train, ds.y_train), (ds.X_val, ds.y_val), (ds.X_test, ds.y_test))
             if X is not None]
    X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return X, y, "all", len(X) - (0 if ds.X_test is None else len(ds.X_test))


def _other_rows(model, meta, dataset, label_column):
    """(X, y) of every row of a data set that is not the job's, fed the way the job's inputs were."""
    from memtrain.data import check_features, load_dataset  # noqa: PLC0415

    spec = model.spec
    ds = load_dataset(dataset, dtype="float64", label_column=label_column, validation=0.0, test=0.0,
                      standardize=False, output=spec.output.name, n_outputs=spec.sizes[-1])
    check_features(ds.n_features, spec.sizes[0], f"--dataset {dataset}")
    # load_dataset already applied the source's own input divisor (digits, IDX)
    meta_no_div = {**meta, "preprocessing": {**(meta.get("preprocessing") or {}), "input_divisor": 1.0}}
    return _prepare(ds.X_train, meta_no_div), ds.y_train


def describe(r: dict) -> str:
    """One line: what was scored, whether it is held out, and the scores."""
    if r["split"] == "test":
        what = f"{r['rows']:,} test rows of {r['dataset']} (held out: the job never trained on them)"
    elif r["seen_rows"]:
        what = (f"{r['rows']:,} rows of {r['dataset']}, every row: {r['seen_rows']:,} of them are the job's "
                "training and validation rows, so this is not a held-out score")
    elif r["job_data"]:
        what = f"{r['rows']:,} rows of {r['dataset']}, every row"
    else:
        what = f"{r['rows']:,} rows of {r['dataset']}, every row (not the data set the job trained on)"
    return f"scored {what}: loss {r['loss']:.4f}{score_text(r, '')}"


# -- predict -----------------------------------------------------------------------------------


def predict_file(model_file, input_file, out_file, *, label_column=None, device="cpu", batch_size=1024) -> int:
    """Write the model's outputs for the rows of `input_file` to `out_file` (.csv or .npy).

    `out_file` is checked first (a temporary beside it is created at once), so a path that
    cannot be written fails before any work; it appears only when complete. Returns the rows."""
    from memtrain.data import check_features, load_inputs  # noqa: PLC0415

    out = _Output(out_file, input_file)
    try:
        model, meta = load_model(model_file, device)
        X = load_inputs(input_file, f"--input {input_file}", label_column)
        check_features(X.shape[1], model.spec.sizes[0], f"--input {input_file}")
        pred = model.predict(_prepare(X, meta), batch_size=batch_size)
        kind = model.spec.output.name
        out.commit(lambda f: np.save(f, pred) if out.suffix == ".npy" else _write_csv(f, pred, kind))
    finally:
        out.discard()
    return len(pred)


def _write_csv(f, out: np.ndarray, kind: str) -> None:
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    w = csv.writer(text)
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
    text.flush()
    text.detach()  # the caller closes f


class _Output:
    """The --out file, written atomically: a temporary beside it now, renamed over it when complete."""

    def __init__(self, out_file, input_file):
        self.name, self.target = str(out_file), Path(out_file)
        self.suffix = self.target.suffix.lower()
        if self.suffix not in (".csv", ".npy"):
            raise ConfigError(f"--out: expected a .csv or .npy file name, got {self.target.name}")
        if self.target.is_dir():
            raise ConfigError(f"--out: {out_file} is a directory; expected a file name")
        if _same_file(self.target, Path(input_file)):
            raise ConfigError(f"--out: {out_file} is the --input file; expected another file name")
        self.tmp = self.target.parent / f".{self.target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:  # created with mode 0o666 so that the umask applies, as to any new file
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as exc:
            raise ConfigError(f"--out: cannot write {out_file}: {_why_not(self.target.parent, exc)}") from None

    def commit(self, write) -> None:
        try:
            with open(self.tmp, "wb") as f:
                write(f)
            os.replace(self.tmp, self.target)
        except OSError as exc:
            raise OutputWriteError(f"--out: writing {self.name} failed ({exc.strerror or exc}); "
                                   "nothing was written") from None

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)  # after commit() it is gone already


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _why_not(parent: Path, exc: OSError) -> str:
    """Why no file can be created in `parent`, in words."""
    if exc.errno == errno.ENOTDIR:
        up = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), parent)
        return f"{up} is a file, not a directory"
    if exc.errno == errno.ENOENT:
        if not parent.exists():
            return f"directory {parent} does not exist"
        return f"{parent} does not allow new files ({exc.strerror})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to create files in {parent}"
    if exc.errno == errno.EROFS:
        return f"{parent} is on a read-only file system"
    return exc.strerror or str(exc)

