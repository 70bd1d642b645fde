"""Package attributes imported on first use (PEP 562): the one helper behind memtrain's and
memtrain.data's facades, so importing a package loads only what its caller then uses."""

from __future__ import annotations

import importlib
import sys


def lazy_attributes(package: str, where: dict[str, str], listed=None) -> tuple:
    """(__getattr__, __dir__) for `package`: `where` maps each public name to the module that
    defines it; the first lookup imports it and stores it in the package, so the next one is a plain
    global. __dir__ lists `listed` when given, else the package's globals and every lazy name."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(listed) if listed is not None else sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
