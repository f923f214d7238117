"""Issue 36, items 3 and 4: the task and the dataset source are each decided in one place.

- No module but ``task.py`` compares task names (STYLE.md rule 12): the others ask the :class:`~medistill.task.Task`.
- No module but ``datasets.py`` tests dataset names: the others ask the registry's entry, which also drives the
  ``--dataset`` help, the errors listing the names, the options each source is given and the README's table.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from medistill.datasets import DATASETS, SOURCES, Source
from medistill.task import TASKS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "medistill"


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    """The strings of ``names`` that ``node`` is, or holds as an item of a literal tuple / list / set."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in names]


def name_tests(source: str, names: set[str], *, dicts: bool = True) -> list[tuple[int, str]]:
    """``(line, name)`` for each place ``source`` tests a value against one of ``names``: a comparison (``==``,
    ``!=``, ``in``, ``is`` ...) with the name or a literal collection holding it, a ``match`` case on it, or (with
    ``dicts``) a dict keyed by it (a dispatch table on the name)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found += [(node.lineno, n) for n in _names_in(operand, names)]
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, n) for n in _names_in(node.value, names)]
        elif dicts and isinstance(node, ast.Dict):
            found += [(node.lineno, n) for key in node.keys if key is not None for n in _names_in(key, names)]
    return found


def offenders(names: set[str], home: str, *, dicts: bool = True) -> list[str]:
    out = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE).as_posix()
        if rel != home:
            tests = name_tests(f.read_text(encoding="utf-8"), names, dicts=dicts)
            out += [f"{rel}:{line}: {name!r}" for line, name in tests]
    return out


@pytest.mark.parametrize("source, expected", [
    ('if task == "multiclass":\n    pass\n', ["multiclass"]),
    ('x = "bce" if "multilabel" != t.name else "ce"\n', ["multilabel"]),
    ('ok = name in ("multilabel", "multiclass")\n', ["multilabel", "multiclass"]),
    ('match t:\n    case "multiclass":\n        pass\n', ["multiclass"]),
    ('loss = {"multilabel": "bce", "multiclass": "ce"}[task]\n', ["multilabel", "multiclass"]),
    ('Table(labels, "multilabel", records)\nif task.multilabel:\n    pass\n', []),  # a name as data, a question
])
def test_the_detector_finds_name_tests_and_nothing_else(source, expected):
    assert [n for _, n in name_tests(source, set(TASKS))] == expected


def test_no_module_but_task_compares_task_names():
    bad = offenders(set(TASKS), "task.py")
    assert not bad, "task names tested outside task.py (ask the Task instead, STYLE.md rule 12):\n" + "\n".join(bad)


def test_the_web_page_asks_one_helper_not_the_task_name():
    pattern = re.compile("|".join(rf"['\"`]{re.escape(t)}['\"`]" for t in TASKS))
    bad = [f"{f.relative_to(PACKAGE)}:{k}: {line.strip()}" for f in sorted(PACKAGE.rglob("*"))
           if f.suffix in (".js", ".html") for k, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
           if pattern.search(line)]
    assert not bad, "task names in the web pages (read uses_thresholds through usesThresholds()):\n" + "\n".join(bad)


def test_no_module_but_the_registry_tests_dataset_names():
    bad = offenders(set(SOURCES), "datasets.py", dicts=False)  # "folder" is also a JSON key of other things
    assert not bad, "dataset names tested outside datasets.py (ask the registry's entry):\n" + "\n".join(bad)


# --- the registry ---------------------------------------------------------------------------------------------
def test_each_entry_names_its_class_and_exactly_the_options_it_reads():
    from medistill.config import DataConfig
    from medistill.data import dataset_class

    fields = {f.name for f in dataclasses.fields(DataConfig)} - {"root"}
    for name, source in SOURCES.items():
        cls = dataset_class(name)
        assert cls.name == name
        takes = set(inspect.signature(cls.load_table).parameters) & fields
        assert set(source.options) == takes, f"{name}: the registry says {source.options}, load_table reads {takes}"
        assert not source.generated or "ensure_generated" in vars(cls)
    assert DATASETS == tuple(SOURCES) and SOURCES["folder"].takes("group_by") and SOURCES["phantom"].generated


def test_the_registry_drives_validation_the_errors_and_the_options(monkeypatch, tmp_path):
    """A source added to the registry alone is a valid --dataset, named in the errors, read by the class it names
    and given the options it declares: nothing else lists the sources."""
    from medistill.config import ConfigError, DataConfig
    from medistill.data import DatasetError, dataset_class, source_options
    from medistill.data.folder import ImageFolder

    monkeypatch.setitem(SOURCES, "eyes", Source("eyes", "folder", "ImageFolder", ("labels", "group_by")))
    DataConfig(dataset="eyes", group_by="^(\\d+)_").validate()
    assert dataset_class("eyes") is ImageFolder
    cfg = DataConfig(dataset="eyes", group_by="^(\\d+)_", labels=["a"], resplit=True, val_fraction=0.3)
    assert source_options(cfg) == {"group_by": "^(\\d+)_", "labels": ("a",)}
    with pytest.raises(ConfigError, match=r"resplit: only folder datasets"):
        cfg.validate()  # "eyes" does not take resplit
    with pytest.raises(ConfigError, match=r"group_by: only folder / eyes datasets"):
        DataConfig(dataset="nih", root="x", group_by="(x)").validate()
    with pytest.raises(ConfigError, match=r"dataset: got 'mnist', expected one of \[.*'folder', 'eyes'\]"):
        DataConfig(dataset="mnist").validate()
    with pytest.raises(DatasetError, match=r"dataset 'mnist': expected one of phantom, .*, folder, eyes"):
        dataset_class("mnist")


def _dataset_flags(parser, path=()):
    """(command path, help) of every --dataset flag under ``parser``'s subcommands."""
    import argparse

    for action in parser._actions:  # noqa: SLF001 - argparse internals
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                yield from _dataset_flags(sub, (*path, name))
        elif "--dataset" in action.option_strings:
            yield " ".join(path), action.help or ""


