"""``medistill export RUN_DIR --format onnx [--int8] [--explain] --out DIR``: a device-ready model and its parity report."""

from __future__ import annotations

import argparse
import sys

HELP = "export a run to ONNX (+ INT8, + in-graph Grad-CAM maps) with a PyTorch parity report"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP + "; writes DIR/model.onnx, DIR/model.int8.onnx "
                       "(--int8) and DIR/export.json")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training or distillation run directory")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default RUN_DIR/export)")
    p.add_argument("--int8", action="store_true", help="also write an INT8 model (static QDQ, calibrated on "
                   "training images) and compare it with fp32")
    p.add_argument("--explain", action="store_true", help="the graph also outputs a Grad-CAM map per label "
                   "(no autograd needed on the device)")
    p.add_argument("--val-limit", type=int, default=512, metavar="N",
                   help="validation images for the parity and metric checks (default 512)")
    p.add_argument("--calibration-images", type=int, default=128, metavar="N",
                   help="training images to calibrate INT8 (default 128)")
    p.add_argument("--calibration-method", default="minmax", choices=["minmax", "percentile", "entropy"])
    scales = p.add_mutually_exclusive_group()
    scales.add_argument("--per-channel", dest="per_channel", action="store_const", const=True, default="auto",
                        help="INT8 weights with one scale per output channel")
    scales.add_argument("--per-tensor", dest="per_channel", action="store_const", const=False,
                        help="INT8 weights with one scale per tensor (default: try both, keep the better "
                             "validation metric)")
    p.add_argument("--cam-images", type=int, default=8, metavar="N",
                   help="validation images for the Grad-CAM parity check (default 8)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the latency comparison")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..export import export_run
    from .common import print_json

    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    rep = export_run(args.run_dir, out, fmt=args.format, int8=args.int8, explain=args.explain,
                     val_limit=args.val_limit, calibration_images=args.calibration_images,
                     cam_images=args.cam_images, per_channel=args.per_channel,
                     calibration_method=args.calibration_method, threads=args.threads,
                     progress=lambda msg: print(f"[export] {msg}", file=sys.stderr))
    if args.json:
        print_json(rep)
        return 0
    name = rep["metric_name"]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    print(f"{out / 'model.onnx'}: {rep['files']['model.onnx']['bytes'] / 1e6:.2f} MB, "
          f"max |logit diff| vs PyTorch {rep['max_abs_diff']:.2e} on {rep['validation']['images']} validation images"
          f" ({'within' if rep['fp32_within_tolerance'] else 'OVER'} {rep['fp32_tolerance']:.0e}); "
          f"{name} PyTorch {fmt(rep['metric_pytorch'])}, ONNX {fmt(rep['metric_onnx'])}")
    if "cam_correlation_min" in rep:
        print(f"  maps {tuple(rep['cam_shape'])} per image: correlation with pytorch-grad-cam min "
              f"{rep['cam_correlation_min']:.4f}, mean {rep['cam_correlation_mean']:.4f} over {rep['cam_maps']} maps")
    if "int8" in rep:
        q = rep["int8"]
        print(f"{out / 'model.int8.onnx'}: {q['int8_bytes'] / 1e6:.2f} MB ({q['size_ratio']:.2f}x fp32); {name} "
              f"{fmt(q.get('int8_metric'))} vs fp32 {fmt(q.get('fp32_metric'))} (delta "
              f"{fmt(rep.get('int8_metric_delta'))}); latency {q['int8_latency_ms']:.2f} ms vs fp32 "
              f"{q['fp32_latency_ms']:.2f} ms" + (f" - INT8 is SLOWER on this CPU ({1 / q['int8_speedup']:.2f}x)"
                                                   if q["int8_slower"] else f" ({q['int8_speedup']:.2f}x faster)"))
    print(f"report: {out / 'export.json'}")
    return 0
