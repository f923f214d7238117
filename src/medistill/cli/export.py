"""``medistill export RUN_DIR --format onnx [--int8] [--explain] --out DIR``: a device-ready model and its parity report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Literal

from ..config import check_choice, option
from ..layout import EXPORT_FILE
from .common import add_config_args, config_from_args, print_json

HELP = ("export a run to ONNX (+ INT8, + in-graph Grad-CAM maps) with a PyTorch parity report and the runtime and "
        "precision to deploy it with")


@dataclasses.dataclass
class ExportOptions:
    """The options of ``medistill export`` (flags, or keys of its ``--config`` YAML); here rather than beside
    ``export_run`` because ``medistill.export`` imports torch and the parser must not."""

    format: str = option("onnx", "export format: onnx")
    out: str | None = option(None, "output folder; None = RUN_DIR/export")
    int8: bool = option(False, "also write an INT8 model (static QDQ, calibrated on training images) and compare it "
                               "with fp32")
    explain: bool = option(False, "the graph also outputs a Grad-CAM map per label (no autograd needed on the "
                                  "device)")
    val_limit: int = option(512, "validation images for the parity and metric checks")
    calibration_images: int = option(128, "training images to calibrate INT8")
    calibration_method: str = option("percentile", "INT8 calibration: percentile (99.999th, the default: closer "
                                                   "to fp32 than minmax on brain tumour MRI), minmax, entropy")
    per_channel: bool | Literal["auto"] = option(
        "auto", "INT8 weight scales: true = one per output channel, false (--per-tensor) = one per tensor, auto = "
                "try both and keep the better validation metric")
    cam_images: int = option(8, "validation images for the Grad-CAM parity check")
    threads: int | None = option(None, "CPU threads for the latency comparison of the runtimes; None = all cores")
    metric_tolerance: float = option(0.005, "largest drop of the validation metric a reduced precision (INT8, bf16) "
                                            "may cost and still be the runtime export chooses")
    json: bool = option(False, "print the whole report as JSON")

    def validate(self) -> None:
        check_choice("format", self.format, ("onnx",))
        check_choice("calibration_method", self.calibration_method, ("minmax", "percentile", "entropy"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=HELP, description=HELP + "; writes DIR/model.onnx, DIR/model.int8.onnx "
                       "(--int8) and DIR/export.json")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training or distillation run directory")
    add_config_args(p, ExportOptions, switches=True)
    p.add_argument("--per-tensor", dest="cfg__per_channel", action="store_const", const="false",
                   default=argparse.SUPPRESS, help="= --no-per-channel (per_channel)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_run

    o = config_from_args(ExportOptions, args)
    out = Path(o.out) if o.out else Path(args.run_dir) / "export"
    rep = export_run(args.run_dir, out, fmt=o.format, int8=o.int8, explain=o.explain,
                     val_limit=o.val_limit, calibration_images=o.calibration_images,
                     cam_images=o.cam_images, per_channel=o.per_channel,
                     calibration_method=o.calibration_method, threads=o.threads,
                     metric_tolerance=o.metric_tolerance, progress=lambda msg: print(f"[export] {msg}", file=sys.stderr))
    if o.json:
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
        ops = q["int8_ops"]
        print(f"  ONNX Runtime runs {sum(ops['integer'].values())} integer kernels; in fp32: "
              + (", ".join(f"{op} x{n}" for op, n in ops["float"].items()) or "none"))
    dep = rep["deployment"]
    print(f"deploy with {dep['chosen']['file']} in {dep['chosen']['why']}")
    for key, why in dep["chosen"]["rejected"].items():
        print(f"  not {key}: {why}")
    print(f"report: {out / EXPORT_FILE}")
    return 0
