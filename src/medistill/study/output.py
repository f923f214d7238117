"""A study's files: ``study.json`` (every figure), ``study.md`` (the same for people), ``frontier.png`` (test score
against MACs and latency, KD and no-KD, the teacher as a point) and ``report.html`` (the HTML report of the teacher
and the chosen arms, with the study's section first)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..report import build_report
from ..utils.io import atomic_write, atomic_write_json, atomic_write_text
from ..utils.runtime import machine_info
from .plan import Plan

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
STUDY_MD = "study.md"
FRONTIER_PNG = "frontier.png"
REPORT_FILE = "report.html"


def write_outputs(plan: Plan, summary: dict[str, Any], *, report: bool) -> None:
    """Write ``study.json``, ``study.md`` and ``frontier.png`` into the study's folder (and ``report.html``)."""
    out = plan.out
    summary = {**summary, "command": command_line(), "machine": machine_info(),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(out / STUDY_FILE, summary)
    figure = out / FRONTIER_PNG if plot_frontier(summary, out / FRONTIER_PNG) else None
    atomic_write_text(out / STUDY_MD, markdown(summary, figure.name if figure else None))
    if report:
        dirs = [Path(p) for p in summary["teacher"]["runs"]]
        for s in summary["sizes"]:
            for side in ("kd", "nokd"):
                if s[side] and s[side]["runs"]:
                    dirs.append(Path(s[side]["runs"][0]))
        build_report(dirs, out / REPORT_FILE, title=f"medistill study: {plan.data.dataset}", study_dir=out)


def command_line() -> str:
    """The command this process runs (as ``run.json`` records ``sys.argv``), behind its ``nice`` level if any."""
    prog = Path(sys.argv[0]).name
    cmd = shlex.join(["medistill" if prog in ("__main__.py", "medistill") else prog, *sys.argv[1:]])
    n = os.nice(0)
    return f"nice -n {n} {cmd}" if n else cmd


def _num(v: Any, metric: str) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.2f}" if metric != "macro_auc" else f"{v:.4f}"


def _mean_sd(side: dict[str, Any] | None, metric: str, key: str = "test") -> str:
    if not side or not side.get(key):
        return "pending"
    vals = side[key]
    mean = float(np.mean(vals))
    sd = f" ± {_num(float(np.std(vals, ddof=1)), metric)}" if len(vals) > 1 else ""
    return f"{_num(mean, metric)}{sd}"


