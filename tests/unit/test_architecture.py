"""The layering of cellcut, checked from the source: no import cycle, no import upwards.

Every ``import`` and ``from ... import`` in ``src/cellcut`` counts, including those inside
functions (deferred imports still tie modules together). Modules are grouped into units (a
top-level module, or a top-level package with everything in it); units are ordered in layers,
and a unit may import only from its own package or from a lower layer. Training and
segmentation share a layer, so neither may import the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cellcut"

LAYERS: list[set[str]] = [
    {"_version", "errors", "samples", "artifacts", "blocks"},
    {"outputs", "ngff"},
    {"io", "runtime", "normalize", "synthetic", "metrics", "postprocess", "infer"},
    {"crf"},
    {"config", "figures", "fingerprint"},
    {"model", "losses"},
    {"scoring"},
    {"training", "segmentation"},
    {"refinement"},
    {"cli", "napari_plugin", "__init__"},
    {"__main__"},
]
LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
LONGEST_FUNCTION = 100


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """The cellcut modules ``path`` imports, anywhere in it (a package counts as its module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cellcut"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("cellcut"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
    modules = {module_name(p) for p in SRC.rglob("*.py")}
    return {m for m in found if m in modules}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in graph()}
    assert units - set(LAYER_OF) == set(), "add new modules to LAYERS"


def test_no_import_cycle():
    edges = {module: targets - {module} for module, targets in graph().items()}
    assert find_cycle(edges) is None


def test_imports_point_down():
    wrong = []
    for module, targets in graph().items():
        unit = unit_of(module)
        for target in targets:
            other = unit_of(target)
            if other == unit:
                continue
            if LAYER_OF[other] >= LAYER_OF[unit]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_checker_sees_deferred_and_relative_imports(tmp_path):
    # the checker itself: an import inside a function is an edge, and a cycle is found
    assert "cellcut.model.checkpoint" in imports_of(SRC / "model" / "registry.py")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: module_name(p))
def test_functions_are_short(path):
    """No function longer than LONGEST_FUNCTION lines (argparse set-up excepted)."""
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
        and not (module_name(path) == "cellcut.cli" and node.name == "build_parser")
    ]
    assert long == []
