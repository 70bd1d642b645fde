"""CSV data sets (a header row; label_column names the labels, else the last column), gzip or not."""

from __future__ import annotations

import csv
import gzip
import warnings
import zlib
from pathlib import Path

import numpy as np

from memtrain.data.dataset import Raw
from memtrain.data.files import exists, reason
from memtrain.data.params import label_columns
from memtrain.errors import DataError

_CSV_CHUNK = 8192  # rows per np.array call on the slow path: C parsing without every cell as a str


def load_csv(path: Path, label_column) -> Raw:
    exists(path)
    where = str(path)
    names = label_columns(label_column)

    def check(header):
        if names is None and len(header) < 2:  # the default label is the last column: features need another
            why = "expected feature columns and a label column (the last, unless label_column names it)"
            raise DataError(f"{where}: header row: one column ({header[0]}); {why}",
                            public=f"{where}: header row: one column; {why}")
        for c in names or ():
            if c not in header:
                raise DataError(f"{where}: label_column: {c!r} not found; columns are {', '.join(header)}",
                                public=f"{where}: label_column: {c!r} not found among its {len(header)} columns")

    header, table = read_csv(path, where, check)
    names = names or [header[-1]]  # without label_column: the last column, as the help says
    label_idx = [header.index(c) for c in names]
    feature_idx = [i for i in range(len(header)) if i not in label_idx]
    y = table[:, label_idx[0]] if len(names) == 1 else table[:, label_idx]
    return Raw(path.name, where, np.ascontiguousarray(table[:, feature_idx]), np.ascontiguousarray(y))


def read_csv(path: Path, where: str, check_header) -> tuple:
    """(header, table) of a CSV file (gzip or not); `check_header(header)` raises for a
    header that lacks what the caller needs, before any row is parsed."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        # utf-8-sig: spreadsheets often write a byte-order mark before the header
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{where}: header row: file is empty; expected a header row naming the columns")
            header = [h.strip() for h in header]
            _check_header(where, header)
            check_header(header)
            table = _csv_fast(path, reader.line_num, len(header))
            if table is None:
                table = _csv_table(where, reader, header)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: file cannot be read as CSV ({reason(exc)})") from None
    return header, table


def _csv_fast(path: Path, header_lines: int, k: int) -> np.ndarray | None:
    """NumPy's C parser (about 2.5x the csv module's speed), or None on any trouble: the
    slow reader then names the line and column at fault."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Empty input file": the slow path reports no rows
            table = np.loadtxt(path, dtype=np.float64, delimiter=",", skiprows=header_lines, ndmin=2,
                               comments=None, quotechar='"', encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError, EOFError, zlib.error):
        return None
    return table if table.shape[1] == k and len(table) else None


def _csv_table(where: str, reader, header: list) -> np.ndarray:
    k = len(header)
    chunks, rows, lines = [], [], []
    for row in reader:
        if not row:  # blank line
            continue
        if len(row) != k:
            raise DataError(f"{where}: line {reader.line_num}: {len(row)} columns; expected {k} as in the header row")
        rows.append(row)
        lines.append(reader.line_num)
        if len(rows) == _CSV_CHUNK:
            chunks.append(_csv_numbers(where, header, rows, lines))
            rows, lines = [], []
    if rows:
        chunks.append(_csv_numbers(where, header, rows, lines))
    return np.concatenate(chunks) if chunks else np.empty((0, k))


def _check_header(where: str, header: list) -> None:
    seen = set()
    for h in header:
        if not h:
            raise DataError(f"{where}: header row: a column has no name; expected a name for every column")
        if h in seen:
            raise DataError(f"{where}: header row: column {h!r} appears twice; expected unique names",
                            public=f"{where}: header row: a column name appears twice; expected unique names")
        seen.add(h)
    # The commonest CSV mistake: no header, so the first data row would be eaten as names.
    if all(_is_number(h) for h in header):
        raise DataError(f"{where}: header row: the first line is all numbers; expected a header row "
                         "naming the columns")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_numbers(where: str, header: list, rows: list, lines: list) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass
    for row, line in zip(rows, lines):  # slow path only to name the bad cell
        for name, cell in zip(header, row):
            if not _is_number(cell):
                raise DataError(f"{where}: line {line}, column {name!r}: {cell!r} is not a number; "
                                "expected numeric values",
                                public=f"{where}: line {line}: a value is not a number; expected numeric values")
    return np.array([[float(c) for c in row] for row in rows], dtype=np.float64)
