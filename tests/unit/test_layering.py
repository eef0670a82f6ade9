"""The package's walls (docs/architecture.md), read off the source with `ast`:

- no import cycles between gecko's modules (function-level imports count too: a lazy import
  is still a dependency);
- the core — every module but `cli`, `options`, `progress` and the stage commands — never imports
  typer or rich, nor any of those presentation modules;
- a stage never imports another stage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "gecko_cli"
PRESENTATION = {"gecko_cli.cli", "gecko_cli.options", "gecko_cli.progress", "gecko_cli.__main__"}
UI_LIBRARIES = {"typer", "rich", "click"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str) -> set[str]:
    """Every module `path` imports, anywhere in the file (absolute names)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    """gecko module -> the gecko modules it imports (a package's `__init__` is not an edge)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = {m for m in imports_of(path, name) if m in mods and m != name}
        graph[name] = {t for t in targets if mods[t].name != "__init__.py" or t == "gecko_cli"} - {"gecko_cli"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None.

    >>> find_cycle({"a": {"b"}, "b": {"a"}})
    ['a', 'b', 'a']
    >>> find_cycle({"a": {"b"}, "b": set()}) is None
    True
    """
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def is_core(name: str) -> bool:
    return name not in PRESENTATION and not name.startswith("gecko_cli.stages")


def test_the_walker_sees_the_package() -> None:
    graph = internal_graph()
    assert "gecko_cli.cli" in graph and "gecko_cli.contract.records" in graph
    assert any(m.startswith("gecko_cli.stages.") for m in graph["gecko_cli.cli"]), "cli imports the stages"


def test_no_import_cycles() -> None:
    assert find_cycle(internal_graph()) is None


@pytest.mark.parametrize("name", sorted(n for n in modules() if is_core(n)))
def test_core_module_has_no_presentation_imports(name: str) -> None:
    imported = imports_of(modules()[name], name)
    ui = {m for m in imported if m.split(".")[0] in UI_LIBRARIES}
    assert not ui, f"{name} imports {sorted(ui)}: only cli, options, progress and stage commands may"
    presentation = {m for m in imported if m in PRESENTATION or m.startswith("gecko_cli.stages")}
    assert not presentation, f"{name} imports {sorted(presentation)}: the core never calls upward"


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("gecko_cli.stages.")))
def test_a_stage_never_imports_another_stage(name: str) -> None:
    others = {m for m in imports_of(modules()[name], name)
              if m.startswith("gecko_cli.stages.") and m != name and m in modules()}
    assert not others, f"{name} imports {sorted(others)}: share through a core module instead"
