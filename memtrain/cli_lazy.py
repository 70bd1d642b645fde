"""The command table of `memtrain`, with the commands of other modules imported on first lookup.

`memtrain train` is a small job's start-up (issue 22): importing the service's client commands
(and their HTTP security module), compare, sweep and runs cost it ~10 ms (more where Python may
not write bytecode), for commands it never runs. click looks a command up by name
(`Group.get_command`: `commands.get(name)`), lists them by name (`sorted(commands)`) and shows
their help by name, so a table that imports a command when its name is first looked up is
all it needs; iterating names imports nothing.
"""

from __future__ import annotations

import importlib


class LazyCommands(dict):
    """name -> click command; `lazy`: name -> "module:attribute", imported on first lookup."""

    def __init__(self, commands: dict, lazy: dict[str, str]):
        super().__init__(commands)
        self._lazy = {name: where for name, where in lazy.items() if name not in commands}

    def _load(self, name: str) -> None:
        module, attr = self._lazy.pop(name).split(":")
        super().__setitem__(name, getattr(importlib.import_module(module), attr))

    def _load_all(self) -> None:
        for name in list(self._lazy):
            self._load(name)

    def __getitem__(self, name):
        if name in self._lazy:
            self._load(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        return self[name] if name in self else default

    def __setitem__(self, name, command) -> None:
        self._lazy.pop(name, None)
        super().__setitem__(name, command)

    def __contains__(self, name) -> bool:
        return name in self._lazy or super().__contains__(name)

    def __iter__(self):
        yield from list(super().keys()) + list(self._lazy)

    def __len__(self) -> int:
        return super().__len__() + len(self._lazy)

    def keys(self):
        return list(self)

    def values(self):
        self._load_all()
        return super().values()

    def items(self):
        self._load_all()
        return super().items()

    def pop(self, name, *default):
        if name in self._lazy:
            self._load(name)
        return super().pop(name, *default)
