"""``medistill benchmark RUN_DIR_OR_MODEL [--threads N] [--batch 1,8] [--json]``: latency on this CPU."""

from __future__ import annotations

import argparse
import sys

HELP = ("latency of the student (PyTorch, ONNX Runtime fp32 / INT8, explain graph) vs the teacher, against the "
        "measured matmul peak")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help=HELP, description=HELP + ". Latencies in milliseconds.")
    p.add_argument("target", metavar="RUN_DIR_OR_MODEL", help="a run directory or an exported model.onnx")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime (default: all cores)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--teacher", default="densenet161", help="teacher to time in PyTorch: a timm model name (random "
                   "weights), a run directory, or 'none' (default densenet161)")
    p.add_argument("--runs", type=int, default=50, help="timed calls per measurement, at least (default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="time each measurement at least this long")
    p.add_argument("--no-int8", action="store_true", help="skip INT8")
    p.add_argument("--no-explain", action="store_true", help="skip the explain graph")
    p.add_argument("--out", metavar="FILE.json", default=None, help="also write the results to this file")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _batches(text: str) -> list[int]:
    from ..errors import MedistillError

    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise MedistillError(f"--batch {text!r}: expected comma-separated positive integers, e.g. 1,8")
    return out


def run(args: argparse.Namespace) -> int:
    from ..benchmark import benchmark
    from ..utils.io import atomic_write_json
    from .common import print_json

    res = benchmark(args.target, threads=args.threads, batches=_batches(args.batch), teacher=args.teacher,
                    runs=args.runs, warmup=args.warmup, min_seconds=args.min_seconds, int8=not args.no_int8,
                    explain=not args.no_explain, progress=lambda msg: print(f"[benchmark] {msg}", file=sys.stderr))
    if args.out:
        atomic_write_json(args.out, res)
    if args.json:
        print_json(res)
        return 0
    print(f"{res['model']}: {res['params']:,} params, {res['macs'] / 1e6:.0f}M MACs at {res['input']['size']} px; "
          f"{res['threads']} threads; matmul peak {res['matmul_peak_gflops']['peak']:.0f} GFLOP/s -> FLOP limit "
          f"{res['flop_limit_ms']:.2f} ms")
    for batch, lat in res["latency_ms"].items():
        print(f"  {batch}: " + ", ".join(f"{k} {v['median_ms']:.2f} ms (p90 {v['p90_ms']:.2f})" for k, v in lat.items()))
    for k, v in res["ratios"].items():
        print(f"  {k}: {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")
    for k, v in res["targets"].items():
        print(f"  target {k}: {'met' if v else 'NOT met'}")
    return 0