def test_the_cli_help_and_error_list_the_registry(capsys):
    from medistill.cli import build_parser, main

    flags = list(_dataset_flags(build_parser()))
    assert {"train", "data inspect", "explain"} <= {p for p, _ in flags}
    for path, help_text in flags:
        assert all(name in help_text for name in SOURCES), f"medistill {path} --dataset: {help_text}"
    assert main(["data", "inspect", "--dataset", "mnist", "--root", "x"]) == 2
    err = capsys.readouterr().err
    assert "dataset: got 'mnist'" in err and all(repr(name) in err for name in SOURCES)


def test_the_readme_table_lists_the_registry():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Datasets (`--dataset`)", 1)[1].split("\n#", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", section, flags=re.M) and \
        set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M)) == set(SOURCES)


def test_headline_metrics_are_listed_once_and_follow_the_task():
    """One list of headline metrics: the task's main metric first, the single-label figures (accuracy, balanced
    accuracy, the majority rate) only where one answer per image makes them mean something; the CLI's text reads it."""
    from medistill.cli.common import metrics_text
    from medistill.task import HEADLINE_METRICS, get_task

    assert get_task("multilabel").headline_metrics == ("macro_auc", "macro_f1")
    assert get_task("multiclass").headline_metrics == ("accuracy", "macro_auc", "macro_f1", "balanced_accuracy",
                                                       "majority_rate")
    m = {"task": "multiclass", "accuracy": 0.9, "balanced_accuracy": 0.8, "macro_auc": 0.95, "macro_f1": 0.85,
         "majority_rate": 0.5, "majority_class": "notumor", "chance": 0.25}
    text = metrics_text(m)
    assert text.startswith("Accuracy 0.9000, macro AUC 0.9500")
    assert "majority-class rate 0.5000 (always 'notumor'; chance 0.2500)" in text
    assert "accuracy" not in metrics_text({**m, "task": "multilabel"}).lower()
    assert set(get_task("multiclass").headline_metrics) == set(HEADLINE_METRICS)


def test_artefact_names_are_written_only_in_layout():
    """Every file name a run folder holds is a constant of ``medistill.layout``: no other module spells one out."""
    from medistill import layout

    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v}
    assert {"run.json", "metrics.json", "explain.json", "export.json", "benchmark.json"} <= names
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{f.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not found, found
