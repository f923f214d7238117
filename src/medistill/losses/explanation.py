"""Explanation-aware distillation: make the student look where the teacher looks.

Both losses work on class activation maps at each model's CAM layer, per label, so they serve multi-label data
(one map per label, the mask of uncertain labels respected) and single-label data alike:

- :func:`gradcam_maps`: Grad-CAM (Selvaraju et al. 2017) maps ``(B, L, h, w)`` from a feature map and the logits:
  ``w_lk = mean_hw d z_l / d A_k``, ``M_l = sum_k w_lk A_k``. For a network whose head is global average pooling
  and a linear layer this is exactly CAM (Zhou et al. 2016) divided by ``h w``; the gradient only runs through
  the head, so it is cheap, and with ``create_graph=True`` the student's maps stay differentiable (e2KD
  back-propagates through its explanation). Given several layers' feature maps (``cam_layers fuse`` or ``poly``)
  it returns their combination, :func:`~medistill.maps.combine.fuse_maps` or
  :func:`~medistill.maps.combine.refine_maps`: the map ``explain`` shows under the same policy, so a student can
  be trained on it.
- :class:`E2KDLoss`: Parchami-Araghi et al., "Good Teachers Explain: Explanation-Enhanced Knowledge
  Distillation", ECCV 2024: ``1 - cos(ReLU(M_s), ReLU(M_t))`` of the student's and the teacher's Grad-CAM, maps
  resized to the teacher's map size; averaged over the explained (image, label) pairs: for single-label data the
  teacher's predicted class (as in the paper), for multi-label data every valid label, or (``predicted_only``)
  the valid labels the teacher predicts present (logit > 0), the multi-label form of explaining its prediction.
- :class:`CATLoss`: Guo et al., "Class Attention Transfer Based Knowledge Distillation" (CAT-KD), CVPR 2023:
  every class's activation map average-pooled to ``pool x pool``, each flattened map L2-normalised, then the mean
  squared difference between student and teacher; averaged over valid (image, label) pairs.

Where the cells are (``grids``): a map's cell is compared with the other model's cell over the same place of the
image. Resizing the student's map to the teacher's size assumes both tile the image evenly (cell ``i`` of ``h``
centred at ``(i + 0.5) / h`` of the side); a network that downsamples by stride-2 convolutions padded by ``k // 2``
(EfficientNet, ResNet) centres its cell ``i`` at ``stride * i`` pixels instead, half a cell up-left
(:mod:`medistill.models.cam_layers`), so an EfficientNet teacher's map and an evenly tiled (KD-FMV) student's
would be matched half a cell apart and the student trained toward a shifted map. Given each side's
:class:`~medistill.models.cam_layers.Grid` on the image (:meth:`~medistill.models.cam_layers.Grid.on_image`;
``None``: even tiling), the student's map is sampled at the teacher's cell centres
(:func:`~medistill.maps.base.regrid`) before the comparison; two evenly tiled maps are compared exactly as before.

Shapes: maps ``(B, L, h, w)`` (student and teacher sizes may differ), mask ``(B, L)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..maps.base import regrid
from ..maps.combine import EPS, fuse_maps, refine_maps
from ..models.cam_layers import Grid
from .hard import LossError, masked_mean


def gradcam_maps(features: torch.Tensor | Sequence[torch.Tensor], logits: torch.Tensor, *,
                 create_graph: bool = False, combine: str = "fuse",
                 grids: Sequence[Grid | None] | None = None) -> torch.Tensor:
    """Grad-CAM of every label: features ``(B, C, h, w)`` (part of the graph that made) logits ``(B, L)`` ->
    maps ``(B, L, h, w)`` (before ReLU). One backward pass per label through the part of the network between
    the CAM layer and the logits. A sequence of several layers' features (shallow to deep) gives one map
    ``(B, L, S, S)`` at the largest layer's side (the gradients of all layers in the same backward passes),
    combined by ``combine``: ``"fuse"`` (:func:`~medistill.maps.combine.fuse_maps`) or ``"poly"``
    (:func:`~medistill.maps.combine.refine_maps`), each layer's map placed by its cells' ``grids`` (one per
    layer, on the model's input; None: even tiling)."""
    if combine not in COMBINE:
        raise LossError(f"gradcam_maps: combine {combine!r}, expected one of {', '.join(COMBINE)}")
    feats = [features] if isinstance(features, torch.Tensor) else list(features)
    if not feats:
        raise LossError("gradcam_maps: no feature maps given")
    for f in feats:
        if f.dim() != 4 or logits.dim() != 2 or f.shape[0] != logits.shape[0]:
            raise LossError(f"gradcam_maps: features {tuple(f.shape)} and logits {tuple(logits.shape)}, expected "
                            f"(B, C, h, w) and (B, L)")
    per_layer: list[list[torch.Tensor]] = [[] for _ in feats]
    for k in range(logits.shape[1]):
        grads = torch.autograd.grad(logits[:, k].sum(), feats, create_graph=create_graph, retain_graph=True)
        for maps, f, g in zip(per_layer, feats, grads):
            w = g.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
            maps.append((w * f).sum(dim=1))  # (B, h, w)
    stacked = [torch.stack(maps, dim=1) for maps in per_layer]  # each (B, L, h, w)
    return stacked[0] if len(stacked) == 1 else COMBINE[combine](stacked, grids)


#: how :func:`gradcam_maps` combines several layers' maps, by the CAM-layer policy's name
COMBINE = {"fuse": fuse_maps, "poly": refine_maps}


def _check(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if s.dim() != 4 or t.dim() != 4 or s.shape[:2] != t.shape[:2]:
        raise LossError(f"explanation maps: student {tuple(s.shape)}, teacher {tuple(t.shape)}, expected (B, L, h, w) "
                        f"with the same B and L")
    if mask is None:
        return torch.ones(s.shape[:2], dtype=s.dtype, device=s.device)
    if mask.shape != s.shape[:2]:
        raise LossError(f"mask: shape {tuple(mask.shape)}, expected (B, L) = {tuple(s.shape[:2])}")
    return (mask > 0).to(s.dtype)


MapGrids = tuple[Grid | None, Grid | None]  # (student, teacher) cells on the image; None: even tiling


def _grid(grid: Grid | None, hw: tuple[int, int]) -> Grid:
    return Grid.even(hw) if grid is None else grid


def _tiles_evenly(grid: Grid, hw: tuple[int, int]) -> bool:
    even = Grid.even(hw)
    return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in
               zip(grid.stride + grid.offset, even.stride + even.offset))


def student_on_teacher_cells(student_maps: torch.Tensor, teacher_hw: tuple[int, int], grids: MapGrids
                             ) -> torch.Tensor:
    """The student's maps ``(B, L, h, w)`` sampled at the centres of the teacher's ``teacher_hw`` cells
    (``grids``: see the module docstring); differentiable. Evenly tiled maps are bilinearly resized as before."""
    s_hw = tuple(student_maps.shape[-2:])
    return regrid(student_maps, _grid(grids[0], s_hw), _grid(grids[1], teacher_hw), teacher_hw)


class E2KDLoss(nn.Module):
    """e2KD's explanation term: ``1 - cosine(ReLU(M_s), ReLU(M_t))`` per explained (image, label), masked mean.

    ``forward(student_maps, teacher_maps, mask, teacher_logits=None)``: with ``single_label=True`` only the
    teacher's predicted class of each image is explained (``teacher_logits`` ``(B, L)`` required); with
    ``predicted_only=True`` (multi-label) only the labels whose teacher logit is above 0; pairs whose teacher map
    is all zero (nothing to match) are left out. ``grids``: (student, teacher) :class:`Grid` of the maps' cells on
    the image (see the module docstring; None: even tiling); the student's map is compared at the teacher's cells.
    """

    def __init__(self, single_label: bool = False, predicted_only: bool = False, grids: MapGrids = (None, None)):
        super().__init__()
        self.single_label = single_label
        self.predicted_only = predicted_only
        self.grids = tuple(grids)

    def forward(self, student_maps: torch.Tensor, teacher_maps: torch.Tensor, mask: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        m = _check(student_maps, teacher_maps, mask)
        if self.single_label:
            if teacher_logits is None:
                raise LossError("E2KDLoss(single_label=True) needs teacher_logits (B, L) to pick the explained class")
            m = m * F.one_hot(teacher_logits.argmax(dim=1), m.shape[1]).to(m.dtype)
        elif self.predicted_only:
            if teacher_logits is None:
                raise LossError("E2KDLoss(predicted_only=True) needs teacher_logits (B, L) to pick the labels")
            m = m * (teacher_logits.detach() > 0).to(m.dtype)
        s = F.relu(student_maps.float())
        t = F.relu(teacher_maps.detach().float())
        s = student_on_teacher_cells(s, tuple(t.shape[-2:]), self.grids)  # (B, L, h_t, w_t)
        s, t = s.flatten(2), t.flatten(2)  # (B, L, hw)
        m = m * (t.sum(dim=2) > 0).to(m.dtype)
        cos = (s * t).sum(2) / (s.norm(dim=2) * t.norm(dim=2)).clamp_min(EPS)  # (B, L)
        return masked_mean(1.0 - cos, m)


class CATLoss(nn.Module):
    """CAT-KD's class attention transfer: pooled, L2-normalised class activation maps, mean squared difference.

    ``grids`` as in :class:`E2KDLoss`: when either side's cells do not tile the image evenly, the student's map is
    first sampled at the teacher's cells, so each pooled region covers the same part of the image on both sides
    (evenly tiled maps pool to the same regions already and are pooled as before)."""

    def __init__(self, pool: int = 2, grids: MapGrids = (None, None)):
        super().__init__()
        if pool < 1:
            raise LossError(f"CAT pool size: got {pool}, expected >= 1")
        self.pool = int(pool)
        self.grids = tuple(grids)

    def forward(self, student_maps: torch.Tensor, teacher_maps: torch.Tensor, mask: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """``teacher_logits`` is accepted for a common signature with :class:`E2KDLoss` and unused."""
        m = _check(student_maps, teacher_maps, mask)
        s_hw, t_hw = tuple(student_maps.shape[-2:]), tuple(teacher_maps.shape[-2:])
        s = student_maps.float()
        if not (_tiles_evenly(_grid(self.grids[0], s_hw), s_hw) and _tiles_evenly(_grid(self.grids[1], t_hw), t_hw)):
            s = student_on_teacher_cells(s, t_hw, self.grids)  # (B, L, h_t, w_t)
        s = F.adaptive_avg_pool2d(s, self.pool).flatten(2)  # (B, L, p*p)
        t = F.adaptive_avg_pool2d(teacher_maps.detach().float(), self.pool).flatten(2)
        s, t = F.normalize(s, dim=2, eps=EPS), F.normalize(t, dim=2, eps=EPS)
        return masked_mean(((s - t) ** 2).mean(dim=2), m)
