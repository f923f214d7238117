"""``medistill predict MODEL.onnx INPUTS... [--json] [--explain --out DIR]``: torch-free prediction.

Imports nothing heavier than onnxruntime, numpy, Pillow and pydicom (a test runs it where importing torch fails).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..config import check_choice, option
from ..errors import MedistillError
from .common import add_config_args, config_from_args

HELP = "predict images (PNG, JPEG, 16-bit PNG, DICOM, folders) with an exported ONNX model, without torch"


@dataclasses.dataclass
class PredictOptions:
    """The options of ``medistill predict`` (flags, or keys of its ``--config`` YAML)."""

    json: bool = option(False, "print a JSON list, one object per input")
    explain: bool = option(False, "write heatmap overlays (needs a model exported with --explain) into --out")
    out: str | None = option(None, "folder for the overlays; None = ./predict-maps")
    maps: str = option("positive", "overlay the positive labels (or the top one when none is): positive; or all "
                                   "labels: all")
    batch_size: int = option(8, "images per ONNX Runtime call")
    threads: int | None = option(None, "ONNX Runtime threads; None = all cores")

    def validate(self) -> None:
        check_choice("maps", self.maps, ("positive", "all"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help=HELP, description=HELP + ". A file that cannot be read is reported and the "
                       "others are still predicted; the exit status is 1 when any input failed.")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `medistill export`")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders (searched recursively)")
    add_config_args(p, PredictOptions, switches=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.images import list_images
    from ..inference import Predictor, save_overlays
    from ..utils.text import shown

    # names from the file system and the model file are escaped in text output (shown): a file named
    # "a\nFAKE: positives [...]\x1b[31m.png" must not print a forged line or reach the terminal; --json escapes itself

    o = config_from_args(PredictOptions, args)
    predictor = Predictor(args.model, threads=o.threads)
    files = list_images(args.inputs)
    if not files:
        raise MedistillError(f"no images found in {' '.join(args.inputs)} (expected PNG, JPEG, BMP, TIFF or DICOM "
                             f"files or folders holding them)")
    want_maps = bool(o.explain)
    out = Path(o.out or "predict-maps")
    if want_maps and not predictor.has_maps:
        print(f"medistill predict: warning: {shown(args.model)} has no maps (export it with --explain); "
              f"predicting without overlays", file=sys.stderr)
        want_maps = False
    results, failed = [], 0
    for i, pred in enumerate(predictor.predict(files, maps=want_maps, batch_size=max(1, o.batch_size),
                                               keep_images=want_maps)):
        if pred.error is not None:
            failed += 1
            if not o.json:
                print(f"{shown(pred.file)}: error: {shown(pred.error)}", file=sys.stderr)
        else:
            written = save_overlays(pred, predictor.labels, out, index=i, which=o.maps) if want_maps else []
            if o.json:
                row = pred.to_json()
                if written:
                    row["overlays"] = [str(p) for p in written]
                results.append(row)
                continue
            top = sorted(pred.probabilities.items(), key=lambda kv: -kv[1])[:3]
            print(f"{shown(pred.file)}: positives [{', '.join(shown(lab) for lab in pred.positives)}]  top: "
                  + ", ".join(f"{shown(lab)} {p:.3f}" for lab, p in top)
                  + (f"  overlays: {', '.join(shown(p) for p in written)}" if written else ""))
            for text in pred.warnings:
                print(f"{shown(pred.file)}: warning: {shown(text)}", file=sys.stderr)
            continue
        if o.json:
            results.append(pred.to_json())
    if o.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 1 if failed else 0
