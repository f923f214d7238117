"""Explanation metrics on hand-made maps with known answers (no model needed, except deletion/insertion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from medistill.explain import ExplainError
from medistill.explain.metrics import (ScoreAccumulator, agreement_scores, area_fraction, deletion_insertion,
                                       energy_inside, iou, localisation_scores, map_iou, pointing_game, pool_map,
                                       spearman, top_fraction_iou, top_region)


def box(shape=(10, 10), y=(2, 5), x=(3, 7)) -> np.ndarray:
    t = np.zeros(shape, bool)
    t[y[0]:y[1], x[0]:x[1]] = True
    return t


def test_pointing_game_hit_miss_ties_and_empty_truth():
    truth = box()  # 3 x 4 = 12 pixels of 100
    m = np.zeros((10, 10))
    m[3, 4] = 1.0
    assert pointing_game(m, truth) == 1.0
    m = np.zeros((10, 10))
    m[9, 9] = 1.0
    assert pointing_game(m, truth) == 0.0
    # two tied maxima, one inside: half a hit; a constant map scores the area fraction (chance)
    m = np.zeros((10, 10))
    m[3, 4] = m[9, 9] = 1.0
    assert pointing_game(m, truth) == 0.5
    assert pointing_game(np.ones((10, 10)), truth) == pytest.approx(0.12)
    assert area_fraction(truth) == pytest.approx(0.12)
    assert math.isnan(pointing_game(m, np.zeros((10, 10), bool)))
    assert math.isnan(area_fraction(np.zeros((10, 10), bool)))


def test_energy_inside_and_thresholded_iou():
    truth = box()
    m = np.zeros((10, 10))
    m[truth] = 3.0
    m[0, 0] = 4.0  # 36 inside, 4 outside
    assert energy_inside(m, truth) == pytest.approx(36 / 40)
    assert energy_inside(-m, truth) == pytest.approx(0.12)  # negatives clip to 0: nothing, i.e. chance
    # threshold at half the maximum (2.0): region = truth (12 px) + (0, 0) -> IoU 12 / 13
    assert map_iou(m, truth) == pytest.approx(12 / 13)
    assert map_iou(np.zeros((10, 10)), truth) == 0.0
    assert math.isnan(energy_inside(m, np.zeros((10, 10), bool)))
    scores = localisation_scores(m, truth)
    assert set(scores) == {"pointing_game", "pointing_chance", "pointing_game_tolerant", "pointing_chance_tolerant",
                           "energy_inside", "iou"}
    assert scores["pointing_game"] == 0.0  # the single maximum (0, 0) is outside


def test_agreement_spearman_and_top15_iou():
    rng = np.random.default_rng(0)
    a = rng.random((20, 20))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, a ** 3 + 5) == pytest.approx(1.0)  # ranks only
    assert math.isnan(spearman(a, np.ones((20, 20))))
    from scipy.stats import spearmanr

    b = rng.random((20, 20))
    assert spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    # top 15% of 400 pixels = 60; a map and its shifted copy share known pixels
    lin = np.arange(400, dtype=float).reshape(20, 20)
    assert top_region(lin).sum() == 60 and top_region(lin)[-3:].all()  # the last three rows
    assert top_fraction_iou(lin, lin) == 1.0
    shifted = np.roll(lin, -20)  # top 60 now the rows 16, 17, 18 (row 19 wrapped to the bottom values)
    assert top_fraction_iou(lin, shifted) == pytest.approx(40 / 80)
    assert top_fraction_iou(lin, -lin) == 0.0
    assert set(agreement_scores(a, b)) == {"agreement_spearman", "agreement_spearman_grid", "agreement_top15_iou"}
    assert agreement_scores(a, b)["agreement_spearman_grid"] == spearman(a, b)  # no coarser grid: the pixels'


def test_agreement_at_the_coarser_grid_ignores_the_finer_maps_pixel_noise():
    """A 4 x 4 map upsampled to 32 px against a pixel-level map of the same 4 x 4 pattern plus pixel noise: their
    pixels rank alike only in part, their 4 x 4 cells exactly (each cell averages 64 noisy pixels)."""
    rng = np.random.default_rng(0)
    coarse = rng.permutation(16).reshape(4, 4).astype(float)  # cell values 0..15, one apart
    cam = np.kron(coarse, np.ones((8, 8)))  # the coarse map as an explanation shows it, at 32 x 32
    pixel = cam + rng.uniform(-3, 3, size=cam.shape)  # pooled: each cell's noise averages to within about 0.4
    s = agreement_scores(cam, pixel, grid=4)
    assert s["agreement_spearman_grid"] == pytest.approx(1.0)
    assert s["agreement_spearman"] == pytest.approx(spearman(cam, pixel)) and s["agreement_spearman"] < 0.97
    assert agreement_scores(cam, pixel, grid=32)["agreement_spearman_grid"] == s["agreement_spearman"]
    assert pool_map(cam, 4) == pytest.approx(coarse)  # area pooling of the upsampled map gives the cells back


def test_shapes_and_fractions_are_checked():
    with pytest.raises(ExplainError, match=r"\(10, 10\) and \(5, 5\)"):
        pointing_game(np.zeros((10, 10)), np.zeros((5, 5), bool))
    with pytest.raises(ExplainError, match="fraction"):
        top_region(np.zeros((4, 4)), 0.0)
    assert math.isnan(iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)))


def test_score_accumulator_skips_nan_and_counts():
    acc = ScoreAccumulator()
    acc.update({"pointing_game": 1.0, "energy_inside": 0.5})
    acc.update({"pointing_game": float("nan"), "energy_inside": 0.3})
    acc.update({"pointing_game": 0.0})
    assert acc.aggregate() == pytest.approx({"pointing_game": 0.5, "energy_inside": 0.4})
    assert acc.counts() == {"pointing_game": 2, "energy_inside": 2}
    acc.reset()
    assert acc.aggregate() == {}


class LeftHalfModel(nn.Module):
    """Logit of label 0 = 20 * (mean of x^2 over the left half - 0.375): only the left half's contrast matters."""

    num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = (x[..., : x.shape[-1] // 2] ** 2).mean(dim=(1, 2, 3))
        return torch.stack([20 * (left - 0.375), torch.zeros_like(left)], dim=1)


def test_deletion_insertion_rank_a_faithful_map_above_a_wrong_one():
    # a 0/1 checkerboard: p(label 0) = sigmoid(2.5); blurred (insertion's start) it is ~0.5 grey, sigmoid(-2.5)
    x = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().view(1, 1, 16, 16)
    right = np.zeros((1, 16, 16), np.float32)
    right[:, :, :8] = 1.0  # points at the left half, which the model uses
    wrong = 1.0 - right  # points at the right half, which the model ignores
    del_r, ins_r = deletion_insertion(LeftHalfModel(), x, [0], right, steps=8)
    del_w, ins_w = deletion_insertion(LeftHalfModel(), x, [0], wrong, steps=8)
    assert del_r[0] < del_w[0] - 0.3  # deleting the used pixels first kills the score early
    assert ins_r[0] > ins_w[0] + 0.3
    assert 0.0 <= del_r[0] <= 1.0 and 0.0 <= ins_w[0] <= 1.0
    with pytest.raises(ExplainError, match="maps: got shape"):
        deletion_insertion(LeftHalfModel(), x, [0], np.zeros((2, 16, 16)))


def test_tolerant_pointing_game_scales_15_px_at_224_and_its_chance():
    from medistill.explain.metrics import pointing_tolerance

    assert pointing_tolerance(224) == pytest.approx(15.0)
    assert pointing_tolerance(128) == pytest.approx(15 * 128 / 224)
    truth = np.zeros((40, 40), bool)
    truth[10:12, 10:12] = True  # a 2 x 2 lesion
    m = np.zeros((40, 40))
    m[10, 14] = 1.0  # 3 px right of the lesion's last column: a strict miss, a hit within 3 px
    assert pointing_game(m, truth) == 0.0
    assert pointing_game(m, truth, 3.0) == 1.0
    assert pointing_game(m, truth, 2.9) == 0.0
    # chance at a tolerance: the share of pixels within it (Euclidean distance to the nearest truth pixel)
    from scipy.ndimage import distance_transform_edt

    near = distance_transform_edt(~truth) <= 3.0
    assert area_fraction(truth, 3.0) == pytest.approx(near.mean())
    assert pointing_game(np.ones((40, 40)), truth, 3.0) == pytest.approx(near.mean())  # a flat map scores chance
    # localisation_scores uses the tolerance of the map's own size: 15 * 40 / 224 = 2.68 px here
    scores = localisation_scores(m, truth)
    assert scores["pointing_game_tolerant"] == 0.0
    assert scores["pointing_chance_tolerant"] == pytest.approx(area_fraction(truth, 15 * 40 / 224))
    m2 = np.zeros((40, 40))
    m2[13, 13] = 1.0  # sqrt(2) * 2 = 2.83 px from (11, 11): outside 2.68 px
    assert localisation_scores(m2, truth)["pointing_game_tolerant"] == 0.0
    m2 = np.zeros((40, 40))
    m2[12, 13] = 1.0  # sqrt(1 + 4) = 2.24 px
    assert localisation_scores(m2, truth)["pointing_game_tolerant"] == 1.0
