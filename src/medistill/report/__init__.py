"""The HTML report of a set of runs (``medistill report RUN_DIR... --out report.html``).

One self-contained file: the comparison table (teacher, student, student without KD), training curves, per-label
AUC bars, ROC curves, confusion matrices (single-label), calibration, explanation galleries and export results.

- :mod:`.collect` reads run directories, explanation folders and export folders;
- :mod:`.plots` draws the figures (matplotlib, Agg, embedded as PNG data URIs);
- :mod:`.html` builds the page from :mod:`.template`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..utils.io import atomic_write_text
from .collect import ReportData, collect
from .html import render

log = logging.getLogger(__name__)

__all__ = ["ReportData", "build_report", "collect", "render_report"]


def render_report(run_dirs: Sequence[str | Path], *, explain_dirs: Sequence[str | Path] = (),
                  export_dirs: Sequence[str | Path] = (), title: str = "medistill report",
                  max_images: int = 48, study_dir: str | Path | None = None) -> str:
    """The report's HTML (a string) for ``run_dirs`` plus extra explanation / export folders and a study."""
    data = collect(list(run_dirs), explain_dirs=list(explain_dirs), export_dirs=list(export_dirs),
                   study_dir=study_dir)
    return render(data, title=title, max_images=max_images)


def build_report(run_dirs: Sequence[str | Path], out: str | Path, *, explain_dirs: Sequence[str | Path] = (),
                 export_dirs: Sequence[str | Path] = (), title: str = "medistill report",
                 max_images: int = 48, study_dir: str | Path | None = None) -> Path:
    """Write the report for ``run_dirs`` (and the study in ``study_dir``) to ``out`` atomically; returns ``out``."""
    page = render_report(run_dirs, explain_dirs=explain_dirs, export_dirs=export_dirs, title=title,
                         max_images=max_images, study_dir=study_dir)
    path = atomic_write_text(out, page)
    log.info("report: wrote %s (%d bytes)", path, len(page.encode("utf-8")))
    return path
