"""The report's overview sections: the comparison table with its headline, the runs table, training curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedistillError
from ..evaluate.compare import kd_gain
from ..task import MULTILABEL
from . import plots
from .collect import RunData
from .format import delta, esc, fmt, num, ratio, short_time, si, signed_pt, size_bytes, with_ci
from .page import Page
from .pieces import table

#: the other figures of the comparison table, per kind of task: (metrics.json key, column title)
MULTILABEL_COLUMNS = [("micro_auc", "Micro AUC"), ("macro_ap", "Macro AP"), ("macro_f1", "Macro F1")]
SINGLE_LABEL_COLUMNS = [("balanced_accuracy", "Balanced acc."), ("macro_f1", "Macro F1"),
                        ("macro_auc", "Macro AUC (one-vs-rest)")]


def ci_of(metrics: dict[str, Any], key: str, default_ci_key: str | None = None) -> Any:
    """The confidence interval stored for ``key`` (``default_ci_key``, ``<key>_ci95`` or ``<key>_ci``)."""
    for k in (default_ci_key, f"{key}_ci95", f"{key}_ci"):
        if k and metrics.get(k) is not None:
            return metrics[k]
    return None


def comparison(page: Page) -> str:
    """Every evaluated run: the main metric with its CI and its difference to the teacher, the other figures,
    parameters, MACs, size and latency (with ratios to the teacher's)."""
    ev = [r for r in page.runs if r.evaluated]
    if not ev:
        return ""
    task = page.task or MULTILABEL
    optional = (MULTILABEL_COLUMNS if task.multilabel else SINGLE_LABEL_COLUMNS) + [("ece", "ECE")]
    optional = [(k, t) for k, t in optional if any(num(r.metrics.get(k)) is not None for r in ev)]
    headers = ["Run", "Model", f"{task.main_metric_title} (95% CI)"]
    if page.teacher:
        headers.append("&Delta; vs teacher")
    headers += [esc(tt) for _, tt in optional] + ["Params", "MACs", "Size", "CPU latency<br>min (p90)"]
    rows = [_comparison_row(page, r, [k for k, _ in optional]) for r in ev]
    lead = (f"Main metric: {task.main_metric_title.lower()} with its bootstrap 95% confidence interval, on the "
            f"evaluated split; &Delta; in points (&times;100) against the teacher; MACs and latency also as a ratio "
            f"to the teacher's. Latency: PyTorch on CPU, batch 1, the minimum of repeated calls (p90 in brackets); a "
            f"ratio measured on a busy machine is marked unreliable.")
    return page.section("comparison", "Comparison", table(headers, rows, cls="compare", text_cols=2)
                        + baseline_note(ev) + headline(page), lead)


def baseline_note(ev: list[RunData]) -> str:
    """Single-label runs: chance and the majority-class rate, what accuracy must be read against (from the first
    evaluated run that records them: every run on the same test split has the same)."""
    m = next((r.metrics for r in ev if num(r.metrics.get("majority_rate")) is not None), None)
    if m is None:
        return ""
    bal = num(m.get("majority_balanced_accuracy"))
    return (f'<p class="lead">Chance {100 * m["chance"]:.1f} % (guessing uniformly); always answering '
            f'{esc(m.get("majority_class"))}, the training split\'s most frequent class: {100 * m["majority_rate"]:.2f} '
            f'% accuracy' + (f', {100 * bal:.1f} % balanced accuracy' if bal is not None else "") + '.</p>')


def _comparison_row(page: Page, r: RunData, optional: list[str]) -> list[str]:
    task, t = page.task or MULTILABEL, page.teacher
    m, row = r.metrics, r.row or {}
    key = task.main_metric
    cells = [f"{page.badge(r)}<br>{esc(r.name)}", esc(m.get("model") or r.info.get("model")),
             with_ci(row.get("value", m.get(key)), row.get("ci95") or ci_of(m, key, task.main_metric_ci))]
    if t:
        cells.append(delta(m.get(key), t.metrics.get(key)) if r is not t else "&mdash;")
    cells += [with_ci(m.get(k), ci_of(m, k)) for k in optional]
    lat, p90 = num(m.get("latency_ms")), num(m.get("latency_ms_p90"))
    macs = esc(si(m.get("macs")))
    lat_text = "n/a" if lat is None else f"{lat:.2f} ms"
    if lat is not None and p90 is not None:
        lat_text += f' <span class="ci">({p90:.2f})</span>'
    if t and r is not t:
        macs += ratio(t.metrics.get("macs"), m.get("macs"), "fewer")
        lat_text += ratio(t.metrics.get("latency_ms"), lat, "faster")
        if lat is not None and False in (m.get("latency_reliable"), t.metrics.get("latency_reliable")):
            lat_text += '<br><span class="ci">unreliable: measured on a busy machine</span>'  # issue 15, item 7
    return cells + [esc(si(m.get("params"))), macs, esc(size_bytes(m.get("size_bytes"))), lat_text]


def headline(page: Page) -> str:
    """One sentence per student: how far from the teacher, at what fraction of its cost; KD vs no KD."""
    task, t = page.task or MULTILABEL, page.teacher
    key, title = task.main_metric, task.main_metric_title
    kd = [r for r in page.runs if r.role == "student (KD)" and r.evaluated]
    nokd = [r for r in page.runs if r.role == "student (no KD)" and r.evaluated]
    gain = _kd_gain(page) if kd and nokd else None
    out = []
    for s in kd:
        v = num(s.metrics.get(key))
        if v is None:
            continue
        text = f"<strong>{esc(s.name)}</strong> (KD): {esc(title.lower())} {v:.4f}"
        tv = num(t.metrics.get(key)) if t else None
        if t and tv is not None:
            text += f", {signed_pt(v - tv)} against the teacher ({esc(t.name)}: {tv:.4f})"
            tm, sm = num(t.metrics.get("macs")), num(s.metrics.get("macs"))
            if tm and sm:
                text += f" at 1/{tm / sm:.1f} of its MACs"
        twin = [n for n in nokd if n.metrics.get("model") == s.metrics.get("model")] or nokd
        nv = num(twin[0].metrics.get(key)) if twin else None
        if twin and nv is not None:
            text += f"; KD vs the same student without KD ({esc(twin[0].name)}): {signed_pt(v - nv)}"
            g = gain if gain and gain["kd_run"] == str(s.path) else None
            if g:
                over = f" over {esc(g['resampled'])}" if g.get("resampled") else ""
                text += (f" (paired bootstrap{over}, 95% CI {signed_pt(g['ci_low'])} to {signed_pt(g['ci_high'])}: "
                         f"<strong>{esc(g['verdict'])}</strong>)")
        out.append(f"<li>{text}.</li>")
    return f"<ul>{''.join(out)}</ul>" if out else ""


def _kd_gain(page: Page) -> dict[str, Any] | None:
    """:func:`medistill.evaluate.compare.kd_gain` of the page's evaluated runs; None when it cannot be computed
    (no KD / no-KD pair, predictions missing or on other images): the headline then gives the plain difference."""
    rows = [r.row for r in page.runs if r.evaluated and r.row]
    try:
        return kd_gain(rows)
    except MedistillError:
        return None


def runs_table(page: Page) -> str:
    """Every run: role, kind, model, input, epochs, distillation settings, seed, when it finished, where it is."""
    headers = ["Role", "Run", "Kind", "Model", "Input", "Epochs (best)", "Distillation", "Seed", "Finished",
               "Directory"]
    names = {str(r.path.resolve()): r.name for r in page.runs}
    rows = []
    for r in page.runs:
        i, cfg = r.info, r.config
        inp = i.get("input") or {}
        epochs = i.get("epochs_run")
        ep = "n/a" if epochs is None else f"{epochs}" + (f" ({i['best_epoch']})" if i.get("best_epoch") else "")
        size = inp.get("size") or (cfg.get("data") or {}).get("image_size")
        ch = inp.get("channels") or (cfg.get("model") or {}).get("in_chans")
        rows.append([page.badge(r), esc(r.name), esc(i.get("kind", "?")),
                     esc(i.get("model") or r.metrics.get("model")),
                     esc(f"{size}\u00a0px\u00a0\u00d7\u00a0{ch}\u00a0ch" if size else "n/a"), esc(ep),
                     esc(_distillation_text(r, names) or "\u2014"),
                     esc(i.get("seed", (cfg.get("train") or {}).get("seed"))), esc(short_time(i.get("finished"))),
                     f'<code class="path">{esc(r.path)}</code>'])
    return page.section("runs", "Runs", table(headers, rows, text_cols=4))


def _distillation_text(r: RunData, names: dict[str, str]) -> str:
    """``teacher: t, α=0.5, T=4, loss kl, feature at`` for a distilled run; empty otherwise."""
    i = r.info
    if not (i.get("kind") == "distill" or i.get("teacher")):
        return ""
    d = r.config.get("distill") or {}
    teacher = i.get("teacher") or d.get("teacher")
    tname = names.get(str(teacher), Path(str(teacher)).name if teacher else "?")
    plan = i.get("distill_plan") if isinstance(i.get("distill_plan"), dict) else {}
    t = plan.get("temperature", d.get("temperature"))  # the T the run used (the task's default when not given)
    parts = [f"teacher: {tname}", f"\u03b1={fmt(num(d.get('alpha')))}", f"T={fmt(num(t))}"]
    if d.get("kd") not in (None, "auto"):
        parts.append(f"loss {d['kd']}")
    if d.get("feature") not in (None, "none"):
        parts.append(f"feature {d['feature']}")
    if i.get("distill_mode"):
        parts.append(str(i["distill_mode"]))
    return ", ".join(parts)


def training(page: Page) -> str:
    """Per-epoch curves of every run with a history, and a table of epochs, last losses and time."""
    rs = [r for r in page.runs if r.history]
    if not rs:
        return ""
    fig = plots.training_curves([r.history for r in rs], [r.name for r in rs], page.colours(rs),
                                [r.info.get("best_epoch") for r in rs])
    rows = []
    for r in rs:
        h = r.history
        secs = [s for s in h.get("seconds", []) if math.isfinite(s)]
        rows.append([page.badge(r), esc(r.name), esc(len(h.get("epoch", []))),
                     esc(fmt(h["train_loss"][-1]) if h.get("train_loss") else "n/a"),
                     esc(fmt(h["val_loss"][-1]) if h.get("val_loss") else "n/a"),
                     esc(f"{np.mean(secs):.2f} s" if secs else "n/a"),
                     esc(f"{np.sum(secs):.1f} s" if secs else "n/a")])
    tab = table(["Role", "Run", "Epochs", "Last train loss", "Last val loss", "Seconds / epoch", "Total"], rows,
                text_cols=2)
    return page.section("training", "Training curves",
                        page.plot(fig, "training curves", "Per-epoch loss and validation metric "
                                  "(from history.csv); the star marks the epoch whose weights were kept.") + tab)
