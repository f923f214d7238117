"""Build the self-contained HTML report (``medistill report``) from collected run data.

:func:`render` turns a :class:`~medistill.report.collect.ReportData` into one HTML string: every figure is an
embedded PNG data URI, the CSS is inline, there are no scripts and no external resources, and every string from
the inputs is HTML-escaped. Sections appear only when their inputs exist (a run that was never evaluated has
training curves but no ROC curves, and so on).

The parts: :mod:`.format` (values as text), :mod:`.pieces` (tables, figures, sections), :mod:`.page` (what the
sections share, the header), and one module per group of sections: :mod:`.comparison` (comparison, runs,
training), :mod:`.per_label` (per-label figures, ROC, confusion, calibration), :mod:`.gallery` (explanations),
:mod:`.exports` (on-device export), :mod:`.study` (a study's answer).
"""

from __future__ import annotations

from typing import Callable

from . import comparison, exports, gallery, per_label, study
from .collect import ReportData
from .format import esc
from .page import Page, header, notes, subtitle
from .template import CSS, PAGE

#: the sections in page order; each returns its HTML, or "" when its inputs are missing
SECTIONS: tuple[Callable[[Page], str], ...] = (
    notes, study.study_section, comparison.comparison, comparison.runs_table, comparison.training, per_label.per_label_section,
    per_label.roc, per_label.confusion, per_label.calibration, gallery.explanations, exports.export)


def render(data: ReportData, *, title: str = "medistill report", max_images: int = 48, dpi: int = 100) -> str:
    """The report's HTML for ``data`` (see the module docstring)."""
    page = Page(data, title=title, max_images=max_images, dpi=dpi)
    body = [section(page) for section in SECTIONS]
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in page.nav)
    footer = esc(f"medistill report \u00b7 {page.figures} plot{'s' if page.figures != 1 else ''} \u00b7 "
                 f"self-contained: images are embedded, no external resources")
    return PAGE.substitute(title=esc(page.title), subtitle=subtitle(page), header=header(page), nav=nav,
                           body="\n".join(b for b in body if b), footer=footer, css=CSS)
