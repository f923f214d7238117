"""HTML pieces of the report: tables, figures, sections, key / value tables and JSON summaries as tables.

Each function returns an HTML string; text from the inputs is escaped here (cells passed in are HTML already).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from . import plots
from .format import esc, fmt, num, size_bytes


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
        f = num(v)
        if check is not None and f is not None:
            op, limit = check
            ok = f <= limit if op == "<=" else f >= limit
            what = {"<=": "at most", ">=": "at least"}[op]
            cell = (f'<span class="{"good" if ok else "bad"}">{cell}</span> '
                    f'<span class="muted">({"meets" if ok else "misses"} the target: {what} {limit:g})</span>')
        elif isinstance(v, bool) and is_target_name(k):
            cell = f'<span class="{"good" if v else "bad"}">{"yes" if v else "no"}</span>'
        rows.append((f"{esc(k)}", cell))
    return table(["key", "value"], rows, cls="kv")


def is_target_name(key: str) -> bool:
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
        if isinstance(v, bool) or num(v) is not None:
            out.append((k, v))
    return out


def summary_tables(summary: dict[str, Any]) -> str:
    """An ``explain.json``-like summary as tables: scores side by side (this model, then each block such as
    ``teacher`` or ``sanity`` that has the same keys), a per-label table (a block of per-label blocks) and the
    remaining top-level figures."""
    scalars = {k: v for k, v in summary.items() if isinstance(v, bool) or num(v) is not None}
    matrices = {k: v for k, v in summary.items() if isinstance(v, dict) and v
                and all(isinstance(x, dict) for x in v.values())}
    # a block of scores may also hold lists or nested blocks (a sanity verdict's reasons): its numbers are shown
    blocks = {k: v for k, v in summary.items() if isinstance(v, dict) and k not in matrices
              and any(isinstance(x, bool) or num(x) is not None for x in v.values())}
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
                 if k not in shared and (isinstance(v, bool) or num(v) is not None)]
    if rest:
        out.append(kv_table(rest))
    for name, m in matrices.items():
        keys: list[str] = []
        for row in m.values():
            keys += [k for k, v in row.items() if k not in keys and (num(v) is not None or v is None)]
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
