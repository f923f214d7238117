"""Measuring explanation maps: agreement between two models, localisation against truth, faithfulness.

Every map is a float array (H, W) >= 0 (higher = more important); truth is a bool array (H, W) of the same
shape. Plain functions score one map; :class:`ScoreAccumulator` averages named scores over many maps.

Agreement (teacher vs student, same image and label)
    ``spearman``: Spearman rank correlation of the two maps' pixels (scipy); ``agreement_scores`` also gives it
    at the coarser of the two maps' own grids (``agreement_spearman_grid``). ``top_fraction_iou``: IoU of the
    two maps' top-15% pixels.
Localisation (where the evidence is)
    ``pointing_game``: Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016: a hit when
    the map's maximum lies inside the truth; ``pointing_game(m, truth, tolerance)`` with the paper's tolerance
    (a hit within 15 px of the truth at 224 px input: :func:`pointing_tolerance` scales it to other sizes), whose
    chance is ``area_fraction(truth, tolerance)``, the share of pixels within the tolerance. ``energy_inside``: the share of the map's total mass inside the
    truth (the energy-based pointing game of Wang et al., "Score-CAM", CVPR-W 2020). ``map_iou``: IoU of the
    map thresholded at half its maximum with the truth. ``area_fraction``: the truth's share of the image, which
    is what a map pointing at random scores in the pointing game (chance).
Faithfulness (does the model need the highlighted pixels)
    ``deletion_insertion``: Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018: remove the most important pixels first and follow the label's probability
    (deletion, lower AUC is better), or add them first to a blurred copy (insertion, higher AUC is better).

NaN policy: a score that is undefined for a map (no truth, a constant map in a rank correlation) is NaN, and
averages skip NaNs and report how many maps counted. A map that says nothing (constant, or all zero) scores
chance: ties for the maximum split the pointing-game hit evenly, an all-zero map spreads its energy evenly.

Deletion/insertion are written here: pytorch-grad-cam ships ROAD and single-threshold perturbation scores, captum
ships infidelity and sensitivity, and neither gives RISE's curves; the curves are a few lines of batching.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.ndimage import distance_transform_edt
from scipy.stats import spearmanr
from torchvision.transforms.functional import gaussian_blur

from ..maps.base import ExplainError, check_inputs, explaining, model_device, resize_maps
from ..task import MULTILABEL, Task, TaskError, get_task

log = logging.getLogger(__name__)

TOP_FRACTION = 0.15  # agreement: share of pixels in each map's "top" region
IOU_THRESHOLD = 0.5  # localisation: a map is thresholded at this fraction of its maximum
POINTING_TOLERANCE_PX, POINTING_REFERENCE_SIZE = 15.0, 224  # Zhang et al. 2016: 15 px at 224 px input


def _check_pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ExplainError(f"{what}: got shapes {a.shape} and {b.shape}, expected two (H, W) arrays of one shape")
    return a, b


# ---------------------------------------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------------------------------------

def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two (H, W) maps' pixels, in [-1, 1]; NaN when either map is constant."""
    a, b = _check_pair(a, b, "spearman")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(a.ravel(), b.ravel()).statistic
    return float(rho)


