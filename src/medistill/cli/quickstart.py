"""``medistill quickstart``: the main job end to end on the built-in phantom data (or a real dataset)."""

from __future__ import annotations

import argparse
import sys
import time

from ..quickstart import QuickstartConfig, run_quickstart
from .common import add_config_args, config_from_args, metrics_text
from .train import progress_callbacks

HELP = "train a teacher, distil a student (and a no-KD student), evaluate, explain, export, benchmark, report"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help=HELP, description=HELP + ". Default: the built-in phantom chest X-rays "
                       "(generated into data/phantom, no download); the README gives its measured time. Point it at a "
                       "real dataset with --dataset/--root. Re-running continues where it stopped.")
    add_config_args(p, QuickstartConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    q = config_from_args(QuickstartConfig, args)
    t0 = time.perf_counter()

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {text}", file=sys.stderr, flush=True)

    summary = run_quickstart(q, step=step, callbacks_for=lambda name: progress_callbacks(
        name, q.teacher_epochs if name == "teacher" else q.student_epochs, q.batch_size))
    print()
    for name in ("teacher", "student", "student_nokd"):
        m = summary[name]
        print(f"{name:13s} {metrics_text(m)}  params {m['params']:,}  MACs {m['macs']:,}  "
              f"latency {m['latency_ms']:.1f} ms")
    print(f"\n{summary['kd_story']}")
    print(f"\ndone in {summary['total_seconds']:.0f} s. Report: {summary['report']}")
    return 0
