"""The report's fidelity tables: do the maps find the lesion? One row per model of every explanation folder (the
explained run, its teacher, the weight-randomised copy of the sanity check), and a per-label table per folder.

Figures come from ``explain.json`` (:mod:`medistill.explain.runner`): pointing game strict and tolerant (a hit
within 15 px x size / 224 of the truth, Zhang et al. 2016), each beside its chance, energy inside the truth, IoU,
Spearman of the student's maps to the teacher's (over pixels, and at the coarser map's own grid when that is
coarser: a CAM's layer side), the share of blank maps (no positive evidence for the label),
deletion / insertion. A folder without truth (no masks or boxes) gives no row.

The sanity table states, for every folder and each method used there (the explained run's and its teacher's), the
weight-randomisation check ``medistill explain`` ran (:mod:`medistill.explain.sanity`): the Spearman of the maps
before and after the weights are shuffled, the randomised model's pointing game beside chance where truth exists,
and the verdict written in ``explain.json``; a method that failed is flagged, and its overlays are introduced as
not evidence (:func:`sanity_warning`).
"""

from __future__ import annotations

from typing import Any, Sequence

from .folders import ExplainData
from .format import esc, num
from .pieces import table

HEADERS = ("explanation", "model", "maps", "pointing game (chance)", "tolerant (chance)", "energy inside", "IoU",
           "Spearman to teacher", "blank maps", "deletion", "insertion", "sanity check")
SANITY_HEADERS = ("explanation", "model", "method", "maps", "Spearman before / after randomisation",
                  "randomised pointing game (chance)", "verdict")
LABEL_HEADERS = ("label", "maps", "pointing game (chance)", "tolerant (chance)", "energy inside",
                 "Spearman to teacher")


def _cell(v: Any, digits: int = 3) -> str:
    f = num(v)
    return "n/a" if f is None else f"{f:.{digits}f}"


def _with_chance(score: Any, chance: Any) -> str:
    """``0.620 (0.040)``: a score beside its chance, marked good when it is at least 3x chance, bad when not
    above it (the issue's bar for 'finds the lesion')."""
    s, c = num(score), num(chance)
    if s is None:
        return "n/a"
    text = f"{s:.3f}" + (f' <span class="muted">({c:.3f})</span>' if c is not None else "")
    if c is None:
        return text
    cls = "good" if s >= 3 * c else "bad" if s <= c else ""
    return f'<span class="{cls}">{text}</span>' if cls else text


def _agreement(s: dict[str, Any]) -> str:
    """``0.394 (0.660 at 8x8)``: the Spearman of the two maps over pixels, and over the cells of the coarser map's
    own grid when that is coarser than the maps drawn (a Grad-CAM's layer beside a pixel-level map)."""
    text = _cell(s.get("agreement_spearman"))
    rho, grid, size = num(s.get("agreement_spearman_grid")), num(s.get("agreement_grid")), num(s.get("size"))
    if rho is None or grid is None or size is None or grid >= size:
        return text
    return text + f' <span class="muted">({rho:.3f} at {int(grid)}&times;{int(grid)})</span>'


def rows_of(ex: ExplainData) -> list[list[str]]:
    """The table rows of one explanation folder: the run, its teacher and the randomised copy, where scored."""
    s = ex.summary
    if num(s.get("pointing_game")) is None:
        return []
    name = esc(ex.path.name + (f" ({ex.run})" if ex.run else ""))
    layers = s.get("cam_layers") or {}
    chance, chance_tol = s.get("pointing_chance"), s.get("pointing_chance_tolerant")

    def row(who: str, model: Any, d: dict[str, Any], spearman: str, maps: Any, check: str) -> list[str]:
        hooked = layers.get(who) if isinstance(layers, dict) else None
        label = esc(f"{who}: {model}" if model else who) + (
            f' <span class="muted">{esc(", ".join(map(str, hooked)))}</span>' if hooked else "")
        return [name, label, esc(maps if maps is not None else "n/a"),
                _with_chance(d.get("pointing_game"), chance), _with_chance(d.get("pointing_game_tolerant"), chance_tol),
                _cell(d.get("energy_inside")), _cell(d.get("iou")), spearman, _cell(d.get("blank"), 2),
                _cell(d.get("deletion_auc")), _cell(d.get("insertion_auc")), check]

    out = [row("student", s.get("model"), s, _agreement(s), s.get("maps_with_truth"), _verdict(s.get("sanity")))]
    teacher = s.get("teacher")
    if isinstance(teacher, dict) and num(teacher.get("pointing_game")) is not None:
        out.append(row("teacher", teacher.get("model"), teacher, "n/a", teacher.get("maps"),
                       _verdict(teacher.get("sanity"))))
    sanity = s.get("sanity")
    if isinstance(sanity, dict) and num(sanity.get("pointing_game")) is not None:
        out.append(row("randomised weights", s.get("model"), sanity, "n/a", None, ""))
    return out


