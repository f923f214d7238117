"""Explain a run: maps for images or a dataset split, teacher beside student, scored, drawn and written.

``explain_run(run_dir, out, images=... | data=... | neither (the run's own data), options=...)`` writes into
``out``::

    explain.json                  every figure (see below) and, per image, the labels explained and their scores
    overlays/NNNN_<image>.png     the image, then one heatmap per label (label and probability in the title);
                                  a second row for the teacher when one is known; truth outlined where known
    featuremaps_student.png       KD-FMV per-layer average feature maps, one row per image (first few images)
    featuremaps_teacher.png       the same for the teacher

The steps live beside this module: :mod:`.options` (what and how), :mod:`.inputs` (images, the run's data or
another dataset, each side's model inputs), :mod:`.sides` (student and teacher), :mod:`.labels` (which labels:
``options.labels`` when given; else, multi-label, those predicted positive (probability >= the run's stored
threshold, or 0.5), else the top ``options.top_k``; single-label, the predicted class), :mod:`.scoring` (maps and
scores) and :mod:`.figures` (overlays, feature-map grids).

``explain.json`` top level: ``method``, ``num_images``, ``num_maps``, ``seconds_per_image`` (the student's map
time per image), where truth exists ``pointing_game`` (fraction of maps whose maximum lies inside the truth,
over maps whose label has a non-empty truth mask), ``pointing_chance``, ``pointing_game_tolerant`` and
``pointing_chance_tolerant`` (a hit within 15 px x size / 224 of the truth, Zhang et al. 2016),
``energy_inside``, ``iou``; ``blank`` (the share of maps that are all zero: no positive evidence for the label,
e.g. Grad-CAM's ReLU of a label scored low; they score chance); for CAMs ``cam_layers`` (per side, the layers
hooked); with
``options.faithfulness`` ``deletion_auc`` and ``insertion_auc``; with a teacher ``agreement_spearman`` and
``agreement_top15_iou`` (means over maps), ``agreement_spearman_grid`` (the same rank correlation with both maps
area-pooled to ``agreement_grid``, the coarser of the two sides' own map grids: a CAM's layer side, the image side
for pixel methods), ``teacher_seconds_per_image`` and a ``teacher`` block with its own
scores and ``method`` (``options.teacher_method`` when given: the student's maps compared with another method's);
with ``options.sanity`` (the default) a ``sanity`` block for the student's method and one in the ``teacher`` block for
the teacher's: the same scores for a weight-shuffled copy of that model, ``spearman_to_trained`` (each map against
the trained model's), and the verdict ``passed`` / ``reasons`` (:mod:`.sanity`); a side that fails has its overlays
framed in red and titled "not evidence".
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import DataConfig
from ..maps.errors import ExplainError
from ..runs import RunDir
from ..utils.io import atomic_write_json
from ..utils.runtime import resolve_device
from . import EXPLAIN_FILE, LABEL_AGNOSTIC
from .figures import draw_overlay, safe_name, write_feature_grids
from .inputs import (Inputs, background, load_images, load_run_split, load_split, model_inputs, other_split,
                     run_split, same_data)
from .labels import choose_labels, predict, thresholds
from .options import ExplainOptions
from .scoring import Pair, Progress, compute_maps, sanity_scores, score_pairs, summarise
from .sides import Explained, load_side, resolve_teacher

log = logging.getLogger(__name__)

__all__ = ["EXPLAIN_FILE", "ExplainOptions", "Progress", "explain_run"]


def explain_run(run: str | Path, out: str | Path, *, images: Sequence[str | Path] | None = None,
                data: DataConfig | None = None, split: str = "test", limit: int | None = None,
                teacher: str | Path | None = None, options: ExplainOptions | None = None,
                progress: Progress | None = None, student_only: bool = False) -> dict[str, Any]:
    """Explain the model of run directory ``run`` on ``images``, a split of another dataset ``data``, or a split
    of the run's own data (:func:`medistill.runs.run_dataset`; neither given, or ``data`` naming the run's own:
    :func:`.inputs.same_data`); write into ``out``.

    ``limit``: images of the split (a seeded subset); None = ``data.limit``, or for the run's own data the run's
    own limit. The run's ``config.yaml`` must be readable (as ``evaluate`` and ``export`` require).
    ``teacher``: the teacher explained beside the student; None = the one the run records, unless ``student_only``.
    Returns the summary written to ``out/explain.json`` (see the module docstring).
    """
    options = options or ExplainOptions()
    options.validate()
    if student_only and teacher is not None:
        raise ExplainError(f"student_only: set with teacher {str(teacher)!r}; expected one or the other")
    if images is not None and data is not None:
        raise ExplainError("inputs: expected either image files or a dataset split, not both")
    run_dir, out = Path(run), Path(out)
    folder = run_dir if run_dir.is_dir() else run_dir.parent
    own = RunDir(folder).config().data  # a missing config.yaml or an unknown key in it: refused here, naming it
    if data is not None and same_data(data, own):  # the run's own data: rebuilt exactly as it was trained on
        data, limit = None, limit if limit is not None else data.limit
    elif data is not None and limit is not None:
        data = dataclasses.replace(data, limit=limit)
    device = resolve_device(options.device)
    student = load_side("student", run_dir, device)
    size = options.size or student.input.size
    teacher_dir = None if student_only else resolve_teacher(run_dir, student.record, teacher)
    teacher_side = load_side("teacher", teacher_dir, device) if teacher_dir is not None else None
    sides = [student] + ([teacher_side] if teacher_side is not None else [])

    inputs = (load_images(images) if images is not None
              else load_split(data, split, size, student.record, with_truth=options.with_truth) if data is not None
              else load_run_split(folder, split, size, student.record, limit=limit, with_truth=options.with_truth))
    n = len(inputs)
    log.info("explaining %d image(s) of %s with %s%s", n, run_dir, options.method,
             f" beside teacher {teacher_dir}" if teacher_side else "")
    for side in sides:
        side.x = inputs.model_inputs(side.record)
        side.probs = predict(side, options.batch_size)
    chosen = choose_labels(student.probs, student.labels, student.task, options.labels, options.top_k,
                           thresholds(folder, student.record, student.labels), inputs.positives)
    pairs = [(i, name) for i in range(n) for name in chosen[i]]

    backgrounds = gradientshap_backgrounds(folder, data, sides, options)
    teacher_pairs = explain_sides(student, teacher_side, pairs, options, size, backgrounds, progress)
    student_scores, teacher_scores, teacher_map = score_pairs(student, teacher_side, teacher_pairs, pairs, inputs,
                                                              options, progress)
    summary = summarise(student, teacher_side, teacher_pairs, pairs, student_scores, teacher_scores, n, options)
    if options.sanity and pairs:  # every method used: the student's, and the teacher's (its own method)
        summary["sanity"] = sanity_scores(student, pairs, inputs, options, size, backgrounds["student"])
        if teacher_side is not None and teacher_pairs:
            summary["teacher"]["sanity"] = sanity_scores(teacher_side, [pairs[p] for p in teacher_pairs], inputs,
                                                         options.for_side("teacher"), size, backgrounds["teacher"])
    if student.cam_layers:
        summary["cam_layers"] = {s.name: s.cam_layers for s in sides}
    summary.update({"run": str(run_dir), "model": student.record.get("model"), "labels": student.labels,
                    "task": student.task.name, "size": size, "source": inputs.source,
                    "label_agnostic_method": options.method in LABEL_AGNOSTIC})
    out.mkdir(parents=True, exist_ok=True)
    summary["images"] = write_images(out, inputs, student, teacher_side, teacher_map, pairs, student_scores,
                                     teacher_scores, options, size, failed_sanity(summary))
    summary["feature_map_grids"] = write_feature_grids(out, inputs, sides, options, size)
    atomic_write_json(out / EXPLAIN_FILE, summary)
    log.info("explain: %d maps in %.2f s per image; written to %s", len(pairs), summary["seconds_per_image"], out)
    return summary


def gradientshap_backgrounds(run_dir: Path, data: DataConfig | None, sides: list[Explained],
                             options: ExplainOptions) -> dict[str, torch.Tensor | None]:
    """Per side, GradientShap's background (M, C, S, S): ``options.background`` training images (seeded) of
    ``data`` when given, else of the run's own data, preprocessed for that side; None for the other methods."""
    shap = {s.name for s in sides if options.for_side(s.name).method == "gradientshap"}
    if not shap:
        return {s.name: None for s in sides}
    student = sides[0].record
    train = (other_split(dataclasses.replace(data, limit=None), "train") if data is not None
             else run_split(run_dir, "train", None, student))
    rows = background(train, student, options.background, options.seed)
    return {s.name: model_inputs(s.record, dataset=train, rows=rows) if s.name in shap else None
            for s in sides}


