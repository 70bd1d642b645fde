"""The layer order of docs/architecture.md, checked over every import in memtrain/
(function-level imports included): a module imports only its own layer or below,
and the imports have no cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "memtrain"

# (prefix, layer): the longest matching prefix wins. Keep in step with docs/architecture.md.
LAYERS = [
    ("memtrain.backend", 0), ("memtrain.units", 0), ("memtrain.errors", 0), ("memtrain.validate", 0),
    ("memtrain.jsonable", 0), ("memtrain.quickexit", 0), ("memtrain.lazy", 0),
    ("memtrain.memory", 1), ("memtrain.kernels", 1),
    ("memtrain.nn", 2), ("memtrain.optim", 2),
    ("memtrain.train", 3), ("memtrain.data", 3), ("memtrain.config", 3), ("memtrain.metrics", 3),
    ("memtrain.exporter", 3),
    ("memtrain.profiler", 4), ("memtrain.launch", 4),
    ("memtrain.scheduling", 5),
    ("memtrain.select", 6), ("memtrain.service", 6), ("memtrain.render", 6),
    ("memtrain.cli", 7), ("memtrain.cli_select", 7), ("memtrain.cli_types", 7), ("memtrain.cli_runs", 7),
    ("memtrain.cli_lazy", 7),
    ("memtrain.cli_service", 7), ("memtrain.clidoc", 7), ("memtrain.__main__", 7),
]


def layer_of(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def known_modules(root: Path = ROOT) -> set:
    return {module_name(p, root) for p in root.rglob("*.py")}


def imports_of(path: Path, modules: set, packages: frozenset = frozenset()) -> list:
    """(line, imported memtrain module) for every import in the file, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("memtrain")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memtrain"):
            if node.module in packages and node.module != "memtrain":
                # `from pkg import sub` runs pkg/__init__.py and reads sub from it: an import of pkg
                # too (the facade `memtrain` is checked on its own, below)
                out.append((node.lineno, node.module))
            for a in node.names:  # `from memtrain import render` imports the module memtrain.render
                sub = f"{node.module}.{a.name}"
                if sub != "memtrain.__version__":  # a literal in the facade: imports nothing
                    out.append((node.lineno, sub if sub in modules else node.module))
    return out


def graph(root: Path = ROOT) -> dict:
    modules = known_modules(root)
    packages = frozenset(module_name(p, root) for p in root.rglob("__init__.py"))
    return {module_name(p, root): (p, imports_of(p, modules, packages)) for p in sorted(root.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert [m for m in known_modules() if m != "memtrain" and layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, (path, imports) in graph().items():
        if mod == "memtrain":  # the package facade: lazy attributes only (see test_import.py)
            continue
        for line, target in imports:
            if target == "memtrain":
                bad.append(f"{path.name}:{line} imports the package facade (import the module itself)")
            elif layer_of(target) > layer_of(mod):
                bad.append(f"{mod} (layer {layer_of(mod)}) line {line} imports {target} (layer {layer_of(target)})")
    assert bad == []


def import_cycles(root: Path = ROOT) -> list:
    g = {mod: {t for _, t in imports if t != mod and t != "memtrain"} for mod, (_, imports) in graph(root).items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(g.get(m, ())):
            visit(t)
        stack.pop()

    for m in sorted(g):
        visit(m)
    return cycles


def test_no_import_cycle():
    assert import_cycles() == []


def test_a_package_and_a_module_that_import_each_other_are_a_cycle(tmp_path):
    """The shape kernels/__init__.py and kernels/dispatch.py once had: a function in the package
    imports a module of it, which imports the package's other modules through the package."""
    pkg = tmp_path / "memtrain" / "kernels"
    pkg.mkdir(parents=True)
    (tmp_path / "memtrain" / "__init__.py").write_text("")
    (pkg / "optim.py").write_text("X = 1\n")
    (pkg / "__init__.py").write_text("from memtrain.kernels import optim\n\n\ndef every():\n"
                                     "    from memtrain.kernels.dispatch import begin\n\n    return begin\n")
    (pkg / "dispatch.py").write_text("from memtrain.kernels import optim\n\nbegin = optim.X\n")
    assert import_cycles(tmp_path / "memtrain") == [["memtrain.kernels", "memtrain.kernels.dispatch",
                                                     "memtrain.kernels"]]
    (pkg / "__init__.py").write_text("from memtrain.kernels import optim\n")  # the package no longer imports dispatch
    assert import_cycles(tmp_path / "memtrain") == []


@pytest.mark.parametrize("mod,target,expected", [("memtrain.memory.plan", "memtrain.optim.base", False),
                                                 ("memtrain.train.job", "memtrain.profiler.autobatch", False),
                                                 ("memtrain.cli", "memtrain.train.job", True)])
def test_the_checker_itself(mod, target, expected):
    assert (layer_of(target) <= layer_of(mod)) is expected
