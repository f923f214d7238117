"""``medistill report RUN_DIR... --out report.html``: one self-contained HTML report of teacher and students."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import ConfigError, option
from .common import add_config_args, config_from_args

HELP = "write a self-contained HTML report of runs (comparison, curves, ROC, calibration, explanations, export)"


@dataclasses.dataclass
class ReportOptions:
    """The options of ``medistill report`` (flags, or keys of its ``--config`` YAML)."""

    out: str = option("report.html", "the HTML file to write")
    explain: list[str] = option(factory=list, help="an extra `medistill explain` output folder (repeatable)")
    export: list[str] = option(factory=list, help="an extra `medistill export` output folder (repeatable)")
    study: str | None = option(None, "a `medistill study` folder: its answer and figure become the report's first "
                                     "section")
    title: str = option("medistill report", "the report's title")
    max_images: int = option(48, "explanation overlays shown per folder")

    def validate(self) -> None:
        if self.max_images < 1:
            raise ConfigError(f"--max-images: got {self.max_images}, expected at least 1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP + ". Explanation folders (RUN_DIR/explain*) and export "
                       "folders (RUN_DIR/export*) inside the runs are found on their own.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (teacher, students), any order")
    add_config_args(p, ReportOptions, switches=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import build_report

    o = config_from_args(ReportOptions, args)
    out = build_report(args.run_dirs, o.out, explain_dirs=o.explain, export_dirs=o.export, title=o.title,
                       max_images=o.max_images, study_dir=o.study)
    size = out.stat().st_size
    print(f"report written to {Path(out).resolve()} ({size / 2**20:.1f} MiB)")
    return 0
