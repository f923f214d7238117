"""Explanation fidelity: do the maps find the lesion, and does explanation-aware KD teach the student where to look?

    nice -n 10 .venv/bin/python benchmarks/explain_fidelity.py            # phantom (3 student seeds) + NIH boxes
    nice -n 10 .venv/bin/python benchmarks/explain_fidelity.py --stage train   # only train (resumable)

Steps, each a medistill run directory under ``--runs`` (a finished and evaluated run is skipped, a half-done one
resumed; an explanation whose ``explain.json`` exists is reused, so re-running continues where it stopped):

1. the phantom (public API ``medistill.data.phantom.ensure``; the folder is keyed by the generator's version and
   a fingerprint of what it draws, so a new phantom is generated, not mixed with an old one), ``--images`` images at ``--image-size`` px;
2. one teacher (``--teacher``), then per seed four students (``--student``) under the same schedule: ``nokd``
   (hard labels), ``kd`` (KD-FMV soft targets), ``e2kd`` (KD + e2KD's Grad-CAM similarity term), ``e2kd_gs``
   (the same term against the teacher's GradientShap maps pooled to the student's grid,
   ``distill.explain_teacher_maps gradientshap``: for a teacher whose Grad-CAM does not localise; the maps are
   computed once and shared by the seeds), each also as ``*_pred`` (``--e2kd-labels``: only the labels the
   teacher predicts present are explained) and ``cat`` (KD + CAT-KD's class attention transfer); students use no
   augmentation, so the teacher's logits and maps are cached once (offline KD);
3. every model explained on ``--explain-images`` test images with ``medistill explain`` (Grad-CAM,
   ``--labels truth``: the ground-truth positive labels, as localisation studies do), the students beside the
   teacher (Spearman of their maps), with deletion / insertion and the weight-randomisation sanity check;
   the teacher also with each CAM-layer policy (``model``: the declared stride-32 layer; ``auto``; ``fuse``);
   every model again with each of ``--methods`` (default GradientShap with ``--gradientshap-samples`` points, a
   pixel attribution that needs no layer), with its own randomisation check;
4. the same on the NIH ChestX-ray14 sample (``../shared/data/nih-chestxray14-sample``): teacher and students
   (seed 0) trained on its images, explained on the images that have boxes.

Results: ``benchmarks/results/explain_fidelity.json``::

    {"phantom": {"image_size", "chance", "chance_tolerant", "per_label_chance", "models": {NAME: {
        "pointing_game", "pointing_game_tolerant", "energy_inside", "iou", "deletion_auc", "insertion_auc",
        "spearman_to_teacher", "macro_auc", "randomised_pointing_game", "per_label": {...}, "seeds": [...]}},
        "cam_layers": {POLICY: {...}}, "by_method": {METHOD: {"models": {NAME: {...}}}}, "targets": {...}},
     "nih_boxes": {... the same shape, one seed ...}}

with NAME among teacher, nokd, kd, e2kd, e2kd_gs, e2kd_pred, e2kd_gs_pred, cat (means over seeds); the Markdown
beside it has the commands, the machine and whether it was shared. Both are rewritten after every step, so a partial benchmark leaves its numbers.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as B  # noqa: E402
from medistill.cam_policy import CAM_LAYER_POLICIES, DEFAULT_CAM_MIN_SIZE  # noqa: E402
from medistill.config import DistillConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NIH = DATA / "nih-chestxray14-sample"
VARIANTS = ("nokd", "kd", "e2kd", "e2kd_gs", "cat")  # + e2kd_pred, e2kd_gs_pred with --e2kd-labels predicted
POLICIES = ("model", "auto", "fuse")
#: the --cam-layers policies whose explanation losses train on the table's own maps when --loss-cam is not given
#: (under fuse the table shows maps of the students trained at auto:8, as the runs before --loss-cam did)
TABLE_TRAINS = ("auto", "model")


def variants(a: argparse.Namespace) -> list[str]:
    """The students trained: every variant, the e2KD ones once per ``--e2kd-labels`` choice (``_pred``: only the
    labels the teacher predicts present)."""
    labels = a.e2kd_labels.split(",")
    out = [v for v in VARIANTS if not v.startswith("e2kd") or "all" in labels]
    out += [f"{v}_pred" for v in VARIANTS if v.startswith("e2kd")] if "predicted" in labels else []
    chosen = [v for v in a.variants.split(",") if v]
    if unknown := [v for v in chosen if v not in out]:
        raise SystemExit(f"--variants: {', '.join(unknown)} not among this run's students {', '.join(out)}")
    return [v for v in out if v in chosen] if chosen else out


def cam_choice(text: str, flag: str) -> tuple[str, int]:
    """``POLICY:MIN_SIZE`` (e.g. ``fuse:32``) -> ("fuse", 32); SystemExit naming ``flag`` otherwise."""
    policy, _, size = text.partition(":")
    if policy not in CAM_LAYER_POLICIES or not size.isdigit() or int(size) < 1:
        raise SystemExit(f"{flag}: got {text!r}, expected POLICY:MIN_SIZE with POLICY one of "
                         f"{', '.join(CAM_LAYER_POLICIES)} (e.g. fuse:32)")
    return policy, int(size)


def loss_cam(a: argparse.Namespace) -> tuple[str, int]:
    """(policy, min size) of the maps the explanation losses train on: ``--loss-cam``; without it the main table's
    ``--cam-layers`` / ``--cam-min-size`` under auto / model, and auto at the default size under fuse."""
    if a.loss_cam:
        return cam_choice(a.loss_cam, "--loss-cam")
    return (a.cam_layers, a.cam_min_size) if a.cam_layers in TABLE_TRAINS else ("auto", DEFAULT_CAM_MIN_SIZE)


def select_choices(a: argparse.Namespace) -> list[tuple[str, int]]:
    """The ``--select-cam`` choices, parsed."""
    return [cam_choice(c, "--select-cam") for c in a.select_cam.split(",") if c]


def loss_tag(a: argparse.Namespace) -> str:
    """The loss's CAM choice in e2KD / CAT-KD run names: '' for auto at the default size, ``_m16`` for auto:16,
    ``_fuse32`` for fuse:32, ``_model`` for the declared layer."""
    policy, size = loss_cam(a)
    if policy == "model":
        return "_model"
    return f"_fuse{size}" if policy == "fuse" else "" if size == DEFAULT_CAM_MIN_SIZE else f"_m{size}"


def cam_tag(a: argparse.Namespace) -> str:
    """The CAM choice in explanation folder names: ``auto``, or ``auto_m16`` with ``--cam-min-size 16``."""
    return a.cam_layers + ("" if a.cam_min_size == DEFAULT_CAM_MIN_SIZE else f"_m{a.cam_min_size}")


def names(a: argparse.Namespace) -> list[str]:
    return ["teacher", *variants(a)]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="all", choices=("all", "train", "report"),
                   help="report: only rewrite the Markdown from the results JSON")
    p.add_argument("--image-size", type=int, default=128, help="phantom side and every model's input size")
    p.add_argument("--images", type=int, default=1200, help="phantom images (70 / 10 / 20 %% train / val / test)")
    p.add_argument("--teacher", default="efficientnet_lite0")
    p.add_argument("--teacher-pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="start the teacher from its offline ImageNet weights (a teacher from scratch on a few "
                        "thousand phantom images is weaker than its students and its maps miss)")
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student", default="kdfmv")
    p.add_argument("--student-epochs", type=int, default=4)
    p.add_argument("--explain-weight", type=float, default=1.0, help="weight of the e2KD / CAT-KD term")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="KD temperature of the kd / e2kd / cat students (multi-label KD matches one sigmoid per "
                        "label; T = 1 was best on the phantom's validation split: quickstart_kd_grid.md)")
    p.add_argument("--e2kd-labels", default="all,predicted",
                   help="comma-separated: the e2kd / e2kd_gs students' explained labels (distill.explain_labels): "
                        "all, and / or predicted (students e2kd_pred, e2kd_gs_pred)")
    p.add_argument("--e2kd-gs-weight", type=float, default=0.15,
                   help="explanation weight of the e2kd_gs_pred students: the largest --weight-sweep weight whose "
                        "seed-0 validation macro AUC is within 0.01 of the plain KD student's (0.934: 0.1 gave 0.936, "
                        "0.15 0.925, 0.2 0.920, 0.3 0.890, 1 0.822)")
    p.add_argument("--weight-sweep", default="0.1,0.15,0.2,0.3,1",
                   help="explanation weights tried for e2kd_gs_pred on seed 0 (the trade-off of localisation "
                        "against macro AUC; the validation AUC beside each)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--explain-images", type=int, default=40,
                   help="test images explained per model (a count other than 40 writes to its own explain_n{N} "
                        "folder, since a folder's explanations are reused)")
    p.add_argument("--cam-layers", default="auto", help="the CAM-layer policy of the main table")
    p.add_argument("--cam-min-size", type=int, default=DEFAULT_CAM_MIN_SIZE,
                   help="cam_layers auto: the smallest map side, for the main table's maps and the explanation "
                        "losses' (distill.cam_min_size; a value other than the default names the e2KD / CAT-KD "
                        "runs '..._m{N}' and the explanation folders '{run}_auto_m{N}')")
    p.add_argument("--loss-cam", default="",
                   help="POLICY:MIN_SIZE of the maps the e2KD / CAT-KD losses train on (distill.cam_layers / "
                        "cam_min_size, e.g. fuse:32; names their runs '..._fuse32'); '' = the main table's choice "
                        "under auto / model, auto:8 under fuse")
    p.add_argument("--select-cam", default="",
                   help="CAM choices POLICY:MIN_SIZE (comma-separated, e.g. auto:8,auto:16,fuse:16,fuse:32) scored on "
                        "the validation split for seed 0 of the kd student and each e2KD one (Grad-CAM pointing "
                        "game on the true labels), so that --cam-layers / --cam-min-size are chosen without the "
                        "test images; '' = skip")
    p.add_argument("--variants", default="",
                   help="comma-separated subset of the students to train and explain (e.g. nokd,kd,e2kd_gs_pred); "
                        "'' = all")
    p.add_argument("--methods", default="gradientshap",
                   help="attribution methods scored for every model beside Grad-CAM (comma-separated; '' = none)")
    p.add_argument("--gradientshap-samples", type=int, default=64, help="GradientShap's random points per image")
    p.add_argument("--samples-sweep", default="16,32,64,128",
                   help="the teacher's GradientShap pointing game at each of these sample counts (convergence of "
                        "the estimator; '' = skip)")
    p.add_argument("--teacher-gs-agreement", action=argparse.BooleanOptionalAction, default=True,
                   help="also each student's Grad-CAM Spearman to the teacher's GradientShap maps (explain "
                        "--teacher-method gradientshap)")
    p.add_argument("--phantom", action=argparse.BooleanOptionalAction, default=True,
                   help="the phantom part (--no-phantom: the NIH boxes part alone)")
    p.add_argument("--nih", action=argparse.BooleanOptionalAction, default=True, help="also the NIH boxes part")
    p.add_argument("--nih-epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/bench/explain_fidelity", help="parent of the run directories (ignored)")
    p.add_argument("--results", default=str(B.RESULTS / "explain_fidelity.json"))
    a = p.parse_args(argv)
    loss_cam(a), select_choices(a)  # refuse a malformed --loss-cam / --select-cam before anything runs
    if not (a.phantom or a.nih):
        p.error("--no-phantom --no-nih: nothing to run (keep one part)")
    return a


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------

def generator_fingerprint() -> str:
    """8 hex digits of what the phantom generator draws (4 images and masks at 32 px, seed 0, hashed): a generator
    changed within one VERSION (as v2 was while this benchmark ran) gets a new folder instead of mixing images."""
    import hashlib
    import tempfile

    import numpy as np
    from PIL import Image

    from medistill.data import phantom

    digest = hashlib.sha1()
    with tempfile.TemporaryDirectory() as tmp:
        root = phantom.generate(Path(tmp) / "p", num_images=4, size=32, seed=0)
        for f in sorted((root / "images").glob("*.png")) + sorted((root / "masks").glob("*.png")):
            digest.update(f.name.encode() + np.asarray(Image.open(f)).tobytes())
    return digest.hexdigest()[:8]


def phantom_root(a: argparse.Namespace) -> Path:
    from medistill.data import phantom

    root = Path(a.runs) / f"phantom_v{phantom.VERSION}_{generator_fingerprint()}_{a.image_size}px_{a.images}"
    return phantom.ensure(root, num_images=a.images, size=a.image_size, seed=0)


def weight_of(a: argparse.Namespace, variant: str, weight: float | None = None) -> float:
    """The explanation term's weight of a student variant: ``weight`` when given (the sweep), else
    ``--e2kd-gs-weight`` for e2kd_gs_pred and ``--explain-weight`` for the others."""
    if weight is not None:
        return weight
    return a.e2kd_gs_weight if variant == "e2kd_gs_pred" else a.explain_weight


def run_cfg(a: argparse.Namespace, out: Path, *, data: dict[str, str], model: str, epochs: int, seed: int,
            variant: str | None, teacher: Path | None, weight: float | None = None):
    from medistill.config import RunConfig, build

    over = {"out": str(out), **data, "data.image_size": str(a.image_size), "model.name": model,
            "model.in_chans": "1", "train.epochs": str(epochs), "train.batch_size": "32", "train.lr": "0.002",
            "train.warmup_epochs": "1", "train.seed": str(seed), "train.threads": str(a.threads)}
    if variant is None:  # the teacher
        over.update({"data.augment": "light", "model.pretrained": str(a.teacher_pretrained).lower(),
                     "train.lr": "0.001"})
    else:  # students: one fixed view per image, so the teacher's logits and maps are cached once
        over["data.augment"] = "none"
        if variant != "nokd":
            over.update({"distill.teacher": str(teacher), "distill.temperature": str(a.temperature)})
        kind = variant.removesuffix("_pred")
        if kind in ("e2kd", "e2kd_gs", "cat"):
            over.update({"distill.explain_loss": kind.removesuffix("_gs"),
                         "distill.explain_weight": str(weight_of(a, variant, weight))})
            if variant.endswith("_pred"):
                over["distill.explain_labels"] = "predicted"
            if kind == "e2kd_gs":
                over.update({"distill.explain_teacher_maps": "gradientshap",
                             "distill.teacher_views_dir": str(out.parent / "teacher_maps")})
            policy, size = loss_cam(a)
            over.update({"distill.cam_layers": policy, "distill.cam_min_size": str(size)})
    return build(RunConfig, overrides=over)


def run_name(a: argparse.Namespace, variant: str, seed: int, weight: float | None = None) -> str:
    """``nokd_s0``; a KD variant carries its temperature unless it is 4 (the first runs' T): ``kd_T1_s0``,
    ``e2kd_gs_pred_T1_s0``; a schedule other than the first runs' 4 epochs: ``kd_T1_e12_s0``; an explanation
    weight other than 1 is appended: ``e2kd_gs_pred_T1_s0_w0.1``."""
    t = "" if variant == "nokd" or a.temperature == 4 else f"_T{a.temperature:g}"
    e = "" if a.student_epochs == 4 else f"_e{a.student_epochs}"
    w = weight_of(a, variant, weight) if variant not in ("nokd", "kd") else 1.0
    m = "" if variant in ("nokd", "kd") else loss_tag(a)
    return f"{variant}{t}{e}_s{seed}" + (f"_w{w:g}" if w != 1 else "") + m


def train_all(a: argparse.Namespace, part: str, data: dict[str, str], seeds: range, epochs: tuple[int, int],
              res: dict[str, Any], save) -> dict[str, list[Path]]:
    """Teacher and the students of ``seeds`` of one part (``part``: a folder under ``--runs``, e.g.
    ``phantom_v2_128px_1200``); returns NAME -> run dirs of seeds 0 .. max(seeds) (finished or not)."""
    base = Path(a.runs) / part
    teacher = base / "teacher"
    dirs: dict[str, list[Path]] = {"teacher": [teacher]}
    for v in variants(a):
        dirs[v] = [base / run_name(a, v, s) for s in range(max(seeds) + 1)]
    jobs = [("teacher", 0, teacher)] + [(v, s, base / run_name(a, v, s)) for s in seeds for v in variants(a)]
    for name, seed, out in jobs:
        print(f"[{time.strftime('%H:%M:%S')}] {part}: train {out.name}", flush=True)
        r = B.train_and_evaluate(run_cfg(a, out, data=data, model=a.teacher if name == "teacher" else a.student,
                                         epochs=epochs[name != "teacher"], seed=seed,
                                         variant=None if name == "teacher" else name, teacher=teacher),
                                 n_bootstrap=50)
        res.setdefault("runs", {})[out.name] = {k: r.get(k) for k in ("command", "macro_auc", "train_wall_s",
                                                                       "epoch_seconds")}
        save()
    return dirs


def weight_sweep(a: argparse.Namespace, part: str, data: dict[str, str], res: dict[str, Any], save) -> None:
    """e2kd_gs_pred on seed 0 at each ``--weight-sweep`` weight (the main table's is ``--e2kd-gs-weight``, chosen
    from this sweep): validation and test macro AUC, Grad-CAM pointing game per label, strict and tolerant."""
    base = Path(a.runs) / part
    for w in [float(v) for v in a.weight_sweep.split(",") if v]:
        out = base / run_name(a, "e2kd_gs_pred", 0, weight=w)
        r = B.train_and_evaluate(run_cfg(a, out, data=data, model=a.student, epochs=a.student_epochs, seed=0,
                                         variant="e2kd_gs_pred", teacher=base / "teacher", weight=w), n_bootstrap=50)
        s = explain(out, explain_root(base, a.explain_images) / f"{out.name}_{cam_tag(a)}", teacher=None,
                    limit=a.explain_images, cam_layers=a.cam_layers, cam_min_size=a.cam_min_size, sanity=False,
                    faithfulness=False)
        row = with_label_means(scores_of(s, r.get("macro_auc")))
        res.setdefault("e2kd_weight_sweep", {})[f"{w:g}"] = {
            "val_macro_auc": B.runs.RunDir(out).info().get("best_val_macro_auc"), "macro_auc": row["macro_auc"],
            "pointing_game_label_mean": row["pointing_game_label_mean"],
            "pointing_game_tolerant_label_mean": row["pointing_game_tolerant_label_mean"], "command": r.get("command")}
        save()


# ---------------------------------------------------------------------------------------------------------
# explaining
# ---------------------------------------------------------------------------------------------------------

def explain_root(part: Path, limit: int) -> Path:
    """The folder of one part's explanations of ``limit`` images: ``explain`` for the first runs' 40, else
    ``explain_n{limit}`` (an explanation is reused when its folder holds one, so each count needs its own)."""
    return part / ("explain" if limit == 40 else f"explain_n{limit}")


def explain(run: Path, out: Path, *, teacher: Path | None, limit: int, cam_layers: str, sanity: bool,
            cam_min_size: int = DEFAULT_CAM_MIN_SIZE, data=None, split: str = "test", faithfulness: bool = True,
            method: str = "gradcam", n_samples: int = 16, teacher_method: str | None = None) -> dict[str, Any]:
    from medistill.explain.options import ExplainOptions
    from medistill.explain.runner import explain_run
    from medistill.utils.io import read_json

    if (out / "explain.json").is_file():
        return read_json(out / "explain.json")
    print(f"[{time.strftime('%H:%M:%S')}] explain {run} -> {out}", flush=True)
    options = ExplainOptions(method=method, labels=["truth"], with_truth=True, cam_layers=cam_layers,
                             cam_min_size=cam_min_size, steps=8, sanity=sanity, faithfulness=faithfulness,
                             overlays=12, feature_grid=0, batch_size=32, n_samples=n_samples,
                             teacher_method=teacher_method)
    # teacher None: the student alone (not beside the teacher its run records, whose maps would cost as much again)
    return explain_run(run, out, data=data, split=split, limit=limit, teacher=teacher, options=options,
                       student_only=teacher is None)


#: explain.json keys -> the benchmark's names
SCORES = {"pointing_game": "pointing_game", "pointing_game_tolerant": "pointing_game_tolerant",
          "energy_inside": "energy_inside", "iou": "iou", "deletion_auc": "deletion_auc",
          "insertion_auc": "insertion_auc", "agreement_spearman": "spearman_to_teacher",
          "agreement_spearman_grid": "spearman_to_teacher_grid",
          "blank": "blank_maps"}


def scores_of(summary: dict[str, Any], macro_auc: float | None) -> dict[str, Any]:
    """One model's figures from its explain.json (``teacher`` side excluded: the student's own)."""
    row = {new: summary.get(old) for old, new in SCORES.items()}
    row["macro_auc"] = macro_auc
    row["randomised_pointing_game"] = (summary.get("sanity") or {}).get("pointing_game")
    row["randomised_pointing_game_tolerant"] = (summary.get("sanity") or {}).get("pointing_game_tolerant")
    row["randomised_blank_maps"] = (summary.get("sanity") or {}).get("blank")
    row["per_label"] = {lab: {k: v.get(k) for k in ("maps", "pointing_game", "pointing_game_tolerant",
                                                    "pointing_chance", "pointing_chance_tolerant",
                                                    "energy_inside", "agreement_spearman")}
                        for lab, v in (summary.get("per_label") or {}).items()}
    return row


def mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every number (per label too); the seeds' own rows kept under ``seeds``."""
    def mean(vals: list[Any]) -> float | None:
        v = [float(x) for x in vals if isinstance(x, (int, float)) and not math.isnan(float(x))]
        return sum(v) / len(v) if v else None

    out: dict[str, Any] = {k: mean([r.get(k) for r in rows]) for k in rows[0] if k != "per_label"}
    labels = sorted({lab for r in rows for lab in r["per_label"]})
    out["per_label"] = {lab: {k: mean([r["per_label"].get(lab, {}).get(k) for r in rows])
                              for k in ("maps", "pointing_game", "pointing_game_tolerant", "pointing_chance",
                                        "pointing_chance_tolerant", "energy_inside", "agreement_spearman")}
                        for lab in labels}
    out["seeds"] = len(rows)
    return out