def _verdict(block: Any) -> str:
    """The randomisation check's verdict as a cell: passed, FAILED (not evidence), not judged, or not run."""
    if not isinstance(block, dict):
        return '<span class="muted">not run</span>'
    passed = block.get("passed")
    if passed is True:
        return '<span class="good">passed</span>'
    if passed is False:
        return '<span class="bad">FAILED: not evidence</span>'
    return '<span class="muted">not judged</span>'


def sides(summary: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """(side, model, method, sanity block or None) of each method used in one ``explain.json``: the explained
    run's, and its teacher's when it was explained."""
    out = [("student", summary.get("model"), summary.get("method"), summary.get("sanity"))]
    teacher = summary.get("teacher")
    if isinstance(teacher, dict):
        out.append(("teacher", teacher.get("model"), teacher.get("method"), teacher.get("sanity")))
    return out


def sanity_table(explains: Sequence[ExplainData]) -> str:
    """Every folder's randomisation check, per method used ("" when no folder has an ``explain.json`` summary)."""
    rows = []
    for ex in explains:
        if "method" not in ex.summary:  # no summary, or not one medistill explain wrote
            continue
        name = esc(ex.path.name + (f" ({ex.run})" if ex.run else ""))
        for who, model, method, block in sides(ex.summary):
            b = block if isinstance(block, dict) else {}
            reasons = "; ".join(str(r) for r in b.get("reasons") or [])
            rows.append([name, esc(f"{who}: {model}" if model else who), esc(method or "n/a"), esc(b.get("maps", "n/a")),
                         _cell(b.get("spearman_to_trained")),
                         _with_chance(b.get("pointing_game"), b.get("pointing_chance")) if b else "n/a",
                         _verdict(block) + (f' <span class="muted">{esc(reasons)}</span>' if reasons else "")])
    if not rows:
        return ""
    lead = ("<p>Sanity check of every method used (Adebayo et al. 2018): the model's weights shuffled, the same "
            "images and labels explained again. A method whose maps barely change (Spearman of the maps before and "
            "after) or still find the truth (the randomised model's pointing game above twice chance) shows the "
            "image rather than what the model learned: it is flagged, and its maps are not evidence.</p>")
    return "<h3>Sanity checks</h3>" + lead + table(SANITY_HEADERS, rows, text_cols=3)


def sanity_warning(summary: dict[str, Any]) -> str:
    """A warning above one folder's overlays naming each method whose randomisation check failed or did not run
    ("" when every method used passed)."""
    if "method" not in summary:  # not written by medistill explain
        return ""
    notes = []
    for who, _model, method, block in sides(summary):
        if not isinstance(block, dict):
            notes.append(f"The {who}'s {method} maps were not checked against a weight-randomised model "
                         f"(explain --no-sanity): read them with care.")
        elif block.get("passed") is False:
            notes.append(f"The {who}'s {method} maps FAILED the weight-randomisation check "
                         f"({'; '.join(str(r) for r in block.get('reasons') or [])}): they are framed in red and are "
                         f"not evidence of what the model uses.")
    return "".join(f'<p class="bad">{esc(n)}</p>' for n in notes)


def fidelity_table(explains: Sequence[ExplainData]) -> str:
    """Every scored explanation folder's rows in one table ("" when none has truth)."""
    rows = [r for ex in explains for r in rows_of(ex)]
    if not rows:
        return ""
    lead = ("<p>Do the maps find the lesion? Pointing game: the share of maps whose maximum lies inside the truth "
            "(tolerant: within 15 px &times; size / 224 of it, Zhang et al. 2016), beside its chance (a random "
            "point); green at 3&times; chance or more, red at chance or below. A blank map (no positive evidence "
            "for the label: Grad-CAM keeps only positive evidence) scores chance. Randomised weights: the same "
            "model with its weights shuffled (Adebayo et al. 2018): its maps should lose the lesion.</p>")
    return "<h3>Fidelity</h3>" + lead + table(HEADERS, rows, text_cols=2)


def per_label_table(summary: dict[str, Any]) -> str:
    """The student's scores per label of one folder ("" when no label was scored against truth)."""
    per = summary.get("per_label")
    if not isinstance(per, dict):
        return ""
    rows = [[esc(lab), esc(d.get("maps", "")), _with_chance(d.get("pointing_game"), d.get("pointing_chance")),
             _with_chance(d.get("pointing_game_tolerant"), d.get("pointing_chance_tolerant")),
             _cell(d.get("energy_inside")), _cell(d.get("agreement_spearman"))]
            for lab, d in per.items() if isinstance(d, dict) and num(d.get("pointing_game")) is not None]
    return table(LABEL_HEADERS, rows) if rows else ""
