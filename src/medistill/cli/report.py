"""``medistill report RUN_DIR... --out report.html``: one self-contained HTML report of teacher and students."""

from __future__ import annotations

import argparse

HELP = "write a self-contained HTML report of runs (comparison, curves, ROC, calibration, explanations, export)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP + ". Explanation folders (RUN_DIR/explain*) and export "
                       "folders (RUN_DIR/export*) inside the runs are found on their own.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (teacher, students), any order")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument("--explain", action="append", default=[], metavar="DIR",
                   help="an extra `medistill explain` output folder (repeatable)")
    p.add_argument("--export", action="append", default=[], metavar="DIR",
                   help="an extra `medistill export` output folder (repeatable)")
    p.add_argument("--title", default="medistill report", help="the report's title")
    p.add_argument("--max-images", type=int, default=48, metavar="N",
                   help="explanation overlays shown per folder (default 48)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import MedistillError
    from ..report import build_report

    if args.max_images < 1:
        raise MedistillError(f"--max-images: got {args.max_images}, expected at least 1")
    out = build_report(args.run_dirs, args.out, explain_dirs=args.explain, export_dirs=args.export,
                       title=args.title, max_images=args.max_images)
    size = out.stat().st_size
    print(f"report written to {Path(out).resolve()} ({size / 2**20:.1f} MiB)")
    return 0
