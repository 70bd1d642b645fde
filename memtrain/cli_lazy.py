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
from collections.abc import MutableMapping


class LazyCommands(MutableMapping):
    """name -> click command; `lazy`: name -> "module:attribute", imported on first lookup. Every
    mapping operation that needs a command (lookup, values, items, pop, copy) imports it; names
    alone (iteration, `in`, len) import nothing."""

    def __init__(self, commands: dict, lazy: dict[str, str]):
        self._loaded = dict(commands)
        self._lazy = {name: where for name, where in lazy.items() if name not in commands}

    def __getitem__(self, name):
        if name in self._lazy:
            module, attr = self._lazy.pop(name).split(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __setitem__(self, name, command) -> None:
        self._lazy.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name) -> None:
        if self._lazy.pop(name, None) is None:
            del self._loaded[name]

    def __contains__(self, name) -> bool:
        return name in self._lazy or name in self._loaded

    def __iter__(self):
        yield from [*self._loaded, *self._lazy]

    def __len__(self) -> int:
        return len(self._loaded) + len(self._lazy)

    def __repr__(self) -> str:
        return f"LazyCommands({sorted(self)})"
