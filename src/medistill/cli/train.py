"""``medistill train``: train a teacher or a baseline student (no distillation)."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, RunConfig
from . import common
from .common import add_config_args, config_from_args

HELP = "train a model (a teacher, or a student without KD)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=HELP, description=HELP + ". Every config field can be set in a YAML "
                       "--config file and overridden by its flag.")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    add_config_args(p, RunConfig, skip=_DISTILL_FIELDS)
    p.set_defaults(func=run, distill=False)


_DISTILL_FIELDS = tuple(f"distill.{f}" for f in ("teacher", "teachers", "teacher_weights", "teacher_model", "kd",
                                                  "alpha", "temperature", "feature", "feature_weight",
                                                  "teacher_image_size", "cache_teacher"))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(RunConfig, args)
    if not args.distill and (cfg.distill.teacher or cfg.distill.teachers):
        raise ConfigError("the config names a teacher: use `medistill distill` to distil, or remove distill.teacher")
    return train_with_progress(cfg, resume=args.resume)


def progress_callbacks(name: str, epochs: int | None = None, batch_size: int | None = None):
    """Callbacks drawing a tqdm bar per epoch (in images when ``batch_size`` is given: images/s and the epoch's ETA)
    and printing one line per epoch and each message, e.g. the teacher caching's (stderr)."""
    from ..train import Callbacks

    bar: dict = {}

    def start(epoch: int, n: int) -> None:
        desc = f"{name} epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")
        # n batches; unit_scale turns the count and the rate into images (the last batch may be smaller)
        bar["b"] = common.progress(total=n, desc=desc, leave=False, unit="img" if batch_size else "batch",
                                   unit_scale=batch_size or False)

    def batch(epoch: int, i: int, loss: float) -> None:
        bar["b"].update(1)
        bar["b"].set_postfix(loss=f"{loss:.4f}")

    def end(epoch: int, row: dict) -> None:
        bar["b"].close()
        shown = {k: v for k, v in row.items() if k.startswith(("train_loss", "val_"))}
        print(f"{name} epoch {epoch + 1}" + (f"/{epochs}" if epochs else "") + ": "
              + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()) + f"  ({row.get('seconds', 0):.1f} s)",
              file=sys.stderr, flush=True)

    def message(text: str) -> None:
        print(f"{name}: {text}", file=sys.stderr, flush=True)

    def cache(view: int, views: int, done: int, total: int) -> None:  # the teacher's outputs being cached
        if done == 0 or "c" not in bar or bar.get("view") != view:
            if "c" in bar:
                bar["c"].close()
            bar["c"] = common.progress(total=total, leave=False, unit="img",
                                       desc=f"{name}: caching the teacher's outputs, view {view}/{views}")
            bar["view"] = view
        bar["c"].update(done - bar["c"].n)
        if done >= total:
            bar["c"].close()

    return Callbacks(start, batch, end, message, cache)


def train_with_progress(cfg: RunConfig, *, resume: bool = False) -> int:
    from ..train import run_training

    run = run_training(cfg, resume=resume, callbacks=progress_callbacks(cfg.model.name, cfg.train.epochs,
                                                                         cfg.train.batch_size))
    print(f"run directory: {run.path}")
    return 0
