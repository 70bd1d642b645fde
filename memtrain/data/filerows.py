"""A file's feature rows read block by block straight into the arrays of its splits.

np.load (or reading an IDX file's bytes) gives X whole in the file's dtype; the split then
copied its larger held-out part out and the cast to the model's dtype copied it all again (a
float64 .npz for a float32 model peaked at 3x its features; issue 23: a worker at 483 MiB
against a 406 MiB reservation). Read here, loading holds the split arrays (what the job's plan
counts) plus one block of BLOCK_BYTES, whatever the data set's size. NaN/Inf and an overflow
on the cast are found as the blocks pass and reported with the file's row numbers, as for an
array read whole. The formats' readers subclass FileRows: npzfile.NpzRows, idx.IdxRows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memtrain.data.checks import RowTally

BLOCK_BYTES = 256 * 1024  # of the file's rows read at once: the loader's working set beyond the split arrays


@dataclass(frozen=True)
class FileRows:
    """Rows of a file not read yet (C order): `shape` is as rows of features; values are divided
    by `divisor` in the cast (255 for IDX pixels), as checks.as_float divides an array read whole."""

    path: Path
    where: str
    key: str
    file_shape: tuple
    dtype: np.dtype
    divisor: float = 1.0

    @property
    def shape(self) -> tuple:
        return (self.file_shape[0], int(np.prod(self.file_shape[1:], dtype=np.int64)))

    def __len__(self) -> int:
        return self.file_shape[0]

    def read_split(self, which: np.ndarray, counts: list, work: np.dtype) -> list:
        """[array k of counts[k] rows] holding, in file order, the rows i with which[i] == k, cast to
        `work`. Raises DataError for a NaN/Inf (before the cast) or a value the cast overflows."""
        out = [np.empty((c, self.shape[1]), work) for c in counts]
        filled = [0] * len(out)
        finite, overflow = RowTally(), RowTally(count_nan=False)
        narrows = self.dtype.kind == "f" and self.dtype.itemsize > work.itemsize  # float64 above 3.4e38
        for start, block in self._blocks():
            finite.add(block, start)
            with np.errstate(over="ignore"):  # reported below, with the field and row
                cast = self._cast(block, work)
            if narrows:
                overflow.add(cast, start)
            w = which[start:start + len(block)]
            for k, dest in enumerate(out):
                rows = cast[w == k]
                dest[filled[k]:filled[k] + len(rows)] = rows
                filled[k] += len(rows)
        finite.check_finite(self.where, self.key)
        overflow.check_overflow(self.where, self.key, work, "converted")
        return out

    def read_all(self) -> np.ndarray:
        """The whole member in its own dtype (a validation set read as np.load would read it)."""
        raw = dataclasses.replace(self, divisor=1.0)  # as read: the caller scales it as any array
        return raw.read_split(np.zeros(len(self), np.int8), [len(self)], np.dtype(self.dtype))[0]

    def _cast(self, block: np.ndarray, work: np.dtype) -> np.ndarray:
        if self.divisor != 1.0:
            return np.divide(block, self.divisor, dtype=work)
        return block if block.dtype == work else block.astype(work)

    def _blocks(self):
        """(first row, rows as an array in the file's dtype) per block; the buffer is reused."""
        n, features = self.shape
        row_bytes = max(1, features * self.dtype.itemsize)
        rows = max(1, BLOCK_BYTES // row_bytes)
        buf = np.empty(rows * row_bytes, np.uint8)
        with self._open() as f:
            for start in range(0, n, rows):
                k = min(rows, n - start)
                got = _fill(f, memoryview(buf)[:k * row_bytes])
                if got < k * row_bytes:
                    self._ended(start * row_bytes + got)
                yield start, buf[:k * row_bytes].view(self.dtype).reshape(k, features)
            self._after(f)

    def _open(self):
        """A context manager giving the file positioned at the first row, its errors as DataError."""
        raise NotImplementedError

    def _ended(self, body_bytes: int) -> None:
        """The file ended after `body_bytes` of rows, before its header's shape: raise."""
        raise EOFError("the array ends before its header's shape")

    def _after(self, f) -> None:
        """Checks after the last row (an IDX file must end there)."""


def _fill(f, view: memoryview) -> int:
    """Bytes read into `view`: all of it unless the file ends first."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got
