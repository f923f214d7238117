"""The report's figures, drawn with matplotlib's Agg renderer and embedded as base64 PNG data URIs.

Every function takes plain arrays / dicts and returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no global figure state, no GUI backend is ever selected); :func:`to_data_uri` renders one to PNG.
Curves come from scikit-learn (``roc_curve``, ``calibration_curve``) rather than hand-written code.

Array shapes: ``probs``, ``targets``, ``mask`` are ``(N, L)`` (one column per label; single-label targets are
one-hot or class indices ``(N,)``), as saved in ``predictions_<split>.npz``.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from typing import Any, Sequence

import numpy as np

from ..task import Task, get_task

log = logging.getLogger(__name__)

#: Colour of each run role, so a role reads the same in every figure.
ROLE_COLOURS = {"teacher": "#1f4e99", "student (KD)": "#e0701b", "student (no KD)": "#6b8e23", "model": "#7a5195"}
_EXTRA_COLOURS = ("#c0392b", "#16a085", "#8e44ad", "#2c3e50", "#d4ac0d", "#7f8c8d")


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)  # Agg renderer attached to this figure only; pyplot's backend is never touched
    return fig


def to_data_uri(fig: Any, dpi: int = 100) -> str:
    """``data:image/png;base64,...`` of ``fig`` (an Agg-rendered PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colours(roles: Sequence[str]) -> list[str]:
    """One colour per run: the role's colour, a distinct extra colour for a repeated role."""
    out: list[str] = []
    extra = iter(_EXTRA_COLOURS * 4)
    for role in roles:
        c = ROLE_COLOURS.get(role)
        out.append(c if c is not None and c not in out else next(extra))
    return out


def one_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N,)`` class indices or ``(N, L)`` one-hot -> float ``(N, L)``."""
    t = np.asarray(targets)
    if t.ndim == 1:
        out = np.zeros((len(t), num_classes), dtype=np.float32)
        out[np.arange(len(t)), t.astype(int)] = 1.0
        return out
    return t.astype(np.float32)


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------

def training_curves(histories: Sequence[dict[str, list[float]]], names: Sequence[str], colour_list: Sequence[str],
                    best_epochs: Sequence[int | None] | None = None):
    """Loss (train solid, validation dashed) and the validation metric per epoch, one colour per run.

    ``histories[i]`` maps a ``history.csv`` column (``epoch``, ``train_loss``, ``val_loss``, ``val_<metric>``)
    to its values per epoch.
    """
    fig = _figure(10, 3.6)
    ax_loss, ax_metric = fig.subplots(1, 2)
    metric_name = None
    for i, (h, name, c) in enumerate(zip(histories, names, colour_list)):
        epochs = h.get("epoch") or list(range(1, len(next(iter(h.values()), [])) + 1))
        if "train_loss" in h:
            ax_loss.plot(epochs, h["train_loss"], color=c, marker="o", ms=3, label=f"{name} train")
        if "val_loss" in h:
            ax_loss.plot(epochs, h["val_loss"], color=c, ls="--", marker="s", ms=3, label=f"{name} val")
        keys = [k for k in h if k.startswith("val_") and k != "val_loss"]
        if keys:
            metric_name = keys[0][4:]
            ax_metric.plot(epochs, h[keys[0]], color=c, marker="o", ms=3, label=name)
            best = best_epochs[i] if best_epochs else None
            if best is not None and best in epochs:
                j = list(epochs).index(best)
                ax_metric.plot([best], [h[keys[0]][j]], marker="*", ms=14, color=c, mec="black", mew=0.6, ls="none")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: validation)")
    ax_metric.set(xlabel="epoch", ylabel=(metric_name or "metric").replace("_", " "),
                  title=f"Validation {(metric_name or 'metric').replace('_', ' ')} (star: best epoch)")
    from matplotlib.ticker import MaxNLocator

    last = max((max(h.get("epoch") or [1]) for h in histories), default=1)
    for ax in (ax_loss, ax_metric):
        if last <= 12:
            ax.set_xticks(range(1, int(last) + 1))
            ax.set_xlim(0.5, last + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------------
# discrimination
# ---------------------------------------------------------------------------------------------------------

def roc_curves(preds: Sequence[dict[str, np.ndarray]], names: Sequence[str], colour_list: Sequence[str],
               labels: Sequence[str], max_cols: int = 4):
    """One panel per label (one-vs-rest for single-label), a ROC curve per run; masked entries are left out.

    ``preds[i]`` holds ``probs`` (N, L), ``targets`` (N, L) or (N,), optional ``mask`` (N, L) of run ``i``.
    A label with only one class present gets a note instead of a curve.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    rows, cols = _grid(len(labels), max_cols)
    w, h = 3.0 * cols, 2.9 * rows
    fig = _figure(w, h, layout=None)  # a grid of equal panels: fixed margins (in inches), no layout solver
    fig.subplots_adjust(left=0.6 / w, right=1 - 0.15 / w, bottom=0.5 / h, top=1 - 0.3 / h,
                        wspace=0.35, hspace=0.45)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for j, label in enumerate(labels):
        ax = axes[j]
        ax.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls=":")
        notes = []
        for p, name, c in zip(preds, names, colour_list):
            probs = np.asarray(p["probs"])
            if j >= probs.shape[1]:
                continue
            y = one_hot(p["targets"], probs.shape[1])[:, j]  # (N,)
            keep = np.asarray(p["mask"])[:, j] > 0 if p.get("mask") is not None else np.ones(len(y), bool)
            y, s = y[keep], probs[keep, j]
            if len(np.unique(y)) < 2:
                notes.append(f"{name}: one class only")
                continue
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, color=c, lw=1.5, label=f"{name} {roc_auc_score(y, s):.3f}")
        ax.set_title(label, fontsize=10)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        if j % cols == 0:
            ax.set_ylabel("sensitivity", fontsize=8)
        if j >= (rows - 1) * cols:
            ax.set_xlabel("1 - specificity", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower right", title="AUC", title_fontsize=6)
        if notes:
            ax.text(0.5, 0.5, "\n".join(notes), ha="center", va="center", fontsize=7, color="#a00")
    for ax in axes[len(labels):]:
        ax.set_axis_off()
    return fig


def label_bars(values: Sequence[dict[str, float | None]], names: Sequence[str], colour_list: Sequence[str],
               labels: Sequence[str], ylabel: str = "AUC",
               errors: Sequence[dict[str, Sequence[float]] | None] | None = None):
    """Grouped bars: one group per label, one bar per run (missing / NaN values are left empty and marked)."""
    n = max(len(names), 1)
    width = 0.8 / n
    fig = _figure(max(6.0, 0.55 * len(labels) * n + 2), 3.8)
    ax = fig.subplots()
    x = np.arange(len(labels))
    all_ys = [[_finite_or_nan(vals.get(lab)) for lab in labels] for vals in values]
    finite = [y for ys in all_ys for y in ys if not math.isnan(y)]
    lo_y = min(finite) if finite else 0.0
    bottom = max(0.0, math.floor(lo_y * 10) / 10 - 0.1) if ylabel.lower().endswith("auc") else 0.0
    for i, (ys, name, c) in enumerate(zip(all_ys, names, colour_list)):
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, [bottom if math.isnan(y) else y for y in ys], width=width * 0.95, color=c, label=name)
        for xp, y in zip(pos, ys):
            if math.isnan(y):
                ax.text(xp, bottom + 0.005, "n/a", ha="center", va="bottom", fontsize=7, color="#a00")
        if errors and errors[i]:
            lo = [errors[i].get(lab, (y, y))[0] for lab, y in zip(labels, ys)]
            hi = [errors[i].get(lab, (y, y))[1] for lab, y in zip(labels, ys)]
            ax.errorbar(pos, ys, yerr=[np.subtract(ys, lo), np.subtract(hi, ys)], fmt="none", ecolor="black", lw=0.8)
    ax.set_ylim(bottom, 1.0)
    ax.set_xticks(x, labels, rotation=35 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=min(n, 4), fontsize=8,
               frameon=False)
    return fig