def explain_sides(student: Explained, teacher: Explained | None, pairs: list[Pair], options: ExplainOptions,
                  size: int, backgrounds: dict[str, torch.Tensor | None], progress: Progress | None) -> list[int]:
    """Maps of the student for every pair and of the teacher for the pairs whose label it has; returns the indices
    of those pairs (the teacher's ``maps`` are in that order)."""
    compute_maps(student, pairs, options, size, backgrounds["student"], progress)
    if teacher is None:
        return []
    teacher_pairs = [p for p, (_, name) in enumerate(pairs) if name in teacher.labels]
    missing = sorted({name for _, name in pairs if name not in teacher.labels})
    if missing:
        log.warning("the teacher has no label(s) %s: those maps have no teacher side", missing)
    compute_maps(teacher, [pairs[p] for p in teacher_pairs], options.for_side("teacher"), size, backgrounds["teacher"],
                 progress)
    return teacher_pairs


def failed_sanity(summary: dict[str, Any]) -> set[str]:
    """The sides (``student``, ``teacher``) whose maps failed the weight-randomisation check."""
    blocks = {"student": summary.get("sanity"), "teacher": (summary.get("teacher") or {}).get("sanity")}
    return {side for side, b in blocks.items() if isinstance(b, dict) and b.get("passed") is False}


