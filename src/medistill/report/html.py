"""Build the self-contained HTML report (``medistill report``) from collected run data.

:func:`render` turns a :class:`~medistill.report.collect.ReportData` into one HTML string: every figure is an
embedded PNG data URI, the CSS is inline, there are no scripts and no external resources, and every string from
the inputs is HTML-escaped. Sections appear only when their inputs exist (a run that was never evaluated has
training curves but no ROC curves, and so on).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import plots
from .collect import MAX_IMAGE_BYTES, ExplainData, Overlay, ReportData, RunData
from .template import CSS, PAGE

log = logging.getLogger(__name__)

MAX_OVERLAY_SIDE = 384  # single overlays wider or taller than this are downscaled before embedding
WIDE_SIDE = 1000  # the same for whole-image panels (every label, teacher and student rows) and feature-map grids


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


# ---------------------------------------------------------------------------------------------------------
# number formatting
# ---------------------------------------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt(v: Any, digits: int = 4) -> str:
    """A value for a table cell (plain text, not escaped): ints with separators, floats to ``digits`` figures."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.2e}"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    return str(v)


def si(v: Any, unit: str = "") -> str:
    f = _num(v)
    if f is None:
        return "n/a"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(f) >= div:
            return f"{f / div:.2f} {suf}{unit}"
    return f"{f:.0f} {unit}".rstrip()


def size_bytes(v: Any) -> str:
    f = _num(v)
    if f is None:
        return "n/a"
    for div, suf in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if f >= div:
            return f"{f / div:.2f} {suf}"
    return f"{f:.0f} B"


def with_ci(value: Any, ci: Any) -> str:
    """``0.8123 <span class=ci>(0.790-0.833)</span>`` (escaped HTML)."""
    out = esc(fmt(_num(value)))
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _num(ci[0]) is not None and _num(ci[1]) is not None:
        out += f' <span class="ci">({_num(ci[0]):.3f}&ndash;{_num(ci[1]):.3f})</span>'
    return out