def label_means(row: dict[str, Any], key: str) -> float | None:
    """Mean over labels of a per-label figure (the issue's 'averaged over labels')."""
    v = [d[key] for d in row["per_label"].values() if d.get(key) is not None]
    return sum(v) / len(v) if v else None


def with_label_means(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its strict and tolerant pointing game averaged over labels (``*_label_mean``)."""
    for key in ("pointing_game", "pointing_game_tolerant"):
        row[f"{key}_label_mean"] = label_means(row, key)
    return row


def explain_part(a: argparse.Namespace, part: str, dirs: dict[str, list[Path]], res: dict[str, Any], save, *,
                 limit: int, data=None, split: str = "test", policies: tuple[str, ...] = ()) -> None:
    base = explain_root(Path(a.runs) / part, limit)
    teacher = dirs["teacher"][0]
    models: dict[str, Any] = {}
    for name in names(a):
        rows = []
        for run in dirs.get(name, []):
            if not B.is_done(run):
                continue
            s = explain(run, base / f"{run.name}_{cam_tag(a)}", teacher=None if name == "teacher" else teacher,
                        limit=limit, cam_layers=a.cam_layers, cam_min_size=a.cam_min_size, sanity=True, data=data,
                        split=split)
            rows.append(scores_of(s, B.runs.RunDir(run).metrics().get("macro_auc")))
            if name == "teacher":
                res["chance"] = s.get("pointing_chance")
                res["chance_tolerant"] = s.get("pointing_chance_tolerant")
                res["maps_with_truth"] = s.get("maps_with_truth")
                res["explained_images"] = s.get("num_images")
        if rows:
            models[name] = with_label_means(mean_rows(rows))
            res["models"] = models
            save()
    if a.teacher_gs_agreement and B.is_done(teacher):
        # each student's Grad-CAM beside the teacher's GradientShap maps (the maps the e2kd_gs students were taught
        # to match, with as many random points), the Spearman column for them
        # over pixels, and at the student's CAM grid (the coarser map's, where the loss matches them)
        samples = DistillConfig().explain_teacher_samples
        for name in [n for n in variants(a) if n in models]:
            got = [explain(run, base / f"{run.name}_{cam_tag(a)}_vs_teacher_gradientshap", teacher=teacher,
                           limit=limit, cam_layers=a.cam_layers, cam_min_size=a.cam_min_size, sanity=False,
                           data=data, split=split, faithfulness=False, n_samples=samples, teacher_method="gradientshap")
                   for run in dirs[name] if B.is_done(run)]
            for key, col in (("agreement_spearman", "spearman_to_teacher_gradientshap"),
                             ("agreement_spearman_grid", "spearman_to_teacher_gradientshap_grid")):
                rho = [float(s[key]) for s in got if s.get(key) is not None]
                models[name][col] = sum(rho) / len(rho) if rho else None
            save()
    for policy in policies:
        if B.is_done(teacher):
            s = explain(teacher, base / f"teacher_{policy}", teacher=None, limit=limit, cam_layers=policy,
                        sanity=False, data=data, split=split, faithfulness=False)
            row = scores_of(s, None)
            row["pointing_game_label_mean"] = label_means(row, "pointing_game")
            row["cam_layers"] = (s.get("cam_layers") or {}).get("student")  # the explained model's side
            res.setdefault("cam_layers", {})[policy] = row
            save()
    for method in [m for m in a.methods.split(",") if m]:
        # every model again with another method: its own maps, no teacher beside it (the Spearman column is
        # Grad-CAM's), with the randomisation check
        rows_by: dict[str, Any] = {}
        for name in names(a):
            rows = []
            for run in dirs.get(name, []):
                if B.is_done(run):
                    s = explain(run, base / f"{run.name}_{method}", teacher=None, limit=limit, cam_layers=a.cam_layers,
                                sanity=True, data=data, split=split, faithfulness=False, method=method,
                                n_samples=a.gradientshap_samples)
                    rows.append(scores_of(s, B.runs.RunDir(run).metrics().get("macro_auc")))
            if rows:
                rows_by[name] = with_label_means(mean_rows(rows))
                res.setdefault("by_method", {})[method] = {
                    "models": rows_by, "n_samples": a.gradientshap_samples if method == "gradientshap" else None}
                save()
    for n in [int(v) for v in a.samples_sweep.split(",") if v] if policies and B.is_done(teacher) else []:
        # the main table's count was computed above, with the sanity check: the same maps
        own = n == a.gradientshap_samples and "gradientshap" in a.methods.split(",")
        s = explain(teacher, base / ("teacher_gradientshap" if own else f"teacher_gradientshap_n{n}"), teacher=None,
                    limit=limit, cam_layers=a.cam_layers, sanity=own, data=data, split=split, faithfulness=False,
                    method="gradientshap", n_samples=n)
        row = with_label_means(scores_of(s, None))
        row["seconds_per_image"] = s.get("seconds_per_image")
        res.setdefault("gradientshap_samples", {})[str(n)] = row
        save()
    if policies and B.is_done(teacher):
        # the reference: where the teacher's evidence is, by hiding each region (no gradients, no layer)
        s = explain(teacher, base / "teacher_occlusion", teacher=None, limit=limit, cam_layers=a.cam_layers,
                    sanity=False, data=data, split=split, faithfulness=False, method="occlusion")
        row = with_label_means(scores_of(s, B.runs.RunDir(teacher).metrics().get("macro_auc")))
        res["teacher_occlusion"] = row
        save()


def select_cam(a: argparse.Namespace, part: str, dirs: dict[str, list[Path]], res: dict[str, Any], save) -> None:
    """``--select-cam``: each POLICY:MIN_SIZE choice's Grad-CAM pointing game (strict and tolerant, mean over
    labels) on the validation images with truth, for seed 0 of the kd student and each e2KD one, under
    ``cam_selection`` (explanations in ``explain_val/``)."""
    choices = select_choices(a)
    rows: dict[str, Any] = {}
    for name in [n for n in variants(a) if n == "kd" or n.startswith("e2kd")]:
        run = dirs[name][0]
        if not B.is_done(run):
            continue
        for policy, size in choices:
            s = explain(run, Path(a.runs) / part / "explain_val" / f"{run.name}_{policy}_m{size}", teacher=None,
                        limit=10_000, cam_layers=policy, cam_min_size=size, sanity=False, faithfulness=False,
                        split="val")
            row = with_label_means(scores_of(s, None))
            rows.setdefault(f"{policy}:{size}", {})[name] = {
                "pointing_game_label_mean": row["pointing_game_label_mean"],
                "pointing_game_tolerant_label_mean": row["pointing_game_tolerant_label_mean"],
                "per_label": {lab: d["pointing_game"] for lab, d in row["per_label"].items()}}
    res["cam_selection"] = {"split": "val", "seed": 0, "choices": rows}
    save()


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on the Grad-CAM maps, then the same on each other method's (keys suffixed with it).

    The pointing-game targets are judged twice: strictly (the map's peak inside the truth) and with the standard
    tolerance of Zhang et al. (a hit within 15 px of the truth at 224 px, scaled to the image size; the
    definition the issue cites), under keys marked ``tolerant``."""
    chance = {"": res.get("chance") or 0, "_tolerant": res.get("chance_tolerant") or 0}
    out = targets_of(res.get("models", {}), chance)
    teacher_gs = (((res.get("by_method") or {}).get("gradientshap") or {}).get("models") or {}).get("teacher")
    for name, e2 in res.get("models", {}).items():
        # the e2KD students taught the teacher's GradientShap maps, against those maps: the teacher's pointing game
        # with them, and the Spearman of the student's Grad-CAM to them
        if not name.startswith("e2kd_gs"):
            continue
        for tol in ("", "_tolerant"):
            pg = f"pointing_game{tol}_label_mean"
            if teacher_gs and e2.get(pg) is not None and teacher_gs.get(pg) is not None:
                out[f"e2kd_pg{tol}_ge_teacher_gradientshap_minus_0.05 [{name}]"] = {
                    "e2kd": e2[pg], "teacher_gradientshap": teacher_gs[pg], "met": e2[pg] >= teacher_gs[pg] - 0.05}
        for col, what in (("spearman_to_teacher_gradientshap", ""), ("spearman_to_teacher_gradientshap_grid",
                                                                       "_at_the_students_grid")):
            if e2.get(col) is not None:
                out[f"e2kd_spearman_to_teacher_gradientshap{what}_ge_0.6 [{name}]"] = {
                    "value": e2[col], "met": e2[col] >= 0.6}
    for method, r in (res.get("by_method") or {}).items():
        out.update({f"{k} ({method})": v for k, v in targets_of(r["models"], chance).items()
                    if "spearman" not in k})
    return out


