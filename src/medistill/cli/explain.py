"""``medistill explain``: heatmaps of what a run's model (and its teacher) look at, per label, and their scores.

    medistill explain RUN_DIR (--images FILES... | --split S [--limit N] | --dataset D --root DIR --split S)
                      --method M [--labels L ... | --labels truth]
                      [--cam-layers auto|fuse|poly|model] [--cam-min-size N]
                      [--teacher RUN_DIR | --student-only] --out DIR

A split of the run's own data (no --dataset, or the run's dataset at its own root) is rebuilt exactly as the run
was trained and evaluated on it (views, labels, uncertainty policy ...). ``--labels truth`` explains each image's
ground-truth positive labels (as localisation studies do); ``--cam-layers`` chooses the CAM layer by its map size
(``auto``, the default: the deepest feature stage at least ``--cam-min-size`` px a side; ``fuse``: that and every
deeper stage, LayerCAM-style; ``poly``: the same stages, the deepest map refined by the finer ones, Poly-CAM;
``model``: the model's declared layer, often a 2x2 to 4x4 map at 64-128 px).
Writes overlays, per-layer feature-map grids and ``explain.json`` into ``--out`` and prints the summary. Every option is also a key of a --config YAML
file (sections ``source`` and ``options``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, DataConfig, from_dict
from ..explain import ExplainError
from ..explain.options import ExplainConfig
from ..runs import RunDir
from .common import add_config_args, config_from_args, print_json, progress

HELP = "explain a run's predictions (Grad-CAM, SHAP, feature maps ...) and score them"


def register(sub: Any) -> None:
    p = sub.add_parser("explain", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_DIR", help="run directory of the model to explain (the student)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_config_args(p, ExplainConfig)
    p.set_defaults(func=run)


def data_to_explain(run_dir: str | Path, cfg: ExplainConfig) -> Any:
    """The DataConfig to explain a split of (None for image files).

    No ``dataset``, or the run's own dataset: the run's data (its views, labels, uncertainty policy ...), at
    ``root`` when that names another folder (the same data, moved); another dataset: its defaults.
    """
    s = cfg.source
    if s.images:
        return None
    own = RunDir(run_dir if Path(run_dir).is_dir() else Path(run_dir).parent).config().data
    if s.dataset is None or s.dataset == own.dataset:  # at its own root, explain_run rebuilds it with run_dataset
        return dataclasses.replace(own, root=s.root or own.root, limit=s.limit)
    try:
        return from_dict(DataConfig, {"dataset": s.dataset, "root": s.root, "limit": s.limit})
    except ConfigError as e:
        raise ExplainError(f"--dataset/--root/--limit: {e}") from None


def run(args: argparse.Namespace) -> int:
    from ..explain.runner import EXPLAIN_FILE, explain_run
    from ..explain.sanity import describe

    cfg = config_from_args(ExplainConfig, args)
    s = cfg.source
    data = data_to_explain(args.run, cfg)
    bars: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        bar = bars.get(what)
        if bar is None:
            bar = bars[what] = progress(total=total, desc=what, unit="map")
        bar.update(done - bar.n)

    try:
        summary = explain_run(args.run, args.out, images=s.images or None, data=data, split=s.split or "test",
                              limit=s.limit, teacher=s.teacher, options=cfg.options, progress=report,
                              student_only=s.student_only)
    finally:
        for bar in bars.values():
            bar.close()
    shown = {k: v for k, v in summary.items() if k not in ("images", "per_label", "labels")}
    print_json(shown)
    for line in describe(summary):
        print(line, file=sys.stderr)
    print(f"written to {Path(args.out) / EXPLAIN_FILE}", file=sys.stderr)
    return 0
