"""The package's modules import each other one way: no cycle, lazy imports included (a
function-level import that only hides a cycle is one too); and pyflakes finds nothing
(an unused import, an undefined name) in the code, the generators, the bench or the tests."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The exporter modules a file imports, anywhere in it (`from a import b` counts
    as a.b when a.b is a module, else as a)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                base = ".".join(up[:len(up) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        out.update(n for n in names if n in modules and n != here)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) for m, p in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None
    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_find_cycle_on_literal_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle():
    edges = graph()
    # a package imports its own modules (exporter.collectors -> exporter.collectors.gunicorn);
    # a module that imports its package's __init__ makes that a cycle, and is one
    assert "exporter.collectors.gunicorn" in edges["exporter.collectors"]
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_pyflakes_finds_nothing():
    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter
    import io
    out, err = io.StringIO(), io.StringIO()
    root = PACKAGE.parent
    found = checkRecursive([str(root / d) for d in ("exporter", "generate", "bench", "tests")],
                           Reporter(out, err))
    assert found == 0 and not err.getvalue(), out.getvalue() + err.getvalue()
