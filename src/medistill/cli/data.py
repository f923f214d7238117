"""``medistill data inspect``: summarise a dataset (images per split, positives per label, missing or unreadable
files, duplicates, near copies of training images, patient overlap between splits), as a table or as one JSON
object (``--json``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..config import DataConfig, build, check_range, load_yaml, option
from .common import add_config_args, overrides_from_args, print_json, progress

EXAMPLES = """examples:
  medistill data inspect --dataset nih --root ../shared/data/nih-chestxray14-sample --json
  medistill data inspect --dataset folder --root ../shared/data/brain-tumor-mri --check-readable
  medistill data inspect --dataset chexpert --root CheXpert-v1.0-small --uncertainty mixed --labels competition
  medistill data inspect --dataset phantom --root data/phantom      (generates the phantom when empty)
  medistill data inspect --config configs/run.yaml                  (its data: section)
"""


@dataclasses.dataclass
class InspectOptions(DataConfig):
    """The options of ``medistill data inspect``: the data (a :class:`DataConfig`, whose fields and flags it keeps)
    and how to summarise it."""

    json: bool = option(False, "print one JSON object instead of a table")
    check_readable: bool = option(False, "decode every image and report the unreadable ones (slower)")
    near_copies: float = option(0.98, "image folders: count validation / test images whose nearest training image's "
                                      "48 px grey thumbnail correlates at this value or more; 0 = skip")

    def validate(self) -> None:
        super().validate()
        if self.near_copies:
            check_range("near_copies", self.near_copies, 0.5, 0.9999)

    def data(self) -> DataConfig:
        """The DataConfig part."""
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})


def register(sub: Any) -> None:
    p = sub.add_parser("data", help="inspect datasets", description="Dataset tools.")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    ins = actions.add_parser(
        "inspect", help="summarise a dataset: images per split, positives per label, missing files ...",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ins, InspectOptions)
    ins.set_defaults(func=run)


def inspect_options(args: argparse.Namespace) -> InspectOptions:
    """The options of ``--config`` (a data-only YAML, or a run config's ``data:`` section) and the flags."""
    base: dict[str, Any] = {}
    if getattr(args, "config", None):
        base = load_yaml(args.config)
        if isinstance(base.get("data"), dict):
            base = base["data"]
    return build(InspectOptions, base=base, overrides=overrides_from_args(args))


def run(args: argparse.Namespace) -> int:
    from ..data.inspect import format_summary, summarize

    o = inspect_options(args)
    bar = None

    def tick(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress(total=total, desc="decoding", unit="img")
        bar.update(1)

    try:
        summary = summarize(o.data(), readable=o.check_readable, near_copies=o.near_copies, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    if o.json:
        print_json(summary)
    else:
        sys.stdout.write(format_summary(summary) + "\n")
    return 0
