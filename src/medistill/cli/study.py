"""``medistill study``: does distillation pay here, and how small can the student be?"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..study import StudyConfig
from .common import add_config_args, config_from_args

HELP = "train a student family at several sizes with and without KD and say, per size, whether KD paid"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help=HELP,
        description=HELP + ". Inspects the data first (applies the suggested grouping, leaves out validation / test "
        "near copies of training images), uses --teacher or fine-tunes one, then trains every size x arm x seed as "
        "an ordinary run folder. Arms are chosen on validation by a rule written to OUT/plan.json before the first "
        "run; the headline is the chosen KD arm against the chosen no-KD arm with a CI over test patients and seeds. "
        "Writes OUT/study.json, study.md, frontier.png and report.html; re-running the same command continues where "
        "it stopped.")
    add_config_args(p, StudyConfig, skip=("data.image_size",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..study.runner import run_study

    cfg = config_from_args(StudyConfig, args)
    t0 = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - t0:5.0f} s] {text}", file=sys.stderr, flush=True)

    result = run_study(cfg, say=say)
    print()
    for sentence in result["sentences"]:
        print(sentence)
    out = Path(cfg.out)
    print(f"\nresults: {out / 'study.md'} (and study.json, frontier.png, report.html)")
    return 0
