"""The task a model solves: multi-label (one sigmoid per label) or single-label (one softmax over classes).

One object answers every question that depends on the task, so no other module compares task strings:
probabilities from logits, the main metric and its title, how positives are called, the default thresholds,
the default hard / KD loss kinds and the default KD temperature. Torch-free (``predict`` and ``serve`` use it without torch); the
probability functions accept numpy arrays and torch tensors alike.

    task = get_task("multilabel")
    probs = task.probabilities(logits)          # (B, L)
    task.main_metric                            # "macro_auc"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import MedistillError


class TaskError(MedistillError):
    """An unknown task name; the message lists the valid ones."""


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function on numpy arrays (float32; clipped so that exp never overflows)."""
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` on numpy arrays (shifted by the max for stability), float32."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)

#: the headline figures of a ``metrics.json`` (key -> how text names it), in the order summaries list them after the
#: task's main metric: the one list the CLI's text, the evaluation log and the quickstart's summary read
HEADLINE_METRICS = {"macro_auc": "macro AUC", "accuracy": "accuracy", "macro_f1": "macro F1",
                    "balanced_accuracy": "balanced accuracy", "majority_rate": "majority-class rate"}
#: headline figures that mean something for single-label tasks only (one answer per image)
SINGLE_LABEL_METRICS = ("accuracy", "balanced_accuracy", "majority_rate")


@dataclass(frozen=True)
class Task:
    """What depends on single- vs multi-label; get one with :func:`get_task`."""

    name: str  # "multilabel" or "multiclass": the value stored in run records and ONNX metadata
    multilabel: bool  # one independent sigmoid per label (True) or one softmax over classes (False)
    description: str  # for people: "multi-label" / "single-label"
    main_metric: str  # the number model selection maximises and tables lead with
    main_metric_title: str  # its column title
    main_metric_ci: str  # the metrics.json key of its bootstrap confidence interval
    hard_loss: str  # default hard-label loss kind (losses.hard)
    kd_loss: str  # default soft-label loss kind (losses.kd)
    kd_temperature: float  # default KD temperature: 4 for a softmax (Hinton et al. 2015); 1 for one sigmoid per
    # label, which T = 4 flattens towards 0.5 (on the phantom's validation split T 0.5-1 led, T 4 was last:
    # benchmarks/quickstart_kd_grid.py)

    @property
    def headline_metrics(self) -> tuple[str, ...]:
        """The :data:`HEADLINE_METRICS` keys that apply to this task, its main metric first."""
        keys = [k for k in HEADLINE_METRICS if not (self.multilabel and k in SINGLE_LABEL_METRICS)]
        return (self.main_metric, *[k for k in keys if k != self.main_metric])

    def probabilities(self, logits: Any) -> Any:
        """Logits ``(B, L)`` -> probabilities ``(B, L)`` (numpy in, numpy out; torch in, torch out)."""
        if _is_torch(logits):
            return logits.sigmoid() if self.multilabel else logits.softmax(dim=1)
        return sigmoid(logits) if self.multilabel else softmax(logits, axis=1)

    def positives(self, probs: Sequence[float], labels: Sequence[str],
                  thresholds: Mapping[str, float] | None = None) -> list[str]:
        """Labels called positive for one image's ``(L,)`` probabilities: each label at or above its threshold
        (multi-label; 0.5 where none is stored), or the most probable class (single-label)."""
        p = np.asarray(probs, dtype=np.float64)
        if not self.multilabel:
            return [labels[int(np.argmax(p))]]
        thr = thresholds or {}
        return [lab for lab, v in zip(labels, p) if v >= float(thr.get(lab, 0.5))]

    def predictions(self, probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
        """``(N, L)`` probabilities -> ``(N, L)`` 0/1 predictions (thresholds per label, or the argmax)."""
        p = np.asarray(probs)
        if not self.multilabel:
            out = np.zeros_like(p, dtype=np.int64)
            if p.size:
                out[np.arange(p.shape[0]), p.argmax(1)] = 1
            return out
        thr = np.full(p.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        return (p >= thr[None, :]).astype(np.int64)

    @property
    def uses_thresholds(self) -> bool:
        """Whether per-label thresholds decide the positives (multi-label) or the argmax does."""
        return self.multilabel

    def __str__(self) -> str:
        return self.name


MULTILABEL = Task("multilabel", True, "multi-label", "macro_auc", "Macro AUC", "auc_ci95", "bce", "bce", 1.0)
MULTICLASS = Task("multiclass", False, "single-label", "accuracy", "Accuracy", "accuracy_ci95", "ce", "kl", 4.0)
TASKS: dict[str, Task] = {t.name: t for t in (MULTILABEL, MULTICLASS)}


def get_task(task: str | Task | None, *, default: str | None = None) -> Task:
    """The :class:`Task` named ``task`` (a Task is returned as is); ``None`` gives ``default`` if set."""
    if isinstance(task, Task):
        return task
    if task is None and default is not None:
        task = default
    try:
        return TASKS[str(task)]
    except KeyError:
        raise TaskError(f"task: got {task!r}, expected one of {list(TASKS)}") from None
