"""``medistill explain``: heatmaps of what a run's model (and its teacher) look at, per label, and their scores.

    medistill explain RUN_DIR (--images FILES... | --dataset D --root DIR --split S --limit N) --method M
                      [--labels L ...] [--teacher RUN_DIR] --out DIR

Writes overlays, per-layer feature-map grids and ``explain.json`` into ``--out`` and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

METHOD_HELP = ("gradcam, gradcam++, hirescam, eigencam, layercam (pytorch-grad-cam); integrated_gradients (ig), "
               "gradientshap (shap) (captum); fmv (KD-FMV average feature map of the last stage)")


def register(sub: Any) -> None:
    p = sub.add_parser("explain", help="explain a run's predictions (Grad-CAM, SHAP, feature maps ...) and score them",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR", help="run directory of the model to explain (the student)")
    src = p.add_argument_group("images (one of)")
    src.add_argument("--images", nargs="+", metavar="FILE", help="image files (PNG, JPEG, DICOM ...)")
    src.add_argument("--dataset", help="dataset source (phantom, nih, chexpert, padchest, medmnist, folder); "
                                       "default with --split: the run's own dataset")
    src.add_argument("--root", help="dataset folder")
    src.add_argument("--split", default=None, help="split to explain: train, val, test (default test)")
    src.add_argument("--limit", type=int, default=16, help="images of the split to explain (default 16)")
    src.add_argument("--with-truth", action="store_true",
                     help="only images with ground truth (phantom masks, NIH boxes): scores localisation")
    p.add_argument("--method", default="gradcam", help=METHOD_HELP + " (default gradcam)")
    p.add_argument("--labels", nargs="+", metavar="LABEL",
                   help="labels to explain on every image (default: the predicted positive ones, else the top 3; "
                        "single-label: the predicted class)")
    p.add_argument("--teacher", metavar="RUN_DIR", help="teacher run directory (default: the one the run records)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    opt = p.add_argument_group("options")
    opt.add_argument("--top-k", type=int, default=3, help="labels explained when none is predicted positive")
    opt.add_argument("--batch-size", type=int, default=16, help="(image, label) pairs per batch")
    opt.add_argument("--size", type=int, default=None, help="side of maps and overlays (default: model input size)")
    opt.add_argument("--layer", default=None, help="the student's CAM layer by module name (default: the model's CAM layer)")
    opt.add_argument("--no-faithfulness", action="store_true", help="skip deletion / insertion curves")
    opt.add_argument("--steps", type=int, default=16, help="deletion / insertion steps")
    opt.add_argument("--background", type=int, default=16, help="GradientShap background images (training split)")
    opt.add_argument("--n-samples", type=int, default=16, help="GradientShap samples per image")
    opt.add_argument("--n-steps", type=int, default=32, help="Integrated Gradients path steps")
    opt.add_argument("--sanity", action="store_true",
                     help="also score a weight-shuffled copy of the model (Adebayo et al. 2018 sanity check)")
    opt.add_argument("--overlays", type=int, default=64, help="write overlay PNGs for at most this many images")
    opt.add_argument("--feature-grid", type=int, default=4, help="images in the feature-map grids (0: none)")
    opt.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    opt.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import DataConfig
    from ..explain.base import ExplainError
    from ..explain.runner import ExplainOptions, explain_run
    from .common import print_json, progress

    if args.images and (args.dataset or args.root or args.split or args.with_truth):
        raise ExplainError("--images cannot be combined with --dataset / --root / --split / --with-truth")
    data = None
    if not args.images:
        if args.dataset is None and args.root is None and args.split is None and not args.with_truth:
            raise ExplainError("no images: pass --images FILE ... or --dataset D --root DIR --split S")
        if args.limit is not None and args.limit < 1:
            raise ExplainError(f"--limit: got {args.limit}, expected at least 1")
        if args.dataset is None:  # the run's own dataset
            from ..runs import RunDir

            run_data = RunDir(args.run).config().data
            data = DataConfig(dataset=run_data.dataset, root=args.root or run_data.root, labels=run_data.labels,
                              limit=args.limit, split_seed=run_data.split_seed,
                              val_fraction=run_data.val_fraction, test_fraction=run_data.test_fraction)
        else:
            from ..config import ConfigError, from_dict

            try:
                data = from_dict(DataConfig, {"dataset": args.dataset, "root": args.root, "limit": args.limit})
            except ConfigError as e:
                raise ExplainError(f"--dataset/--root/--limit: {e}") from None
    options = ExplainOptions(method=args.method, labels=args.labels, top_k=args.top_k, batch_size=args.batch_size,
                             size=args.size, layer=args.layer, faithfulness=not args.no_faithfulness,
                             steps=args.steps, background=args.background, n_samples=args.n_samples,
                             n_steps=args.n_steps, sanity=args.sanity, with_truth=args.with_truth,
                             overlays=args.overlays,
                             feature_grid=args.feature_grid, device=args.device, seed=args.seed)
    bars: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        bar = bars.get(what)
        if bar is None:
            bar = bars[what] = progress(total=total, desc=what, unit="map")
        bar.update(done - bar.n)

    try:
        summary = explain_run(args.run, args.out, images=args.images, data=data, split=args.split or "test",
                              teacher=args.teacher, options=options, progress=report)
    finally:
        for bar in bars.values():
            bar.close()
    shown = {k: v for k, v in summary.items() if k not in ("images", "per_label", "labels")}
    print_json(shown)
    print(f"written to {Path(args.out) / 'explain.json'}", file=sys.stderr)
    return 0
