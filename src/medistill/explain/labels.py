"""Which labels to explain on each image: the model's probabilities, the run's thresholds, the choice.

``options.labels`` when given (``["truth"]``: each image's ground-truth positive labels, as localisation studies
explain them; an image with none gets no map); else, multi-label, the labels predicted positive (probability >= the run's stored
threshold, or 0.5), most probable first, else the top ``options.top_k``; single-label, the predicted class. The
:class:`~medistill.task.Task` decides what is positive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..maps.errors import ExplainError
from ..runs import RunDir
from ..task import Task, get_task
from ..utils.runtime import eval_mode
from . import TRUTH_LABELS
from .sides import Explained


def predict(side: Explained, batch_size: int) -> np.ndarray:
    """(N, L) probabilities of ``side`` on its inputs: one sigmoid per label, softmax for single-label."""
    out = []
    with eval_mode(side.model), torch.no_grad():
        device = next(side.model.parameters()).device
        for s in range(0, len(side.x), batch_size):
            logits = side.model(side.x[s:s + batch_size].to(device)).float()
            out.append(side.task.probabilities(logits).cpu())
    return torch.cat(out).numpy()


def thresholds(run_dir: Path, record: dict[str, Any], labels: list[str]) -> np.ndarray:
    """Per-label decision thresholds (L,): stored ``thresholds`` in run.json or metrics.json, else 0.5."""
    out = np.full(len(labels), 0.5)
    stored = record.get("thresholds") or RunDir(run_dir).metrics().get("thresholds")
    if isinstance(stored, dict):
        for k, name in enumerate(labels):
            if isinstance(stored.get(name), (int, float)):
                out[k] = float(stored[name])
    elif isinstance(stored, list) and len(stored) == len(labels):
        out[:] = [float(v) for v in stored]
    return out


def choose_labels(probs: np.ndarray, labels: list[str], task: str | Task, asked: list[str] | None, top_k: int,
                  thr: np.ndarray, positives: list[list[str]] | None = None) -> list[list[str]]:
    """Label names to explain, per image (see the module docstring); ``probs`` (N, L), ``thr`` (L,),
    ``positives``: each image's ground-truth positive labels (for ``asked == ["truth"]``)."""
    if asked == [TRUTH_LABELS]:
        if positives is None:
            raise ExplainError(f"labels: {TRUTH_LABELS!r} needs a dataset split with labels; image files have none")
        return [[name for name in labels if name in pos] for pos in positives]
    if asked:
        unknown = [a for a in asked if a not in labels]
        if unknown:
            raise ExplainError(f"labels: {unknown[0]!r} is not a label of the model; expected some of {labels}")
        return [list(asked) for _ in range(len(probs))]
    task = get_task(task)
    by_name = {name: float(t) for name, t in zip(labels, thr)}
    out = []
    for p in probs:
        order = [labels[int(k)] for k in np.argsort(-p, kind="stable")]  # most probable first
        positive = set(task.positives(p, labels, by_name))
        chosen = [name for name in order if name in positive] or order[:top_k]
        out.append(chosen)
    return out
