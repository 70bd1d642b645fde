"""No function in memtrain/ is longer than 60 lines (docstring and decorators included)."""

import ast
from pathlib import Path

LIMIT = 60
ROOT = Path(__file__).parents[1] / "memtrain"


def long_functions() -> list:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > LIMIT:
                    out.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_function_is_longer_than_60_lines():
    assert long_functions() == []
