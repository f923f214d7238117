"""Bootstrap over images (or over patients, the cluster bootstrap): resample counts, weighted ROC-AUC of many
resamples at once, percentile intervals.

Shared by the metrics' confidence intervals (:mod:`.metrics`) and the paired KD-gain interval (:mod:`.compare`).
"""

from __future__ import annotations

import warnings

import numpy as np


def resample_counts(n: int, n_bootstrap: int, seed: int, chunk: int | None = None, groups=None):
    """Yield ``(n, b)`` integer arrays: column ``j`` counts how often each of the ``n`` rows is drawn in resample j.

    Resamples draw ``n`` rows uniformly with replacement (``rng.integers``), ``b`` resamples per chunk. With
    ``groups`` (one id per row: the patient), they draw the groups instead, as many as there are, and each row
    counts as often as its group is drawn (the cluster bootstrap: slices or views of one patient are not
    independent evidence, and resampling them one by one gives intervals too narrow).
    """
    if groups is not None:
        _, group_of = np.unique(np.asarray(groups), return_inverse=True)
        if len(group_of) != n:
            raise ValueError(f"groups: {len(group_of)} ids for {n} rows")
        for counts in resample_counts(int(group_of.max()) + 1 if n else 0, n_bootstrap, seed, chunk):
            yield counts[group_of]
        return
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, min(n_bootstrap, 4_000_000 // max(n, 1)))
    done = 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        idx = rng.integers(0, n, size=(b, n))  # (b, n) rows drawn by each resample
        flat = (idx * b + np.arange(b)[:, None]).ravel()
        yield np.bincount(flat, minlength=n * b).reshape(n, b)
        done += b


def weighted_auc(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray,
                  rows: np.ndarray | None = None) -> np.ndarray:
    """ROC-AUC of each resample -> ``(b,)`` (NaN if undefined); column j of ``counts`` ``(n, b)`` weights the entries.

    ``rows``: use only these entries of ``scores`` / ``positive`` ``(n,)`` and rows of ``counts`` (the valid ones).

    Equal to ``roc_auc_score`` on the rows repeated ``counts`` times: the Mann-Whitney U statistic
    ``U = sum_{i pos} c_i (negatives below s_i + 1/2 negatives tied with s_i)`` over ``W_pos * W_neg``, for all
    resamples at once (one sort of the negatives, a cumulative sum, two look-ups per positive), in exact integer
    arithmetic. Written here because scikit-learn has no weighted, vectorised form, and calling it for every
    resample and label is far slower.
    """
    rows = np.arange(len(scores)) if rows is None else np.asarray(rows)
    pos = positive[rows].astype(bool)
    pos_rows, neg_rows = rows[pos], rows[~pos]
    neg_rows = neg_rows[np.argsort(scores[neg_rows], kind="mergesort")]
    neg_scores = scores[neg_rows]  # ascending
    cum = np.zeros((len(neg_rows) + 1, counts.shape[1]), dtype=np.int64)  # (n_neg + 1, b)
    np.cumsum(counts[neg_rows], axis=0, out=cum[1:])  # negatives' weight up to each rank
    lo = np.searchsorted(neg_scores, scores[pos_rows], side="left")  # negatives strictly below each positive
    hi = np.searchsorted(neg_scores, scores[pos_rows], side="right")  # ... below or tied
    c_pos = counts[pos_rows]  # (n_pos, b)
    u2 = (c_pos * (cum[lo] + cum[hi])).sum(axis=0)  # 2 U per resample
    den = c_pos.sum(axis=0) * cum[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, u2 / (2.0 * np.where(den > 0, den, 1)), np.nan)


#: the metrics :func:`resampled_metric` computes on resamples (a study or a KD gain is measured on one of them)
RESAMPLED_METRICS = ("accuracy", "balanced_accuracy", "macro_auc")


def resampled_metric(metric: str, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                     counts: np.ndarray) -> np.ndarray:
    """``metric`` of each resample -> ``(b,)``: column j of ``counts`` ``(n, b)`` weights the rows of ``probs``,
    ``targets`` and ``mask`` ``(n, L)`` (:func:`resample_counts`; ``np.ones((n, 1))`` gives the plain value).

    - ``macro_auc``: the mean ROC-AUC of the labels with both classes in the resample (each label over its valid
      rows; single-label: one class against the rest);
    - ``accuracy``: single-label, the argmax's share of correct answers over rows with a full mask;
    - ``balanced_accuracy``: single-label, the mean recall over the classes present in the resample (always
      answering one class scores 1 / C whatever the imbalance).
    NaN where the metric is undefined (no row, no label with both classes).
    """
    b = counts.shape[1]
    if metric == "macro_auc":
        valid = mask > 0
        per = np.full((b, probs.shape[1]), np.nan)
        for k in range(probs.shape[1]):
            rows = np.flatnonzero(valid[:, k])
            if rows.size:
                per[:, k] = weighted_auc(probs[:, k], targets[:, k] > 0.5, counts, rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no defined label: NaN
            return np.nanmean(per, axis=1)
    if metric not in RESAMPLED_METRICS:
        raise ValueError(f"metric: got {metric!r}, expected one of {RESAMPLED_METRICS}")
    keep = (mask > 0).all(axis=1)
    true = targets[keep].argmax(axis=1)
    correct = (probs[keep].argmax(axis=1) == true).astype(np.float64)
    c = counts[keep].astype(np.float64)  # (n_kept, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "accuracy":
            total = c.sum(axis=0)
            return np.where(total > 0, correct @ c / np.where(total > 0, total, 1), np.nan)
        recalls = []
        for k in range(targets.shape[1]):
            in_k = (true == k).astype(np.float64)
            n_k = in_k @ c
            recalls.append(np.where(n_k > 0, (correct * in_k) @ c / np.where(n_k > 0, n_k, 1), np.nan))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(recalls), axis=0) if recalls else np.full(b, np.nan)


def patient_groups(patients: np.ndarray | None) -> np.ndarray | None:
    """``patients`` (one id per row) when some patient has more than one row, so that the bootstrap must draw
    patients; None when every row is its own patient (or none are known), where drawing rows is the same thing
    and keeps the image bootstrap's figures."""
    if patients is None:
        return None
    patients = np.asarray(patients)
    return patients if len(np.unique(patients)) < len(patients) else None


def bootstrap_unit(groups: np.ndarray | None) -> str:
    """What a bootstrap resample draws, for the intervals' method strings: "images" or "patients (N)"."""
    return "images" if groups is None else f"patients ({len(np.unique(np.asarray(groups)))})"


def percentile_ci(values: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap_macro_auc(probs: np.ndarray, targets: np.ndarray, valid: np.ndarray, n_bootstrap: int = 1000,
                        seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Macro AUC of ``n_bootstrap`` resamples of the images (rows), or of the patients named by ``groups`` (see
    :func:`resample_counts`) -> ``(n_bootstrap,)``.

    Each resample draws N rows with replacement; each label uses its valid entries among them, and the macro
    average takes the labels with both classes in that resample (NaN if none).
    """
    n, L = probs.shape
    out = []
    for counts in resample_counts(n, n_bootstrap, seed, groups=groups):
        per = np.full((counts.shape[1], L), np.nan)
        for k in range(L):
            rows = np.flatnonzero(valid[:, k])
            if rows.size:
                per[:, k] = weighted_auc(probs[:, k], targets[:, k] > 0.5, counts, rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no defined label: NaN
            out.append(np.nanmean(per, axis=1))
    return np.concatenate(out) if out else np.zeros(0)
