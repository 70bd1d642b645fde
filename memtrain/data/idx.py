"""IDX files (MNIST's format): an images file and its labels, gzip or not, unsigned bytes only."""

from __future__ import annotations

import contextlib
import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memtrain.data.dataset import Raw
from memtrain.data.filerows import FileRows
from memtrain.data.files import exists, reason
from memtrain.errors import DataError

# IDX element types (the format's table); only unsigned bytes are read: MNIST
# and Fashion-MNIST ship them, and only they have a known [0, 255] range to scale.

_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}


GZIP_MAGIC = b"\x1f\x8b"
_HEAD_MAX = 4 + 4 * 255  # the longest IDX header (255 dims)
IDX_NAME = re.compile(r"(?:[.-]idx\d+(?:-ubyte)?|\.idx)$", re.IGNORECASE)


def load_idx(images: Path, labels: Path | None) -> Raw:
    exists(images)
    if labels is None:
        labels = idx_labels_path(images)
    exists(labels)
    X = idx_rows(images)
    y = _read_idx(labels)
    if len(X.file_shape) < 2:
        raise DataError(f"{images}: dims: {len(X.file_shape)}-D; expected an images file (idx3: count, rows, cols)")
    if y.ndim != 1:
        raise DataError(f"{labels}: dims: {y.ndim}-D {y.shape}; expected a labels file (idx1: count)")
    if len(X) != len(y):
        raise DataError(f"{labels}: y: {len(y)} labels, but {images.name} has {len(X)} images; "
                         "expected one label per image")
    # Pixels are 0..255, divided by 255 as they are read; the caller's checks see rows of pixels.
    return Raw(images.name, str(images), X, y, divisor=255.0)


def idx_labels_path(images: Path) -> Path:
    """The labels file an IDX images file is read with when given alone (found beside it)."""
    m = re.search(r"images([.-])idx3", images.name)
    if not m:
        raise DataError(f"{images}: labels: cannot find the labels file from this name (expected "
                         "...-images-idx3-ubyte); give the pair as 'IMAGES,LABELS'")
    stem = images.name[:m.start()] + "labels" + m.group(1) + "idx1" + images.name[m.end():]
    plain = stem.removesuffix(".gz")
    for name in (stem, plain, plain + ".gz"):  # images and labels need not share compression
        if (images.parent / name).is_file():
            return images.parent / name
    raise DataError(f"{images}: labels: expected {plain}[.gz] beside it, not found; "
                     "or give the pair as 'IMAGES,LABELS'")


def _read_idx(path: Path) -> np.ndarray:
    """A whole IDX file (a labels file) as an array."""
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: file cannot be read ({reason(exc)})") from None
    if data[:2] == GZIP_MAGIC:  # gzip, whatever the name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{where}: gzip: truncated or corrupt ({reason(exc)})") from None
    dims, header = _header(where, data, len(data))
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def idx_rows(path: Path) -> IdxRows:
    """An images file's rows, its header checked now, its pixels read into the splits later."""
    where, gz = str(path), False
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(_HEAD_MAX)
        # a gzip stream's length is known at its end, unless the header read reached it
        total = len(head) if (gz and len(head) < _HEAD_MAX) else (None if gz else path.stat().st_size)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: gzip: truncated or corrupt ({reason(exc)})" if gz else
                        f"{where}: file cannot be read ({reason(exc)})") from None
    dims, header = _header(where, head, total)
    return IdxRows(path, where, "X", dims, np.dtype(np.uint8), 255.0, header=header, gz=gz)


def _header(where: str, data: bytes, total: int | None) -> tuple:
    """(dims, header bytes) from a file's first bytes `data`; `total`: its length, None while unknown
    (a gzip file read as a stream: IdxRows checks its length at its end)."""
    if len(data) < 4:
        raise DataError(f"{where}: magic: file is {len(data)} bytes; expected an IDX file "
                         "(4-byte magic 0x00 0x00 type ndims)")
    magic = " ".join(f"0x{b:02X}" for b in data[:4])
    if data[0] or data[1] or data[3] == 0:
        raise DataError(f"{where}: magic: got {magic}; expected 0x00 0x00 0x08 0x0N (an IDX file of N >= 1 dims)",
                        public=f"{where}: magic: expected 0x00 0x00 0x08 0x0N (an IDX file of N >= 1 dims)")
    code, ndim = data[2], data[3]
    if code != 0x08:
        kind = _IDX_TYPES.get(code, "unknown")
        raise DataError(f"{where}: magic: element type 0x{code:02X} ({kind}) is not supported; "
                         "expected 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: size: {len(data)} bytes, shorter than the {header}-byte header "
                         f"for {ndim} dims; expected a complete IDX file")
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if total is not None:
        _check_size(where, dims, header, total)
    return dims, header


def _check_size(where: str, dims: tuple, header: int, total: int) -> None:
    expected = header + int(np.prod(dims, dtype=np.int64))
    if total != expected:
        what = "truncated" if total < expected else "trailing bytes"
        raise DataError(f"{where}: size: {total:,} bytes, the header's {'x'.join(map(str, dims))} needs "
                         f"{expected:,} ({what}); expected a complete IDX file")


@dataclass(frozen=True)
class IdxRows(FileRows):
    """An IDX images file read block by block (filerows.py), gzip or not."""

    header: int = 0  # bytes before the first pixel
    gz: bool = False

    @contextlib.contextmanager
    def _open(self):
        try:
            with (gzip.open(self.path, "rb") if self.gz else open(self.path, "rb")) as f:
                f.read(self.header)
                yield f
        except DataError:
            raise
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{self.where}: gzip: truncated or corrupt ({reason(exc)})" if self.gz else
                            f"{self.where}: file cannot be read ({reason(exc)})") from None

    def _ended(self, body_bytes: int) -> None:
        _check_size(self.where, self.file_shape, self.header, self.header + body_bytes)

    def _after(self, f) -> None:
        extra = 0
        while chunk := f.read(1 << 20):  # only a gzip file's length is unknown until here
            extra += len(chunk)
        if extra:
            _check_size(self.where, self.file_shape, self.header, self.header + self.shape[0] * self.shape[1] + extra)