def markdown(s: dict[str, Any], figure: str | None) -> str:
    """``study.md``: the question, the answer (the generated sentences), the data and rule, the chosen arms per
    size, every arm (secondary), the costs and the command."""
    metric = s["metric"]
    unit = "%" if metric != "macro_auc" else ""
    t = s["teacher"]
    lines = [f"# Does distillation pay, and how small can the student be? ({s['data']['dataset']})", ""]
    lines += [f"**{x}**" for x in s["sentences"]] + [""]
    seeds = (f"{s['seeds']} seeds" if s.get("complete") else
             f"the {s.get('seeds_summarised', 0)} of {s['seeds']} seeds every arm has so far")
    lines.append(f"Measure: test {metric}{' (%)' if unit else ''}; every arm chosen on validation by a rule fixed "
                 f"before the test split was scored (`plan.json`): at each size, the KD arm and the no-KD arm with "
                 f"the best mean validation {metric} over {seeds}; each run's weights: "
                 f"{'the moving average after the last of ' if s['stop'] == 'ema' else 'the best validation epoch of '}"
                 f"{s['epochs']} epochs. KD minus no-KD: the difference of the two arms' seed means, 95 % CI over test "
                 f"patients and seeds. {s['runs_scored']} of {s['runs_planned']} runs scored.")
    lines.append("")
    lines.append(f"Data: {s['data']['dataset']} at `{s['data']['root']}`; test: {s['test_images']} images of "
                 f"{s['test_patients']} patients.")
    lines += [f"- {h}" for h in s["data"]["hygiene"]]
    if "majority_rate" in s:
        lines.append(f"- Chance (guessing uniformly) {100 * s['chance']:.1f} %; always answering the training "
                     f"split's most frequent class ({s['majority_class']}): {100 * s['majority_rate']:.2f} % accuracy, "
                     f"{100 * s['majority_balanced_accuracy']:.1f} % balanced accuracy.")
    # beside the measure, the other single-label figure: balanced accuracy, or accuracy when it is the measure
    other, other_name, other_head = (("accuracy", "accuracy", "accuracy") if metric == "balanced_accuracy"
                                     else ("balanced_accuracy", "balanced accuracy", "balanced acc."))
    members = ", ".join(f"{m['model']} at {m['image_size']} px" for m in t["members"])
    lines += ["", f"Teacher: {members} ({'ensemble, ' if len(t['members']) > 1 else ''}{t['macs'] / 1e6:.1f}M MACs"
                  + (f", {t['latency_ms']:.2f} ms" if t.get("latency_ms") else "") + f"): test {metric} "
                  f"{_num(t['test'], metric)}" + (f", {other_name} {100 * t[other]:.2f} %" if other in t else "") + "."]
    lines += ["", "## Chosen arms per size", ""]
    head = ("| student | MACs (x teacher) | latency ms (x teacher) | KD arm | KD test | no-KD arm | no-KD test | "
            "KD - no-KD [95 % CI] | verdict |")
    extra = "single" if "majority_rate" in s else None
    if extra:
        head = head.replace(" verdict |", f" verdict | {other_head} KD / no-KD |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for x in s["sizes"]:
        macs = f"{x['macs'] / 1e6:.2f}M ({x['macs_vs_teacher']:.3f})" if x.get("macs") else "n/a"
        lat = (f"{x['latency_ms']:.3f} ({x['latency_vs_teacher']:.3f})" if x.get("latency_ms") is not None
               else "n/a")
        g = x["gain"]
        gain = ("pending" if not g else
                f"{_num(g['value'], metric)}" + (f" [{_num(g['ci_low'], metric)}, {_num(g['ci_high'], metric)}]"
                                                 if g.get("ci_low") is not None else ""))
        row = (f"| {x['name']} | {macs} | {lat} | {x['kd']['arm'] if x['kd'] else 'pending'} | "
               f"{_mean_sd(x['kd'], metric)} | {x['nokd']['arm'] if x['nokd'] else 'pending'} | "
               f"{_mean_sd(x['nokd'], metric)} | {gain} | {g['verdict'] if g else 'pending'} |")
        if extra:
            row += f" {_mean_sd(x['kd'], 'accuracy', other)} / {_mean_sd(x['nokd'], 'accuracy', other)} |"
        lines.append(row)
    if figure:
        lines += ["", f"![test {metric} against MACs and latency]({figure})"]
    lines += ["", "## Every arm (secondary: validation decided the chosen arms above)", "",
              "| student | arm | validation | test | s / epoch |", "|---|---|---|---|---|"]
    for x in s["sizes"]:
        for a in x["arms"].values():
            grid = ""
            if a["arm"] == "kd" and a.get("grid"):
                grid = " (grid on validation, seed 0: " + ", ".join(f"{k} {_num(v, metric)}"
                                                                    for k, v in a["grid"].items()) + ")"
            per_epoch = f"{a['epoch_seconds']:.1f}" if a.get("epoch_seconds") else "n/a"
            lines.append(f"| {x['name']} | {a['arm']}{grid} | {_mean_sd(a, metric, 'val')} | {_mean_sd(a, metric)} "
                         f"| {per_epoch} |")
    costs = s.get("costs", {})
    lines += ["", "## Costs", ""]
    if costs.get("teacher_train_seconds"):
        lines.append(f"- Teacher training: {sum(costs['teacher_train_seconds']) / 60:.1f} min.")
    for name, c in costs.get("view_caches", {}).items():
        kind = "mixed views (fm arm)" if c.get("mixed") else "views (kd arm)" if c.get("mixed") is False else "views"
        lines.append(f"- Teacher-view cache `{name}`, {c['views']} {kind} per image: filled once in "
                     f"{(c['seconds'] or 0) / 60:.1f} min and shared by every run of that arm at every size (KD's "
                     f"set-up cost, beside the teacher's training).")
    if s.get("latency"):
        lines.append(f"- Latency: {s['latency']['runtime']}.")
    lines += ["", "## Arms", ""] + [f"- `{a}`{' (KD)' if d['kd'] else ''}: {d['what']}" for a, d in s["arms"].items()]
    if s.get("command"):
        lines += ["", "Command:", "", "```", s["command"], "```"]
    return "\n".join(lines) + "\n"


def plot_frontier(s: dict[str, Any], path: Path) -> bool:
    """Test score against MACs (and against latency when timed): the chosen KD and no-KD arms (seed mean and
    spread), the teacher as a star, and the teacher's score minus ``within`` dashed. False when nothing to draw."""
    sizes = [x for x in s["sizes"] if x.get("macs") and (x["kd"] or x["nokd"])]
    if not sizes:
        return False
    # here, not at the top: pyplot binds a backend when imported, so Agg is chosen first and only when a figure
    # is drawn (importing the study leaves the process's matplotlib backend alone)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, t = s["metric"], s["teacher"]
    scale = 100 if metric != "macro_auc" else 1
    axes_x = [("macs", "MACs", t["macs"])]
    if all(x.get("latency_ms") for x in sizes) and t.get("latency_ms"):
        axes_x.append(("latency_ms", "latency (ms, ONNX Runtime fp32, batch 1)", t["latency_ms"]))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(5.2 * len(axes_x), 3.8), dpi=110, squeeze=False)
    for ax, (key, title, tx) in zip(axes[0], axes_x):
        for side, colour, label in (("kd", "tab:blue", "KD (chosen arm)"), ("nokd", "tab:orange", "no KD (chosen arm)")):
            pts = sorted((x[key], x[side]) for x in sizes if x[side])
            if pts:
                xs = [p[0] for p in pts]
                ys = [scale * np.mean(p[1]["test"]) for p in pts]
                err = [scale * (np.std(p[1]["test"], ddof=1) if len(p[1]["test"]) > 1 else 0) for p in pts]
                ax.errorbar(xs, ys, yerr=err, fmt="o-", color=colour, label=label, capsize=3)
        ax.plot([tx], [scale * t["test"]], "*", color="black", markersize=12, label="teacher")
        ax.axhline(scale * (t["test"] - s["within"]), color="grey", ls="--", lw=1, label="teacher - within")
        ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.set_ylabel(f"test {metric}{' (%)' if scale == 100 else ''}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{s['data']['dataset']}: student size against test {metric}", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return True
