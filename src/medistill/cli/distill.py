"""``medistill distill``: distil a teacher (run directory or checkpoint) into a student."""

from __future__ import annotations

import argparse

from ..config import ConfigError, RunConfig
from .common import add_config_args, config_from_args
from .train import train_with_progress

HELP = "distil a teacher into a student (alpha * hard + (1 - alpha) * T^2 * soft(T))"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help=HELP, description=HELP + ". --teacher is a run directory of "
                       "`medistill train` or a weights file with --teacher-model. Every config field can be set in a "
                       "YAML --config file and overridden by its flag.")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    add_config_args(p, RunConfig)
    p.set_defaults(func=run, distill=True)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(RunConfig, args)
    if not (cfg.distill.teacher or cfg.distill.teachers):
        raise ConfigError("distill needs a teacher: --teacher RUN_DIR (or distill.teachers in the config)")
    return train_with_progress(cfg, resume=args.resume)
