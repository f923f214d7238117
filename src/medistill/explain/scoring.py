"""Maps and their scores: each side's maps for the (image, label) pairs, then localisation against the truth,
teacher / student agreement, deletion / insertion faithfulness and the sanity check, averaged over maps.

``summarise`` gives the top level of ``explain.json`` (see :mod:`medistill.explain.runner`).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from ..models.cam_layers import choose_layers, layer_by_name, map_sides
from . import METHODS, explain_maps
from .inputs import Inputs
from .metrics import ScoreAccumulator, agreement_scores, deletion_insertion, localisation_scores
from .options import ExplainOptions
from .sanity import TEST_NAME, randomized_copy, verdict
from .sides import Explained

Progress = Callable[[str, int, int], None]  # (what, done, total)
Pair = tuple[int, str]  # (image index, label name)


def compute_maps(side: Explained, pairs: list[Pair], options: ExplainOptions, size: int,
                 background: torch.Tensor | None, progress: Progress | None) -> None:
    """Maps of ``side`` for (image, label) pairs, at ``size``; sets ``side.maps`` (P, size, size), ``seconds``."""
    rows = [i for i, _ in pairs]
    idx = [side.labels.index(name) for _, name in pairs]
    chunks = []

    layer = None if side.name == "teacher" else options.layer
    side.cam_layers, side.grid = [], None
    if METHODS[options.method] == "cam" and pairs:
        side.cam_layers, side.grid = cam_layers_of(side, options, layer)

    def maps(s: int, stop: int) -> np.ndarray:
        extra = ({"n_samples": options.n_samples, "seed": options.seed + s} if options.method == "gradientshap"
                 else {"n_steps": options.n_steps} if options.method == "integrated_gradients"
                 else {"window": options.occlusion_window, "stride": options.occlusion_stride}
                 if options.method == "occlusion" else {})
        return explain_maps(side.model, side.x[rows[s:stop]], idx[s:stop], options.method, size=size,
                            batch_size=options.batch_size, layer=layer, background=background,
                            cam_layers=options.cam_layers, cam_min_size=options.cam_min_size, **extra)

    # one untimed map first: lazy imports and first-call kernel set-up would be charged to whichever side runs first
    if pairs:
        maps(0, 1)
    start = time.perf_counter()
    for s in range(0, len(pairs), options.batch_size):
        chunks.append(maps(s, s + options.batch_size))
        if progress:
            progress(f"{side.name} maps", min(s + options.batch_size, len(pairs)), len(pairs))
    side.seconds = time.perf_counter() - start
    side.maps = np.concatenate(chunks) if chunks else np.zeros((0, size, size), np.float32)


def cam_layers_of(side: Explained, options: ExplainOptions, layer: str | None) -> tuple[list[str], int]:
    """Names of the layers a CAM of ``side`` hooks (``layer`` when given, else the ``cam_layers`` policy) and the
    side of the finest one's map (the grid the CAM has before it is upsampled to the image)."""
    shape = tuple(side.x.shape[1:])
    if layer is not None:
        module, reshape = layer_by_name(side.model, layer)
        return [layer], map_sides(side.model, {layer: module}, reshape, shape)[layer]
    chosen = choose_layers(side.model, options.cam_layers, min_size=options.cam_min_size, input_shape=shape)
    return [c.name for c in chosen], max(c.side for c in chosen)


def blank(m: np.ndarray) -> float:
    """1.0 when a map is all zero (no positive evidence anywhere: Grad-CAM's ReLU of a negative map), else 0.0."""
    return float(not np.any(m > 0))


