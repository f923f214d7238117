"""``medistill compare RUN_DIR...``: teacher vs student vs student without KD, and whether KD paid."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..config import option
from ..utils.io import atomic_write_json, atomic_write_text
from .common import add_config_args, config_from_args, print_json

HELP = "compare evaluated runs (teacher, student, student without KD) and say whether KD paid"


@dataclasses.dataclass
class CompareOptions:
    """The options of ``medistill compare`` (flags, or keys of its ``--config`` YAML)."""

    out: str | None = option(None, "also write the table (.md) and the JSON object (.json) with this path stem")
    json: bool = option(False, 'print one JSON object: {"runs": [...], "kd_gain": {...}}')
    bootstrap: int = option(1000, "paired bootstrap resamples for the KD gain's CI")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=HELP, description=HELP + "; prints a Markdown table and the KD gain (KD minus "
                       "no-KD on the same test images, paired bootstrap 95%% CI)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    add_config_args(p, CompareOptions, switches=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.compare import compare_runs, describe_gain, format_table, kd_gain

    o = config_from_args(CompareOptions, args)
    rows = compare_runs(args.run_dirs)
    gain = kd_gain(rows, n_bootstrap=o.bootstrap)
    table = format_table(rows)
    text = table + "\n\n" + (describe_gain(gain) if gain else
                             "KD gain: n/a (give a KD student and the same student trained without KD)")
    result = {"runs": rows, "kd_gain": gain}
    if o.out:
        stem = Path(o.out)
        atomic_write_text(stem.with_suffix(".md"), text + "\n")
        atomic_write_json(stem.with_suffix(".json"), result)
    if o.json:
        print_json(result)
    else:
        print(text)
    return 0
