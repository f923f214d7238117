"""``medistill compare RUN_DIR...``: teacher vs student vs student without KD, as a table."""

from __future__ import annotations

import argparse

HELP = "compare evaluated runs (teacher, student, student without KD)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=HELP, description=HELP + "; prints a Markdown table")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="also write the table (.md) and rows (.json) with this path stem")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluate.runner import compare_runs, format_table
    from ..utils.io import atomic_write_json, atomic_write_text
    from .common import print_json

    rows = compare_runs(args.run_dirs)
    table = format_table(rows)
    if args.out:
        stem = Path(args.out)
        atomic_write_text(stem.with_suffix(".md"), table + "\n")
        atomic_write_json(stem.with_suffix(".json"), rows)
    if args.json:
        print_json(rows)
    else:
        print(table)
    return 0