def write_images(out: Path, inputs: Inputs, student: Explained, teacher: Explained | None,
                 teacher_map: dict[int, np.ndarray], pairs: list[Pair],
                 student_scores: list[dict[str, float]], teacher_scores: list[dict[str, float]],
                 options: ExplainOptions, size: int, not_evidence: set[str] = frozenset()) -> list[dict[str, Any]]:
    """Overlay PNGs (first ``options.overlays`` images) and the per-image entries of ``explain.json``; the maps of
    the sides in ``not_evidence`` (failed the randomisation check) are drawn framed in red and titled so."""
    by_image: dict[int, list[int]] = {}
    for p, (i, _) in enumerate(pairs):
        by_image.setdefault(i, []).append(p)
    entries = []
    for i in range(len(inputs.raw)):
        ps = by_image.get(i, [])
        maps = []
        for p in ps:
            name = pairs[p][1]
            m: dict[str, Any] = {"label": name, "prob": float(student.probs[i, student.labels.index(name)])}
            if teacher is not None and p in teacher_map:
                m["teacher_prob"] = float(teacher.probs[i, teacher.labels.index(name)])
            m.update(student_scores[p])
            if teacher_scores[p]:
                m["teacher"] = teacher_scores[p]
            maps.append(m)
        entry: dict[str, Any] = {
            "name": inputs.names[i], "path": inputs.paths[i],
            "probabilities": {lab: float(student.probs[i, k]) for k, lab in enumerate(student.labels)},
            "maps": maps}
        if i < options.overlays and ps:
            rows = [("student", [(pairs[p][1], m["prob"], student.maps[p], inputs.truth_for(i, pairs[p][1]))
                                 for p, m in zip(ps, maps)])]
            if teacher is not None:
                rows.append(("teacher", [(pairs[p][1], m["teacher_prob"], teacher_map[p],
                                          inputs.truth_for(i, pairs[p][1]))
                                         for p, m in zip(ps, maps) if p in teacher_map]))
                rows = [r for r in rows if r[1]]
            file = out / "overlays" / f"{i:04d}_{safe_name(inputs.names[i])}.png"
            draw_overlay(file, inputs.raw[i], rows, size, not_evidence=not_evidence)
            entry["overlay"] = str(file.relative_to(out))
        entries.append(entry)
    return entries
