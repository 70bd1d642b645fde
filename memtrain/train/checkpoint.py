"""Checkpoints: atomic, checksummed, never pickled.

A checkpoint is two files: `ckpt-<step>.npz` (parameters, every optimizer
slot, best weights; NumPy's format, loaded with allow_pickle=False) and
`ckpt-<step>.json` (counters, early-stopping state, history, the plan's
identity, and the SHA-256 of the .npz). Each is written to a temporary file,
fsync'ed and renamed into place, the .json last: a checkpoint without its
.json was never finished. Loading verifies the checksum and falls back to the
previous checkpoint, saying so, when one is corrupt or truncated.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from memtrain.errors import CheckpointError

FORMAT = "memtrain.checkpoint/1"
_NAME = re.compile(r"^ckpt-(\d{9})\.json$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_writable(directory) -> Path:
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=d, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise CheckpointError(f"checkpoint-dir: {directory} is not writable ({exc.strerror or exc})") from None
    return d


def save(directory, arrays: dict, meta: dict, identity: dict, *, keep: int = 3) -> Path:
    """Write one checkpoint atomically; keep the newest `keep`. Returns the .json path."""
    d = check_writable(directory)
    step = int(meta["steps"])
    npz, js = d / f"ckpt-{step:09d}.npz", d / f"ckpt-{step:09d}.json"
    atomic_write(npz, lambda f: np.savez(f, **arrays))
    record = {"format": FORMAT, "created": time.time(), "npz": npz.name, "sha256": sha256_file(npz),
              "identity": identity, "state": meta, "arrays": sorted(arrays)}
    atomic_write(js, lambda f: f.write(json.dumps(record, indent=1).encode()))
    for old in list_checkpoints(d)[keep:]:
        old.unlink(missing_ok=True)
        (d / old.name.replace(".json", ".npz")).unlink(missing_ok=True)
    return js


def list_checkpoints(directory) -> list:
    """Finished checkpoints (their .json files), newest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _read(js: Path):
    try:
        record = json.loads(js.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{js.name}: unreadable metadata ({exc})") from None
    if record.get("format") != FORMAT:
        raise CheckpointError(f"{js.name}: format {record.get('format')!r}, expected {FORMAT}")
    npz = js.parent / record["npz"]
    if not npz.exists():
        raise CheckpointError(f"{npz.name}: missing")
    digest = sha256_file(npz)
    if digest != record["sha256"]:
        raise CheckpointError(f"{npz.name}: SHA-256 mismatch (corrupt or truncated)")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{npz.name}: unreadable ({exc})") from None
    return arrays, record


def load_latest(directory, identity: dict, warn=print):
    """(arrays, record) of the newest intact checkpoint, or None if there is none.

    A checkpoint from a different model, optimizer, dtype or batch is refused
    with a clear error (resuming it would silently train something else); a
    corrupt one is skipped with a warning and the previous one is tried."""
    for js in list_checkpoints(directory):
        try:
            arrays, record = _read(js)
        except CheckpointError as exc:
            warn(f"memtrain: checkpoint {exc}; falling back to the previous checkpoint")
            continue
        if record["identity"] != identity:
            diff = [k for k in identity if record["identity"].get(k) != identity[k]]
            raise CheckpointError(
                f"resume: {js.name} is from a different job ({', '.join(diff)} differ: checkpoint "
                + "; ".join(f"{k}={record['identity'].get(k)}" for k in diff)
                + " vs now " + "; ".join(f"{k}={identity[k]}" for k in diff) + ")")
        return arrays, record
    return None
