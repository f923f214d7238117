"""The report's explanation section: per explanation folder, its scores as tables and its overlays as galleries
(teacher and student side by side on the same image and label when both exist), every image embedded."""

from __future__ import annotations

import base64
import io
import logging
import re
from pathlib import Path
from typing import Sequence

from ..runs import EXPLAIN_FILE
from .collect import MAX_IMAGE_BYTES
from .fidelity import fidelity_table, per_label_table, sanity_table, sanity_warning
from .folders import ExplainData, Overlay
from .format import esc
from .page import Page
from .pieces import figure, flatten, kv_table, summary_tables, table

log = logging.getLogger(__name__)

MAX_OVERLAY_SIDE = 384  # single overlays wider or taller than this are downscaled before embedding
WIDE_SIDE = 1000  # the same for whole-image panels (every label, teacher and student rows) and feature-map grids


def explanations(page: Page) -> str:
    if not page.data.explains:
        return ""
    parts = ([fidelity_table(page.data.explains), sanity_table(page.data.explains)]
             + [explain_block(page, ex) for ex in page.data.explains])
    lead = ("Where each model looks: overlays from <code>medistill explain</code>, teacher and student side by "
            "side on the same image and label when both exist, the ground truth (mask or box) outlined in white "
            "and each map's maximum marked with a white cross, with the explanation metrics from "
            "<code>explain.json</code> (agreement = Spearman correlation of teacher and student maps; "
            "pointing game = share of maps whose maximum lies inside the ground-truth region).")
    return page.section("explanations", "Explanations", "".join(parts), lead)


def explain_block(page: Page, ex: ExplainData) -> str:
    """One folder: scores, teacher / student pairs per label, single overlays per label, whole-image panels, other
    figures, what was left out, and every field of its ``explain.json``."""
    owner = f" (run {ex.run})" if ex.run else ""
    out = [f"<h3>{esc(ex.path.name)}{esc(owner)}</h3>", sanity_warning(ex.summary) if ex.summary else "",
           per_label_table(ex.summary), summary_tables(ex.summary)]
    problems: list[str] = []
    pairs, rest = pair_overlays(ex.overlays)  # separate teacher / student files of the same image and label
    budget = page.max_images
    pairs_shown = pairs[: budget // 2] if budget >= 2 else []
    rest_shown = rest[:budget - 2 * len(pairs_shown)]
    out.append(_pair_tables(pairs_shown, problems))
    out.append(_label_galleries([o for o in rest_shown if o.label], problems))
    out.append(_figures("Per image", [o for o in rest_shown if not o.label], problems))
    out.append(_figures("Other figures", ex.other_images[: page.max_images], problems, name=True))
    left_out = len(ex.overlays) - 2 * len(pairs_shown) - len(rest_shown)
    if left_out > 0:
        problems.append(f"{left_out} more overlays not shown (limit {page.max_images} per folder; raise it with "
                        f"--max-images)")
    if problems:
        out.append('<p class="note">' + "<br>".join(esc(p) for p in problems) + "</p>")
    out.append(f"<details><summary>all fields of {esc(ex.path.name)}/{EXPLAIN_FILE}</summary>"
               f"{kv_table(flatten(ex.summary))}</details>" if ex.summary else "")
    return "".join(out)


def _pair_tables(pairs: list[tuple[Overlay, Overlay]], problems: list[str]) -> str:
    """Per label, a table of (image, teacher overlay, student overlay)."""
    by_label: dict[str, list[tuple[Overlay, Overlay]]] = {}
    for t, s in pairs:
        by_label.setdefault(t.label or s.label, []).append((t, s))
    out = []
    for label, items in by_label.items():
        rows = [[esc(t.image or s.image or t.path.stem), _overlay_img(t, problems), _overlay_img(s, problems)]
                for t, s in items]
        heading = f"<h4>{esc(label)}</h4>" if label else ""
        out.append(heading + table(["Image", "Teacher", "Student"], rows, cls="pairs"))
    return "".join(out)


def _label_galleries(overlays: list[Overlay], problems: list[str]) -> str:
    """One file per image and label: a small gallery per label."""
    groups: dict[str, list[Overlay]] = {}
    for o in overlays:
        groups.setdefault(o.label, []).append(o)
    out = []
    for label, items in groups.items():
        figs = "".join(_overlay_figure(o, problems) for o in items)
        if figs:
            out.append(f"<h4>{esc(label)}</h4>" + f'<div class="gallery">{figs}</div>')
    return "".join(out)


def _figures(heading: str, overlays: list[Overlay], problems: list[str], name: bool = False) -> str:
    """Whole-image panels (every label, teacher and student rows inside) or other figures, shown large."""
    figs = "".join(_overlay_figure(o, problems, max_side=WIDE_SIDE, name=name) for o in overlays)
    return f'<h4>{esc(heading)}</h4><div class="figs wide">{figs}</div>' if figs else ""


def _overlay_img(o: Overlay, problems: list[str]) -> str:
    uri = embed_image(o.path, problems)
    if uri is None:
        return '<span class="muted">unreadable</span>'
    cap = f'<div class="muted">{esc(o.caption)}</div>' if o.caption else ""
    return f'<img src="{uri}" alt="{esc(o.path.name)}">{cap}'


def _overlay_figure(o: Overlay, problems: list[str], max_side: int = MAX_OVERLAY_SIDE, name: bool = False) -> str:
    uri = embed_image(o.path, problems, max_side=max_side)
    if uri is None:
        return ""
    cap = " \u00b7 ".join(x for x in (o.path.name if name else "", o.who, o.image, o.caption) if x) or o.path.name
    return figure(uri, o.path.name, esc(cap))


def pair_overlays(overlays: Sequence[Overlay]) -> tuple[list[tuple[Overlay, Overlay]], list[Overlay]]:
    """Teacher and student overlays of the same (image, label); the unmatched ones come back separately."""
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
