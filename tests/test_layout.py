"""The package's shape: imports flow one way (no circle), and the command line is the top floor."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "streamderain"


def _imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, anywhere in its body."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "streamderain" and len(parts) > 1:
                    found.add(parts[1])
                elif parts == ["streamderain"]:
                    found.update(a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists())
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == "streamderain" and len(parts) > 1:
                        found.add(parts[1])
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_the_package():
    graph = _imports()
    assert "cli" in graph and "pipeline" in graph, "the walk found the modules"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_a_circle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_nothing_imports_the_command_line():
    graph = _imports()
    assert sorted(m for m, deps in graph.items() if "cli" in deps) == ["__main__"]
    assert sorted(m for m, deps in graph.items() if "flags" in deps) == ["cli"]


def test_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 380, sizes
