"""Classification metrics for multi-label and single-label tasks, with the label mask respected everywhere.

Inputs are numpy arrays (torch tensors are accepted): ``probs`` ``(N, L)`` (sigmoid per label, or softmax per row),
``targets`` ``(N, L)`` (0/1, or one-hot), ``mask`` ``(N, L)`` (0 = uncertain or missing: the entry is left out;
single-label rows are kept or dropped whole). Scores come from scikit-learn (``roc_auc_score``,
``average_precision_score``, ``f1_score``, ``confusion_matrix``, ``roc_curve``).

Policy for a label with only one class among its valid entries (MONAI's ``compute_roc_auc`` policy): its AUC and
AP are NaN, a :class:`MetricWarning` names it, and it is left out of the macro averages; the result reports
``labels_without_both_classes = {"count", "names"}``. NaN becomes ``null`` when the run writes ``metrics.json``.

Besides the functions, :class:`MetricAccumulator` collects batches (``update`` / ``compute`` / ``reset``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np

from ..errors import MedistillError
from ..task import Task, TaskError, get_task
from .bootstrap import bootstrap_macro_auc, bootstrap_unit, percentile_ci, resample_counts

log = logging.getLogger(__name__)

ECE_BINS = 15


class MetricError(MedistillError):
    """Metric inputs of the wrong shape or range; the message shows the shapes or values."""


class MetricWarning(UserWarning):
    """A metric is undefined for some label (one class only in the split) and was left out."""


# ------------------------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------------------------

def _np(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise MetricError(f"{name}: got {type(x).__name__}, expected a numeric array") from None


def _inputs(probs: Any, targets: Any, mask: Any, labels: Sequence[str] | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Checked float64 ``(N, L)`` probs, targets, bool mask, and the label names."""
    p, y = _np(probs, "probs"), _np(targets, "targets")
    if p.ndim != 2:
        raise MetricError(f"probs: shape {p.shape}, expected (N, L)")
    if y.shape != p.shape:
        raise MetricError(f"targets: shape {y.shape}, expected the shape of probs {p.shape}")
    m = np.ones(p.shape, bool) if mask is None else _np(mask, "mask")
    if m.shape != p.shape:
        raise MetricError(f"mask: shape {m.shape}, expected the shape of probs {p.shape}")
    m = m > 0
    labels = [f"label_{k}" for k in range(p.shape[1])] if labels is None else [str(v) for v in labels]
    if len(labels) != p.shape[1]:
        raise MetricError(f"labels: got {len(labels)} names, expected {p.shape[1]} (one per column of probs)")
    pv = p[m]
    if pv.size and (not np.isfinite(pv).all() or pv.min() < -1e-6 or pv.max() > 1 + 1e-6):
        bad = pv[~np.isfinite(pv) | (pv < -1e-6) | (pv > 1 + 1e-6)][:3]
        raise MetricError(f"probs: values such as {bad.tolist()} are not probabilities in [0, 1]; logits need a "
                          f"sigmoid (multi-label) or softmax (single-label) first")
    yv = y[m]
    if yv.size and not np.isin(yv, (0.0, 1.0)).all():
        bad = np.unique(yv[~np.isin(yv, (0.0, 1.0))])[:3]
        raise MetricError(f"targets: values {bad.tolist()} at unmasked entries, expected 0 or 1 (mask uncertain "
                          f"labels instead)")
    return p, y, m, labels


