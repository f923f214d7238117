"""``medistill evaluate RUN_DIR [--split test]``: metrics, thresholds and efficiency into metrics.json."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import option
from ..task import get_task
from .common import StageBars, add_config_args, config_from_args, metrics_text, print_json

HELP = "evaluate a run on a split (per-label AUC / accuracy, CIs, calibration, params, MACs, latency)"


@dataclasses.dataclass
class EvaluateOptions:
    """The options of ``medistill evaluate`` (flags, or keys of its ``--config`` YAML); here rather than beside
    ``evaluate_run`` because ``medistill.evaluate`` imports torch and the parser must not."""

    split: str = option("test", "split to evaluate: train, val, test")
    batch_size: int = option(64, "images per forward pass")
    bootstrap: int = option(1000, "bootstrap resamples for the 95% CI (0 = none)")
    no_latency: bool = option(False, "skip the CPU latency measurement")
    json: bool = option(False, "print the metrics as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help=HELP, description=HELP + "; writes RUN_DIR/metrics.json")
    p.add_argument("run_dir", metavar="RUN_DIR")
    add_config_args(p, EvaluateOptions, switches=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.runner import evaluate_run

    o = config_from_args(EvaluateOptions, args)
    bars = StageBars("predicting ")
    try:
        m = evaluate_run(args.run_dir, o.split, batch_size=o.batch_size, latency=not o.no_latency,
                         n_bootstrap=o.bootstrap, progress=bars)
    finally:
        bars.close()
    if o.json:
        print_json(m)
        return 0
    print(f"{args.run_dir} ({o.split}, {m['num_images']} images): {metrics_text(m)}")
    if get_task(m["task"]).multilabel:
        for lab, auc in m["per_label_auc"].items():
            print(f"  {lab:24s} AUC {'n/a' if auc is None or auc != auc else f'{auc:.4f}'}")
    print(f"  params {m['params']:,}  MACs {m['macs']:,}" +
          (f"  latency {m['latency_ms']:.1f} ms (CPU, batch 1, minimum of repeated calls; p90 "
           f"{m.get('latency_ms_p90', float('nan')):.1f} ms)" if "latency_ms" in m else ""))
    if m.get("latency_reliable") is False:
        print(f"  latency unreliable: {m.get('latency_unreliable_reason')}")
    return 0
