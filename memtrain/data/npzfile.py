""".npz data sets (arrays X, y; optional X_val/y_val, X_test/y_test): headers, rows, arrays."""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memtrain.data.dataset import Raw
from memtrain.data.filerows import FileRows
from memtrain.data.files import exists, reason
from memtrain.data.params import check_fraction, check_output, split_count
from memtrain.errors import DataError
from memtrain.validate import check_dtype

# A .npz whose arrays declare more than this is counted from its headers at planning time
# (memtrain serve's submission) instead of being loaded just to count its rows.

HEADER_ROWS_ABOVE = 64 * 1024**2


def npz_headers(path, where: str | None = None) -> dict:
    """{array name: (shape, dtype)} from each member's .npy header, nothing decompressed beyond
    the headers. A header whose shape does not match the bytes its member holds (a damaged file,
    or one declaring 10**9 rows it does not have) is one DataError, before np.load would allocate
    the declared shape."""
    return {k: (shape, dtype) for k, (shape, _, dtype) in _member_headers(path, where).items()}


def _member_headers(path, where: str | None = None) -> dict:
    """{array name: (shape, fortran order, dtype)}: npz_headers with the members' memory order."""
    where = where or str(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read(f)
                    held = info.file_size - f.tell()
                key = info.filename[:-4]
                if dtype.hasobject:
                    continue  # pickled: np.load refuses it (allow_pickle=False), with its own message
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared != held:
                    raise DataError(f"{where}: {key}: its header declares shape {shape} {dtype} ({declared:,} B) but "
                                    f"the archive holds {held:,} B of it; expected a complete numeric array")
                out[key] = (tuple(int(n) for n in shape), bool(fortran), dtype)
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: file cannot be read as .npz ({reason(exc)})") from None
    return out


def header_rows(source, *, dtype="float32", output="softmax", validation=0.2, test=0.0, validation_source=None,
                above: int = HEADER_ROWS_ABOVE) -> tuple | None:
    """(features, training rows, validation rows, bytes of the training and validation arrays as
    load_dataset lays them out, test rows) of a .npz source holding more than `above` bytes, from its
    headers alone; None for any other source (the caller loads it, which checks its values too)."""
    text = str(source).strip() if isinstance(source, (str, Path)) else ""
    if not text.lower().endswith(".npz") or validation_source is not None or not Path(text).is_file():
        return None
    heads = npz_headers(text)
    if "X" not in heads or "y" not in heads:
        return None  # load_dataset says what is missing
    declared = sum(int(np.prod(shape, dtype=object)) * dt.itemsize for shape, dt in heads.values())
    (x_shape, _), (y_shape, _) = heads["X"], heads["y"]
    if declared <= above or len(x_shape) < 2 or len(y_shape) not in (1, 2) or x_shape[0] != y_shape[0]:
        return None
    n, features = x_shape[0], int(np.prod(x_shape[1:]))
    n_test = heads["X_test"][0][0] if "X_test" in heads else split_count(check_fraction("test", test), n)
    n_val = heads["X_val"][0][0] if "X_val" in heads else split_count(check_fraction("validation", validation), n)
    n_train = n - (0 if "X_test" in heads else n_test) - (0 if "X_val" in heads else n_val)
    if n_train < 1:
        return None  # load_dataset says why
    item = check_dtype(dtype).itemsize
    label = {"softmax": 8, "sigmoid": item}.get(check_output(output), item * (y_shape[1] if len(y_shape) == 2 else 1))
    return features, n_train, n_val, (n_train + n_val) * (features * item + label), n_test


def _check_npz_fits(where: str, headers: dict) -> None:
    """Before decompressing anything: the arrays as declared must fit the memory this process can get
    (a 1 MB file may hold 1 GB of zeros)."""
    from memtrain.memory.budget import cpu_free  # noqa: PLC0415
    from memtrain.units import format_bytes  # noqa: PLC0415

    need = sum(int(np.prod(shape, dtype=object)) * dt.itemsize for shape, dt in headers.values())
    free, source = cpu_free()
    if need > free:
        raise DataError(f"{where}: its arrays hold {format_bytes(need)} ({need:,} B) decompressed but "
                        f"{format_bytes(free)} ({free:,} B) is available ({source}); expected a smaller data set")


def load_npz(path: Path) -> Raw:
    exists(path)
    where = str(path)
    heads = _member_headers(path, where)
    _check_npz_fits(where, {k: (shape, dtype) for k, (shape, _, dtype) in heads.items()})
    arrays = {}
    with open_npz(path, where, "arrays X and y") as z:
        present = set(z.files)
        if not {"X", "y"} <= present:
            raise DataError(f"{where}: arrays: expected X and y, found {', '.join(sorted(present)) or 'none'}",
                            public=f"{where}: arrays: expected X and y, found {len(present)} other array(s)")
        for key in ("X", "y", "X_val", "y_val", "X_test", "y_test"):
            if key == "X" and "X" in heads and streamable(*heads["X"]):
                arrays[key] = NpzRows(path, where, key, heads[key][0], heads[key][2])  # read into its splits
            elif key in present:
                arrays[key] = npz_array(z, where, key)
    for a, b in (("X_val", "y_val"), ("X_test", "y_test")):
        if (a in arrays) != (b in arrays):
            have, missing = (a, b) if a in arrays else (b, a)
            raise DataError(f"{where}: {missing}: {have} is present without it; expected both or neither")
    return Raw(path.name, where, **arrays)


def open_npz(path: Path, where: str, expected: str):
    """The .npz archive (a context manager), or one line naming why it is not one."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: file cannot be read as .npz ({reason(exc)})") from None
    if not hasattr(z, "files"):  # np.load reads a .npy file given any name
        raise DataError(f"{where}: file holds a single array, not an .npz archive; expected {expected}")
    return z


def npz_array(z, where: str, key: str) -> np.ndarray:
    try:
        return z[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: {key}: cannot be read ({reason(exc)}); expected a numeric array") from None


@dataclass(frozen=True)
class NpzRows(FileRows):
    """An .npz member read block by block (filerows.py)."""

    @contextlib.contextmanager
    def _open(self):
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as f:
                version = np.lib.format.read_magic(f)
                (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
                yield f
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{self.where}: {self.key}: cannot be read ({reason(exc)}); expected a numeric array") \
                from None


def streamable(shape: tuple, fortran: bool, dtype: np.dtype) -> bool:
    """Rows of this member can be read block by block (else np.load reads it whole)."""
    return len(shape) >= 2 and not fortran and dtype.kind in "biuf" and shape[0] > 0
