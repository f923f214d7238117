"""The report's study section (``medistill study`` / ``medistill report --study DIR``): the study's two sentences,
the chosen KD and no-KD arms per student size with KD minus no-KD and its interval, and the frontier figure."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .format import esc
from .page import Page
from .pieces import figure, table


def _num(v: Any, metric: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}" if metric != "macro_auc" else f"{v:.4f}"


def _arm(side: dict[str, Any] | None, metric: str) -> str:
    if not side or not side.get("test"):
        return "pending"

    vals = side["test"]
    sd = f" ± {_num(float(np.std(vals, ddof=1)), metric)}" if len(vals) > 1 else ""
    return f"{esc(side['arm'])}: {_num(float(np.mean(vals)), metric)}{sd}"


def study_section(page: Page) -> str:
    s = page.data.study
    if not s:
        return ""
    metric, t = s["metric"], s["teacher"]
    lead = " ".join(esc(x) for x in s.get("sentences", []))
    facts = [f"Measure: test {esc(metric)}, arms chosen on validation by the rule in plan.json; {s['seeds']} seeds; "
             f"{s['runs_scored']} of {s['runs_planned']} runs scored.",
             f"Teacher: {esc(', '.join(m['model'] for m in t['members']))}, test {esc(metric)} "
             f"{_num(t['test'], metric)}."]
    if "majority_rate" in s:
        facts.append(f"Chance {100 * s['chance']:.1f} %; always answering {esc(s['majority_class'])}: "
                     f"{100 * s['majority_rate']:.2f} %.")
    facts += [esc(h) for h in s.get("data", {}).get("hygiene", [])]
    rows = []
    for x in s["sizes"]:
        g = x.get("gain")
        gain = "pending" if not g else _num(g["value"], metric) + (
            f" [{_num(g['ci_low'], metric)}, {_num(g['ci_high'], metric)}] {esc(g['verdict'])}"
            if g.get("ci_low") is not None else "")
        rows.append([esc(x["name"]), f"{x['macs'] / 1e6:.2f}M" if x.get("macs") else "n/a",
                     f"{x['latency_ms']:.3f}" if x.get("latency_ms") is not None else "n/a",
                     _arm(x.get("kd"), metric), _arm(x.get("nokd"), metric), gain])
    html = "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>"
    html += table(["student", "MACs", "latency (ms)", "KD arm: test", "no-KD arm: test", "KD - no-KD [95% CI]"],
                  rows, text_cols=1)
    png = page.data.study_figure
    if png:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        html += figure(uri, f"test {metric} against student size", "Chosen arms (seed mean and spread); the teacher "
                       "as a star; dashed: the teacher's score minus the margin 'within' allows.")
    return page.section("study", "Does KD pay, and how small can the student be?", html, lead)
