"""The report's per-label sections: per-label AUC (or recall) with operating points, ROC curves, confusion
matrices (single-label) and calibration. Metrics are read tolerantly: missing keys leave a figure out, and
per-label values may be a ``{label: value}`` mapping or a list in label order.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..task import MULTILABEL
from . import plots
from .collect import RunData
from .format import delta, esc, fmt, num
from .page import Page
from .pieces import table

#: operating-point columns of the threshold tables: (title, metrics.json keys, first found wins)
OPERATING_POINT_COLUMNS = [("Threshold", ("thresholds",)), ("Sensitivity", ("sensitivity", "per_label_sensitivity")),
                           ("Specificity", ("specificity", "per_label_specificity")), ("F1", ("f1", "per_label_f1")),
                           ("AP", ("per_label_ap", "ap")), ("AUC", ("per_label_auc",))]


def per_label(metrics: dict[str, Any], names: Sequence[str], labels: Sequence[str]) -> dict[str, float | None]:
    """Label -> value of the first of ``names`` present (a ``{label: v}`` dict or a list in label order)."""
    for n in names:
        v = metrics.get(n)
        if isinstance(v, dict):
            return {str(k): num(x) for k, x in v.items()}
        if isinstance(v, list) and len(v) == len(labels) and all(not isinstance(x, (dict, list)) for x in v):
            return {lab: num(x) for lab, x in zip(labels, v)}
    return {}


def per_label_section(page: Page) -> str:
    """Per-label AUC (multi-label) or recall (single-label) of the comparable runs: bars, a table with the
    differences to the teacher, and the operating points."""
    rs = page.comparable()
    if not rs or not page.labels:
        return ""
    labels = rs[0].labels
    if page.multilabel:
        names, ylabel, title = ("per_label_auc",), "AUC", "Per-label AUC"
    else:
        names, ylabel, title = ("per_class_recall", "per_label_recall"), "recall", "Per-class recall"
    values = [per_label(r.metrics, names, labels) or auc_from_predictions(page, r) for r in rs]
    if not any(values):
        return ""
    fig = plots.label_bars(values, [r.name for r in rs], page.colours(rs), labels, ylabel=ylabel)
    what = "teacher vs student vs student without KD" if len(rs) > 2 else "one bar per run"
    na = (" (n/a: the label has only one class in the split, so no AUC; it is left out of the macro average)"
          if page.multilabel else "")
    content = page.plot(fig, f"{title} per run", f"{esc(title)}, {what}{na}.")
    content += _per_label_table(page, rs, labels, values) + threshold_tables(page, rs, labels)
    return page.section("per-label", title, content)


def _per_label_table(page: Page, rs: list[RunData], labels: list[str], values: list[dict[str, float | None]]) -> str:
    """Label rows: positives, each run's value (the best in bold), each student's difference to the teacher."""
    prevalence = _prevalence(rs, labels)
    vs_teacher = len(rs) > 1 and page.teacher in rs
    headers = ["Label"] + (["Positives"] if prevalence else []) + [esc(f"{r.name} ({r.role})") for r in rs]
    if vs_teacher:
        headers += [esc(f"{r.name} \u2212 teacher") for r in rs if r is not page.teacher]
    rows = []
    for lab in labels:
        vals = [v.get(lab) for v in values]
        best = max((x for x in vals if x is not None), default=None)
        cells = [esc(lab)] + ([esc(prevalence.get(lab, "n/a"))] if prevalence else [])
        cells += [f"<strong>{esc(fmt(x))}</strong>" if x is not None and x == best and len(rs) > 1
                  else esc(fmt(x)) for x in vals]
        if vs_teacher:
            tv = values[rs.index(page.teacher)].get(lab)
            cells += [delta(v.get(lab), tv) for r, v in zip(rs, values) if r is not page.teacher]
        rows.append(cells)
    return table(headers, rows)


def auc_from_predictions(page: Page, r: RunData) -> dict[str, float | None]:
    """Per-label AUC from the run's saved predictions (multi-label; None where a label has one class only)."""
    if r.predictions is None or not page.multilabel:
        return {}
    from sklearn.metrics import roc_auc_score

    p = r.predictions
    y = plots.one_hot(p["targets"], p["probs"].shape[1])
    out: dict[str, float | None] = {}
    for j, lab in enumerate(r.labels[: p["probs"].shape[1]]):
        keep = p["mask"][:, j] > 0 if "mask" in p else np.ones(len(y), bool)
        both = len(np.unique(y[keep, j])) == 2
        out[lab] = float(roc_auc_score(y[keep, j], p["probs"][keep, j])) if both else None
    return out


