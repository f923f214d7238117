"""Gather what a report shows from run directories, explanation folders and export folders.

Inputs (all optional except a run record): ``run.json``, ``config.yaml``, ``history.csv``, ``metrics.json``,
``predictions_<split>.npz`` in each run directory; explanation folders (``<run>/explain*/explain.json`` + the
PNGs it names) and export folders (``<run>/export*/export.json``, ``benchmark*.json``) found inside each run or
given explicitly. Explanation and export JSONs are read generically (any keys), so the report keeps working
while those formats evolve. A malformed file raises :class:`MedistillError` naming it and what was expected;
a missing optional file just leaves its section out.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .. import runs
from ..errors import MedistillError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HISTORY_FILE = "history.csv"  # = medistill.train.loop.HISTORY_FILE (not imported: that module imports torch)
MAX_IMAGE_BYTES = 8 * 2**20  # an overlay larger than this is not embedded (the report must stay openable)
ROLE_ORDER = {"teacher": 0, "student (KD)": 1, "student (no KD)": 2, "model": 3}


@dataclass
class Overlay:
    """One explanation image: its file, who made it (teacher / student / ''), for which image and label."""

    path: Path
    who: str = ""  # "teacher", "student" or "" when unknown
    label: str = ""
    image: str = ""  # the explained input (file name or index) when known
    caption: str = ""  # extra text (probability, method) when known


@dataclass
class ExplainData:
    """An explanation folder: ``explain.json`` (any keys) and the overlay images it names or holds."""

    path: Path
    summary: dict[str, Any]
    overlays: list[Overlay]
    other_images: list[Overlay]  # PNGs not tied to one image/label (feature-map grids ...)
    run: str | None = None  # name of the run it belongs to, when found inside one


@dataclass
class ExportData:
    """An export folder: ``export.json`` and benchmark JSONs (any keys)."""

    path: Path
    summary: dict[str, Any]
    benchmarks: dict[str, Any]  # file name -> parsed JSON
    run: str | None = None


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


# ---------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------

def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MedistillError(f"{path}: not valid JSON ({e}); expected the {what}") from None
    except UnicodeDecodeError:
        raise MedistillError(f"{path}: not UTF-8 text; expected the {what} (JSON)") from None


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
    if split and (path / f"predictions_{split}.npz").is_file():
        return path / f"predictions_{split}.npz"
    found = sorted(path.glob("predictions_*.npz"))
    for preferred in ("test", "val"):
        for f in found:
            if f.name == f"predictions_{preferred}.npz":
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
        rd.info = _mapping(read_json_file(p / runs.RUN_FILE, "run record"), p / runs.RUN_FILE)
    if (p / runs.METRICS_FILE).is_file():
        rd.metrics = _mapping(read_json_file(p / runs.METRICS_FILE, "metrics of `medistill evaluate`"),
                              p / runs.METRICS_FILE)
    if (p / runs.CONFIG_FILE).is_file():
        try:
            rd.config = yaml.safe_load((p / runs.CONFIG_FILE).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise MedistillError(f"{p / runs.CONFIG_FILE}: not valid YAML ({e})") from None
        rd.config = rd.config if isinstance(rd.config, dict) else {}
    if (p / HISTORY_FILE).is_file():
        rd.history = read_history(p / HISTORY_FILE)
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
# explanations
# ---------------------------------------------------------------------------------------------------------

_WHO_RE = re.compile(r"(teacher|student)", re.IGNORECASE)
_LABEL_KEYS = ("label", "finding", "class", "class_name", "target")
_IMAGE_KEYS = ("image", "input", "source", "file", "image_id", "id", "index", "name", "path")
_PROB_KEYS = ("probability", "prob", "p", "score")


def _who(text: str) -> str:
    m = _WHO_RE.search(text or "")
    return m.group(1).lower() if m else ""


def _is_image_ref(v: Any) -> bool:
    return isinstance(v, str) and v.lower().endswith(IMAGE_SUFFIXES)


def _inside(folder: Path, ref: str) -> Path | None:
    """``folder/ref`` when it is a file inside ``folder`` (a JSON cannot point the report at other files)."""
    try:
        f = (folder / ref).resolve()
        base = folder.resolve()
    except (OSError, RuntimeError):
        return None
    if base not in f.parents or not f.is_file():
        return None
    return f


def _overlays_from_json(folder: Path, data: Any) -> list[Overlay]:
    """Every image file named anywhere in ``explain.json``, with who / label / image taken from its context.

    Context: the key path leading to the file (``teacher`` / ``student`` in a key or value names who made it)
    and the nearest enclosing objects (their ``label``, ``image`` ..., ``probability`` fields).
    """
    out: list[Overlay] = []
    seen: set[Path] = set()

    def walk(node: Any, keys: tuple[str, ...], ctx: tuple[dict[str, Any], ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, keys + (str(k),), ctx + (node,))
        elif isinstance(node, list):
            for v in node:
                walk(v, keys, ctx)
        elif _is_image_ref(node):
            f = _inside(folder, node)
            if f is None or f in seen:
                return
            seen.add(f)
            who = _who(" ".join(keys))
            label = image = caption = ""
            for d in reversed(ctx):  # nearest object first
                if not who:
                    for wk in ("model", "role", "who", "network", "kind"):
                        if isinstance(d.get(wk), str) and _who(d[wk]):
                            who = _who(d[wk])
                if not label:
                    label = next((str(d[k]) for k in _LABEL_KEYS if isinstance(d.get(k), (str, int))
                                  and not _is_image_ref(d.get(k))), "")
                if not image:
                    image = next((str(d[k]) for k in _IMAGE_KEYS if isinstance(d.get(k), (str, int))
                                  and not isinstance(d.get(k), bool) and d.get(k) != node), "")
                if not caption:
                    caption = _maps_caption(d.get("maps"))
                if not caption:
                    prob = next((d[k] for k in _PROB_KEYS if isinstance(d.get(k), (int, float))
                                 and not isinstance(d.get(k), bool)), None)
                    if prob is not None:
                        caption = f"p = {float(prob):.3f}"
            out.append(Overlay(path=f, who=who or _who(f.name), label=label, image=image, caption=caption))

    walk(data, (), ())
    return out


def _maps_caption(maps: Any) -> str:
    """``Nodule p=0.83 (teacher 0.91), agreement 0.72, points at the lesion`` per map of an image entry."""
    if not isinstance(maps, list):
        return ""
    parts = []
    for m in maps:
        if not isinstance(m, dict) or not isinstance(m.get("label"), str):
            continue
        text = m["label"]
        p = next((m[k] for k in ("prob", "probability") if _number(m.get(k)) is not None), None)
        if p is not None:
            text += f" p={float(p):.2f}"
        if _number(m.get("teacher_prob")) is not None:
            text += f" (teacher {float(m['teacher_prob']):.2f})"
        if _number(m.get("agreement_spearman")) is not None:
            text += f", agreement {float(m['agreement_spearman']):.2f}"
        hit = _number(m.get("pointing_game"))
        if hit is not None:
            text += ", points at the lesion" if hit >= 0.5 else ", misses the lesion"
        parts.append(text)
    return "; ".join(parts)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _is_grid(o: Overlay) -> bool:
    """Images that are not a single overlay (feature-map grids, side-by-side panels, summaries)."""
    return any(w in o.path.stem.lower() for w in ("grid", "layers", "feature_map", "featuremap", "summary"))


def load_explain(folder: str | Path, run: str | None = None) -> ExplainData:
    """An explanation folder: ``explain.json`` (optional) and its images (those it names, else every image)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedistillError(f"{folder}: not a directory; expected an explanation folder from `medistill explain`")
    jf = folder / "explain.json"
    data: Any = read_json_file(jf, "explanation summary of `medistill explain`") if jf.is_file() else {}
    overlays = _overlays_from_json(folder, data)
    if not overlays:  # no file names in the JSON: show every image of the folder
        overlays = [Overlay(path=f.resolve(), who=_who(f.name), label=_label_from_name(f.stem))
                    for f in sorted(folder.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not overlays and not jf.is_file():
        raise MedistillError(f"{folder}: no explain.json and no images; expected the output folder of "
                             f"`medistill explain`")
    summary = data if isinstance(data, dict) else {"entries": data}
    return ExplainData(path=folder, summary=summary, overlays=[o for o in overlays if not _is_grid(o)],
                       other_images=[o for o in overlays if _is_grid(o)], run=run)


def _label_from_name(stem: str) -> str:
    """Best-effort label from a file name such as ``img003_student_Nodule`` (the part after who)."""
    parts = re.split(r"[_\-]+", stem)
    for i, part in enumerate(parts):
        if _who(part) and i + 1 < len(parts):
            return " ".join(parts[i + 1:])
    return ""


# ---------------------------------------------------------------------------------------------------------
# exports
# ---------------------------------------------------------------------------------------------------------

def load_export(folder: str | Path, run: str | None = None) -> ExportData:
    """An export folder: ``export.json`` and any ``benchmark*.json`` beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedistillError(f"{folder}: not a directory; expected an export folder from `medistill export`")
    jf = folder / "export.json"
    summary = read_json_file(jf, "export summary of `medistill export`") if jf.is_file() else {}
    benches = {f.name: read_json_file(f, "benchmark of `medistill benchmark`")
               for f in sorted(folder.glob("benchmark*.json"))}
    if not jf.is_file() and not benches:
        raise MedistillError(f"{folder}: expected export.json or benchmark*.json (from `medistill export` / "
                             f"`medistill benchmark`), found neither")
    return ExportData(path=folder, summary=summary if isinstance(summary, dict) else {"value": summary},
                      benchmarks=benches, run=run)


# ---------------------------------------------------------------------------------------------------------
# everything
# ---------------------------------------------------------------------------------------------------------

def collect(run_dirs: Sequence[str | Path], *, explain_dirs: Sequence[str | Path] = (),
            export_dirs: Sequence[str | Path] = ()) -> ReportData:
    """Read the runs (ordered teacher, student (KD), student (no KD), others) and their explain / export folders.

    Roles come from :func:`medistill.evaluate.compare.compare_runs` (evaluated runs) or
    :func:`~medistill.evaluate.compare.role_of` (runs not evaluated yet).
    """
    from ..evaluate.compare import compare_runs, role_of

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
            if d.is_dir() and ((d / "explain.json").is_file() or any(d.glob("*.png"))):
                explains.append(load_explain(d, run=r.name))
                used.add(d.resolve())
        for d in sorted(r.path.glob("export*")):
            if d.is_dir() and ((d / "export.json").is_file() or any(d.glob("benchmark*.json"))):
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
    return ReportData(runs=data, explains=explains, exports=exports, notes=notes)


def _owner(folder: Path, data: list[RunData]) -> str | None:
    """The run a folder given by ``--explain`` / ``--export`` belongs to: its parent, or the run its JSON names."""
    f = folder.resolve()
    for r in data:
        if r.path.resolve() in f.parents:
            return r.name
    for name in ("explain.json", "export.json"):
        if (folder / name).is_file():
            try:
                d = json.loads((folder / name).read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
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