def targets_of(m: dict[str, Any], chance: dict[str, float]) -> dict[str, Any]:
    """The issue's targets on one method's model rows, each with its figures and whether it was met; ``chance``:
    the strict (``""``) and tolerant (``"_tolerant"``) pointing-game chance."""
    t, kd = m.get("teacher"), m.get("kd")
    out: dict[str, Any] = {}
    for tol in ("", "_tolerant"):
        pg = f"pointing_game{tol}_label_mean"
        if t and t.get(pg) is not None:
            worst = min(((d[f"pointing_game{tol}"] or 0) / d[f"pointing_chance{tol}"], lab)
                        for lab, d in t["per_label"].items() if d.get(f"pointing_chance{tol}"))
            rnd = t.get(f"randomised_pointing_game{tol}")
            out[f"teacher_pointing_game{tol}_ge_0.7"] = {"value": t[pg], "met": t[pg] >= 0.7}
            out[f"every_label_ge_3x_chance{tol}"] = {"worst_ratio": worst[0], "worst_label": worst[1],
                                                     "met": worst[0] >= 3}
            out[f"randomised_le_2x_chance{tol}"] = {"value": rnd, "chance": chance[tol],
                                                    "met": (1 if rnd is None else rnd) <= 2 * chance[tol]}
        for name in [n for n in m if n.startswith("e2kd")]:  # on the teacher's Grad-CAM or GradientShap maps
            e2, sfx = m.get(name), "" if name == "e2kd" else f" [{name}]"
            if not (t and kd and e2) or e2.get(pg) is None:
                continue
            out[f"e2kd_pg{tol}_ge_teacher_minus_0.05" + sfx] = {"e2kd": e2[pg], "teacher": t[pg],
                                                                "met": e2[pg] >= t[pg] - 0.05}
            out[f"e2kd_pg{tol}_ge_kd_plus_0.1" + sfx] = {"e2kd": e2[pg], "kd": kd[pg], "met": e2[pg] >= kd[pg] + 0.1}
            if tol:
                continue
            out["e2kd_spearman_ge_0.6" + sfx] = {"value": e2["spearman_to_teacher"],
                                                 "met": (e2["spearman_to_teacher"] or 0) >= 0.6}
            if e2.get("macro_auc") is not None and kd.get("macro_auc") is not None:
                out["e2kd_auc_within_0.01_of_kd" + sfx] = {"e2kd": e2["macro_auc"], "kd": kd["macro_auc"],
                                                           "met": abs(e2["macro_auc"] - kd["macro_auc"]) <= 0.01}
    return out


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def numbered_table(intro: str, header: str, rows: dict[str, Any], row) -> list[str]:
    """An intro line and a Markdown table of ``header``'s columns, one ``row(key, record)`` per item of ``rows``,
    in the numeric order of the keys (sample counts, weights)."""
    return (["", intro, "", header, "|" + "---|" * (header.count("|") - 1)]
            + [row(k, r) for k, r in sorted(rows.items(), key=lambda kv: float(kv[0]))])


