"""The package's layering, read from the source: ``core`` (numpy) imports nothing of
``engine`` (torch) or ``widgets`` (napari), ``engine`` nothing of ``widgets`` or the
command line, and no modules import each other (project issue 19; DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_cellfocus

ROOT = Path(napari_cellfocus.__file__).parent
PACKAGE = ROOT.name

#: What each layer may not import, anywhere in a module (also inside functions).
FORBIDDEN = {
    "core": (
        f"{PACKAGE}.engine",
        f"{PACKAGE}.widgets",
        f"{PACKAGE}.cli",
        "torch",
        "napari",
        "qtpy",
        "magicgui",
    ),
    "engine": (f"{PACKAGE}.widgets", f"{PACKAGE}.cli", "napari", "qtpy", "magicgui"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, top_level_only: bool) -> list[str]:
    """Absolute module names ``path`` imports (``from x import y`` gives ``x`` and
    ``x.y``, since ``y`` may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _matches(name: str, prefix: str) -> bool:
    return (
        name == prefix
        or name.startswith(prefix + ".")
        or (
            prefix.endswith(".cli") and name.startswith(prefix)  # cli, cli_predict, cli_fuse...
        )
    )


def test_no_import_from_a_lower_layer_to_a_higher_one():
    modules = _modules()
    assert f"{PACKAGE}.core.postprocess" in modules and f"{PACKAGE}.engine.train" in modules
    wrong = []
    for name, path in modules.items():
        layer = name.split(".")[1] if "." in name else ""
        for imported in _imports(path, top_level_only=False):
            if any(_matches(imported, bad) for bad in FORBIDDEN.get(layer, ())):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


#: Circles known and left for now, with why (each pair of modules, in either order).
KNOWN_CIRCLES = {
    frozenset({f"{PACKAGE}.engine.checkpoint", f"{PACKAGE}.engine.model_zoo"}): (
        "read_checkpoint opens BioImage.IO packages through model_zoo (inside the function), "
        "and model_zoo builds on checkpoint's ModelInfo; a reader registry would untie them"
    ),
}


def test_no_import_circles():
    """Also imports inside functions count: two modules that need each other are one.
    Only :data:`KNOWN_CIRCLES` are let through; a new circle fails."""
    modules = _modules()
    graph = {
        name: {i for i in _imports(path, top_level_only=False) if i in modules and i != name}
        for name, path in modules.items()
    }
    top = {
        name: {i for i in _imports(path, top_level_only=True) if i in modules and i != name}
        for name, path in modules.items()
    }
    assert not _cycles(top), _cycles(top)  # these would break importing the package
    new = [c for c in _cycles(graph) if frozenset(c) not in KNOWN_CIRCLES]
    assert not new, new


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
