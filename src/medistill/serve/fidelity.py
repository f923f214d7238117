"""The served model's explanation fidelity: does its Grad-CAM find the lesion? Read from a ``medistill explain``
folder beside the model, for ``GET /api/explanation`` and the page's fidelity table and gallery.

Where: ``explain.json`` in the model file's folder, else ``<folder>/../explain/explain.json`` (the run layout
``medistill quickstart`` writes: ``<run>/export/model.onnx`` beside ``<run>/explain/``). Torch-free: the file
name is :data:`medistill.layout.EXPLAIN_FILE`, where every artefact is named. Overlay PNGs are embedded as data URIs, only files inside the explanation folder, at most
``MAX_OVERLAYS`` of at most ``MAX_OVERLAY_BYTES`` each.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path
from typing import Any

from ..layout import EXPLAIN_FILE

log = logging.getLogger("medistill.serve.app")

MAX_OVERLAYS = 6
MAX_OVERLAY_BYTES = 2 * 2**20
#: explain.json keys shown per model (the row) and per label
ROW_KEYS = ("pointing_game", "pointing_chance", "pointing_game_tolerant", "pointing_chance_tolerant",
            "energy_inside", "iou", "blank", "deletion_auc", "insertion_auc")
LABEL_KEYS = ("maps", "pointing_game", "pointing_chance", "pointing_game_tolerant", "pointing_chance_tolerant",
              "energy_inside", "agreement_spearman")


def find_explanation(model_path: Path) -> Path | None:
    """The explanation folder of the model file ``model_path`` (see the module docstring), or None."""
    for folder in (model_path.parent, model_path.parent.parent / "explain"):
        if (folder / EXPLAIN_FILE).is_file():
            return folder
    return None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _sanity(block: Any, method: Any) -> dict[str, Any]:
    """The weight-randomisation check of one method as ``medistill explain`` judged it: ``checked`` (false when it
    was not run), ``passed`` (true / false / null: not judged), ``reasons``, ``spearman_to_trained`` (the maps before
    and after the weights are shuffled) and the randomised model's pointing game beside chance."""
    if not isinstance(block, dict):
        return {"method": method, "checked": False, "passed": None, "reasons": []}
    passed = block.get("passed")
    return {"method": method, "checked": True, "passed": passed if isinstance(passed, bool) else None,
            "reasons": [str(r) for r in block.get("reasons") or []],
            "spearman_to_trained": _number(block.get("spearman_to_trained")),
            "pointing_game": _number(block.get("pointing_game")),
            "pointing_chance": _number(block.get("pointing_chance"))}


def _row(model: str, what: str, d: dict[str, Any], agreement: dict[str, Any] | None = None,
         sanity: dict[str, Any] | None = None) -> dict[str, Any]:
    """One model's row; ``agreement`` (the explained model's): its Spearman to the teacher over pixels, and over the
    cells of the coarser map's own grid (``spearman_to_teacher_grid`` at ``agreement_grid`` cells a side);
    ``sanity``: its method's randomisation check (:func:`_sanity`; None for the randomised copy's own row)."""
    a = agreement or {}
    return {"model": model, "what": what, **{k: _number(d.get(k)) for k in ROW_KEYS},
            "spearman_to_teacher": _number(a.get("agreement_spearman")),
            "spearman_to_teacher_grid": _number(a.get("agreement_spearman_grid")),
            "agreement_grid": _number(a.get("agreement_grid")), "sanity": sanity}


def _overlays(folder: Path, images: Any) -> list[dict[str, str]]:
    out = []
    root = folder.resolve()
    for entry in images if isinstance(images, list) else []:
        rel = entry.get("overlay") if isinstance(entry, dict) else None
        if not isinstance(rel, str):
            continue
        path = (folder / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file() or path.stat().st_size > MAX_OVERLAY_BYTES:
            continue
        labels = ", ".join(str(m.get("label")) for m in entry.get("maps", []) if isinstance(m, dict))
        out.append({"image": str(entry.get("name", path.stem)), "labels": labels,
                    "uri": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")})
        if len(out) >= MAX_OVERLAYS:
            break
    return out


def load_explanation(folder: Path) -> dict[str, Any]:
    """The fidelity answer of an explanation folder: per model (the explained run, its teacher, the randomised
    copy) the pointing game strict and tolerant with their chance, energy inside, Spearman to the teacher ... and
    its method's randomisation check (``sanity``); per label the same; a few overlays (the truth outlined in white;
    a method that failed the check framed in red)."""
    s = json.loads((folder / EXPLAIN_FILE).read_text(encoding="utf-8"))
    if not isinstance(s, dict):
        raise ValueError(f"{folder / EXPLAIN_FILE}: expected a JSON object")
    rows = [_row(str(s.get("model") or "model"), "explained model", s, s, _sanity(s.get("sanity"), s.get("method")))]
    if isinstance(s.get("teacher"), dict):
        t = s["teacher"]
        rows.append(_row(str(t.get("model") or "teacher"), "teacher", t, sanity=_sanity(t.get("sanity"),
                                                                                          t.get("method"))))
    if isinstance(s.get("sanity"), dict):
        rows.append(_row(str(s.get("model") or "model"), "randomised weights", s["sanity"]))
    per_label = {lab: {k: _number(d.get(k)) for k in LABEL_KEYS}
                 for lab, d in (s.get("per_label") or {}).items() if isinstance(d, dict)}
    return {"folder": folder.name, "method": s.get("method"), "images": s.get("num_images"),
            "maps_with_truth": s.get("maps_with_truth"), "cam_layers": s.get("cam_layers"), "models": rows,
            "per_label": per_label, "overlays": _overlays(folder, s.get("images"))}
