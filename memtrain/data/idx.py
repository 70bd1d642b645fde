"""IDX files (MNIST's format): an images file and its labels, gzip or not, unsigned bytes only."""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

from memtrain.data.dataset import Raw
from memtrain.data.files import exists, reason
from memtrain.errors import DataError

# IDX element types (the format's table); only unsigned bytes are read: MNIST
# and Fashion-MNIST ship them, and only they have a known [0, 255] range to scale.

_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}


IDX_NAME = re.compile(r"(?:[.-]idx\d+(?:-ubyte)?|\.idx)$", re.IGNORECASE)


def load_idx(images: Path, labels: Path | None) -> Raw:
    exists(images)
    if labels is None:
        labels = idx_labels_path(images)
    exists(labels)
    X = _read_idx(images)
    y = _read_idx(labels)
    if X.ndim < 2:
        raise DataError(f"{images}: dims: {X.ndim}-D; expected an images file (idx3: count, rows, cols)")
    if y.ndim != 1:
        raise DataError(f"{labels}: dims: {y.ndim}-D {y.shape}; expected a labels file (idx1: count)")
    if len(X) != len(y):
        raise DataError(f"{labels}: y: {len(y)} labels, but {images.name} has {len(X)} images; "
                         "expected one label per image")
    # Pixels are 0..255; the caller's checks see them flattened, as model inputs.
    return Raw(images.name, str(images), X.reshape(len(X), -1), y, divisor=255.0)


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
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: file cannot be read ({reason(exc)})") from None
    if data[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{where}: gzip: truncated or corrupt ({reason(exc)})") from None
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
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise DataError(f"{where}: size: {len(data):,} bytes, the header's {'x'.join(map(str, dims))} needs "
                         f"{expected:,} ({what}); expected a complete IDX file")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