def _finite_or_nan(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if math.isfinite(f) else float("nan")


def confusion_matrix(cm: np.ndarray, labels: Sequence[str], title: str):
    """Row-normalised confusion matrix (rows = true class) with the counts written in each cell."""
    cm = np.asarray(cm, dtype=float)  # (L, L)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(3.2, 0.55 * len(labels) + 1.8)
    fig = _figure(size + 0.6, size)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")
    return fig


# ---------------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------------

def reliability(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None, task: str | Task,
                n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted probability, observed frequency, count) per non-empty equal-width bin.

    Multi-label: every unmasked (image, label) pair, as in the per-label sigmoid outputs. Single-label: the
    top-class confidence against whether the top class is right (the usual reliability diagram).
    """
    probs = np.asarray(probs, dtype=float)  # (N, L)
    y = one_hot(targets, probs.shape[1])  # (N, L)
    if get_task(task).multilabel:
        keep = (np.asarray(mask) > 0) if mask is not None else np.ones_like(probs, bool)
        conf, hit = probs[keep], y[keep]
    else:
        conf = probs.max(axis=1)
        hit = (probs.argmax(axis=1) == y.argmax(axis=1)).astype(float)
        if mask is not None:
            keep = np.asarray(mask).sum(axis=1) > 0
            conf, hit = conf[keep], hit[keep]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    mean_p = np.bincount(idx, weights=conf, minlength=n_bins)
    freq = np.bincount(idx, weights=hit, minlength=n_bins)
    ok = count > 0
    return mean_p[ok] / count[ok], freq[ok] / count[ok], count[ok]


def calibration(preds: Sequence[dict[str, np.ndarray]], names: Sequence[str], colour_list: Sequence[str],
                task: str | Task, eces: Sequence[float | None] | None = None, n_bins: int = 10):
    """Reliability diagram (observed frequency against mean predicted probability) and the confidence histogram."""
    fig = _figure(9, 3.8)
    ax, ax_hist = fig.subplots(1, 2, width_ratios=[1.2, 1])
    ax.plot([0, 1], [0, 1], color="#999999", ls=":", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    for i, (p, name, c) in enumerate(zip(preds, names, colour_list)):
        mp, fr, cnt = reliability(p["probs"], p["targets"], p.get("mask"), task, n_bins)
        ece = eces[i] if eces else None
        if ece is None:
            ece = float(np.sum(cnt * np.abs(mp - fr)) / max(cnt.sum(), 1))
        ax.plot(mp, fr, marker="o", color=c, label=f"{name} (ECE {ece:.3f})")
        centres = (edges[:-1] + edges[1:]) / 2
        full = np.zeros(n_bins)
        idx = np.clip(np.digitize(mp, edges[1:-1]), 0, n_bins - 1)
        full[idx] = cnt
        ax_hist.step(centres, full, where="mid", color=c, label=name)
    what = "per-label probability" if get_task(task).multilabel else "top-class confidence"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"mean predicted {what}", ylabel="observed frequency",
           title="Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax_hist.set(xlim=(0, 1), xlabel=what, ylabel="count", title="How confident the predictions are")
    ax_hist.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------------------
# efficiency / export
# ---------------------------------------------------------------------------------------------------------

def hbars(values: dict[str, float], xlabel: str, title: str, colour: str = "#1f4e99"):
    """Horizontal bars of named values (latencies of the exported models, for instance)."""
    names = list(values)
    fig = _figure(7, max(1.6, 0.4 * len(names) + 1))
    ax = fig.subplots()
    y = np.arange(len(names))
    vals = [float(values[n]) for n in names]
    ax.barh(y, vals, color=colour)
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:.3g}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    positive = [v for v in vals if v > 0]
    if positive and max(positive) / min(positive) > 30:  # a slow teacher beside fast students: log scale
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 2, max(positive) * 3)
        xlabel += " (log scale)"
    else:
        ax.set_xlim(0, max(vals + [1e-9]) * 1.2)
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", alpha=0.3)
    return fig