def markdown(allres: dict[str, Any]) -> str:
    lines = ["# Explanation fidelity: do the maps find the lesion?", "",
             f"Reproduce: `{allres.get('command', '')}`", "",
             f"Machine: {allres.get('machine', {}).get('cpu', '')}, {allres.get('machine', {}).get('cores')} cores; "
             f"{allres.get('machine', {}).get('shared', '')}.", "",
             allres.get("scale_note", ""), ""]
    for part in ("phantom", "nih_boxes"):
        res = allres.get(part)
        if not res:
            continue
        lines += [f"## {part}", "", res.get("what", ""), "",
                  f"Image size {res.get('image_size')} px; {res.get('explained_images')} images, "
                  f"{res.get('maps_with_truth')} maps with truth; pointing-game chance (the truth's mean area share) "
                  f"{fmt(res.get('chance'))} strict, {fmt(res.get('chance_tolerant'))} tolerant.", "",
                  "Pointing game (PG; 'tol.': a hit within 15 px x size / 224 of the truth), mean over maps and "
                  "(PG / label) over labels; energy inside the truth; IoU of the half-max region; deletion (lower "
                  "better) and insertion (higher better) AUCs; Spearman of the student's map to the teacher's "
                  "Grad-CAM, and to its GradientShap maps (the e2kd_gs students' target) over pixels and with both "
                  "maps area-pooled to the student's CAM grid ('grid'); PG of the "
                  "weight-randomised model; macro AUC on the test split. Means over seeds.", "",
                  "| model | seeds | PG | PG tol. | PG / label | energy in | IoU | deletion | insertion | "
                  "Spearman to teacher | Spearman to teacher GS | the same, grid | randomised PG | blank maps | "
                  "macro AUC |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in res.get("models", {}).items():
            lines.append(f"| {name} | {r.get('seeds')} | {fmt(r['pointing_game'])} | "
                         f"{fmt(r['pointing_game_tolerant'])} | {fmt(r.get('pointing_game_label_mean'))} | "
                         f"{fmt(r['energy_inside'])} | {fmt(r['iou'])} | {fmt(r['deletion_auc'])} | "
                         f"{fmt(r['insertion_auc'])} | {fmt(r['spearman_to_teacher'])} | "
                         f"{fmt(r.get('spearman_to_teacher_gradientshap'))} | "
                         f"{fmt(r.get('spearman_to_teacher_gradientshap_grid'))} | "
                         f"{fmt(r['randomised_pointing_game'])} | {fmt(r.get('blank_maps'))} | "
                         f"{fmt(r['macro_auc'])} |")
        models = res.get("models", {})
        if models:
            labels = sorted({lab for r in models.values() for lab in r["per_label"]})
            lines += ["", "Per label, pointing game strict / tolerant (chance strict / tolerant):", "",
                      "| label | chance | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
            for lab in labels:
                ref = next(r["per_label"][lab] for r in models.values() if lab in r["per_label"])
                cells = [f"{fmt(r['per_label'].get(lab, {}).get('pointing_game'), 2)} / "
                         f"{fmt(r['per_label'].get(lab, {}).get('pointing_game_tolerant'), 2)}"
                         for r in models.values()]
                lines.append(f"| {lab} | {fmt(ref.get('pointing_chance'), 3)} / "
                             f"{fmt(ref.get('pointing_chance_tolerant'), 3)} | " + " | ".join(cells) + " |")
        if res.get("cam_layers"):
            lines += ["", "The teacher's maps under each CAM-layer policy (`--cam-layers`):", "",
                      "| policy | layers | PG | PG tol. | PG / label | energy in | IoU | blank maps |",
                      "|---|---|---|---|---|---|---|---|"]
            for policy, r in res["cam_layers"].items():
                hooked = r.get("cam_layers") or []
                hooked = hooked.get("student", []) if isinstance(hooked, dict) else hooked  # older files: per side
                lines.append(f"| {policy} | {', '.join(hooked)} | {fmt(r['pointing_game'])} | "
                             f"{fmt(r['pointing_game_tolerant'])} | {fmt(r.get('pointing_game_label_mean'))} | "
                             f"{fmt(r['energy_inside'])} | {fmt(r['iou'])} | {fmt(r.get('blank_maps'))} |")
        for method, br in (res.get("by_method") or {}).items():
            ms = br["models"]
            extra = f", {br['n_samples']} random points per image" if br.get("n_samples") else ""
            lines += ["", f"Every model explained by {method} (captum{extra}; the map is the absolute attribution "
                          f"summed over channels), the same images and labels:", "",
                      "| model | seeds | PG | PG tol. | PG / label | PG tol. / label | energy in | IoU | randomised PG | "
                      "macro AUC |", "|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in ms.items():
                lines.append(f"| {name} | {r.get('seeds')} | {fmt(r['pointing_game'])} | "
                             f"{fmt(r['pointing_game_tolerant'])} | {fmt(r.get('pointing_game_label_mean'))} | "
                             f"{fmt(r.get('pointing_game_tolerant_label_mean'))} | {fmt(r['energy_inside'])} | "
                             f"{fmt(r['iou'])} | {fmt(r['randomised_pointing_game'])} | {fmt(r['macro_auc'])} |")
            labels = sorted({lab for r in ms.values() for lab in r["per_label"]})
            lines += ["", f"Per label, {method} pointing game strict / tolerant:", "",
                      "| label | " + " | ".join(ms) + " |", "|---|" + "---|" * len(ms)]
            for lab in labels:
                lines.append(f"| {lab} | " + " | ".join(
                    f"{fmt(r['per_label'].get(lab, {}).get('pointing_game'), 2)} / "
                    f"{fmt(r['per_label'].get(lab, {}).get('pointing_game_tolerant'), 2)}" for r in ms.values()) + " |")
        if res.get("gradientshap_samples"):
            lines += numbered_table(
                "The teacher's GradientShap maps against the number of random points per image (the estimator's "
                "convergence; same images and labels):",
                "| points | PG | PG / label | PG tol. / label | energy in | seconds / image |",
                res["gradientshap_samples"],
                lambda n, r: f"| {n} | {fmt(r['pointing_game'])} | {fmt(r.get('pointing_game_label_mean'))} | "
                             f"{fmt(r.get('pointing_game_tolerant_label_mean'))} | {fmt(r['energy_inside'])} | "
                             f"{fmt(r.get('seconds_per_image'), 2)} |")
        if res.get("teacher_occlusion"):
            r = res["teacher_occlusion"]
            lines += ["", "The teacher explained by occlusion (Zeiler & Fergus 2014; captum `Occlusion`, a square "
                          "of a tenth of the image side slid at a third of that, filled with the dataset mean): "
                          "where hiding the image removes the finding, with no gradients and no layer to choose.",
                      "", "| method | PG | PG tol. | PG / label | PG tol. / label | energy in | IoU |",
                      "|---|---|---|---|---|---|---|",
                      f"| occlusion | {fmt(r['pointing_game'])} | {fmt(r['pointing_game_tolerant'])} | "
                      f"{fmt(r.get('pointing_game_label_mean'))} | {fmt(r.get('pointing_game_tolerant_label_mean'))} | "
                      f"{fmt(r['energy_inside'])} | {fmt(r['iou'])} |", "",
                      "Per label, strict / tolerant: " + ", ".join(
                          f"{lab} {fmt(d.get('pointing_game'), 2)} / {fmt(d.get('pointing_game_tolerant'), 2)}"
                          for lab, d in sorted(r["per_label"].items())) + "."]
        if res.get("e2kd_weight_sweep"):
            lines += numbered_table(
                "e2KD on the teacher's GradientShap maps and predicted labels (`e2kd_gs_pred`), seed 0, by the "
                "explanation term's weight (Grad-CAM pointing game on the test maps):",
                "| weight | validation macro AUC | test macro AUC | PG / label | PG tol. / label |",
                res["e2kd_weight_sweep"],
                lambda w, r: f"| {w} | {fmt(r['val_macro_auc'])} | {fmt(r['macro_auc'])} | "
                             f"{fmt(r['pointing_game_label_mean'])} | {fmt(r['pointing_game_tolerant_label_mean'])} |")
        if res.get("cam_selection", {}).get("choices"):
            sel = res["cam_selection"]["choices"]
            names_ = list(next(iter(sel.values())))
            lines += ["", "The CAM layer chosen on the validation split (seed 0; Grad-CAM pointing game on the true "
                          "labels, strict / tolerant, mean over labels; `fuse` averages the min-max scaled maps of "
                          "the stage at least MIN px a side and every deeper one):", "",
                      "| policy:min px | " + " | ".join(names_) + " |", "|---|" + "---|" * len(names_)]
            for choice, r in sel.items():
                lines.append(f"| {choice} | " + " | ".join(
                    f"{fmt(r.get(n, {}).get('pointing_game_label_mean'))} / "
                    f"{fmt(r.get(n, {}).get('pointing_game_tolerant_label_mean'))}" for n in names_) + " |")
        if res.get("targets"):
            lines += ["", "Targets (issue 13):", ""]
            for name, t in res["targets"].items():
                figures = ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}" for k, v in t.items() if k != "met")
                lines.append(f"- {name}: **{'met' if t['met'] else 'missed'}** ({figures})")
        lines.append("")
    lines += ["## Runs", "", "| run | macro AUC | train s | command |", "|---|---|---|---|"]
    for part in ("phantom", "nih_boxes"):
        for name, r in (allres.get(part) or {}).get("runs", {}).items():
            lines.append(f"| {part}/{name} | {fmt(r.get('macro_auc'))} | {fmt(r.get('train_wall_s'), 0)} | "
                         f"`{r.get('command')}` |")
    return "\n".join(lines) + "\n"


def command_of(a: argparse.Namespace) -> str:
    """The command line that reproduces ``a`` (every option spelled out; on/off flags as ``--x`` / ``--no-x``)."""
    words = []
    for k, v in vars(a).items():
        if k in ("runs", "stage"):
            continue
        flag = k.replace("_", "-")
        words.append((f"--{flag}" if v else f"--no-{flag}") if isinstance(v, bool)
                     else f"--{flag} {shlex.quote(str(v))}")
    return "nice -n 10 .venv/bin/python benchmarks/explain_fidelity.py " + " ".join(words)


def phantom_part(a: argparse.Namespace, phantom: dict[str, Any], save) -> None:
    """The phantom part: its teacher and students trained and explained seed by seed, then the e2KD weight sweep."""
    root = phantom_root(a)
    from medistill.data import phantom as ph

    phantom.update(image_size=a.image_size, phantom_version=ph.VERSION,
                   what=f"Phantom v{ph.VERSION} (`medistill.data.phantom`), truth = each finding's mask.")
    pdata = {"data.dataset": "phantom", "data.root": str(root)}
    part = root.name  # runs keyed by the phantom's version, size and image count
    for seed in range(a.seeds):  # seed by seed, each explained when trained: a partial benchmark has whole seeds
        dirs = train_all(a, part, pdata, range(seed, seed + 1), (a.teacher_epochs, a.student_epochs), phantom,
                         save)
        if a.stage != "train":
            if seed == 0 and a.select_cam:
                select_cam(a, part, dirs, phantom, save)
            explain_part(a, part, dirs, phantom, save, limit=a.explain_images, policies=POLICIES if seed == 0 else ())
    if a.stage != "train":
        weight_sweep(a, part, pdata, phantom, save)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    import torch

    torch.set_num_threads(a.threads)
    res_json = Path(a.results)
    allres: dict[str, Any] = B.read_json(res_json) if res_json.is_file() else {}
    allres["command"] = command_of(a)
    allres["scale_note"] = (
        f"Scale: phantom {a.images} images at {a.image_size} px; teacher {a.teacher} "
        f"({'ImageNet-initialised, ' if a.teacher_pretrained else 'from scratch, '}{a.teacher_epochs} epochs, "
        f"light augmentation), students {a.student} ({a.student_epochs} epochs, no augmentation, KD at T = "
        f"{a.temperature:g}), {a.seeds} student "
        f"seeds and one teacher; {a.explain_images} test images explained per model with Grad-CAM on the true "
        f"labels. Chosen to finish in under an hour on 2 shared CPU cores; more images, epochs and seeds would be "
        f"better (the figures below carry that noise).") if a.phantom else (
        f"Scale: the NIH boxes part alone, at {a.image_size} px; teacher {a.teacher} "
        f"({'ImageNet-initialised, ' if a.teacher_pretrained else 'from scratch, '}{a.nih_epochs} epochs), students "
        f"{a.student} ({a.nih_epochs} epochs, KD at T = {a.temperature:g}), one seed.")
    if a.stage == "report":
        res_json.with_suffix(".md").write_text(markdown(B.read_json(res_json)))
        return
    phantom = allres.setdefault("phantom", {})
    nih = allres.setdefault("nih_boxes", {}) if a.nih else {}

    def save() -> None:
        allres["machine"] = B.machine()
        for part in (phantom, nih):
            if part.get("models"):
                part["targets"] = targets(part)
        B.write_json(res_json, allres)
        res_json.with_suffix(".md").write_text(markdown(allres))

    if a.phantom:
        phantom_part(a, phantom, save)
    else:
        allres.pop("phantom", None)
    if not a.nih or not NIH.is_dir():
        return
    nih.update(image_size=a.image_size, what="NIH ChestX-ray14 sample (621 images, 14 findings), truth = the "
                                             "official boxes (12 images have them); one seed. 11 of the 12 boxed "
                                             "images fall in the train split (patient-wise split of the sample), 1 "
                                             "in test: the models are explained on the 11 boxed training images, "
                                             "so this part shows where the models look on images they were fitted "
                                             "to, with 11 images and one seed: indicative only.")
    ndata = {"data.dataset": "nih", "data.root": str(NIH)}
    ndirs = train_all(a, "nih_boxes", ndata, range(1), (a.nih_epochs, a.nih_epochs), nih, save)
    if a.stage != "train":
        explain_part(a, "nih_boxes", ndirs, nih, save, limit=12, split="train")


if __name__ == "__main__":
    main()
