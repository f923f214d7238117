"""Text of the report's values: escaping, numbers, sizes, confidence intervals, differences and ratios, times.

Plain functions (no state). :func:`fmt`, :func:`si` and :func:`size_bytes` return plain text (escape it with
:func:`esc`); :func:`with_ci`, :func:`delta`, :func:`signed_pt` and :func:`ratio` return escaped HTML.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def num(v: Any) -> float | None:
    """``v`` as a finite float, else None (None, booleans, text, NaN and infinities are not numbers here)."""
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
    f = num(v)
    if f is None:
        return "n/a"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(f) >= div:
            return f"{f / div:.2f} {suf}{unit}"
    return f"{f:.0f} {unit}".rstrip()


def size_bytes(v: Any) -> str:
    f = num(v)
    if f is None:
        return "n/a"
    for div, suf in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if f >= div:
            return f"{f / div:.2f} {suf}"
    return f"{f:.0f} B"


def with_ci(value: Any, ci: Any) -> str:
    """``0.8123 <span class=ci>(0.790-0.833)</span>`` (escaped HTML)."""
    out = esc(fmt(num(value)))
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and num(ci[0]) is not None and num(ci[1]) is not None:
        out += f' <span class="ci">({num(ci[0]):.3f}&ndash;{num(ci[1]):.3f})</span>'
    return out


def delta(v: Any, ref: Any) -> str:
    """``v - ref`` in points (HTML), green when not negative; ``n/a`` when either is unknown."""
    a, b = num(v), num(ref)
    if a is None or b is None:
        return "n/a"
    return signed_pt(a - b)


def signed_pt(d: float) -> str:
    cls = "good" if d >= 0 else "bad"
    return f'<span class="{cls}">{d * 100:+.2f} pt</span>'


def ratio(ref: Any, v: Any, word: str) -> str:
    """``<br>(12.3x fewer)`` against the teacher's figure; empty when either is unknown."""
    a, b = num(ref), num(v)
    if not a or not b:
        return ""
    if abs(a / b - 1) < 0.01:
        text = "same as teacher"
    elif a > b:
        text = f"{a / b:.1f}\u00d7 {word}"
    else:
        text = f"{b / a:.1f}\u00d7 {'more' if word == 'fewer' else 'slower'}"
    return f'<br><span class="ci">{esc(text)}</span>'


def short_time(iso: Any) -> str:
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


def machine_text(m: dict[str, Any]) -> str:
    """``Intel Xeon ..., 16 cores, GPU H200`` from a run record's ``machine``."""
    parts = [str(m.get("cpu_model") or m.get("processor") or m.get("platform") or "unknown CPU")]
    if m.get("cpu_count"):
        parts.append(f"{m['cpu_count']} cores")
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    return ", ".join(parts)
