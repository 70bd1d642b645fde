"""Labels in the layout the output unit wants, and the number of output units they need."""

from __future__ import annotations

import numpy as np

from memtrain.errors import DataError


def labels(where: str, field: str, y: np.ndarray, output: str) -> np.ndarray:
    """Labels in the output unit's layout; class ranges are checked later, over every split."""
    if output in ("softmax", "sigmoid"):
        if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            raise DataError(f"{where}: {field}: shape {y.shape}; expected class labels of shape (n,) "
                             f"for a {output} output")
        y = y.reshape(-1)
        # Bound first: casting 1e30 to int64 is undefined, and no model has 2**31 classes.
        huge = np.flatnonzero(np.abs(y) >= 2**31)
        if len(huge):
            raise DataError(f"{where}: {field}: class label {y[huge[0]].item()!r} in row {huge[0]} is out of range; "
                            "expected class indices below 2**31",
                            public=f"{where}: {field}: the class label in row {huge[0]} is out of range; "
                            "expected class indices below 2**31")
        if y.dtype.kind == "f":
            frac = np.flatnonzero(y != np.round(y))
            if len(frac):
                raise DataError(f"{where}: {field}: {len(frac)} non-integer class labels (first {y[frac[0]].item()!r} "
                                f"in row {frac[0]}); expected whole numbers for a {output} output",
                                public=f"{where}: {field}: {len(frac)} non-integer class labels (first in row "
                                f"{frac[0]}); expected whole numbers for a {output} output")
        if output == "sigmoid":
            bad = np.flatnonzero((y != 0) & (y != 1))
            if len(bad):
                raise DataError(f"{where}: {field}: label {y[bad[0]].item()!r} in row {bad[0]}; a sigmoid output "
                                "expects labels 0 or 1",
                                public=f"{where}: {field}: the label in row {bad[0]} is not 0 or 1; a sigmoid output "
                                "expects labels 0 or 1")
            return y.reshape(-1, 1)
        return y.astype(np.int64)
    if y.ndim > 2:
        raise DataError(f"{where}: {field}: shape {y.shape}; expected targets of shape (n,) or (n, k)")
    return y.reshape(len(y), -1)


def label_width(all_y: list, output: str, n_outputs: int | None) -> int:
    """Output units the labels need, checked against the model's n_outputs where given."""
    if output == "sigmoid":
        return 1
    if output == "linear":
        width = all_y[0][2].shape[1]
        for where, field, y in all_y:
            if n_outputs is not None and y.shape[1] != n_outputs:
                raise DataError(f"{where}: {field}: {y.shape[1]} target columns; expected {n_outputs} "
                                 "to match the model's outputs (n_outputs)")
            if y.shape[1] != width:
                raise DataError(f"{where}: {field}: {y.shape[1]} target columns; expected {width} "
                                 "as in the training data")
        return width
    classes = n_outputs if n_outputs is not None else max(int(y.max()) for _, _, y in all_y) + 1
    for where, field, y in all_y:
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if len(bad):
            # With n_outputs unknown only a negative label can land here.
            limit = f"the model's {n_outputs} output units" if n_outputs is not None else "class indices"
            raise DataError(f"{where}: {field}: {len(bad)} labels out of range (first {int(y[bad[0]])} in row "
                            f"{bad[0]}); expected integers in [0, {classes - 1}] for {limit}",
                            public=f"{where}: {field}: {len(bad)} labels out of range (first in row {bad[0]}); "
                            f"expected integers in [0, {classes - 1}] for {limit}")
    return classes