def faithfulness(side: Explained, pairs: list[Pair], options: ExplainOptions
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUCs (P,) of ``side``'s maps, on its own inputs."""
    rows = [i for i, _ in pairs]
    idx = [side.labels.index(name) for _, name in pairs]
    return deletion_insertion(side.model, side.x[rows], idx, side.maps, steps=options.steps, task=side.task,
                              seed=options.seed)


def score_pairs(student: Explained, teacher: Explained | None, teacher_pairs: list[int],
                pairs: list[Pair], inputs: Inputs, options: ExplainOptions, progress: Progress | None
                ) -> tuple[list[dict[str, float]], list[dict[str, float]], dict[int, np.ndarray]]:
    """Per-pair scores of the student and the teacher (localisation, agreement, faithfulness), and the teacher's
    map of each pair it explained (pair index -> (S, S))."""
    student_scores: list[dict[str, float]] = [{} for _ in pairs]
    teacher_scores: list[dict[str, float]] = [{} for _ in pairs]
    teacher_map = {p: teacher.maps[j] for j, p in enumerate(teacher_pairs)} if teacher is not None else {}
    grid = common_grid(student, teacher)
    for p, (i, name) in enumerate(pairs):
        truth = inputs.truth_for(i, name)
        student_scores[p]["blank"] = blank(student.maps[p])
        if p in teacher_map:
            teacher_scores[p]["blank"] = blank(teacher_map[p])
        if truth is not None and truth.any():
            student_scores[p].update(localisation_scores(student.maps[p], truth))
            if p in teacher_map:
                teacher_scores[p].update(localisation_scores(teacher_map[p], truth))
        if p in teacher_map:
            student_scores[p].update(agreement_scores(student.maps[p], teacher_map[p], grid=grid))
    if options.faithfulness and pairs:
        d, ins = faithfulness(student, pairs, options)
        for p in range(len(pairs)):
            student_scores[p].update({"deletion_auc": float(d[p]), "insertion_auc": float(ins[p])})
        if progress:
            progress("deletion / insertion", 1, 1 + (teacher is not None))
        if teacher is not None and teacher_pairs:
            d, ins = faithfulness(teacher, [pairs[p] for p in teacher_pairs], options)
            for j, p in enumerate(teacher_pairs):
                teacher_scores[p].update({"deletion_auc": float(d[j]), "insertion_auc": float(ins[j])})
            if progress:
                progress("deletion / insertion", 2, 2)
    return student_scores, teacher_scores, teacher_map


def common_grid(student: Explained, teacher: Explained | None) -> int | None:
    """The grid both sides' maps carry detail at: the coarser of their own grids (None when both are pixel-level,
    or without a teacher)."""
    grids = [s.grid for s in (student, teacher) if s is not None and s.grid]
    return min(grids) if teacher is not None and grids else None


def summarise(student: Explained, teacher: Explained | None, teacher_pairs: list[int], pairs: list[Pair],
              student_scores: list[dict[str, float]], teacher_scores: list[dict[str, float]], n: int,
              options: ExplainOptions) -> dict[str, Any]:
    """The top level of ``explain.json``: timing and the mean of every score (NaN-skipping) over maps."""
    summary: dict[str, Any] = {"method": options.method, "num_images": n, "num_maps": len(pairs),
                               "seconds_per_image": student.seconds / max(n, 1),
                               "student_seconds_per_image": student.seconds / max(n, 1)}
    acc = ScoreAccumulator()
    for s in student_scores:
        acc.update(s)
    if acc.counts().get("pointing_game", 0):
        summary["maps_with_truth"] = acc.counts()["pointing_game"]
    summary.update(acc.aggregate())
    if teacher is not None:
        summary["teacher_seconds_per_image"] = teacher.seconds / max(n, 1)
        summary["agreement_grid"] = common_grid(student, teacher) or (student.maps.shape[-1] if len(pairs) else None)
        tacc = ScoreAccumulator()
        for s in teacher_scores:
            tacc.update(s)
        summary["teacher"] = {"run": teacher.run, "model": teacher.record.get("model"),
                              "method": options.for_side("teacher").method, "maps": len(teacher_pairs),
                              **tacc.aggregate()}
    summary["per_label"] = per_label(pairs, student_scores)
    return summary


def per_label(pairs: list[Pair], scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean scores per label name, with the number of maps."""
    accs: dict[str, ScoreAccumulator] = {}
    n: dict[str, int] = {}
    for (_, name), s in zip(pairs, scores):
        accs.setdefault(name, ScoreAccumulator()).update(s)
        n[name] = n.get(name, 0) + 1
    return {name: {"maps": n[name], **acc.aggregate()} for name, acc in accs.items()}


def sanity_scores(side: Explained, pairs: list[Pair], inputs: Inputs, options: ExplainOptions, size: int,
                  background: torch.Tensor | None) -> dict[str, Any]:
    """The weight-randomisation check of ``side``'s maps (Adebayo et al. 2018): a weight-shuffled copy of its model
    explained on the same ``pairs`` (those of ``side.maps``, in order) with the same method and layers, scored the
    same way, each map's Spearman to the trained model's map (``spearman_to_trained``), and the verdict
    (:func:`medistill.explain.sanity.verdict`: ``passed``, ``reasons``)."""
    shuffled = Explained(side.name, randomized_copy(side.model, options.seed), side.record, side.run, x=side.x)
    compute_maps(shuffled, pairs, options, size, background, None)
    acc = ScoreAccumulator()
    for p, (i, name) in enumerate(pairs):
        truth = inputs.truth_for(i, name)
        acc.update({"blank": blank(shuffled.maps[p])})
        if truth is not None and truth.any():
            acc.update(localisation_scores(shuffled.maps[p], truth))
        acc.update({"spearman_to_trained": agreement_scores(shuffled.maps[p], side.maps[p])["agreement_spearman"]})
    scores = acc.aggregate()
    return {"test": TEST_NAME, "method": options.method, "maps": len(pairs), **scores, **verdict(scores)}
