"""The package's shape, checked from its source: no import cycle between modules, sensors never import the
operators, and every public class and function says what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_provider_sentinel_batch"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package this module imports when it is imported (not under TYPE_CHECKING, not in functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks
            continue
        for item in ast.walk(node) if isinstance(node, ast.Try) else [node]:
            if isinstance(item, ast.ImportFrom):
                if item.level:
                    base = package.split(".")[: len(package.split(".")) - (item.level - 1)]
                    target = ".".join(base + ([item.module] if item.module else []))
                else:
                    target = item.module or ""
                for alias in item.names:
                    for candidate in (f"{target}.{alias.name}", target):
                        if candidate in known and candidate != name:
                            found.add(candidate)
                            break
            elif isinstance(item, ast.Import):
                found.update(alias.name for alias in item.names if alias.name in known and alias.name != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _module_level_imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_sensors_and_triggers_do_not_import_operators():
    graph = _graph()
    offenders = {
        name: sorted(i for i in imports if ".operators" in i)
        for name, imports in graph.items()
        if (".sensors" in name or ".triggers" in name) and any(".operators" in i for i in imports)
    }
    assert offenders == {}


def _undocumented(path: Path) -> list[str]:
    missing = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ) and not child.name.startswith("_"):
                if ast.get_docstring(child) is None:
                    missing.append(f"{path.relative_to(PACKAGE.parent)}:{child.lineno} {prefix}{child.name}")
                if isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

    walk(ast.parse(path.read_text()), "")
    return missing


def test_every_public_class_and_function_has_a_docstring():
    missing = [item for path in sorted(PACKAGE.rglob("*.py")) for item in _undocumented(path)]
    assert missing == [], "\n".join(missing)
