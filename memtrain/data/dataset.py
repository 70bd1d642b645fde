"""What a load produces: `Dataset` (arrays ready for training) and `Raw` (a source as read)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    """Arrays ready for training; the val/test pairs are None when that split is empty."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    name: str
    n_features: int
    n_outputs: int  # output units: classes for softmax, 1 for sigmoid, target width for linear
    task: str  # "classification" or "regression"
    standardized: bool
    mean: np.ndarray | None = None  # float64 (n_features,), from the training split; None unless standardized
    std: np.ndarray | None = None  # the divisor used: 1.0 where a feature is constant on the training split
    input_divisor: float = 1.0  # raw values were divided by this on load (255 for IDX, 16 for digits)

    def describe(self) -> str:
        rows = [0 if a is None else len(a) for a in (self.X_train, self.X_val, self.X_test)]
        if self.task == "regression":
            out = f"{self.n_outputs} output{'s' if self.n_outputs != 1 else ''}"
        elif self.n_outputs == 1:
            out = "2 classes (1 sigmoid output)"
        else:
            out = f"{self.n_outputs} classes"
        return (f"{self.name}: {rows[0]:,} train / {rows[1]:,} validation / {rows[2]:,} test rows, "
                f"{self.n_features} features, {out}" + (", standardized" if self.standardized else ""))

    def preprocessing(self) -> dict:
        """What was done to the raw features, so a saved model can be fed new inputs the same way:
        x / input_divisor, then (x - mean) / std when standardized."""
        return {
            "input_divisor": self.input_divisor,
            "standardize": self.standardized,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
        }


@dataclass
class Raw:
    """A source as read, before checks: `where` is what error messages name (the path)."""

    name: str
    where: str
    X: np.ndarray  # an .npz's or IDX file's X: a filerows.FileRows, read block by block into its splits
    y: np.ndarray
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    divisor: float = 1.0
    is_file: bool = True
