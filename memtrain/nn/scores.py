"""What an evaluation reports besides the loss: accuracy for a classifier, RMSE, MAE and R^2
for a regression (a linear output, whose loss is half the squared error, L = 1/2 ||y - z||^2).

The regression scores are streamed over the evaluation's batches from sums kept in float64,
with the plan's own buffers as scratch (`out`, after the loss left the outputs in it), so an
evaluation still allocates nothing that grows with the batch:

- RMSE = sqrt(sum r^2 / (n C)) over all n rows and C outputs (r = z - y), i.e. sqrt(2 loss / C)
- MAE  = sum |r| / (n C)
- R^2  = 1 - sum r^2 / sum (y - mean y)^2, the mean per output column; with several outputs
  this is scikit-learn's multioutput="variance_weighted". The spread is summed about the first
  batch's column means (a shift), so targets far from zero keep their precision.

The names and `score_text` need no NumPy: the service's client prints them too.
"""

from __future__ import annotations

import math

# the names an evaluation reports, per kind of output; the epoch records, runs, compare/sweep and
# the metrics read them as val_<name> and test_<name>
CLASSIFIER = ("accuracy",)
REGRESSION = ("rmse", "mae", "r2")
ALL = CLASSIFIER + REGRESSION
LABELS = {"accuracy": "accuracy", "rmse": "RMSE", "mae": "MAE", "r2": "R^2"}


def score_text(s: dict, prefix: str) -> str:
    """", accuracy 0.9722" or ", RMSE 1.23, MAE 0.98, R^2 0.9512": the scores `s` has under `prefix`
    (e.g. "test_"), for the line after a loss."""
    return "".join(f", {LABELS[k]} {s[prefix + k]:.4{'f' if k in ('accuracy', 'r2') else 'g'}}"
                   for k in ALL if s.get(prefix + k) is not None)


class RegressionSums:
    """Running sums for RMSE, MAE and R^2 over the batches of one evaluation."""

    def __init__(self):
        self.abs_sum, self.shift, self.col_sum, self.sq_sum, self.n = 0.0, None, None, 0.0, 0

    def add(self, out, y) -> None:
        """One batch: `out` holds the outputs z (it is used as scratch), `y` the targets."""
        from memtrain.backend import array_module  # noqa: PLC0415 - the names above stay free of NumPy

        xp = array_module(out)
        b = out.shape[0]
        if self.shift is None:
            self.shift = y.mean(axis=0, dtype="float64").astype(y.dtype)  # C values: not batch-sized
        out -= y
        xp.abs(out, out=out)
        self.abs_sum += float(out.sum(dtype="float64"))
        xp.subtract(y, self.shift, out=out)  # the targets about the shift
        s = out.sum(axis=0, dtype="float64")
        self.col_sum = s if self.col_sum is None else self.col_sum + s
        xp.multiply(out, out, out=out)
        self.sq_sum += float(out.sum(dtype="float64"))
        self.n += b

    def scores(self, loss_sum: float, n_outputs: int) -> dict:
        """{"rmse", "mae", "r2"} from the batches added; `loss_sum` is the summed half squared error."""
        cells = self.n * n_outputs
        if cells == 0:
            return dict.fromkeys(REGRESSION)
        ss_res = 2.0 * loss_sum
        ss_tot = self.sq_sum - float((self.col_sum * self.col_sum).sum()) / self.n
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None  # constant targets: R^2 is undefined
        return {"rmse": math.sqrt(max(ss_res, 0.0) / cells), "mae": self.abs_sum / cells, "r2": r2}
