"""Explanation and export folders as the report reads them.

An explanation folder (``medistill explain``'s output) holds ``explain.json`` and the PNGs it names; an export folder
(``medistill export`` / ``benchmark``) holds ``export.json`` and ``benchmark*.json``. Both JSONs are read
generically (any keys), so the report keeps working while those formats evolve: an image named anywhere in
``explain.json`` is shown, with who made it (teacher / student), the image and the label taken from its context. A
malformed file raises :class:`MedistillError` naming it and what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MedistillError
from ..runs import BENCHMARK_FILE, EXPLAIN_FILE, EXPORT_FILE
from ..utils.io import read_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BENCHMARK_PATTERN = f"{Path(BENCHMARK_FILE).stem}*.json"  # ``medistill benchmark``'s reports beside an export
MAX_IMAGE_BYTES = 8 * 2**20  # an overlay larger than this is not embedded (the report must stay openable)


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value in ``path``; MedistillError naming the file and ``what`` was expected when it is not JSON."""
    return read_json(path, f"the {what}")


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
    jf = folder / EXPLAIN_FILE
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
    jf = folder / EXPORT_FILE
    summary = read_json_file(jf, "export summary of `medistill export`") if jf.is_file() else {}
    benches = {f.name: read_json_file(f, "benchmark of `medistill benchmark`")
               for f in sorted(folder.glob(BENCHMARK_PATTERN))}
    if not jf.is_file() and not benches:
        raise MedistillError(f"{folder}: expected export.json or benchmark*.json (from `medistill export` / "
                             f"`medistill benchmark`), found neither")
    return ExportData(path=folder, summary=summary if isinstance(summary, dict) else {"value": summary},
                      benchmarks=benches, run=run)
