"""``medistill evaluate RUN_DIR [--split test]``: metrics, thresholds and efficiency into metrics.json."""

from __future__ import annotations

import argparse

HELP = "evaluate a run on a split (per-label AUC / accuracy, CIs, calibration, params, MACs, latency)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help=HELP, description=HELP + "; writes RUN_DIR/metrics.json")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", default="test", help="split to evaluate (train, val, test; default test)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI (0 = none)")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.runner import evaluate_run
    from ..task import get_task
    from .common import StageBars, metrics_text, print_json

    bars = StageBars("predicting ")
    try:
        m = evaluate_run(args.run_dir, args.split, batch_size=args.batch_size, latency=not args.no_latency,
                         n_bootstrap=args.bootstrap, progress=bars)
    finally:
        bars.close()
    if args.json:
        print_json(m)
        return 0
    print(f"{args.run_dir} ({args.split}, {m['num_images']} images): {metrics_text(m)}")
    if get_task(m["task"]).multilabel:
        for lab, auc in m["per_label_auc"].items():
            print(f"  {lab:24s} AUC {'n/a' if auc is None or auc != auc else f'{auc:.4f}'}")
    print(f"  params {m['params']:,}  MACs {m['macs']:,}" +
          (f"  latency {m['latency_ms']:.1f} ms (CPU, batch 1, minimum of repeated calls; p90 "
           f"{m.get('latency_ms_p90', float('nan')):.1f} ms)" if "latency_ms" in m else ""))
    if m.get("latency_reliable") is False:
        print(f"  latency unreliable: {m.get('latency_unreliable_reason')}")
    return 0