# ---------------------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "", text_cols: int = 1) -> str:
    """A table from escaped header texts and cell HTML; the first ``text_cols`` columns are left-aligned."""
    text = ' class="text"'
    head = "".join(f"<th{text if i < text_cols else ''}>{h}</th>" for i, h in enumerate(headers))
    body = "\n".join("<tr>" + "".join(f"<td{text if i < text_cols else ''}>{c}</td>" for i, c in enumerate(r))
                     + "</tr>" for r in rows)
    table_cls = f' class="{cls}"' if cls else ""
    return (f'<div class="table-wrap"><table{table_cls}><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


def figure(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def plot(fig: Any, alt: str, caption: str = "", dpi: int = 100) -> str:
    return figure(plots.to_data_uri(fig, dpi=dpi), alt, caption)


def role_badge(role: str, colour: str) -> str:
    return f'<span class="role" style="background:{colour}">{esc(role)}</span>'


def section(anchor: str, title: str, content: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{lead_html}\n{content}\n</section>'


def kv_table(pairs: Iterable[tuple[str, Any]], checks: dict[str, tuple[str, float]] | None = None) -> str:
    """Key / value rows. A key in ``checks`` (``{"max_abs_diff": ("<=", 1e-4)}``) is marked good or bad, and so is
    a yes/no figure whose name says it is a target (``*_within_*``, ``*_at_least_*``, ``targets.*``)."""
    rows = []
    for k, v in pairs:
        is_size = (any(part.endswith("bytes") for part in k.split(".")) and isinstance(v, int)
                   and not isinstance(v, bool))
        cell = esc(size_bytes(v) + f" ({v:,} B)" if is_size else fmt(v))
        check = (checks or {}).get(k)
        f = _num(v)
        if check is not None and f is not None:
            op, limit = check
            ok = f <= limit if op == "<=" else f >= limit
            what = {"<=": "at most", ">=": "at least"}[op]
            cell = (f'<span class="{"good" if ok else "bad"}">{cell}</span> '
                    f'<span class="muted">({"meets" if ok else "misses"} the target: {what} {limit:g})</span>')
        elif isinstance(v, bool) and _is_target_name(k):
            cell = f'<span class="{"good" if v else "bad"}">{"yes" if v else "no"}</span>'
        rows.append((f"{esc(k)}", cell))
    return table(["key", "value"], rows, cls="kv")


def _is_target_name(key: str) -> bool:
    k = key.lower()
    return k.startswith("targets.") or any(w in k for w in ("within", "at_least", "meets", "target"))


def figures(obj: Any, max_depth: int = 2) -> list[tuple[str, Any]]:
    """The numbers and yes/no figures of a JSON object (nested up to ``max_depth``), leaving out records of the
    environment (``versions``, ``machine``) and per-label lists, which the 'all fields' table still shows."""
    skip = ("versions.", "machine.", "thresholds.", "input.", "labels", "load_average")
    out = []
    for k, v in flatten(obj, max_depth=max_depth):
        if k.startswith(skip) or k.count(".") > max_depth:
            continue
        if isinstance(v, bool) or _num(v) is not None:
            out.append((k, v))
    return out


def summary_tables(summary: dict[str, Any]) -> str:
    """An ``explain.json``-like summary as tables: scores side by side (this model, then each block such as
    ``teacher`` or ``sanity`` that has the same keys), a per-label table (a block of per-label blocks) and the
    remaining top-level figures."""
    scalars = {k: v for k, v in summary.items() if isinstance(v, bool) or _num(v) is not None}
    blocks = {k: v for k, v in summary.items() if isinstance(v, dict) and v
              and all(not isinstance(x, (dict, list)) for x in v.values())}
    matrices = {k: v for k, v in summary.items() if isinstance(v, dict) and v
                and all(isinstance(x, dict) for x in v.values())}
    out = []
    shared = [k for k in scalars if any(k in b for b in blocks.values()) and not isinstance(scalars[k], bool)]
    if shared:
        cols = [name for name, b in blocks.items() if any(k in b for k in shared)]
        first = "student" if "teacher" in blocks else "this model"
        rows = [[esc(k), esc(fmt(scalars[k]))] + [esc(fmt(blocks[c].get(k))) for c in cols] for k in shared]
        out.append(table(["score", esc(first)] + [esc(c) for c in cols], rows))
    rest = [(k, v) for k, v in scalars.items() if k not in shared]
    for name, b in blocks.items():
        rest += [(f"{name}.{k}", v) for k, v in b.items()
                 if k not in shared and (isinstance(v, bool) or _num(v) is not None)]
    if rest:
        out.append(kv_table(rest))
    for name, m in matrices.items():
        keys: list[str] = []
        for row in m.values():
            keys += [k for k, v in row.items() if k not in keys and (_num(v) is not None or v is None)]
        if keys:
            rows = [[esc(lab)] + [esc(fmt(row.get(k))) for k in keys] for lab, row in m.items()]
            out.append(f"<h4>{esc(name.replace('_', ' '))}</h4>" + table([""] + [esc(k) for k in keys], rows))
    return "".join(out)


def flatten(obj: Any, prefix: str = "", depth: int = 0, max_depth: int = 3) -> list[tuple[str, Any]]:
    """Scalar leaves of a JSON object as (dotted key, value); long lists become a count."""
    out: list[tuple[str, Any]] = []
    if not isinstance(obj, dict):
        return [(prefix or "value", obj)]
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            if depth < max_depth:
                out += flatten(v, key, depth + 1, max_depth)
            else:
                out.append((key, f"{{{len(v)} keys}}"))
        elif isinstance(v, list):
            if len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v):
                out.append((key, v))
            else:
                out.append((key, f"{len(v)} entries"))
        else:
            out.append((key, v))
    return out


# ---------------------------------------------------------------------------------------------------------
# metrics helpers (tolerant of missing keys and of dict-or-list per-label values)
# ---------------------------------------------------------------------------------------------------------

MAIN_METRIC = {"multilabel": ("macro_auc", "Macro AUC", "auc_ci95"),
               "multiclass": ("accuracy", "Accuracy", "accuracy_ci95")}


def per_label(metrics: dict[str, Any], names: Sequence[str], labels: Sequence[str]) -> dict[str, float | None]:
    """Label -> value of the first of ``names`` present (a ``{label: v}`` dict or a list in label order)."""
    for n in names:
        v = metrics.get(n)
        if isinstance(v, dict):
            return {str(k): _num(x) for k, x in v.items()}
        if isinstance(v, list) and len(v) == len(labels) and all(not isinstance(x, (dict, list)) for x in v):
            return {lab: _num(x) for lab, x in zip(labels, v)}
    return {}


def _ci(metrics: dict[str, Any], key: str, default_ci_key: str | None = None) -> Any:
    for k in (default_ci_key, f"{key}_ci95", f"{key}_ci"):
        if k and metrics.get(k) is not None:
            return metrics[k]
    return None


def union_labels(runs: Sequence[RunData]) -> list[str]:
    out: list[str] = []
    for r in runs:
        for lab in r.labels:
            if lab not in out:
                out.append(lab)
    return out


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------

class _Builder:
    def __init__(self, data: ReportData, *, title: str, max_images: int, dpi: int):
        self.data = data
        self.title = title
        self.max_images = max_images
        self.dpi = dpi
        self.runs = data.runs
        self.colour = dict(zip((r.name for r in self.runs), plots.colours([r.role for r in self.runs])))
        self.teacher = next((r for r in self.runs if r.role == "teacher" and r.evaluated), None)
        tasks = [r.task for r in self.runs if r.task]
        self.task = tasks[0] if tasks else None
        self.labels = union_labels(self.runs)
        self.nav: list[tuple[str, str]] = []
        self.figures = 0

    # --- helpers ---------------------------------------------------------------------------------------
    def _plot(self, fig: Any, alt: str, caption: str = "") -> str:
        self.figures += 1
        return plot(fig, alt, caption, dpi=self.dpi)

    def _section(self, anchor: str, title: str, content: str, lead: str = "") -> str:
        self.nav.append((anchor, title))
        return section(anchor, title, content, lead)

    def _badge(self, r: RunData) -> str:
        return role_badge(r.role, self.colour[r.name])

    def _comparable(self, with_predictions: bool = False) -> list[RunData]:
        """Evaluated runs with the main task and label set (those can share a figure)."""
        main_labels = next((r.labels for r in self.runs if r.evaluated and r.task == self.task), [])
        out = [r for r in self.runs if r.evaluated and r.task == self.task and r.labels == main_labels]
        return [r for r in out if r.predictions is not None] if with_predictions else out

    # --- header ----------------------------------------------------------------------------------------
    def header(self) -> str:
        from ..utils.runtime import git_commit, machine_info, package_versions

        now = _dt.datetime.now(_dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        here = machine_info()
        items = [("Generated", f"{now} by medistill {package_versions(('medistill',)).get('medistill') or ''}"
                  f" (commit {(git_commit() or 'unknown')[:10]})"),
                 ("Report machine", _machine_text(here))]
        machines = {}
        for r in self.runs:
            m = r.info.get("machine")
            if isinstance(m, dict):
                machines.setdefault(_machine_text(m), []).append(r.name)
        for text, names in machines.items():
            items.append((f"Runs made on", f"{text} ({', '.join(names)})"))
        data_desc = sorted({_dataset_text(r) for r in self.runs if _dataset_text(r)})
        if data_desc:
            items.append(("Data", "; ".join(data_desc)))
        ev = [r for r in self.runs if r.evaluated]
        if ev:
            evals = {f"{r.metrics.get('split', '?')} split, {fmt(r.metrics.get('num_images'))} images" for r in ev}
            items.append(("Evaluated on", "; ".join(sorted(evals))))
        items.append(("Runs", ", ".join(f"{r.name} ({r.role})" for r in self.runs)))
        return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"

    def subtitle(self) -> str:
        task = {"multilabel": "multi-label", "multiclass": "single-label"}.get(self.task or "", "")
        what = f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}"
        if task:
            what += f", {task} task with {len(self.labels)} labels"
        return esc(f"Teacher vs distilled student vs student without KD: {what}")

    def notes(self) -> str:
        if not self.data.notes:
            return ""
        return '<div class="notes"><strong>Notes</strong><ul>' + "".join(
            f"<li>{esc(n)}</li>" for n in self.data.notes) + "</ul></div>"

    # --- sections ---------------------------------------------------------------------------------------
    def summary(self) -> str:
        ev = [r for r in self.runs if r.evaluated]
        if not ev:
            return ""
        key, title, ci_key = MAIN_METRIC.get(self.task or "", ("macro_auc", "Macro AUC", "auc_ci95"))
        optional = ([("micro_auc", "Micro AUC"), ("macro_ap", "Macro AP"), ("macro_f1", "Macro F1")]
                    if self.task == "multilabel" else
                    [("balanced_accuracy", "Balanced acc."), ("macro_f1", "Macro F1"),
                     ("macro_auc", "Macro AUC (one-vs-rest)")]) + [("ece", "ECE")]
        optional = [(k, t) for k, t in optional if any(_num(r.metrics.get(k)) is not None for r in ev)]
        t = self.teacher
        headers = ["Run", "Model", f"{title} (95% CI)"]
        if t:
            headers.append("&Delta; vs teacher")
        headers += [esc(tt) for _, tt in optional] + ["Params", "MACs", "Size", "CPU latency<br>median (p90)"]
        rows = []
        for r in ev:
            m, row = r.metrics, r.row or {}
            cells = [f"{self._badge(r)}<br>{esc(r.name)}", esc(m.get("model") or r.info.get("model")),
                     with_ci(row.get("value", m.get(key)), row.get("ci95") or _ci(m, key, ci_key))]
            if t:
                cells.append(_delta(m.get(key), t.metrics.get(key)) if r is not t else "&mdash;")
            for k, _ in optional:
                cells.append(with_ci(m.get(k), _ci(m, k)))
            lat = _num(m.get("latency_ms"))
            p90 = _num(m.get("latency_ms_p90"))
            macs = esc(si(m.get("macs")))
            lat_text = "n/a" if lat is None else f"{lat:.2f} ms" + ("" if p90 is None else
                                                                  f' <span class="ci">({p90:.2f})</span>')
            if t and r is not t:
                macs += _ratio(t.metrics.get("macs"), m.get("macs"), "fewer")
                lat_text += _ratio(t.metrics.get("latency_ms"), lat, "faster")
            cells += [esc(si(m.get("params"))), macs, esc(size_bytes(m.get("size_bytes"))), lat_text]
            rows.append(cells)
        lead = (f"Main metric: {title.lower()} with its bootstrap 95% confidence interval, on the evaluated split; "
                f"&Delta; in points (&times;100) against the teacher; MACs and latency also as a ratio to the "
                f"teacher's. Latency: PyTorch on CPU, batch 1.")
        return self._section("comparison", "Comparison", table(headers, rows, cls="compare", text_cols=2)
                             + self.headline(key, title), lead)

    def headline(self, key: str, title: str) -> str:
        """One sentence per student: how far from the teacher, at what fraction of its cost; KD vs no KD."""
        t = self.teacher
        kd = [r for r in self.runs if r.role == "student (KD)" and r.evaluated]
        nokd = [r for r in self.runs if r.role == "student (no KD)" and r.evaluated]
        out = []
        for s in kd:
            v = _num(s.metrics.get(key))
            if v is None:
                continue
            text = f"<strong>{esc(s.name)}</strong> (KD): {esc(title.lower())} {v:.4f}"
            tv = _num(t.metrics.get(key)) if t else None
            if t and tv is not None:
                text += f", {_signed_pt(v - tv)} against the teacher ({esc(t.name)}: {tv:.4f})"
                tm, sm = _num(t.metrics.get("macs")), _num(s.metrics.get("macs"))
                if tm and sm:
                    text += f" at 1/{tm / sm:.1f} of its MACs"
            twin = [n for n in nokd if n.metrics.get("model") == s.metrics.get("model")] or nokd
            nv = _num(twin[0].metrics.get(key)) if twin else None
            if twin and nv is not None:
                text += f"; KD vs the same student without KD ({esc(twin[0].name)}): {_signed_pt(v - nv)}"
            out.append(f"<li>{text}.</li>")
        return f"<ul>{''.join(out)}</ul>" if out else ""

    def runs_table(self) -> str:
        headers = ["Role", "Run", "Kind", "Model", "Input", "Epochs (best)", "Distillation", "Seed", "Finished",
                   "Directory"]
        rows = []
        names = {str(r.path.resolve()): r.name for r in self.runs}
        for r in self.runs:
            i, cfg = r.info, r.config
            inp = i.get("input") or {}
            dist = ""
            if i.get("kind") == "distill" or i.get("teacher"):
                d = cfg.get("distill") or {}
                teacher = i.get("teacher") or d.get("teacher")
                tname = names.get(str(teacher), Path(str(teacher)).name if teacher else "?")
                parts = [f"teacher: {tname}", f"\u03b1={fmt(_num(d.get('alpha')))}",
                         f"T={fmt(_num(d.get('temperature')))}"]
                if d.get("kd") not in (None, "auto"):
                    parts.append(f"loss {d['kd']}")
                if d.get("feature") not in (None, "none"):
                    parts.append(f"feature {d['feature']}")
                if i.get("distill_mode"):
                    parts.append(str(i["distill_mode"]))
                dist = ", ".join(parts)
            epochs = i.get("epochs_run")
            ep = "n/a" if epochs is None else f"{epochs}" + (f" ({i['best_epoch']})" if i.get("best_epoch") else "")
            size = inp.get("size") or (cfg.get("data") or {}).get("image_size")
            ch = inp.get("channels") or (cfg.get("model") or {}).get("in_chans")
            rows.append([self._badge(r), esc(r.name), esc(i.get("kind", "?")),
                         esc(i.get("model") or r.metrics.get("model")),
                         esc(f"{size}\u00a0px\u00a0\u00d7\u00a0{ch}\u00a0ch" if size else "n/a"), esc(ep),
                         esc(dist or "\u2014"),
                         esc(i.get("seed", (cfg.get("train") or {}).get("seed"))), esc(_short_time(i.get("finished"))),
                         f'<code class="path">{esc(r.path)}</code>'])
        return self._section("runs", "Runs", table(headers, rows, text_cols=4))

    def training(self) -> str:
        rs = [r for r in self.runs if r.history]
        if not rs:
            return ""
        fig = plots.training_curves([r.history for r in rs], [r.name for r in rs], [self.colour[r.name] for r in rs],
                                    [r.info.get("best_epoch") for r in rs])
        rows = []
        for r in rs:
            h = r.history
            secs = [s for s in h.get("seconds", []) if math.isfinite(s)]
            rows.append([self._badge(r), esc(r.name), esc(len(h.get("epoch", []))),
                         esc(fmt(h["train_loss"][-1]) if h.get("train_loss") else "n/a"),
                         esc(fmt(h["val_loss"][-1]) if h.get("val_loss") else "n/a"),
                         esc(f"{np.mean(secs):.2f} s" if secs else "n/a"),
                         esc(f"{np.sum(secs):.1f} s" if secs else "n/a")])
        tab = table(["Role", "Run", "Epochs", "Last train loss", "Last val loss", "Seconds / epoch", "Total"], rows,
                    text_cols=2)
        return self._section("training", "Training curves",
                             self._plot(fig, "training curves", "Per-epoch loss and validation metric "
                                        "(from history.csv); the star marks the epoch whose weights were kept.") + tab)

    def per_label_section(self) -> str:
        rs = self._comparable()
        if not rs or not self.labels:
            return ""
        labels = rs[0].labels
        if self.task == "multilabel":
            names, ylabel, title = ("per_label_auc",), "AUC", "Per-label AUC"
        else:
            names, ylabel, title = ("per_class_recall", "per_label_recall"), "recall", "Per-class recall"
        values = [per_label(r.metrics, names, labels) or self._auc_from_predictions(r) for r in rs]
        if not any(values):
            return ""
        fig = plots.label_bars(values, [r.name for r in rs], [self.colour[r.name] for r in rs], labels, ylabel=ylabel)
        prevalence = self._prevalence(rs, labels)
        headers = ["Label"] + (["Positives"] if prevalence else []) + [esc(f"{r.name} ({r.role})") for r in rs]
        if len(rs) > 1 and self.teacher in rs:
            headers += [esc(f"{r.name} \u2212 teacher") for r in rs if r is not self.teacher]
        rows = []
        for lab in labels:
            vals = [v.get(lab) for v in values]
            best = max((x for x in vals if x is not None), default=None)
            cells = [esc(lab)] + ([esc(prevalence.get(lab, "n/a"))] if prevalence else [])
            cells += [f"<strong>{esc(fmt(x))}</strong>" if x is not None and x == best and len(rs) > 1
                      else esc(fmt(x)) for x in vals]
            if len(rs) > 1 and self.teacher in rs:
                tv = values[rs.index(self.teacher)].get(lab)
                cells += [_delta(v.get(lab), tv) for r, v in zip(rs, values) if r is not self.teacher]
            rows.append(cells)
        what = "teacher vs student vs student without KD" if len(rs) > 2 else "one bar per run"
        na = (" (n/a: the label has only one class in the split, so no AUC; it is left out of the macro average)"
              if self.task == "multilabel" else "")
        content = self._plot(fig, f"{title} per run", f"{esc(title)}, {what}{na}.") + table(headers, rows)
        content += self.threshold_tables(rs, labels)
        return self._section("per-label", title, content)

    def _auc_from_predictions(self, r: RunData) -> dict[str, float | None]:
        if r.predictions is None or self.task != "multilabel":
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

    @staticmethod
    def _prevalence(rs: Sequence[RunData], labels: Sequence[str]) -> dict[str, str]:
        r = next((r for r in rs if r.predictions is not None), None)
        if r is None:
            return {}
        p = r.predictions
        y = plots.one_hot(p["targets"], p["probs"].shape[1])  # (N, L)
        mask = p["mask"] > 0 if "mask" in p else np.ones_like(y, bool)
        return {lab: f"{int(y[mask[:, j], j].sum())} / {int(mask[:, j].sum())}" for j, lab in enumerate(labels)
                if j < y.shape[1]}

    def threshold_tables(self, rs: Sequence[RunData], labels: Sequence[str]) -> str:
        """Per run, per label: the operating point chosen on validation (multi-label) with its test figures."""
        if self.task != "multilabel":
            return ""
        cols = [("Threshold", ("thresholds",)), ("Sensitivity", ("sensitivity", "per_label_sensitivity")),
                ("Specificity", ("specificity", "per_label_specificity")), ("F1", ("f1", "per_label_f1")),
                ("AP", ("per_label_ap", "ap")), ("AUC", ("per_label_auc",))]
        out = []
        for r in rs:
            vals = [(name, per_label(r.metrics, keys, labels)) for name, keys in cols]
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

    def roc(self) -> str:
        rs = self._comparable(with_predictions=True)
        if not rs:
            return ""
        labels = rs[0].labels
        preds = [r.predictions for r in rs]
        fig = plots.roc_curves(preds, [r.name for r in rs], [self.colour[r.name] for r in rs], labels)
        what = "one-vs-rest per class" if self.task == "multiclass" else "one panel per label"
        return self._section("roc", "ROC curves", self._plot(
            fig, "ROC curves per label", f"ROC curves, {what}; legend: AUC per run. Uncertain / missing labels "
            f"(mask 0) are left out."))

    def confusion(self) -> str:
        if self.task != "multiclass":
            return ""
        figs = []
        for r in self._comparable():
            cm = r.metrics.get("confusion_matrix")
            labels = r.labels
            if not (isinstance(cm, list) and len(cm) == len(labels)) and r.predictions is not None:
                from sklearn.metrics import confusion_matrix

                p = r.predictions
                y = plots.one_hot(p["targets"], p["probs"].shape[1]).argmax(1)
                cm = confusion_matrix(y, p["probs"].argmax(1), labels=list(range(len(labels)))).tolist()
            if isinstance(cm, list) and len(cm) == len(labels):
                figs.append(self._plot(plots.confusion_matrix(np.asarray(cm), labels, f"{r.name} ({r.role})"),
                                       f"confusion matrix of {r.name}"))
        if not figs:
            return ""
        return self._section("confusion", "Confusion matrices", f'<div class="figs">{"".join(figs)}</div>',
                             "Rows: true class; colour: fraction of the true class; numbers: image counts.")

    def calibration(self) -> str:
        rs = self._comparable(with_predictions=True)
        if not rs:
            return ""
        fig = plots.calibration([r.predictions for r in rs], [r.name for r in rs], [self.colour[r.name] for r in rs],
                                self.task or "multilabel", [_num(r.metrics.get("ece")) for r in rs])
        what = ("every (image, label) sigmoid output" if self.task == "multilabel"
                else "the top-class softmax confidence against whether the top class is right")
        return self._section("calibration", "Calibration", self._plot(
            fig, "reliability diagram", f"Reliability diagram over {what}, 10 equal-width bins; points on the "
            f"diagonal are perfectly calibrated. ECE: expected calibration error (lower is better)."))

    # --- explanations -----------------------------------------------------------------------------------
    def explanations(self) -> str:
        if not self.data.explains:
            return ""
        parts = []
        for ex in self.data.explains:
            parts.append(self._explain_block(ex))
        lead = ("Where each model looks: overlays from <code>medistill explain</code>, teacher and student side by "
                "side on the same image and label when both exist, with the explanation metrics from "
                "<code>explain.json</code> (agreement = Spearman correlation of teacher and student maps; "
                "pointing game = share of maps whose maximum lies inside the ground-truth region).")
        return self._section("explanations", "Explanations", "".join(parts), lead)

    def _explain_block(self, ex: ExplainData) -> str:
        owner = f" (run {ex.run})" if ex.run else ""
        out = [f"<h3>{esc(ex.path.name)}{esc(owner)}</h3>", summary_tables(ex.summary)]
        problems: list[str] = []
        pairs, rest = _pair(ex.overlays)  # separate teacher / student files of the same image and label
        budget = self.max_images
        pairs_shown = pairs[: budget // 2] if budget >= 2 else []
        budget -= 2 * len(pairs_shown)
        rest_shown = rest[:budget]
        left_out = len(ex.overlays) - 2 * len(pairs_shown) - len(rest_shown)
        by_label: dict[str, list[tuple[Overlay, Overlay]]] = {}
        for t, s in pairs_shown:
            by_label.setdefault(t.label or s.label, []).append((t, s))
        for label, items in by_label.items():
            rows = [[esc(t.image or s.image or t.path.stem), self._overlay_img(t, problems),
                     self._overlay_img(s, problems)] for t, s in items]
            heading = f"<h4>{esc(label)}</h4>" if label else ""
            out.append(heading + table(["Image", "Teacher", "Student"], rows, cls="pairs"))
        # one file per image and label: a small gallery per label
        groups: dict[str, list[Overlay]] = {}
        for o in rest_shown:
            if o.label:
                groups.setdefault(o.label, []).append(o)
        for label, items in groups.items():
            figs = "".join(self._overlay_figure(o, problems) for o in items)
            if figs:
                out.append(f"<h4>{esc(label)}</h4>" + f'<div class="gallery">{figs}</div>')
        # one file per image holding every label (teacher and student rows inside): shown large
        whole = [o for o in rest_shown if not o.label]
        if whole:
            figs = "".join(self._overlay_figure(o, problems, max_side=WIDE_SIDE) for o in whole)
            if figs:
                out.append('<h4>Per image</h4><div class="figs wide">' + figs + "</div>")
        if ex.other_images:
            figs = "".join(self._overlay_figure(o, problems, max_side=WIDE_SIDE, name=True)
                           for o in ex.other_images[: self.max_images])
            if figs:
                out.append(f'<h4>Other figures</h4><div class="figs wide">{figs}</div>')
        if left_out > 0:
            problems.append(f"{left_out} more overlays not shown (limit {self.max_images} per folder; raise it with "
                            f"--max-images)")
        if problems:
            out.append('<p class="note">' + "<br>".join(esc(p) for p in problems) + "</p>")
        out.append(f"<details><summary>all fields of {esc(ex.path.name)}/explain.json</summary>"
                   f"{kv_table(flatten(ex.summary))}</details>" if ex.summary else "")
        return "".join(out)

    def _overlay_img(self, o: Overlay, problems: list[str]) -> str:
        uri = embed_image(o.path, problems)
        if uri is None:
            return '<span class="muted">unreadable</span>'
        cap = f'<div class="muted">{esc(o.caption)}</div>' if o.caption else ""
        return f'<img src="{uri}" alt="{esc(o.path.name)}">{cap}'

    def _overlay_figure(self, o: Overlay, problems: list[str], max_side: int = MAX_OVERLAY_SIDE,
                        name: bool = False) -> str:
        uri = embed_image(o.path, problems, max_side=max_side)
        if uri is None:
            return ""
        cap = " \u00b7 ".join(x for x in (o.path.name if name else "", o.who, o.image, o.caption) if x) or o.path.name
        return figure(uri, o.path.name, esc(cap))

    # --- export -----------------------------------------------------------------------------------------
    def export(self) -> str:
        if not self.data.exports:
            return ""
        parts = []
        for ex in self.data.exports:
            owner = f" (run {ex.run})" if ex.run else ""
            block = [f"<h3>{esc(ex.path.name)}{esc(owner)}</h3>"]
            if ex.summary:
                tol = _num(ex.summary.get("fp32_tolerance")) or 1e-4
                checks = {"max_abs_diff": ("<=", tol), "cam_correlation_min": (">=", 0.99)}
                block.append(kv_table(figures(ex.summary), checks))
                block.append(f"<details><summary>all fields of export.json</summary>"
                             f"{kv_table(flatten(ex.summary))}</details>")
            for name, bench in ex.benchmarks.items():
                flat = flatten(bench)
                lat = _latencies(flat)
                block.append(f"<h4>{esc(name)}</h4>")
                if len(lat) >= 2:
                    block.append(self._plot(plots.hbars(_short_names(lat), "milliseconds", "Latency (median)"),
                                            f"latency chart of {name}"))
                block.append(kv_table(figures(bench)) if isinstance(bench, dict) else "")
                block.append(f"<details><summary>all fields of {esc(name)}</summary>{kv_table(flat)}</details>")
            parts.append("".join(block))
        lead = ("Parity of the exported model with PyTorch (max absolute logit difference, target at most 1e-4 for "
                "fp32), the INT8 model's change in the validation metric (<code>int8_metric_delta</code>, INT8 minus "
                "fp32), the in-graph CAMs' lowest correlation with PyTorch Grad-CAM (target at least 0.99), sizes and "
                "latencies, as written by <code>medistill export</code> and <code>medistill benchmark</code>.")
        return self._section("export", "On-device export", "".join(parts), lead)

    # --- page --------------------------------------------------------------------------------------------
    def build(self) -> str:
        body = [self.notes(), self.summary(), self.runs_table(), self.training(), self.per_label_section(), self.roc(),
                self.confusion(), self.calibration(), self.explanations(), self.export()]
        nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in self.nav)
        footer = esc(f"medistill report \u00b7 {self.figures} plot{'s' if self.figures != 1 else ''} \u00b7 "
                     f"self-contained: images are embedded, no external resources")
        return PAGE.substitute(title=esc(self.title), subtitle=self.subtitle(), header=self.header(), nav=nav,
                               body="\n".join(b for b in body if b), footer=footer, css=CSS)


# ---------------------------------------------------------------------------------------------------------
# module-level helpers
# ---------------------------------------------------------------------------------------------------------

def _machine_text(m: dict[str, Any]) -> str:
    parts = [str(m.get("cpu_model") or m.get("processor") or m.get("platform") or "unknown CPU")]
    if m.get("cpu_count"):
        parts.append(f"{m['cpu_count']} cores")
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    return ", ".join(parts)


def _dataset_text(r: RunData) -> str:
    d = r.config.get("data") if isinstance(r.config.get("data"), dict) else {}
    if not d:
        return ""
    text = str(d.get("dataset", "?"))
    if d.get("root"):
        text += f" ({Path(str(d['root'])).name})"
    if d.get("image_size"):
        text += f", {d['image_size']} px"
    if d.get("limit"):
        text += f", at most {d['limit']} images per split"
    return text


def _short_time(iso: Any) -> str:
    """``2025-01-01T10:05:00+00:00`` -> ``2025-01-01 10:05 UTC`` (other text unchanged)."""
    if not isinstance(iso, str):
        return "n/a"
    try:
        t = _dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc)
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M")


def _delta(v: Any, ref: Any) -> str:
    a, b = _num(v), _num(ref)
    if a is None or b is None:
        return "n/a"
    return _signed_pt(a - b)


def _signed_pt(d: float) -> str:
    cls = "good" if d >= 0 else "bad"
    return f'<span class="{cls}">{d * 100:+.2f} pt</span>'


def _ratio(ref: Any, v: Any, word: str) -> str:
    """``<br>(12.3x fewer)`` against the teacher's figure; empty when either is unknown."""
    a, b = _num(ref), _num(v)
    if not a or not b:
        return ""
    if abs(a / b - 1) < 0.01:
        text = "same as teacher"
    elif a > b:
        text = f"{a / b:.1f}\u00d7 {word}"
    else:
        text = f"{b / a:.1f}\u00d7 {'more' if word == 'fewer' else 'slower'}"
    return f'<br><span class="ci">{esc(text)}</span>'


def _pair(overlays: Sequence[Overlay]) -> tuple[list[tuple[Overlay, Overlay]], list[Overlay]]:
    """Teacher and student overlays of the same (image, label); the unmatched ones come back separately."""
    import re

    def key(o: Overlay) -> tuple[str, str]:
        if o.image or o.label:
            return (o.image, o.label)
        return ("", re.sub(r"(?i)[_\-]?(teacher|student)[_\-]?", "_", o.path.stem))

    teachers: dict[tuple[str, str], Overlay] = {}
    for o in overlays:
        if o.who == "teacher":
            teachers.setdefault(key(o), o)
    pairs: list[tuple[Overlay, Overlay]] = []
    used: set[int] = set()
    for o in overlays:
        if o.who == "student" and key(o) in teachers and id(teachers[key(o)]) not in used:
            t = teachers[key(o)]
            used.add(id(t))
            used.add(id(o))
            pairs.append((t, o))
    rest = [o for o in overlays if id(o) not in used]
    return pairs, rest


def _short_names(values: dict[str, float]) -> dict[str, float]:
    """Drop the dotted parts every key shares at its start or end (``latency.X.median_ms`` -> ``X``)."""
    parts = [k.split(".") for k in values]
    if len(parts) < 2:
        return values
    lead = 0
    while all(len(p) > lead + 1 for p in parts) and len({p[lead] for p in parts}) == 1:
        lead += 1
    trail = 0
    while all(len(p) > lead + trail + 1 for p in parts) and len({p[-1 - trail] for p in parts}) == 1:
        trail += 1
    short = {".".join(p[lead:len(p) - trail]): v for p, v in zip(parts, values.values())}
    return short if len(short) == len(values) else values


def _latencies(flat: list[tuple[str, Any]]) -> dict[str, float]:
    """Latency figures (ms) of a flattened benchmark JSON: median ones when there are, else every ``*_ms``."""
    lat = {k: float(v) for k, v in flat if _num(v) is not None and not isinstance(v, bool)
           and ("latency" in k.lower() or k.lower().endswith("_ms") or k.lower().endswith(".ms"))}
    med = {k: v for k, v in lat.items() if "median" in k.lower() or "p50" in k.lower()}
    return med or {k: v for k, v in lat.items() if not any(w in k.lower() for w in ("p90", "p95", "p99", "std", "min",
                                                                                     "max", "mean"))} or lat


def embed_image(path: Path, problems: list[str], max_side: int = MAX_OVERLAY_SIDE) -> str | None:
    """A ``data:`` URI of a PNG/JPEG file (downscaled past ``max_side``), or None with the reason in ``problems``."""
    from PIL import Image, UnidentifiedImageError

    try:
        n = path.stat().st_size
        if n > MAX_IMAGE_BYTES:
            problems.append(f"{path.name}: {n:,} bytes, over the {MAX_IMAGE_BYTES:,}-byte limit; not embedded")
            return None
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()  # truncated or corrupt files fail here rather than showing as a broken image
        with Image.open(io.BytesIO(raw)) as im:
            fmt_name = im.format
            if fmt_name not in ("PNG", "JPEG"):
                problems.append(f"{path.name}: a {fmt_name} image; expected PNG or JPEG, not embedded")
                return None
            if max(im.size) > max_side:
                im.load()
                small = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P") else "RGB")
                small.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                small.save(buf, format="PNG", optimize=True)
                raw, fmt_name = buf.getvalue(), "PNG"
    except UnidentifiedImageError:
        problems.append(f"{path.name}: not a readable image (not PNG or JPEG data); not embedded")
        log.warning("report: %s is not a PNG or JPEG image; left out", path)
        return None
    except (OSError, SyntaxError, ValueError) as e:
        problems.append(f"{path.name}: not a readable image ({e}); not embedded")
        log.warning("report: %s is not a readable image (%s); left out", path, e)
        return None
    mime = "image/png" if fmt_name == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def render(data: ReportData, *, title: str = "medistill report", max_images: int = 48, dpi: int = 100) -> str:
    """The report's HTML for ``data`` (see the module docstring)."""
    return _Builder(data, title=title, max_images=max_images, dpi=dpi).build()