def _warn_one_class(names: list[str], what: str) -> None:
    if names:
        msg = (f"{len(names)} {what} with only one class among the valid targets of this split, left out of the "
               f"macro averages (NaN): {', '.join(names)}")
        warnings.warn(msg, MetricWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------------------
# calibration
# ------------------------------------------------------------------------------------------------------------

def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): ``sum_b |B_b| / n * |mean(outcome_b) - mean(confidence_b)|``.

    ``confidence`` ``(n,)`` in [0, 1], ``outcome`` ``(n,)`` 0/1; ``n_bins`` equal-width bins, right-closed
    ``(lo, hi]`` with 0 in the first (the binning of ``sklearn.calibration.calibration_curve``). NaN when n = 0.
    """
    c = np.asarray(confidence, dtype=np.float64).ravel()
    o = np.asarray(outcome, dtype=np.float64).ravel()
    if c.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.searchsorted(edges[1:-1], c)  # (n,) bin of each entry
    gap = np.abs(np.bincount(b, weights=o, minlength=n_bins) - np.bincount(b, weights=c, minlength=n_bins))
    return float(gap.sum() / c.size)  # = sum_b count_b / n * |acc_b - conf_b|, empty bins add 0


# ------------------------------------------------------------------------------------------------------------
# thresholds
# ------------------------------------------------------------------------------------------------------------

def _task(task: "str | Task") -> Task:
    try:
        return get_task(task)
    except TaskError as e:
        raise MetricError(str(e)) from None


def choose_thresholds(probs: Any, targets: Any, mask: Any = None, *, task: "str | Task" = "multilabel"
                      ) -> np.ndarray:
    """Per-label thresholds ``(L,)`` maximising Youden's J = sensitivity + specificity - 1 on validation data.

    A label is predicted positive when ``prob >= threshold``. Labels without both classes among their valid
    entries get 0.5. For ``task="multiclass"`` thresholds are unused (the prediction is the argmax): returns NaN
    ``(C,)``.
    """
    from sklearn.metrics import roc_curve

    t = _task(task)
    p, y, m, _ = _inputs(probs, targets, mask, None)
    if not t.uses_thresholds:
        return np.full(p.shape[1], np.nan)
    out = np.full(p.shape[1], 0.5)
    for k in range(p.shape[1]):
        v = m[:, k]
        yk = y[v, k]
        if yk.size == 0 or yk.min() == yk.max():
            continue
        fpr, tpr, thr = roc_curve(yk, p[v, k])
        fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop the "+inf: nothing positive" point
        out[k] = float(thr[int(np.argmax(tpr - fpr))])
    return out


# ------------------------------------------------------------------------------------------------------------
# multi-label
# ------------------------------------------------------------------------------------------------------------

def multilabel_metrics(probs: Any, targets: Any, mask: Any, labels: Sequence[str] | None,
                       thresholds: np.ndarray | None = None, n_bootstrap: int = 1000, seed: int = 0,
                       groups: np.ndarray | None = None) -> dict[str, Any]:
    """Multi-label metrics of ``probs`` ``(N, L)`` (a sigmoid per label) against 0/1 ``targets`` ``(N, L)``.

    Returns (label-keyed dicts use the names in ``labels``):

    - ``per_label_auc``, ``macro_auc`` (mean over labels with both classes), ``micro_auc`` (all valid entries
      pooled), ``per_label_ap``, ``macro_ap`` (average precision);
    - ``thresholds`` and ``threshold_source`` ("given", or "default 0.5" when ``thresholds`` is None; pass the
      :func:`choose_thresholds` of the validation split), ``per_label_sensitivity``, ``per_label_specificity``,
      ``per_label_f1`` at those thresholds (``prob >= threshold`` is positive; a sensitivity or specificity with
      nothing to measure is NaN, an undefined F1 is 0 as scikit-learn's ``zero_division=0``), ``macro_f1`` over
      the labels with both classes;
    - ``auc_ci95`` ``[lo, hi]``: percentile bootstrap over images of the macro AUC, ``n_bootstrap`` resamples
      seeded by ``seed`` (None when ``n_bootstrap`` is 0); over patients when ``groups`` names each image's
      patient (:func:`.bootstrap.patient_groups`), as ``auc_ci95_method`` says;
    - ``labels_without_both_classes`` ``{"count", "names"}`` (see the module's NaN policy);
    - ``ece``: expected calibration error over all valid entries (confidence = the label's probability,
      outcome = its target; 15 bins); ``per_label_positives`` / ``per_label_negatives``; ``num_images``,
      ``num_valid_entries``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    p, y, m, labels = _inputs(probs, targets, mask, labels)
    n, L = p.shape
    if thresholds is None:
        thr, source = np.full(L, 0.5), "default 0.5"
    else:
        thr, source = np.asarray(thresholds, dtype=np.float64).ravel(), "given"
        if thr.shape != (L,) or not np.isfinite(thr).all():
            raise MetricError(f"thresholds: got shape {np.shape(thresholds)} with values {thr.tolist()[:5]}, "
                              f"expected ({L},) finite values, one per label")
    auc, ap, sens, spec, f1 = (np.full(L, np.nan) for _ in range(5))
    npos, nneg = np.zeros(L, int), np.zeros(L, int)
    both = np.zeros(L, bool)
    for k in range(L):
        v = m[:, k]
        yk, pk = y[v, k] > 0.5, p[v, k]
        npos[k], nneg[k] = int(yk.sum()), int((~yk).sum())
        both[k] = npos[k] > 0 and nneg[k] > 0
        if both[k]:
            auc[k] = roc_auc_score(yk, pk)
            ap[k] = average_precision_score(yk, pk)
        pred = pk >= thr[k]
        tp, fp = int((pred & yk).sum()), int((pred & ~yk).sum())
        fn, tn = npos[k] - tp, nneg[k] - fp
        sens[k] = tp / npos[k] if npos[k] else np.nan
        spec[k] = tn / nneg[k] if nneg[k] else np.nan
        f1[k] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    missing = [labels[k] for k in range(L) if not both[k]]
    _warn_one_class(missing, "labels")
    yv, pv = y[m] > 0.5, p[m]
    micro = float(roc_auc_score(yv, pv)) if yv.any() and (~yv).any() else float("nan")
    macro = float(auc[both].mean()) if both.any() else float("nan")
    ci = None
    if n_bootstrap > 0:
        ci = (percentile_ci(bootstrap_macro_auc(p, y, m, n_bootstrap, seed, groups)) if both.any()
              else [float("nan")] * 2)

    def named(a: np.ndarray) -> dict[str, float]:
        return {lab: float(a[k]) for k, lab in enumerate(labels)}

    return {
        "task": "multilabel",
        "num_images": int(n),
        "num_valid_entries": int(m.sum()),
        "macro_auc": macro,
        "micro_auc": micro,
        "per_label_auc": named(auc),
        "auc_ci95": ci,
        "auc_ci95_method": None if ci is None else f"percentile bootstrap over {bootstrap_unit(groups)}, "
                                                     f"{n_bootstrap} resamples, seed {seed}",
        "macro_ap": float(ap[both].mean()) if both.any() else float("nan"),
        "per_label_ap": named(ap),
        "thresholds": named(thr),
        "threshold_source": source,
        "per_label_sensitivity": named(sens),
        "per_label_specificity": named(spec),
        "per_label_f1": named(f1),
        "macro_f1": float(f1[both].mean()) if both.any() else float("nan"),
        "per_label_positives": {lab: int(npos[k]) for k, lab in enumerate(labels)},
        "per_label_negatives": {lab: int(nneg[k]) for k, lab in enumerate(labels)},
        "labels_without_both_classes": {"count": len(missing), "names": missing},
        "ece": expected_calibration_error(pv, yv),
    }


# ------------------------------------------------------------------------------------------------------------
# single-label
# ------------------------------------------------------------------------------------------------------------

def multiclass_metrics(probs: Any, targets: Any, mask: Any, labels: Sequence[str] | None,
                       thresholds: np.ndarray | None = None, n_bootstrap: int = 1000, seed: int = 0,
                       groups: np.ndarray | None = None) -> dict[str, Any]:
    """Single-label metrics of ``probs`` ``(N, C)`` (softmax rows) against one-hot ``targets`` ``(N, C)``.

    The prediction is the argmax (``thresholds`` are ignored). A sample counts when its mask row is all ones; a
    partly masked row is an error. Returns ``accuracy``, ``accuracy_ci95`` (percentile bootstrap over images, or
    over the patients ``groups`` names; None when ``n_bootstrap`` is 0), ``balanced_accuracy`` (mean recall over
    the classes present),
    ``macro_f1`` (scikit-learn's: classes present in targets or predictions, ``zero_division=0``),
    ``per_class_recall`` (NaN for a class absent from the targets), ``per_class_support``, ``confusion_matrix``
    (list of lists, rows = true class, columns = predicted, in ``labels`` order), ``ece`` (top-label: confidence
    = max probability, outcome = correct; 15 bins), ``macro_auc`` / ``per_class_auc`` (one-vs-rest; a class
    present in all or none of the samples is NaN, warned about and left out), ``labels_without_both_classes``,
    ``num_images``, ``num_valid``.
    """
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    p, y, m, labels = _inputs(probs, targets, mask, labels)
    n, C = p.shape
    partial = m.any(axis=1) & ~m.all(axis=1)
    if partial.any():
        raise MetricError(f"mask: rows {np.flatnonzero(partial)[:5].tolist()} are partly masked; a single-label "
                          f"sample is kept (all ones) or dropped (all zeros)")
    keep = m.all(axis=1)
    p, y = p[keep], y[keep]
    if len(y) and not np.all(y.sum(axis=1) == 1):
        bad = np.flatnonzero(y.sum(axis=1) != 1)[:5].tolist()
        raise MetricError(f"targets: rows {bad} are not one-hot (each kept row needs exactly one 1)")
    nv = len(y)
    true = y.argmax(axis=1) if nv else np.zeros(0, int)
    pred = p.argmax(axis=1) if nv else np.zeros(0, int)
    correct = (true == pred).astype(np.float64)
    cm = confusion_matrix(true, pred, labels=np.arange(C)) if nv else np.zeros((C, C), int)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(cm) / np.where(support > 0, support, 1), np.nan)
    auc = np.full(C, np.nan)
    for c in range(C):
        if 0 < support[c] < nv:
            auc[c] = roc_auc_score(true == c, p[:, c])
    missing = [labels[c] for c in range(C) if np.isnan(auc[c])]
    _warn_one_class(missing, "classes")
    ci = None
    kept = None if groups is None else np.asarray(groups)[keep]
    if n_bootstrap > 0:
        ci = (percentile_ci(np.concatenate([correct @ cnt / np.maximum(cnt.sum(0), 1)
                                            for cnt in resample_counts(nv, n_bootstrap, seed, groups=kept)]))
              if nv else [float("nan")] * 2)
    return {
        "task": "multiclass",
        "num_images": int(n),
        "num_valid": int(nv),
        "accuracy": float(correct.mean()) if nv else float("nan"),
        "accuracy_ci95": ci,
        "accuracy_ci95_method": None if ci is None else f"percentile bootstrap over {bootstrap_unit(kept)}, "
                                                           f"{n_bootstrap} resamples, seed {seed}",
        "balanced_accuracy": float(np.nanmean(recall)) if (support > 0).any() else float("nan"),
        "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)) if nv else float("nan"),
        "per_class_recall": {lab: float(recall[c]) for c, lab in enumerate(labels)},
        "per_class_support": {lab: int(support[c]) for c, lab in enumerate(labels)},
        "confusion_matrix": cm.astype(int).tolist(),
        "macro_auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        "per_class_auc": {lab: float(auc[c]) for c, lab in enumerate(labels)},
        "labels_without_both_classes": {"count": len(missing), "names": missing},
        "ece": expected_calibration_error(p.max(axis=1) if nv else np.zeros(0), correct),
    }


def majority_baseline(train_counts: Sequence[float], targets: Any, mask: Any,
                      labels: Sequence[str] | None = None) -> dict[str, Any]:
    """What a single-label model must beat to have learnt anything: ``majority_class`` (the training split's most
    frequent class), ``majority_rate`` (the accuracy of always answering it on these ``targets`` ``(N, C)``, rows
    with a full mask), ``majority_balanced_accuracy`` (its balanced accuracy there: 1 / the classes present, when
    it is one of them) and ``chance`` (1 / C, the expected accuracy and balanced accuracy of guessing uniformly).
    Balanced accuracy (:func:`multiclass_metrics`) is the figure to read beside accuracy when classes are
    imbalanced: always giving one answer scores 1 / (classes present) on it whatever the imbalance."""
    counts = np.asarray(train_counts, dtype=np.float64)
    y, m = np.asarray(targets), np.asarray(mask)
    if counts.ndim != 1 or counts.size != y.shape[1]:
        raise MetricError(f"train_counts: {counts.size} counts for {y.shape[1]} classes")
    keep = m.all(axis=1)
    major = int(np.argmax(counts))
    names = list(labels) if labels is not None else [str(c) for c in range(len(counts))]
    present = y[keep].sum(axis=0) > 0
    return {"majority_class": names[major],
            "majority_rate": float(y[keep, major].mean()) if keep.any() else float("nan"),
            "majority_balanced_accuracy": float(present[major] / present.sum()) if present.any() else float("nan"),
            "chance": 1.0 / len(counts)}


def compute_metrics(task: "str | Task", probs: Any, targets: Any, mask: Any, labels: Sequence[str] | None,
                    thresholds: np.ndarray | None = None, **kw: Any) -> dict[str, Any]:
    """:func:`multilabel_metrics` or :func:`multiclass_metrics` by ``task``; ``kw``: ``n_bootstrap``, ``seed``,
    ``groups``."""
    if _task(task).multilabel:
        return multilabel_metrics(probs, targets, mask, labels, thresholds, **kw)
    return multiclass_metrics(probs, targets, mask, labels, thresholds, **kw)


# ------------------------------------------------------------------------------------------------------------
# stateful form
# ------------------------------------------------------------------------------------------------------------

class MetricAccumulator:
    """Collects batches and computes :func:`compute_metrics` over all of them (like MONAI's metric classes).

    ``inputs="logits"`` (default) applies a sigmoid (multi-label) or softmax (single-label) to what ``update``
    gets; ``inputs="probs"`` takes probabilities as they are.

        acc = MetricAccumulator("multilabel", labels)
        for batch in loader:
            acc.update(model(x), batch["target"], batch["mask"])   # (B, L) each
        metrics = acc.compute(thresholds=val_thresholds)
        acc.reset()
    """

    def __init__(self, task: "str | Task", labels: Sequence[str], *, inputs: str = "logits"):
        self.task = _task(task)
        if inputs not in ("logits", "probs"):
            raise MetricError(f"inputs: got {inputs!r}, expected 'logits' or 'probs'")
        self.labels, self.inputs = list(labels), inputs
        self.reset()

    def reset(self) -> None:
        self._logits: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(b) for b in self._probs)

    def update(self, logits_or_probs: Any, targets: Any, mask: Any = None) -> None:
        """Add a batch: ``(B, L)`` logits (or probabilities), targets and mask (None = all valid)."""
        x = _np(logits_or_probs, "logits_or_probs")
        if x.ndim != 2 or x.shape[1] != len(self.labels):
            raise MetricError(f"logits_or_probs: shape {x.shape}, expected (B, {len(self.labels)}) for "
                              f"{len(self.labels)} labels")
        if self.inputs == "logits":
            self._logits.append(x)
            x = self.task.probabilities(x)
        y = _np(targets, "targets")
        m = np.ones_like(x) if mask is None else _np(mask, "mask")
        for name, a in (("targets", y), ("mask", m)):
            if a.shape != x.shape:
                raise MetricError(f"{name}: shape {a.shape}, expected {x.shape} like logits_or_probs")
        self._probs.append(x)
        self._targets.append(y)
        self._mask.append(m)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything collected, ``(N, L)`` each: ``probs``, ``targets``, ``mask`` and (``inputs="logits"``)
        ``logits``."""
        if not self._probs:
            raise MetricError("MetricAccumulator: no batches; call update(...) first")
        out = {"probs": np.concatenate(self._probs), "targets": np.concatenate(self._targets),
               "mask": np.concatenate(self._mask)}
        if self._logits:
            out["logits"] = np.concatenate(self._logits)
        return out

    def compute(self, thresholds: np.ndarray | None = None, **kw: Any) -> dict[str, Any]:
        """Metrics over every batch since the last ``reset``; ``kw`` as :func:`compute_metrics`."""
        a = self.arrays()
        return compute_metrics(self.task.name, a["probs"], a["targets"], a["mask"], self.labels, thresholds, **kw)
