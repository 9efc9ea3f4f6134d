"""The layers of planner/ are its folders. Their import graph, read from the source (every import,
lazy ones inside functions included): no cycle; each folder imports only the folders below it (the
pipeline no command); the checker imports nothing of the planner (its independence is what makes it a
judge)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "planner"

# The layers are the folders of planner/: a module's layer is the folder it sits in. Each folder may
# import only its own modules and the folders listed for it (a lazy import inside a function counts).
ALLOWED = {
    "planner.checker": set(),  # the independent judge: nothing of the planner
    "planner.xml": set(),
    "planner.facts": {"planner.xml", "planner.stack"},  # the libvirt installed: asked of the stack's binding
    "planner.stack": {"planner.facts", "planner.xml", "planner.checker"},
    "planner.pipeline": {"planner.facts", "planner.xml", "planner.checker"},
    "planner.commands": {"planner.pipeline", "planner.stack", "planner.facts", "planner.xml",
                         "planner.checker"},
}
COMMANDS = {"planner.commands"}
PIPELINE = {"planner.pipeline"}
CHECKER = "planner.checker"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The planner modules a file imports; `from pkg import sub` is an import of pkg.sub."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def layer(module: str, layers: set[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in layers)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    """The reader sees the imports it must: a lazy one inside a function, and `from pkg import sub`."""
    edges = graph()
    cli = edges["planner.commands.cli"]
    assert "planner.pipeline.plan" in cli or "planner.commands.api" in cli
    assert "planner.pipeline.solver.cpmodel" in edges["planner.pipeline.solver.variables"]
    assert "planner.pipeline.solver" not in edges["planner.pipeline.solver.variables"]  # not its __init__
    assert "planner.stack.model" in edges["planner.facts.facts"]  # a lazy import inside a function


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in graph() if layer(m, PIPELINE)))
def test_the_pipeline_imports_no_command(module: str) -> None:
    assert sorted(m for m in graph()[module] if layer(m, COMMANDS)) == []


def folder_of(module: str) -> str | None:
    return next((f for f in ALLOWED if layer(module, {f})), None)


def test_the_checker_imports_nothing_of_the_planner() -> None:
    edges = graph()
    outside = sorted(d for m in edges if folder_of(m) == CHECKER for d in edges[m] if folder_of(d) != CHECKER)
    assert outside == []


@pytest.mark.parametrize("module", sorted(m for m in graph() if folder_of(m)))
def test_each_folder_imports_only_the_folders_below_it(module: str) -> None:
    """The pipeline never imports a command, the facts and the XML never the pipeline, and so on."""
    own = folder_of(module)
    assert own is not None
    assert sorted(m for m in graph()[module] if folder_of(m) not in {own, *ALLOWED[own]}) == []


def test_every_module_sits_in_a_layer_folder() -> None:
    """planner/ holds only its package marker; a new module goes into the folder of its layer."""
    assert sorted(m for m in graph() if m != "planner" and folder_of(m) is None) == []


def test_the_folders_are_exactly_the_layers() -> None:
    folders = {f"planner.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED)
