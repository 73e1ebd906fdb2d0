"""The shape of the code, checked from its own text: no import circles in rtq/, no oversized module.

Every `import` and `from ... import` counts, at module level or inside a function (a lazy import
still ties two modules together). A module's edge goes to the module it names; importing a name
from a package counts as importing the package's `__init__`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from rtq.paths import PROJECT_ROOT

RTQ = PROJECT_ROOT / "rtq"
MAX_LINES = 400
MODEL_CODE = {"rtq.models.decoder", "rtq.models.hybrid_encoder", "rtq.models.presnet"}  # plain network code


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in RTQ.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """rtq modules `path` imports (relative imports resolved)."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != own:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    table = modules()
    return {name: imports_of(path, set(table)) for name, path in table.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_rtq() -> None:
    assert cycles(import_graph()) == []


def test_no_module_over_400_lines_except_model_code() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in MODEL_CODE}
    assert too_long == {}


def test_the_benchmark_entry_point_is_thin() -> None:
    assert len((RTQ / "bench.py").read_text().splitlines()) <= 80
