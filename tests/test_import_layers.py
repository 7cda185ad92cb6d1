"""The import graph of remixmatch.*, read from the sources (every import statement, at any depth):
the folders import one way, common at the bottom and bench at the top, and no module circles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each folder may import only the ones listed before it.
LAYERS = ("common", "kernels", "datasets_prep", "pipeline", "trainer", "bench")
ALLOWED = {"common": set(), "kernels": {"common"}, "datasets_prep": {"common"},
           "pipeline": {"common", "kernels"}, "trainer": {"common", "kernels", "datasets_prep", "pipeline"},
           "bench": {"common", "kernels", "datasets_prep", "pipeline", "trainer"}}


def _modules() -> dict[str, Path]:
    found = {}
    for folder in LAYERS:
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(["remixmatch", *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the remixmatch modules it imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{node.module}" if node.module else anchor
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {t for t in map(known, (t for t in targets if t.startswith("remixmatch."))) if t and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_folders_import_only_the_layers_below_them():
    upward = sorted(f"{m} imports {t}" for m, targets in import_graph().items() for t in targets
                    if t.split(".")[1] != m.split(".")[1] and t.split(".")[1] not in ALLOWED[m.split(".")[1]])
    assert upward == []


@pytest.mark.parametrize("folder", LAYERS)
def test_no_import_circles(folder):
    graph = {m: {t for t in targets if t.split(".")[1] == folder}
             for m, targets in import_graph().items() if m.split(".")[1] == folder}
    assert circles(graph) == []


def test_a_circle_is_found_where_there_is_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
