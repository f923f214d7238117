"""Several layers' class activation maps combined into one, in torch so that a loss can back-propagate through it.

- :func:`fuse_maps`: the mean of the layers' min-max scaled maps, as pytorch-grad-cam fuses layers
  (``cam_layers fuse``).
- :func:`refine_maps`: Poly-CAM's backward recursion, the deepest map refined by each finer one
  (``cam_layers poly``).

Used by the explanation-aware losses (``losses.explanation.gradcam_maps``) and by ``explain``'s Poly-CAM
(``explain.cams``), so that a student trains on the map ``explain`` shows. Shapes: maps ``(B, L, h, w)``.

Where the layers' cells sit (``grids``): bringing a deep layer's map onto a finer layer's cells by bilinear resizing
assumes both tile the image evenly. In an EfficientNet every stage's cell ``i`` is centred on pixel ``stride * i``
(:mod:`medistill.models.cam_layers`), so resizing blocks.6 (stride 32) onto blocks.4 (stride 16) put the deep
evidence half a fine cell (8 px) down-right of where that layer saw it. Given each layer's
:class:`~medistill.models.cam_layers.Grid` (one model's input pixels; None for a layer: even tiling for all), the
deep map is sampled at the fine layer's cell centres (:func:`~medistill.maps.base.regrid`) and Poly-CAM's local
means are taken over the fine cells nearest each deep cell's centre. Evenly tiled layers (KD-FMV) combine exactly as
before.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.cam_layers import Grid
from .base import ExplainError, regrid, related_evenly

EPS = 1e-8
LayerGrids = Sequence[Grid | None] | None  # each layer's cells on the model's input, shallow to deep


def _grids(maps: Sequence[torch.Tensor], grids: LayerGrids) -> list[Grid] | None:
    """The layers' grids, or None (bilinear resizing's even tiling) when any is unknown."""
    if grids is None or any(g is None for g in grids):
        return None
    if len(grids) != len(maps):
        raise ExplainError(f"grids: got {len(grids)} for {len(maps)} layers' maps, expected one per layer")
    return list(grids)


def _onto(maps: torch.Tensor, src: Grid | None, dst: Grid | None, size: tuple[int, int]) -> torch.Tensor:
    """``maps`` resized to ``size``: bilinearly as before without grids, else sampled at ``dst``'s cells."""
    if src is None or dst is None:
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return regrid(maps, src, dst, size)


def _local_mean(fine: torch.Tensor, fine_grid: Grid | None, coarse_grid: Grid | None,
                coarse_hw: tuple[int, int]) -> torch.Tensor:
    """``fine`` ``(B, L, h, w)`` averaged over the fine cells of each coarse cell, ``(B, L, *coarse_hw)``: by
    adaptive average pooling without grids; with grids over the fine cells whose centres are nearest that coarse
    cell's centre (the same cells when both tile evenly)."""
    if fine_grid is None or coarse_grid is None or related_evenly(coarse_grid, coarse_hw, fine_grid,
                                                                  tuple(fine.shape[-2:])):
        return F.adaptive_avg_pool2d(fine, coarse_hw)
    weights = []
    for a, (n_fine, n_coarse) in enumerate(zip(fine.shape[-2:], coarse_hw)):
        centres = fine_grid.offset[a] + fine_grid.stride[a] * torch.arange(n_fine, dtype=torch.float64)
        nearest = torch.floor((centres - coarse_grid.offset[a]) / coarse_grid.stride[a] + 0.5).long()
        member = F.one_hot(nearest.clamp(0, n_coarse - 1), n_coarse).T.double()  # (n_coarse, n_fine)
        weights.append((member / member.sum(1, keepdim=True).clamp_min(1)).to(fine.device, fine.dtype))
    return torch.einsum("ih,blhw,jw->blij", weights[0], fine, weights[1])


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(h, w)`` map of ``(B, L, h, w)`` shifted to minimum 0 and divided by its maximum (an all-equal map
    becomes zero), differentiably."""
    flat = maps.flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    span = flat.max(dim=2).values[..., None, None] - lo
    return (maps - lo) / span.clamp_min(EPS)


def fuse_maps(maps: Sequence[torch.Tensor], grids: LayerGrids = None) -> torch.Tensor:
    """Several layers' class activation maps ``(B, L, h_i, w_i)`` -> one ``(B, L, H, W)`` at the largest size (on
    that layer's cells), as pytorch-grad-cam fuses layers for ``explain --cam-layers fuse``: each map through
    ReLU, brought onto the largest layer's cells (bilinear; by ``grids`` where given, see the module docstring)
    and min-max scaled, then their mean min-max scaled again. Written here rather than called from
    pytorch-grad-cam because that runs in NumPy, outside the graph a training loss back-propagates through."""
    placed = _grids(maps, grids)
    target = max(range(len(maps)), key=lambda k: maps[k].shape[-2] * maps[k].shape[-1])
    size = tuple(maps[target].shape[-2:])
    scaled = [_min_max(_onto(F.relu(m), placed and placed[k], placed and placed[target], size)
                       if tuple(m.shape[-2:]) != size else F.relu(m)) for k, m in enumerate(maps)]
    return _min_max(torch.stack(scaled).mean(dim=0))


def refine_maps(maps: Sequence[torch.Tensor], grids: LayerGrids = None) -> torch.Tensor:
    """Several layers' class activation maps ``(B, L, h_i, w_i)``, shallow to deep -> one ``(B, L, H, W)`` at the
    largest size, refined from the deepest map down (Poly-CAM's backward recursion: Englebert et al., "Poly-CAM:
    High resolution class activation map for convolutional neural networks", ICPR 2022): starting from the
    deepest map ``P``, each finer map ``A`` (after ReLU) is divided by its own local mean over the cells of ``P``'s
    grid (averaged over each cell, then bilinear back up) and multiplied by ``P`` upsampled, so the coarse map decides
    which cell holds the evidence and the finer map only where within that cell (a layer no finer than the map
    so far is passed over; a cell where a finer map is all zero ends at zero). The result is min-max scaled.
    Unlike :func:`fuse_maps`, a fine layer cannot outvote the deep one elsewhere in the image. Written here, not
    taken from pytorch-grad-cam (which has no such fusion), and in torch so that a loss can back-propagate
    through it; ``explain --cam-layers poly`` calls it on pytorch-grad-cam's per-layer maps. ``grids``: each
    layer's cells (see the module docstring); the result is on the finest layer's cells."""
    placed = _grids(maps, grids)
    out, out_grid = F.relu(maps[-1]), placed and placed[-1]
    for k in reversed(range(len(maps) - 1)):
        fine, fine_grid = maps[k], placed and placed[k]
        if fine.shape[-2] * fine.shape[-1] <= out.shape[-2] * out.shape[-1]:
            continue  # a layer no finer than the map so far has nothing to place within its cells
        fine, size = F.relu(fine), tuple(fine.shape[-2:])
        local = _onto(_local_mean(fine, fine_grid, out_grid, tuple(out.shape[-2:])), out_grid, fine_grid, size)
        up = _onto(out, out_grid, fine_grid, size)
        out, out_grid = F.relu(fine / local.clamp_min(EPS) * up), fine_grid
    return _min_max(out)
