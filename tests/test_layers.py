"""The package's layering, read from its source with ``ast``: no import cycle, no import from a lower layer to a
higher one, and torch-free modules that stay torch-free. The layer order is DEVELOPERS.md's table (one place)."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "medistill"
TORCH = ("torch", "torchvision", "timm")


def layer_table() -> list[tuple[str, str, bool]]:
    """``(layer, module, torch_free)`` per module named in DEVELOPERS.md's layer table, lowest layer first."""
    text = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("layer", "") or set(cells[0]) <= set("-: "):
            continue
        for module in re.findall(r"`([\w.]+)`", cells[1]):
            rows.append((cells[0], module, cells[2].lower() == "yes"))
    return rows


@lru_cache(maxsize=1)
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name relative to ``medistill`` (``__init__`` for the package itself) -> (file, is a package)."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = (f, is_pkg)
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)


@lru_cache(maxsize=None)
def imports(name: str) -> tuple[frozenset[str], frozenset[str], bool]:
    """(medistill modules imported anywhere, those imported at module level, torch imported at module level)."""
    path, is_pkg = modules()[name]
    package = ([] if name == "__init__" else name.split(".")) if is_pkg else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    everywhere: set[str] = set()
    top: set[str] = set()
    torch_top = False

    def visit(node: ast.AST, module_level: bool) -> None:
        nonlocal torch_top
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            found: list[str] = []
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] in TORCH and module_level:
                        torch_top = True
                    if alias.name == "medistill" or alias.name.startswith("medistill."):
                        found.append(alias.name.removeprefix("medistill").lstrip(".") or "__init__")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                elif (child.module or "").split(".")[0] == "medistill":
                    target = child.module.removeprefix("medistill").lstrip(".")
                else:
                    if (child.module or "").split(".")[0] in TORCH and module_level:
                        torch_top = True
                    target = None
                if target is not None:
                    for alias in child.names:
                        sub = f"{target}.{alias.name}" if target else alias.name
                        found.append(sub if sub in modules() else (target or "__init__"))
            for f in found:
                if f != name:
                    everywhere.add(f)
                    if module_level:
                        top.add(f)
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return frozenset(everywhere), frozenset(top), torch_top


def row_of(name: str) -> tuple[int, str, bool] | None:
    """(layer index, layer, torch-free) of the longest table prefix of module ``name``."""
    table = layer_table()
    order = list(dict.fromkeys(layer for layer, _, _ in table))
    best = None
    for layer, module, free in table:
        if name == module or name.startswith(module + "."):
            if best is None or len(module) > len(best[1]):
                best = (layer, module, free)
    return None if best is None else (order.index(best[0]), best[0], best[2])


def test_the_table_orders_layers_and_covers_every_module():
    table = layer_table()
    assert len(table) >= 15 and table[0][1] == "errors" and "cli" in [m for _, m, _ in table]
    uncovered = [m for m in modules() if row_of(m) is None]
    assert not uncovered, f"modules in no row of DEVELOPERS.md's layer table: {uncovered}"


def test_no_import_goes_up_a_layer():
    violations = []
    for name in modules():
        here = row_of(name)
        for target in sorted(imports(name)[0]):
            there = row_of(target)
            if here and there and there[0] > here[0]:
                violations.append(f"{name} ({here[1]}) imports {target} ({there[1]})")
    assert not violations, "upward imports:\n" + "\n".join(violations)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_find_cycles_finds_a_circle_and_nothing_else():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = {name: set(imports(name)[0]) for name in modules()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_torch_free_modules_stay_torch_free():
    problems = []
    for name in modules():
        row = row_of(name)
        if not row or not row[2]:
            continue
        for target in sorted(imports(name)[0]):
            there = row_of(target)
            if there and not there[2]:
                problems.append(f"{name} (torch-free) imports {target}, which is not torch-free")
        seen, todo = set(), [name, *_parents(name)]
        while todo:  # everything importing ``name`` executes: module-level imports and parent packages
            m = todo.pop()
            if m in seen or m not in modules():
                continue
            seen.add(m)
            if imports(m)[2]:
                problems.append(f"importing {name} runs {m}, which imports torch at module level")
            for t in imports(m)[1]:
                todo.extend([t, *_parents(t)])
    assert not problems, "\n".join(problems)


def test_modules_importing_torch_import_at_the_top():
    """Imports inside functions belong to the torch-free boundary and optional extras; a module that imports torch
    at module level needs neither, so every import of it is at the top (DEVELOPERS.md)."""
    inner = []
    for name, (path, _) in modules().items():
        if not imports(name)[2]:
            continue

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if _type_checking(child):
                    continue
                if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                    inner.append(f"{name}:{child.lineno}")
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    assert not inner, "imports inside functions of modules importing torch at module level:\n" + "\n".join(inner)


@pytest.mark.parametrize("source,expected", [
    ("from ..models import create_model\n", {"models"}),
    ("def f():\n    from .contract import ModelError\n", {"models.contract"}),
    ("from . import eeea\n", {"models.eeea"}),
])
def test_imports_are_resolved_relative_to_the_module(source, expected, tmp_path, monkeypatch):
    fake = tmp_path / "m.py"
    fake.write_text(source)
    table = {**modules(), "models.fake": (fake, False)}
    monkeypatch.setattr(__import__(__name__), "modules", lambda: table)
    imports.cache_clear()
    try:
        assert set(imports("models.fake")[0]) == expected
    finally:
        imports.cache_clear()
