"""What every section of the report shares (:class:`Page`), and the page's top: header, subtitle and notes.

A section is a function ``section(page) -> str`` (empty when its inputs are missing); it adds itself to the
navigation through :meth:`Page.section` and counts its plots through :meth:`Page.plot`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

from ..task import Task, TaskError, get_task
from ..utils.runtime import git_commit, machine_info, package_versions
from . import plots
from .collect import ReportData, RunData
from .format import esc, fmt, machine_text
from .pieces import plot, role_badge, section


class Page:
    """The report being built: its runs (colours, the teacher, the task, the label union), navigation and plots."""

    def __init__(self, data: ReportData, *, title: str, max_images: int, dpi: int):
        self.data = data
        self.title = title
        self.max_images = max_images
        self.dpi = dpi
        self.runs = data.runs
        self.colour = dict(zip((r.name for r in self.runs), plots.colours([r.role for r in self.runs])))
        self.teacher = next((r for r in self.runs if r.role == "teacher" and r.evaluated), None)
        self.task_name = next((r.task for r in self.runs if r.task), None)  # the first run's, as stored
        self.task: Task | None = _task(self.task_name)
        self.labels = union_labels(self.runs)
        self.nav: list[tuple[str, str]] = []
        self.figures = 0

    def plot(self, fig: Any, alt: str, caption: str = "") -> str:
        self.figures += 1
        return plot(fig, alt, caption, dpi=self.dpi)

    def section(self, anchor: str, title: str, content: str, lead: str = "") -> str:
        self.nav.append((anchor, title))
        return section(anchor, title, content, lead)

    def badge(self, r: RunData) -> str:
        return role_badge(r.role, self.colour[r.name])

    def colours(self, rs: Sequence[RunData]) -> list[str]:
        return [self.colour[r.name] for r in rs]

    def comparable(self, with_predictions: bool = False) -> list[RunData]:
        """Evaluated runs with the main task and label set (those can share a figure)."""
        main_labels = next((r.labels for r in self.runs if r.evaluated and r.task == self.task_name), [])
        out = [r for r in self.runs if r.evaluated and r.task == self.task_name and r.labels == main_labels]
        return [r for r in out if r.predictions is not None] if with_predictions else out

    @property
    def multilabel(self) -> bool:
        return self.task is not None and self.task.multilabel

    @property
    def single_label(self) -> bool:
        return self.task is not None and not self.task.multilabel


def _task(name: str | None) -> Task | None:
    try:
        return get_task(name) if name else None
    except TaskError:  # a task this version does not know: the sections that depend on it are left out
        return None


def union_labels(runs: Sequence[RunData]) -> list[str]:
    out: list[str] = []
    for r in runs:
        for lab in r.labels:
            if lab not in out:
                out.append(lab)
    return out


# ---------------------------------------------------------------------------------------------------------
# the top of the page
# ---------------------------------------------------------------------------------------------------------

def header(page: Page) -> str:
    """When and where the report and the runs were made, on which data, evaluated how."""
    now = _dt.datetime.now(_dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    items = [("Generated", f"{now} by medistill {package_versions(('medistill',)).get('medistill') or ''}"
              f" (commit {(git_commit() or 'unknown')[:10]})"),
             ("Report machine", machine_text(machine_info()))]
    machines: dict[str, list[str]] = {}
    for r in page.runs:
        m = r.info.get("machine")
        if isinstance(m, dict):
            machines.setdefault(machine_text(m), []).append(r.name)
    for text, names in machines.items():
        items.append(("Runs made on", f"{text} ({', '.join(names)})"))
    data_desc = sorted({dataset_text(r) for r in page.runs if dataset_text(r)})
    if data_desc:
        items.append(("Data", "; ".join(data_desc)))
    ev = [r for r in page.runs if r.evaluated]
    if ev:
        evals = {f"{r.metrics.get('split', '?')} split, {fmt(r.metrics.get('num_images'))} images" for r in ev}
        items.append(("Evaluated on", "; ".join(sorted(evals))))
    items.append(("Runs", ", ".join(f"{r.name} ({r.role})" for r in page.runs)))
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def subtitle(page: Page) -> str:
    what = f"{len(page.runs)} run{'s' if len(page.runs) != 1 else ''}"
    if page.task is not None:
        what += f", {page.task.description} task with {len(page.labels)} labels"
    return esc(f"Teacher vs distilled student vs student without KD: {what}")


def notes(page: Page) -> str:
    if not page.data.notes:
        return ""
    return '<div class="notes"><strong>Notes</strong><ul>' + "".join(
        f"<li>{esc(n)}</li>" for n in page.data.notes) + "</ul></div>"


def dataset_text(r: RunData) -> str:
    """``nih (nih-sample), 128 px, at most 64 images per split`` from the run's config."""
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