def top_region(m: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """bool (H, W): the ``fraction`` of pixels with the highest values (ties broken in raster order)."""
    m = np.asarray(m)
    if not 0.0 < fraction <= 1.0:
        raise ExplainError(f"fraction: got {fraction}, expected a value in (0, 1]")
    k = max(1, int(round(fraction * m.size)))
    order = np.argsort(-m.ravel(), kind="stable")[:k]
    out = np.zeros(m.size, dtype=bool)
    out[order] = True
    return out.reshape(m.shape)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool (H, W) masks; NaN when both are empty."""
    a, b = _check_pair(a.astype(bool), b.astype(bool), "iou")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def top_fraction_iou(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """IoU of the top-``fraction`` regions of two (H, W) maps, in [0, 1]."""
    a, b = _check_pair(a, b, "top_fraction_iou")
    return iou(top_region(a, fraction), top_region(b, fraction))


# ---------------------------------------------------------------------------------------------------------
# localisation
# ---------------------------------------------------------------------------------------------------------

def pointing_tolerance(size: int) -> float:
    """The pointing game's tolerance in pixels at a ``size`` x ``size`` map: 15 px at 224 px (Zhang et al.,
    ECCV 2016), scaled with the image (``15 * size / 224``)."""
    return POINTING_TOLERANCE_PX * size / POINTING_REFERENCE_SIZE


def _near(truth: np.ndarray, tolerance: float) -> np.ndarray:
    """bool (H, W): pixels within ``tolerance`` px (Euclidean) of the truth; the truth itself when 0."""
    if tolerance <= 0:
        return truth

    return distance_transform_edt(~truth) <= tolerance


def area_fraction(truth: np.ndarray, tolerance: float = 0.0) -> float:
    """Share of the image within ``tolerance`` px of the truth (the truth's own share at 0): the pointing game of
    a random point (chance); NaN when the truth is empty."""
    truth = np.asarray(truth, dtype=bool)
    return float(_near(truth, tolerance).mean()) if truth.any() else float("nan")


def pointing_game(m: np.ndarray, truth: np.ndarray, tolerance: float = 0.0) -> float:
    """1.0 when the map's maximum lies inside the truth (or within ``tolerance`` px of it), else 0.0; NaN when the
    truth is empty.

    Pixels tied for the maximum share the hit: the result is the fraction of them that hit (a constant map scores
    :func:`area_fraction` at the same tolerance, i.e. chance).
    """
    m, truth = _check_pair(m, np.asarray(truth, dtype=bool), "pointing_game")
    if not truth.any():
        return float("nan")
    peak = m == m.max()
    return float(_near(truth, tolerance)[peak].mean())


def energy_inside(m: np.ndarray, truth: np.ndarray) -> float:
    """Share of the map's mass (negatives clipped to 0) inside the truth, in [0, 1]; NaN when the truth is empty.

    An all-zero map spreads its mass evenly and scores the truth's area fraction.
    """
    m, truth = _check_pair(m, np.asarray(truth, dtype=bool), "energy_inside")
    if not truth.any():
        return float("nan")
    m = np.clip(m.astype(np.float64), 0, None)
    total = m.sum()
    if total <= 0:
        return float(truth.mean())
    return float(m[truth].sum() / total)


def map_iou(m: np.ndarray, truth: np.ndarray, threshold: float = IOU_THRESHOLD) -> float:
    """IoU of {map >= threshold * max(map)} with the truth, in [0, 1]; NaN when the truth is empty.

    An all-zero map selects nothing and scores 0.
    """
    m, truth = _check_pair(m, np.asarray(truth, dtype=bool), "map_iou")
    if not truth.any():
        return float("nan")
    peak = m.max()
    region = m >= threshold * peak if peak > 0 else np.zeros_like(truth)
    return iou(region, truth)


def localisation_scores(m: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All localisation scores of one map: pointing_game, pointing_chance, their tolerant forms
    (``pointing_game_tolerant``, ``pointing_chance_tolerant``: within :func:`pointing_tolerance` of the map's
    size), energy_inside, iou."""
    tol = pointing_tolerance(np.asarray(m).shape[-1])
    return {"pointing_game": pointing_game(m, truth), "pointing_chance": area_fraction(truth),
            "pointing_game_tolerant": pointing_game(m, truth, tol),
            "pointing_chance_tolerant": area_fraction(truth, tol),
            "energy_inside": energy_inside(m, truth), "iou": map_iou(m, truth)}


def pool_map(m: np.ndarray, grid: int) -> np.ndarray:
    """(H, W) map -> (grid, grid) by area averaging (each cell the mean of the pixels it covers)."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(t, grid)[0, 0].numpy()


def agreement_scores(a: np.ndarray, b: np.ndarray, grid: int | None = None) -> dict[str, float]:
    """Agreement of two maps of one image and label: agreement_spearman, agreement_top15_iou (over pixels), and
    agreement_spearman_grid: the Spearman of both maps area-pooled to ``grid`` x ``grid``, the coarser of their own
    grids (a Grad-CAM of an 8 x 8 layer has 64 values before it is upsampled; ranking its pixels against a
    pixel-level map also scores the finer map's pixel-to-pixel noise, which the coarse map cannot show). Without a
    ``grid``, or one as fine as the maps, it is the pixel Spearman."""
    rho = spearman(a, b)
    rho_grid = spearman(pool_map(a, grid), pool_map(b, grid)) if grid and grid < min(np.shape(a)[-2:]) else rho
    return {"agreement_spearman": rho, "agreement_spearman_grid": rho_grid,
            "agreement_top15_iou": top_fraction_iou(a, b)}


# ---------------------------------------------------------------------------------------------------------
# faithfulness
# ---------------------------------------------------------------------------------------------------------

def _blur(x: torch.Tensor) -> torch.Tensor:
    """RISE's insertion start: a Gaussian blur (sigma 5 px at 224 px, scaled with the image)."""
    sigma = max(1.0, x.shape[-1] / 45.0)
    k = 2 * int(math.ceil(2 * sigma)) + 1
    return gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def _label_prob(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
    """(B, L) logits -> (B,) probability of each row's label: its own sigmoid, or softmax for single-label."""
    probs = task.probabilities(logits)
    return probs.gather(1, labels[:, None])[:, 0]


def deletion_insertion(model: nn.Module, images: torch.Tensor, labels: Sequence[int], maps: np.ndarray, *,
                       steps: int = 16, task: str | Task = MULTILABEL, batch_size: int = 64,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUCs (each (N,) in [0, 1]) of ``maps`` (N, h, w) for ``images`` (N, C, H, W).

    Pixels are ranked by the map (upsampled to H x W; ties in a seeded random order). At step t of ``steps``
    the top t/steps of pixels are replaced by 0 (the normalised mean image) for deletion, or copied into a
    blurred image for insertion; the AUC is the trapezoid area under the label's probability over t/steps.
    """
    try:
        task = get_task(task)
    except TaskError as e:
        raise ExplainError(str(e)) from None
    if steps < 1 or batch_size < 1:
        raise ExplainError(f"steps, batch_size: got {steps}, {batch_size}, expected at least 1")
    labels = check_inputs(images, labels, getattr(model, "num_classes", None))
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ExplainError(f"maps: got shape {maps.shape}, expected ({images.shape[0]}, h, w): one per image")
    n, _, h, w = images.shape
    maps = resize_maps(maps, h) if maps.shape[1:] != (h, w) else maps
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deletion, insertion = np.zeros(n), np.zeros(n)
    with explaining(model), torch.no_grad():
        device = model_device(model)
        for i in range(n):
            # rank[p] = position of pixel p when sorted by decreasing importance (random among ties)
            order = np.lexsort((rng.random(h * w), -maps[i].ravel()))
            rank = torch.from_numpy(np.argsort(order)).view(1, 1, h, w).to(device)
            x = images[i:i + 1].to(device)  # (1, C, H, W)
            blurred = _blur(x)
            counts = torch.as_tensor(np.round(fractions * h * w), device=device).view(-1, 1, 1, 1)
            chosen = rank < counts  # (steps+1, 1, H, W): the top pixels at each step
            deleted = torch.where(chosen, torch.zeros_like(x), x)  # (steps+1, C, H, W)
            inserted = torch.where(chosen, x, blurred)
            batch = torch.cat([deleted, inserted])  # (2 * (steps+1), C, H, W)
            probs = torch.cat([model(batch[s:s + batch_size]) for s in range(0, len(batch), batch_size)])
            target = torch.full((len(batch),), labels[i], device=device, dtype=torch.long)
            curve = _label_prob(probs, target, task).float().cpu().numpy()
            deletion[i] = np.trapezoid(curve[:steps + 1], fractions)
            insertion[i] = np.trapezoid(curve[steps + 1:], fractions)
    return deletion, insertion


# ---------------------------------------------------------------------------------------------------------
# averaging
# ---------------------------------------------------------------------------------------------------------

class ScoreAccumulator:
    """Averages named per-map scores: ``update(scores)`` per map, ``aggregate()`` means, ``reset()``.

    NaN scores (undefined for that map) are skipped; ``counts()`` says how many maps each mean is over.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._values: dict[str, list[float]] = {}

    def update(self, scores: dict[str, float]) -> None:
        for key, value in scores.items():
            self._values.setdefault(key, []).append(float(value))

    def counts(self) -> dict[str, int]:
        return {k: int(np.sum(~np.isnan(v))) for k, v in self._values.items()}

    def aggregate(self) -> dict[str, float]:
        """Mean of each score over the maps where it is defined; NaN when it is defined for none."""
        out = {}
        for key, values in self._values.items():
            arr = np.asarray(values, dtype=np.float64)
            arr = arr[~np.isnan(arr)]
            out[key] = float(arr.mean()) if arr.size else float("nan")
        return out
