"""Benchmark scripts use medistill's public names only: a private helper may change or go at any time, and a
benchmark that reaches into one measures something the library no longer does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def private_uses(source: str) -> list[str]:
    """``module.name`` of every private medistill name ``source`` imports or reads off an imported medistill module
    or name (``_loader``, ``medistill.evaluate._x``, ``runs._file_lock``); dunder names are not private."""
    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    tree = ast.parse(source)
    found, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "medistill":
            found += [f"{node.module}" for part in node.module.split(".") if private(part)][:1]
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{node.module}.{alias.name}")
                bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "medistill":
                    found += [alias.name for part in alias.name.split(".") if private(part)][:1]
                    bound.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(f"{ast.unparse(node.value)}.{node.attr}")
    return found


def test_the_check_finds_private_names():
    src = ("from medistill.evaluate.runner import _loader, evaluate_run\nfrom medistill import runs\n"
           "import medistill.data._x\nruns._file_lock(1)\nruns.RunDir.__init__\nself._cache = 1\n")
    assert private_uses(src) == ["medistill.evaluate.runner._loader", "medistill.data._x", "runs._file_lock"]


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_benchmarks_use_public_names_only(script):
    assert private_uses((BENCH / script).read_text(encoding="utf-8")) == []
