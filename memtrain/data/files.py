"""What every file reader says the same way: a missing file, and why a read failed."""

from __future__ import annotations

from pathlib import Path

from memtrain.errors import DataError


def exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
