"""The report's export section: per export folder, the parity and size figures of ``export.json`` checked against
their targets, and each ``benchmark*.json`` with a latency chart."""

from __future__ import annotations

from typing import Any

from ..benchmark import speed_sentence
from ..runs import EXPORT_FILE
from . import plots
from .format import esc, num
from .page import Page
from .pieces import figures, flatten, kv_table


def export(page: Page) -> str:
    if not page.data.exports:
        return ""
    parts = []
    for ex in page.data.exports:
        owner = f" (run {ex.run})" if ex.run else ""
        block = [f"<h3>{esc(ex.path.name)}{esc(owner)}</h3>"]
        if ex.summary:
            tol = num(ex.summary.get("fp32_tolerance")) or 1e-4
            checks = {"max_abs_diff": ("<=", tol), "cam_correlation_min": (">=", 0.99)}
            block.append(kv_table(figures(ex.summary), checks))
            block.append(f"<details><summary>all fields of {EXPORT_FILE}</summary>"
                         f"{kv_table(flatten(ex.summary))}</details>")
        block += [_benchmark(page, name, bench) for name, bench in ex.benchmarks.items()]
        parts.append("".join(block))
    lead = ("Parity of the exported model with PyTorch (max absolute logit difference, target at most 1e-4 for "
            "fp32), the INT8 model's change in the validation metric (<code>int8_metric_delta</code>, INT8 minus "
            "fp32), the in-graph CAMs' lowest correlation with PyTorch Grad-CAM (target at least 0.99), sizes and "
            "latencies, as written by <code>medistill export</code> and <code>medistill benchmark</code>.")
    return page.section("export", "On-device export", "".join(parts), lead)


def _benchmark(page: Page, name: str, bench: Any) -> str:
    """A benchmark JSON: its latencies as a chart (when two or more), its figures, every field."""
    flat = flatten(bench)
    lat = latencies(flat)
    block = [f"<h4>{esc(name)}</h4>"]
    if len(lat) >= 2:
        block.append(page.plot(plots.hbars(short_names(lat), "milliseconds", "Latency (median)"),
                               f"latency chart of {name}"))
    sentence = speed_sentence(bench) if isinstance(bench, dict) else ""
    if sentence:
        block.append(f"<p>{esc(sentence)}</p>")
    block.append(kv_table(figures(bench)) if isinstance(bench, dict) else "")
    block.append(f"<details><summary>all fields of {esc(name)}</summary>{kv_table(flat)}</details>")
    return "".join(block)


def short_names(values: dict[str, float]) -> dict[str, float]:
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


def latencies(flat: list[tuple[str, Any]]) -> dict[str, float]:
    """Latency figures (ms) of a flattened benchmark JSON: median ones when there are, else every ``*_ms``."""
    lat = {k: float(v) for k, v in flat if num(v) is not None and not isinstance(v, bool)
           and ("latency" in k.lower() or k.lower().endswith("_ms") or k.lower().endswith(".ms"))}
    med = {k: v for k, v in lat.items() if "median" in k.lower() or "p50" in k.lower()}
    return med or {k: v for k, v in lat.items() if not any(w in k.lower() for w in ("p90", "p95", "p99", "std", "min",
                                                                                     "max", "mean"))} or lat
