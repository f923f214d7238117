"""Explain a run: maps for images or a dataset split, teacher beside student, scored, drawn and written.

``explain_run(run_dir, out, images=... | data=..., options=...)`` writes into ``out``::

    explain.json                  every figure (see below) and, per image, the labels explained and their scores
    overlays/NNNN_<image>.png     the image, then one heatmap per label (label and probability in the title);
                                  a second row for the teacher when one is known; truth outlined where known
    featuremaps_student.png       KD-FMV per-layer average feature maps, one row per image (first few images)
    featuremaps_teacher.png       the same for the teacher

Which labels: ``options.labels`` when given; else, multi-label, those predicted positive (probability >= the
run's stored threshold, or 0.5), else the top ``options.top_k``; single-label, the predicted class.

``explain.json`` top level: ``method``, ``num_images``, ``num_maps``, ``seconds_per_image`` (the student's map
time per image), where truth exists ``pointing_game`` (fraction of maps whose maximum lies inside the truth,
over maps whose label has a non-empty truth mask), ``pointing_chance``, ``energy_inside``, ``iou``; with
``options.faithfulness`` ``deletion_auc`` and ``insertion_auc``; with a teacher ``agreement_spearman`` and
``agreement_top15_iou`` (means over maps), ``teacher_seconds_per_image`` and a ``teacher`` block with its own
scores; with ``options.sanity`` a ``sanity`` block (the same scores for a weight-shuffled copy of the student).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..config import DataConfig
from ..data import images as im
from ..utils.io import atomic_write_json
from . import LABEL_AGNOSTIC, canonical_method, explain_maps
from .base import ExplainError, explaining
from .metrics import ScoreAccumulator, agreement_scores, deletion_insertion, localisation_scores

log = logging.getLogger(__name__)

EXPLAIN_FILE = "explain.json"
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclasses.dataclass
class ExplainOptions:
    """How to explain (the CLI's flags)."""

    method: str = "gradcam"  # gradcam, gradcam++, hirescam, eigencam, layercam, integrated_gradients, gradientshap, fmv
    labels: list[str] | None = None  # label names to explain on every image; None = predicted (see module doc)
    top_k: int = 3  # multi-label with no positive prediction: explain the top_k labels
    batch_size: int = 16  # (image, label) pairs per explainer call
    size: int | None = None  # side of the maps, overlays and truth; None = the student's input size
    layer: str | None = None  # the student's CAM layer by module name; None = models.cam_layer (teacher: always)
    faithfulness: bool = True  # deletion / insertion AUCs (2 x (steps + 1) forward passes per map)
    steps: int = 16  # deletion / insertion steps
    background: int = 16  # GradientShap: training images drawn as the background
    n_samples: int = 16  # GradientShap: random points per image
    n_steps: int = 32  # Integrated Gradients: path steps
    sanity: bool = False  # also explain a weight-shuffled copy of the student (Adebayo et al. 2018)
    with_truth: bool = False  # dataset split: only the images that have ground truth (boxes or masks)
    overlays: int = 64  # write overlay PNGs for at most this many images
    feature_grid: int = 4  # images (rows) in the feature-map grids; 0 = no grids
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    seed: int = 0  # GradientShap draws, tie-breaking in deletion / insertion, the randomised copy

    def validate(self) -> None:
        self.method = canonical_method(self.method)
        for name in ("top_k", "batch_size", "steps", "background", "n_samples", "n_steps"):
            if getattr(self, name) < 1:
                raise ExplainError(f"{name}: got {getattr(self, name)}, expected at least 1")
        for name in ("overlays", "feature_grid"):
            if getattr(self, name) < 0:
                raise ExplainError(f"{name}: got {getattr(self, name)}, expected 0 or more")
        if self.size is not None and not 8 <= self.size <= 2048:
            raise ExplainError(f"size: got {self.size}, expected 8..2048 pixels")


@dataclasses.dataclass
class Inputs:
    """The images to explain: raw pixels in [0, 1] ((H, W) or (H, W, 3)), names, and truth where known."""

    raw: list[np.ndarray]
    names: list[str]
    paths: list[str]
    truth: list[np.ndarray | None]  # bool (len(truth_labels), S, S) per image, or None
    truth_labels: list[str]
    source: dict[str, Any]


@dataclasses.dataclass
class Explained:
    """One model's side: the model, its record, inputs, probabilities, maps and timing."""

    name: str  # "student" or "teacher"
    model: Any
    record: dict[str, Any]
    run: str
    x: torch.Tensor | None = None  # (N, C, S, S) normalised inputs
    probs: np.ndarray | None = None  # (N, L)
    maps: np.ndarray | None = None  # (P, S_display, S_display)
    seconds: float = 0.0

    @property
    def labels(self) -> list[str]:
        return list(self.record["labels"])

    @property
    def task(self) -> str:
        return self.record.get("task", "multilabel")

    @property
    def input(self):
        from ..models import input_config

        return input_config(self.model)


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------

def load_images(paths: Sequence[str | Path]) -> Inputs:
    """Image files (PNG, JPEG, DICOM ...) without truth."""
    if not paths:
        raise ExplainError("images: got an empty list, expected at least one image file")
    raw = [im.read_image(p) for p in paths]
    return Inputs(raw, [Path(p).stem for p in paths], [str(p) for p in paths], [None] * len(raw), [],
                  {"images": [str(p) for p in paths]})


def dataset_for(data: DataConfig, split: str, size: int):
    """One split of ``data`` (no cache, no augmentation); the root must exist (nothing is generated)."""
    from ..data import Preprocess, build_dataset

    if data.root is None:
        raise ExplainError(f"dataset {data.dataset!r}: no root folder given (--root DIR)")
    if not Path(data.root).exists():
        raise ExplainError(f"dataset root {data.root!r} does not exist")
    cfg = dataclasses.replace(data, cache=False, augment="none")
    return build_dataset(cfg, split, Preprocess(size=size, channels=1, mean=(0.5,), std=(0.25,)))


def load_split(data: DataConfig, split: str, size: int, *, with_truth: bool = False) -> Inputs:
    """``data.limit`` images of one split (a seeded subset), with ground truth at ``size`` where it exists.

    ``with_truth``: only images that have ground truth (e.g. the NIH images with boxes), the first
    ``data.limit`` of them in split order.
    """
    ds = dataset_for(dataclasses.replace(data, limit=None) if with_truth else data, split, size)
    rows = range(len(ds))
    truths = {i: ds.truth(i, size) for i in rows} if with_truth else {}
    if with_truth:
        rows = [i for i in rows if truths[i] is not None][:data.limit]
        if not rows:
            raise ExplainError(f"{data.dataset} {ds.split} split at {data.root}: no image has ground truth "
                               f"(boxes or masks); drop --with-truth or pick another split")
    raw, names, paths, truth = [], [], [], []
    for i in rows:
        raw.append(ds.read(i))
        meta = ds.meta(i)
        names.append(meta["image_id"])
        paths.append(meta["path"])
        truth.append(truths[i] if with_truth else ds.truth(i, size))
    return Inputs(raw, names, paths, truth, list(ds.labels),
                  {"dataset": data.dataset, "root": str(data.root), "split": ds.split, "limit": data.limit,
                   "with_truth": with_truth})


def prepare(raw: Sequence[np.ndarray], cfg) -> torch.Tensor:
    """Raw images -> (N, C, S, S) normalised model inputs, exactly as training preprocesses them."""
    return torch.from_numpy(np.stack([im.preprocess(r, cfg.size, cfg.channels, cfg.mean, cfg.std) for r in raw]))


def background_images(data: DataConfig | None, run_config_data: DataConfig | None, count: int, seed: int,
                      size: int) -> list[np.ndarray]:
    """``count`` raw training images (seeded) for GradientShap, from ``data`` or else the run's own dataset."""
    source = data if data is not None and data.root is not None else run_config_data
    if source is None or source.root is None:
        raise ExplainError("gradientshap needs training images for its background: pass --dataset and --root "
                           "(the run's config names no dataset root)")
    ds = dataset_for(dataclasses.replace(source, limit=None), "train", size)
    rows = np.random.default_rng(seed).choice(len(ds), size=min(count, len(ds)), replace=False)
    return [ds.read(int(i)) for i in np.sort(rows)]


# ---------------------------------------------------------------------------------------------------------
# models and labels
# ---------------------------------------------------------------------------------------------------------

def resolve_teacher(run_dir: Path, record: dict[str, Any], teacher: str | Path | None) -> Path | None:
    """The teacher run dir: ``teacher`` when given (must exist), else the student's record (skipped if gone)."""
    if teacher is not None:
        path = Path(teacher)
        if not path.exists():
            raise ExplainError(f"teacher {str(teacher)!r} does not exist; expected a run directory")
        return path
    recorded = record.get("teacher")
    if not recorded or not isinstance(recorded, str):
        return None
    for path in (Path(recorded), run_dir / recorded, run_dir.parent / recorded):
        if (path / "run.json").is_file() or path.is_file():
            return path
    log.warning("the run's teacher %s is not found; explaining the student alone", recorded)
    return None


def thresholds(run_dir: Path, record: dict[str, Any], labels: list[str]) -> np.ndarray:
    """Per-label decision thresholds (L,): stored ``thresholds`` in run.json or metrics.json, else 0.5."""
    from ..runs import RunDir

    out = np.full(len(labels), 0.5)
    stored = record.get("thresholds") or RunDir(run_dir).metrics().get("thresholds")
    if isinstance(stored, dict):
        for k, name in enumerate(labels):
            if isinstance(stored.get(name), (int, float)):
                out[k] = float(stored[name])
    elif isinstance(stored, list) and len(stored) == len(labels):
        out[:] = [float(v) for v in stored]
    return out


def predict(side: Explained, batch_size: int) -> np.ndarray:
    """(N, L) probabilities: one sigmoid per label, softmax for single-label."""
    out = []
    with explaining(side.model), torch.no_grad():
        device = next(side.model.parameters()).device
        for s in range(0, len(side.x), batch_size):
            logits = side.model(side.x[s:s + batch_size].to(device)).float()
            out.append((torch.softmax(logits, 1) if side.task == "multiclass" else torch.sigmoid(logits)).cpu())
    return torch.cat(out).numpy()


def choose_labels(probs: np.ndarray, labels: list[str], task: str, asked: list[str] | None, top_k: int,
                  thr: np.ndarray) -> list[list[str]]:
    """Label names to explain, per image (see module docstring)."""
    if asked:
        unknown = [a for a in asked if a not in labels]
        if unknown:
            raise ExplainError(f"labels: {unknown[0]!r} is not a label of the model; expected some of {labels}")
        return [list(asked) for _ in range(len(probs))]
    out = []
    for p in probs:
        if task == "multiclass":
            out.append([labels[int(p.argmax())]])
            continue
        positive = [k for k in np.argsort(-p, kind="stable") if p[k] >= thr[k]]
        chosen = positive or list(np.argsort(-p, kind="stable")[:top_k])
        out.append([labels[int(k)] for k in chosen])
    return out


# ---------------------------------------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------------------------------------

def compute_maps(side: Explained, pairs: list[tuple[int, str]], options: ExplainOptions, size: int,
                 background: torch.Tensor | None, progress: Progress | None) -> None:
    """Maps of ``side`` for (image, label) pairs, at ``size``; sets ``side.maps`` (P, size, size), ``seconds``."""
    rows = [i for i, _ in pairs]
    idx = [side.labels.index(name) for _, name in pairs]
    chunks = []

    def maps(s: int, stop: int) -> np.ndarray:
        extra = ({"n_samples": options.n_samples, "seed": options.seed + s} if options.method == "gradientshap"
                 else {"n_steps": options.n_steps} if options.method == "integrated_gradients" else {})
        return explain_maps(side.model, side.x[rows[s:stop]], idx[s:stop], options.method, size=size,
                            batch_size=options.batch_size, layer=None if side.name == "teacher" else options.layer,
                            background=background, **extra)

    # one untimed map first: lazy imports and first-call kernel set-up would be charged to whichever side runs first
    if pairs:
        maps(0, 1)
    start = time.perf_counter()
    for s in range(0, len(pairs), options.batch_size):
        chunks.append(maps(s, s + options.batch_size))
        if progress:
            progress(f"{side.name} maps", min(s + options.batch_size, len(pairs)), len(pairs))
    side.seconds = time.perf_counter() - start
    side.maps = np.concatenate(chunks) if chunks else np.zeros((0, size, size), np.float32)


def faithfulness(side: Explained, pairs: list[tuple[int, str]], options: ExplainOptions
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUCs (P,) of ``side``'s maps, on its own inputs."""
    rows = [i for i, _ in pairs]
    idx = [side.labels.index(name) for _, name in pairs]
    return deletion_insertion(side.model, side.x[rows], idx, side.maps, steps=options.steps, task=side.task,
                              seed=options.seed)


# ---------------------------------------------------------------------------------------------------------
# figures: each panel is composed as one RGB array (numpy) and drawn by matplotlib as a single image with text
# labels (object API, Agg canvas: no pyplot state). One axes per figure keeps a 16-image run at well under a
# second of drawing; a subplot per heatmap cost about a second per figure.
# ---------------------------------------------------------------------------------------------------------

def _display(raw: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) RGB in [0, 1] of a raw (H, W) or (H, W, 3) image."""
    img = np.clip(im.resize(raw, size), 0, 1)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def _colour(values: np.ndarray, cmap: str) -> np.ndarray:
    """(S, S) in [0, 1] -> (S, S, 3) RGB through a matplotlib colormap."""
    import matplotlib

    return matplotlib.colormaps[cmap](np.clip(values, 0, 1))[..., :3]


def heat_overlay(image: np.ndarray, heat: np.ndarray, truth: np.ndarray | None = None,
                 alpha: float = 0.45) -> np.ndarray:
    """(S, S, 3): ``image`` (S, S, 3) blended with the jet-coloured ``heat`` (S, S); the truth outlined in white
    and the map's maximum marked with a white cross (unless the map is constant)."""
    from scipy.ndimage import binary_erosion

    out = (1 - alpha) * image + alpha * _colour(heat, "jet")
    if truth is not None and truth.any():
        out[truth & ~binary_erosion(truth)] = 1.0
    if np.ptp(heat) > 0:  # a constant map has no maximum to mark
        y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
        arm = max(2, heat.shape[0] // 40)
        out[max(y - arm, 0):y + arm + 1, x] = 1.0
        out[y, max(x - arm, 0):x + arm + 1] = 1.0
    return out


def draw_panel(path: Path, cells: list[list[np.ndarray | None]], titles: list[list[str]], title: str = "",
               cell_inches: float = 1.9) -> Path:
    """Write a PNG of a grid of (S, S, 3) RGB cells (None = blank) with a title above each cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nrows, ncols = len(cells), max(len(r) for r in cells)
    titles = [list(t) for t in titles] + [[] for _ in range(nrows - len(titles))]
    s = next(c for r in cells for c in r if c is not None).shape[0]
    gap = max(s // 24, 2)  # a thin white gap between cells
    bands = [max(s // 3, 12) if any(t) else gap for t in titles]  # room for two title lines where there are titles
    tops = np.cumsum([0] + [b + s + gap for b in bands])  # (nrows + 1,) row starts in canvas pixels
    step_x = s + gap
    canvas = np.ones((int(tops[-1]), ncols * step_x - gap, 3))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            if cell is not None:
                canvas[tops[r] + bands[r]:tops[r] + bands[r] + s, c * step_x:c * step_x + s] = cell
    top = 0.3 if title else 0.0
    width, height = ncols * cell_inches, cell_inches * canvas.shape[0] / step_x + top
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1 - top / height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for r, row in enumerate(titles):
        for c, text in enumerate(row):
            if text:
                ax.text(c * step_x + s / 2, tops[r] + bands[r] / 2, text, ha="center", va="center", fontsize=7)
    if title:
        fig.text(0.5, 1 - top / height / 2, title, ha="center", va="center", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, pil_kwargs={"compress_level": 1})  # fast PNG: these are working figures, not archives
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "image"


Cell = tuple[str, float, np.ndarray, Optional[np.ndarray]]  # (label, probability, map (S, S), truth (S, S))


def draw_overlay(path: Path, raw: np.ndarray, rows: list[tuple[str, list[Cell]]], size: int) -> Path:
    """One PNG: per row (model name, [(label, prob, map (S, S), truth (S, S) | None)]) the image then heatmaps."""
    image = _display(raw, size)
    cells = [[image] + [heat_overlay(image, heat, truth) for _, _, heat, truth in row] for _, row in rows]
    titles = [[name] + [f"{label}\np={prob:.2f}" for label, prob, _, _ in row] for name, row in rows]
    return draw_panel(path, cells, titles)


def draw_feature_grid(path: Path, raw: list[np.ndarray], stages: list[tuple[str, np.ndarray]], size: int,
                      title: str) -> Path:
    """One PNG: rows = images, columns = the image then each stage's average feature map (viridis)."""
    cells = [[_display(r, size)] + [_colour(maps[i], "viridis") for _, maps in stages] for i, r in enumerate(raw)]
    titles = [["image"] + [name for name, _ in stages]]
    return draw_panel(path, cells, titles, title, cell_inches=1.5)


# ---------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------

def _load_side(name: str, run: Path, device: Any) -> Explained:
    from ..runs import load_model

    model, record = load_model(run, device=device)
    return Explained(name, model, record, str(run))


def _truth_for(inputs: Inputs, i: int, label: str) -> np.ndarray | None:
    if inputs.truth[i] is None or label not in inputs.truth_labels:
        return None
    return inputs.truth[i][inputs.truth_labels.index(label)]


def explain_run(run: str | Path, out: str | Path, *, images: Sequence[str | Path] | None = None,
                data: DataConfig | None = None, split: str = "test", teacher: str | Path | None = None,
                options: ExplainOptions | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Explain the model of run directory ``run`` on ``images`` or a split of ``data``; write into ``out``.

    Returns the summary written to ``out/explain.json`` (see the module docstring).
    """
    from ..runs import RunDir
    from ..utils.runtime import resolve_device

    options = options or ExplainOptions()
    options.validate()
    if (images is None) == (data is None):
        raise ExplainError("inputs: expected either image files or a dataset split, not "
                           + ("both" if images is not None else "neither"))
    run_dir, out = Path(run), Path(out)
    device = resolve_device(options.device)
    student = _load_side("student", run_dir, device)
    size = options.size or student.input.size
    teacher_dir = resolve_teacher(run_dir, student.record, teacher)
    teacher_side = _load_side("teacher", teacher_dir, device) if teacher_dir is not None else None
    sides = [student] + ([teacher_side] if teacher_side is not None else [])

    inputs = (load_images(images) if images is not None
              else load_split(data, split, size, with_truth=options.with_truth))
    n = len(inputs.raw)
    log.info("explaining %d image(s) of %s with %s%s", n, run_dir, options.method,
             f" beside teacher {teacher_dir}" if teacher_side else "")
    for side in sides:
        side.x = prepare(inputs.raw, side.input)
        side.probs = predict(side, options.batch_size)

    chosen = choose_labels(student.probs, student.labels, student.task, options.labels, options.top_k,
                           thresholds(run_dir, student.record, student.labels))
    pairs = [(i, name) for i in range(n) for name in chosen[i]]

    backgrounds: dict[str, torch.Tensor | None] = {s.name: None for s in sides}
    if options.method == "gradientshap":
        try:
            run_data = RunDir(run_dir).config().data if RunDir(run_dir).exists() else None
        except Exception as e:  # noqa: BLE001 - an unreadable config only means no fallback background
            log.debug("no background from the run's config: %s", e)
            run_data = None
        bg_raw = background_images(data, run_data, options.background, options.seed, size)
        backgrounds = {s.name: prepare(bg_raw, s.input) for s in sides}

    compute_maps(student, pairs, options, size, backgrounds["student"], progress)
    teacher_pairs: list[int] = []
    if teacher_side is not None:
        teacher_pairs = [p for p, (_, name) in enumerate(pairs) if name in teacher_side.labels]
        missing = sorted({name for _, name in pairs if name not in teacher_side.labels})
        if missing:
            log.warning("the teacher has no label(s) %s: those maps have no teacher side", missing)
        compute_maps(teacher_side, [pairs[p] for p in teacher_pairs], options, size, backgrounds["teacher"],
                     progress)

    student_scores, teacher_scores, teacher_map = score_pairs(student, teacher_side, teacher_pairs, pairs, inputs,
                                                              options, progress)
    summary = summarise(student, teacher_side, teacher_pairs, pairs, student_scores, teacher_scores, n, options)
    if options.sanity and pairs:
        summary["sanity"] = sanity_scores(student, pairs, inputs, options, size, backgrounds["student"])
    summary.update({"run": str(run_dir), "model": student.record.get("model"), "labels": student.labels,
                    "task": student.task, "size": size, "source": inputs.source,
                    "label_agnostic_method": options.method in LABEL_AGNOSTIC})
    out.mkdir(parents=True, exist_ok=True)
    summary["images"] = write_images(out, inputs, student, teacher_side, teacher_map, pairs, student_scores,
                                     teacher_scores, options, size)
    summary["feature_map_grids"] = write_feature_grids(out, inputs, sides, options, size)
    atomic_write_json(out / EXPLAIN_FILE, summary)
    log.info("explain: %d maps in %.2f s per image; written to %s", len(pairs), summary["seconds_per_image"], out)
    return summary


def score_pairs(student: Explained, teacher: Explained | None, teacher_pairs: list[int],
                pairs: list[tuple[int, str]], inputs: Inputs, options: ExplainOptions, progress: Progress | None
                ) -> tuple[list[dict[str, float]], list[dict[str, float]], dict[int, np.ndarray]]:
    """Per-pair scores of the student and the teacher (localisation, agreement, faithfulness), and the teacher's
    map of each pair it explained (pair index -> (S, S))."""
    student_scores: list[dict[str, float]] = [{} for _ in pairs]
    teacher_scores: list[dict[str, float]] = [{} for _ in pairs]
    teacher_map = {p: teacher.maps[j] for j, p in enumerate(teacher_pairs)} if teacher is not None else {}
    for p, (i, name) in enumerate(pairs):
        truth = _truth_for(inputs, i, name)
        if truth is not None and truth.any():
            student_scores[p].update(localisation_scores(student.maps[p], truth))
            if p in teacher_map:
                teacher_scores[p].update(localisation_scores(teacher_map[p], truth))
        if p in teacher_map:
            student_scores[p].update(agreement_scores(student.maps[p], teacher_map[p]))
    if options.faithfulness and pairs:
        d, ins = faithfulness(student, pairs, options)
        for p in range(len(pairs)):
            student_scores[p].update({"deletion_auc": float(d[p]), "insertion_auc": float(ins[p])})
        if progress:
            progress("deletion / insertion", 1, 1 + (teacher is not None))
        if teacher is not None and teacher_pairs:
            d, ins = faithfulness(teacher, [pairs[p] for p in teacher_pairs], options)
            for j, p in enumerate(teacher_pairs):
                teacher_scores[p].update({"deletion_auc": float(d[j]), "insertion_auc": float(ins[j])})
            if progress:
                progress("deletion / insertion", 2, 2)
    return student_scores, teacher_scores, teacher_map


def summarise(student: Explained, teacher: Explained | None, teacher_pairs: list[int], pairs: list[tuple[int, str]],
              student_scores: list[dict[str, float]], teacher_scores: list[dict[str, float]], n: int,
              options: ExplainOptions) -> dict[str, Any]:
    """The top level of ``explain.json``: timing and the mean of every score (NaN-skipping) over maps."""
    summary: dict[str, Any] = {"method": options.method, "num_images": n, "num_maps": len(pairs),
                               "seconds_per_image": student.seconds / max(n, 1),
                               "student_seconds_per_image": student.seconds / max(n, 1)}
    acc = ScoreAccumulator()
    for s in student_scores:
        acc.update(s)
    if acc.counts().get("pointing_game", 0):
        summary["maps_with_truth"] = acc.counts()["pointing_game"]
    summary.update(acc.aggregate())
    if teacher is not None:
        summary["teacher_seconds_per_image"] = teacher.seconds / max(n, 1)
        tacc = ScoreAccumulator()
        for s in teacher_scores:
            tacc.update(s)
        summary["teacher"] = {"run": teacher.run, "model": teacher.record.get("model"), "maps": len(teacher_pairs),
                              **tacc.aggregate()}
    summary["per_label"] = per_label(pairs, student_scores)
    return summary


def write_images(out: Path, inputs: Inputs, student: Explained, teacher: Explained | None,
                 teacher_map: dict[int, np.ndarray], pairs: list[tuple[int, str]],
                 student_scores: list[dict[str, float]], teacher_scores: list[dict[str, float]],
                 options: ExplainOptions, size: int) -> list[dict[str, Any]]:
    """Overlay PNGs (first ``options.overlays`` images) and the per-image entries of ``explain.json``."""
    by_image: dict[int, list[int]] = {}
    for p, (i, _) in enumerate(pairs):
        by_image.setdefault(i, []).append(p)
    entries = []
    for i in range(len(inputs.raw)):
        ps = by_image.get(i, [])
        maps = []
        for p in ps:
            name = pairs[p][1]
            m: dict[str, Any] = {"label": name, "prob": float(student.probs[i, student.labels.index(name)])}
            if teacher is not None and p in teacher_map:
                m["teacher_prob"] = float(teacher.probs[i, teacher.labels.index(name)])
            m.update(student_scores[p])
            if teacher_scores[p]:
                m["teacher"] = teacher_scores[p]
            maps.append(m)
        entry: dict[str, Any] = {
            "name": inputs.names[i], "path": inputs.paths[i],
            "probabilities": {lab: float(student.probs[i, k]) for k, lab in enumerate(student.labels)},
            "maps": maps}
        if i < options.overlays and ps:
            rows = [("student", [(pairs[p][1], m["prob"], student.maps[p], _truth_for(inputs, i, pairs[p][1]))
                                 for p, m in zip(ps, maps)])]
            if teacher is not None:
                rows.append(("teacher", [(pairs[p][1], m["teacher_prob"], teacher_map[p],
                                          _truth_for(inputs, i, pairs[p][1]))
                                         for p, m in zip(ps, maps) if p in teacher_map]))
                rows = [r for r in rows if r[1]]
            file = out / "overlays" / f"{i:04d}_{_safe(inputs.names[i])}.png"
            draw_overlay(file, inputs.raw[i], rows, size)
            entry["overlay"] = str(file.relative_to(out))
        entries.append(entry)
    return entries


def write_feature_grids(out: Path, inputs: Inputs, sides: list[Explained], options: ExplainOptions,
                        size: int) -> list[str]:
    """KD-FMV average feature maps of the first ``options.feature_grid`` images, one grid PNG per model."""
    from .featuremaps import average_feature_maps

    k = min(options.feature_grid, len(inputs.raw))
    files = []
    for side in sides if k else []:
        stages = average_feature_maps(side.model, side.x[:k], size=size, batch_size=options.batch_size)
        file = draw_feature_grid(out / f"featuremaps_{side.name}.png", inputs.raw[:k], stages, size,
                                 f"{side.name} ({side.record.get('model')}): average feature map per layer")
        files.append(str(file.relative_to(out)))
    return files


def per_label(pairs: list[tuple[int, str]], scores: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean scores per label name, with the number of maps."""
    accs: dict[str, ScoreAccumulator] = {}
    n: dict[str, int] = {}
    for (_, name), s in zip(pairs, scores):
        accs.setdefault(name, ScoreAccumulator()).update(s)
        n[name] = n.get(name, 0) + 1
    return {name: {"maps": n[name], **acc.aggregate()} for name, acc in accs.items()}


def sanity_scores(student: Explained, pairs: list[tuple[int, str]], inputs: Inputs, options: ExplainOptions,
                  size: int, background: torch.Tensor | None) -> dict[str, Any]:
    """Localisation of a weight-shuffled copy of the student on the same pairs (Adebayo et al. 2018)."""
    from .sanity import randomized_copy

    shuffled = Explained("randomized", randomized_copy(student.model, options.seed), student.record, student.run,
                         x=student.x)
    compute_maps(shuffled, pairs, options, size, background, None)
    acc = ScoreAccumulator()
    for p, (i, name) in enumerate(pairs):
        truth = _truth_for(inputs, i, name)
        if truth is not None and truth.any():
            acc.update(localisation_scores(shuffled.maps[p], truth))
        acc.update({"spearman_to_trained": agreement_scores(shuffled.maps[p], student.maps[p])["agreement_spearman"]})
    return {"test": "model parameter randomisation (Adebayo et al. 2018)", **acc.aggregate()}