def _prevalence(rs: Sequence[RunData], labels: Sequence[str]) -> dict[str, str]:
    r = next((r for r in rs if r.predictions is not None), None)
    if r is None:
        return {}
    p = r.predictions
    y = plots.one_hot(p["targets"], p["probs"].shape[1])  # (N, L)
    mask = p["mask"] > 0 if "mask" in p else np.ones_like(y, bool)
    return {lab: f"{int(y[mask[:, j], j].sum())} / {int(mask[:, j].sum())}" for j, lab in enumerate(labels)
            if j < y.shape[1]}


def threshold_tables(page: Page, rs: Sequence[RunData], labels: Sequence[str]) -> str:
    """Per run, per label: the operating point chosen on validation (multi-label) with its test figures."""
    if page.task is None or not page.task.uses_thresholds:
        return ""
    out = []
    for r in rs:
        vals = [(name, per_label(r.metrics, keys, labels)) for name, keys in OPERATING_POINT_COLUMNS]
        vals = [(n, v) for n, v in vals if v]
        if len(vals) <= 1:
            continue
        rows = [[esc(lab)] + [esc(fmt(v.get(lab))) for _, v in vals] for lab in labels]
        out.append(f"<details><summary>{esc(r.name)} ({esc(r.role)}): operating points per label</summary>"
                   + table(["Label"] + [esc(n) for n, _ in vals], rows) + "</details>")
    if not out:
        return ""
    default = [r.name for r in rs if str(r.metrics.get("threshold_source", "")).startswith("default")]
    how = ("Thresholds chosen on the validation split" if not default else
           f"Thresholds chosen on the validation split, except the default 0.5 for {', '.join(default)}")
    return (f'<h3>Operating points</h3><p class="note">{esc(how)}; sensitivity, specificity and F1 measured on '
            f'the evaluated split.</p>' + "".join(out))


def roc(page: Page) -> str:
    rs = page.comparable(with_predictions=True)
    if not rs:
        return ""
    fig = plots.roc_curves([r.predictions for r in rs], [r.name for r in rs], page.colours(rs), rs[0].labels)
    what = "one-vs-rest per class" if page.single_label else "one panel per label"
    return page.section("roc", "ROC curves", page.plot(
        fig, "ROC curves per label", f"ROC curves, {what}; legend: AUC per run. Uncertain / missing labels "
        f"(mask 0) are left out."))


def confusion(page: Page) -> str:
    """A confusion matrix per comparable single-label run (stored, else from its predictions)."""
    if not page.single_label:
        return ""
    figs = []
    for r in page.comparable():
        cm = r.metrics.get("confusion_matrix")
        labels = r.labels
        if not (isinstance(cm, list) and len(cm) == len(labels)) and r.predictions is not None:
            from sklearn.metrics import confusion_matrix

            p = r.predictions
            y = plots.one_hot(p["targets"], p["probs"].shape[1]).argmax(1)
            cm = confusion_matrix(y, p["probs"].argmax(1), labels=list(range(len(labels)))).tolist()
        if isinstance(cm, list) and len(cm) == len(labels):
            figs.append(page.plot(plots.confusion_matrix(np.asarray(cm), labels, f"{r.name} ({r.role})"),
                                  f"confusion matrix of {r.name}"))
    if not figs:
        return ""
    return page.section("confusion", "Confusion matrices", f'<div class="figs">{"".join(figs)}</div>',
                        "Rows: true class; colour: fraction of the true class; numbers: image counts.")


def calibration(page: Page) -> str:
    rs = page.comparable(with_predictions=True)
    if not rs:
        return ""
    task = page.task or MULTILABEL
    fig = plots.calibration([r.predictions for r in rs], [r.name for r in rs], page.colours(rs), task,
                            [num(r.metrics.get("ece")) for r in rs])
    what = ("every (image, label) sigmoid output" if task.multilabel
            else "the top-class softmax confidence against whether the top class is right")
    return page.section("calibration", "Calibration", page.plot(
        fig, "reliability diagram", f"Reliability diagram over {what}, 10 equal-width bins; points on the "
        f"diagonal are perfectly calibrated. ECE: expected calibration error (lower is better)."))
