"""Gather what a report shows from run directories, explanation folders and export folders.

Inputs (all optional except a run record): ``run.json``, ``config.yaml``, ``history.csv``, ``metrics.json``,
``predictions_<split>.npz`` in each run directory (their names: :mod:`medistill.runs`); explanation folders
(``<run>/explain*/explain.json`` + the PNGs it names) and export folders (``<run>/export*/export.json``,
``benchmark*.json``) found inside each run or given explicitly, read by :mod:`.folders`. A malformed file raises
:class:`MedistillError` naming it and what was expected; a missing optional file just leaves its section out.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .. import runs
from ..errors import MedistillError
from ..evaluate.compare import compare_runs, role_of
from ..runs import EXPLAIN_FILE, EXPORT_FILE
from ..utils.io import JsonFileError, read_json
from .folders import (BENCHMARK_PATTERN, IMAGE_SUFFIXES, MAX_IMAGE_BYTES, ExplainData, ExportData, Overlay,
                      load_explain, load_export, read_json_file)

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_BYTES", "ExplainData", "ExportData", "Overlay", "ReportData", "RunData",
           "collect", "load_explain", "load_export", "load_run", "read_history", "read_json_file",
           "read_predictions"]

ROLE_ORDER = {"teacher": 0, "student (KD)": 1, "student (no KD)": 2, "model": 3}


@dataclass
class RunData:
    """Everything the report shows about one run directory."""

    path: Path
    name: str
    role: str = "model"
    info: dict[str, Any] = field(default_factory=dict)  # run.json
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml as plain data
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json
    history: dict[str, list[float]] = field(default_factory=dict)  # history.csv column -> values per epoch
    predictions: dict[str, np.ndarray] | None = None  # probs / targets / mask / logits (N, L)
    predictions_file: Path | None = None
    row: dict[str, Any] | None = None  # the compare_runs row when evaluated

    @property
    def evaluated(self) -> bool:
        return "task" in self.metrics

    @property
    def task(self) -> str | None:
        return self.metrics.get("task") or self.info.get("task")

    @property
    def labels(self) -> list[str]:
        return list(self.metrics.get("labels") or self.info.get("labels") or [])


@dataclass
class ReportData:
    runs: list[RunData]
    explains: list[ExplainData]
    exports: list[ExportData]
    notes: list[str]  # warnings shown at the top of the report
    study: dict[str, Any] | None = None  # a study's study.json (``medistill study``)
    study_figure: bytes | None = None  # its frontier.png


# ---------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------

def read_history(path: Path) -> dict[str, list[float]]:
    """``history.csv`` -> column -> values per epoch (floats; empty or non-numeric cells become NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise MedistillError(f"{path}: expected a CSV whose header has an 'epoch' column "
                                 f"(as medistill train writes), got {reader.fieldnames}")
        cols: dict[str, list[float]] = {k: [] for k in reader.fieldnames}
        for row in reader:
            for k in cols:
                try:
                    cols[k].append(float(row.get(k) or "nan"))
                except ValueError:
                    cols[k].append(float("nan"))
    if "epoch" in cols:
        cols["epoch"] = [int(e) if math.isfinite(e) else i + 1 for i, e in enumerate(cols["epoch"])]
    return cols


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """``predictions_<split>.npz`` -> arrays; checks ``probs`` (N, L) and matching ``targets`` / ``mask``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        raise MedistillError(f"{path}: not a readable .npz file ({e}); expected the arrays probs, targets, mask "
                             f"written by `medistill evaluate`") from None
    probs = arrays.get("probs")
    if probs is None or "targets" not in arrays:
        raise MedistillError(f"{path}: expected arrays 'probs' and 'targets', found {sorted(arrays)}")
    if probs.ndim != 2:
        raise MedistillError(f"{path}: 'probs' has shape {probs.shape}, expected (N, L)")
    t = arrays["targets"]
    if t.shape[0] != probs.shape[0] or (t.ndim == 2 and t.shape != probs.shape) or t.ndim > 2:
        raise MedistillError(f"{path}: 'targets' has shape {t.shape}, expected {probs.shape} or ({probs.shape[0]},) "
                             f"to match 'probs'")
    m = arrays.get("mask")
    if m is not None and m.shape != probs.shape:
        raise MedistillError(f"{path}: 'mask' has shape {m.shape}, expected {probs.shape} to match 'probs'")
    return arrays


def _find_predictions(path: Path, split: str | None) -> Path | None:
    if split and (path / runs.predictions_file(split)).is_file():
        return path / runs.predictions_file(split)
    found = sorted(path.glob(runs.PREDICTIONS_PATTERN))
    for preferred in ("test", "val"):
        for f in found:
            if f.name == runs.predictions_file(preferred):
                return f
    return found[0] if found else None


def load_run(path: str | Path) -> RunData:
    """Read one run directory (see the module docstring); raises MedistillError when it is not one."""
    p = Path(path)
    if not p.is_dir():
        raise MedistillError(f"{p}: not a directory; expected a medistill run directory (with run.json)")
    has_any = any((p / f).is_file() for f in (runs.RUN_FILE, runs.METRICS_FILE, runs.CONFIG_FILE))
    if not has_any:
        raise MedistillError(f"{p}: not a medistill run directory; expected {runs.RUN_FILE}, {runs.CONFIG_FILE} "
                             f"or {runs.METRICS_FILE} in it (from `medistill train` / `distill` / `evaluate`)")
    rd = RunData(path=p, name=p.resolve().name)
    if (p / runs.RUN_FILE).is_file():
        rd.info = runs.check_info(_mapping(read_json_file(p / runs.RUN_FILE, "run record"), p / runs.RUN_FILE),
                                  p / runs.RUN_FILE)
    if (p / runs.METRICS_FILE).is_file():
        rd.metrics = runs.check_metrics(_mapping(read_json_file(p / runs.METRICS_FILE, "metrics of `medistill "
                                                                                       "evaluate`"),
                                                 p / runs.METRICS_FILE), p / runs.METRICS_FILE)
    if (p / runs.CONFIG_FILE).is_file():
        try:
            rd.config = yaml.safe_load((p / runs.CONFIG_FILE).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise MedistillError(f"{p / runs.CONFIG_FILE}: not valid YAML ({e})") from None
        rd.config = rd.config if isinstance(rd.config, dict) else {}
    if (p / runs.HISTORY_FILE).is_file():
        rd.history = read_history(p / runs.HISTORY_FILE)
    pf = _find_predictions(p, rd.metrics.get("split"))
    if pf is not None:
        rd.predictions = read_predictions(pf)
        rd.predictions_file = pf
    return rd


def _mapping(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MedistillError(f"{path}: expected a JSON object at the top level, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------------------------------------
# everything
# ---------------------------------------------------------------------------------------------------------

def collect(run_dirs: Sequence[str | Path], *, explain_dirs: Sequence[str | Path] = (),
            export_dirs: Sequence[str | Path] = (), study_dir: str | Path | None = None) -> ReportData:
    """Read the runs (ordered teacher, student (KD), student (no KD), others) and their explain / export folders,
    and a study's ``study.json`` / ``frontier.png`` from ``study_dir``.

    Roles come from :func:`medistill.evaluate.compare.compare_runs` (evaluated runs) or
    :func:`~medistill.evaluate.compare.role_of` (runs not evaluated yet).
    """
    if not run_dirs:
        raise MedistillError("no run directories given; expected at least one (e.g. runs/teacher runs/student)")
    paths = [Path(p) for p in run_dirs]
    seen: set[Path] = set()
    for p in paths:
        if p.resolve() in seen:
            raise MedistillError(f"{p}: run directory given twice")
        seen.add(p.resolve())
    data = [load_run(p) for p in paths]
    notes: list[str] = []
    evaluated = [r for r in data if r.evaluated]
    rows = {Path(row["run"]): row for row in compare_runs([r.path for r in evaluated])} if evaluated else {}
    for r in data:
        r.row = rows.get(r.path)
        r.role = r.row["role"] if r.row else role_of(r.path, [o for o in paths if o != r.path])
        if not r.evaluated:
            notes.append(f"{r.name}: not evaluated (no metrics in {runs.METRICS_FILE}); run "
                         f"`medistill evaluate {r.path}` to add it to the comparison")
    _disambiguate_names(data)
    data.sort(key=lambda r: ROLE_ORDER.get(r.role, 9))  # stable: the given order within a role
    tasks = {r.task for r in data if r.task}
    if len(tasks) > 1:
        notes.append(f"the runs have different tasks ({', '.join(sorted(tasks))}); their metrics are not comparable")
    label_sets = {tuple(r.labels) for r in data if r.labels}
    if len(label_sets) > 1:
        notes.append("the runs have different label sets; per-label figures show the union")
    splits = {(r.metrics.get("split"), r.metrics.get("num_images")) for r in evaluated}
    if len(splits) > 1:
        notes.append("the runs were evaluated on different splits or numbers of images: "
                     + ", ".join(f"{r.name}: {r.metrics.get('split')} ({r.metrics.get('num_images')})"
                                 for r in evaluated))

    explains: list[ExplainData] = []
    exports: list[ExportData] = []
    used: set[Path] = set()
    for r in data:
        for d in sorted(r.path.glob("explain*")):
            if d.is_dir() and ((d / EXPLAIN_FILE).is_file() or any(d.glob("*.png"))):
                explains.append(load_explain(d, run=r.name))
                used.add(d.resolve())
        for d in sorted(r.path.glob(f"{runs.EXPORT_DIR}*")):
            if d.is_dir() and ((d / EXPORT_FILE).is_file() or any(d.glob(BENCHMARK_PATTERN))):
                exports.append(load_export(d, run=r.name))
                used.add(d.resolve())
    for d in explain_dirs:
        if Path(d).resolve() not in used:
            explains.append(load_explain(d, run=_owner(Path(d), data)))
            used.add(Path(d).resolve())
    for d in export_dirs:
        if Path(d).resolve() not in used:
            exports.append(load_export(d, run=_owner(Path(d), data)))
            used.add(Path(d).resolve())
    study, figure = None, None
    if study_dir is not None:
        study = read_json_file(Path(study_dir) / "study.json", "a study's results (as medistill study writes)")
        if not isinstance(study, dict) or "sizes" not in study:
            raise MedistillError(f"{Path(study_dir) / 'study.json'}: expected a JSON object with 'sizes', as "
                                 f"medistill study writes")
        png = Path(study_dir) / "frontier.png"
        figure = png.read_bytes() if png.is_file() and png.stat().st_size <= MAX_IMAGE_BYTES else None
    return ReportData(runs=data, explains=explains, exports=exports, notes=notes, study=study, study_figure=figure)


def _owner(folder: Path, data: list[RunData]) -> str | None:
    """The run a folder given by ``--explain`` / ``--export`` belongs to: its parent, or the run its JSON names."""
    f = folder.resolve()
    for r in data:
        if r.path.resolve() in f.parents:
            return r.name
    for name in (EXPLAIN_FILE, EXPORT_FILE):
        if (folder / name).is_file():
            try:
                d = read_json(folder / name)
            except JsonFileError:
                return None
            ref = d.get("run") or d.get("run_dir") if isinstance(d, dict) else None
            if isinstance(ref, str):
                for r in data:
                    if Path(ref).resolve() == r.path.resolve() or ref == r.name:
                        return r.name
    return None


def _disambiguate_names(data: list[RunData]) -> None:
    """Two runs called ``run`` in different folders: name them ``a/run`` and ``b/run``."""
    counts: dict[str, int] = {}
    for r in data:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in data:
        if counts[r.name] > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
