"""Several layers' class activation maps combined into one, in torch so that a loss can back-propagate through it.

- :func:`fuse_maps`: the mean of the layers' min-max scaled maps, as pytorch-grad-cam fuses layers
  (``cam_layers fuse``).
- :func:`refine_maps`: Poly-CAM's backward recursion, the deepest map refined by each finer one
  (``cam_layers poly``).

Used by the explanation-aware losses (``losses.explanation.gradcam_maps``) and by ``explain``'s Poly-CAM
(``explain.cams``), so that a student trains on the map ``explain`` shows. Shapes: maps ``(B, L, h, w)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-8


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(h, w)`` map of ``(B, L, h, w)`` shifted to minimum 0 and divided by its maximum (an all-equal map
    becomes zero), differentiably."""
    flat = maps.flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    span = flat.max(dim=2).values[..., None, None] - lo
    return (maps - lo) / span.clamp_min(EPS)


def fuse_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several layers' class activation maps ``(B, L, h_i, w_i)`` -> one ``(B, L, H, W)`` at the largest size, as
    pytorch-grad-cam fuses layers for ``explain --cam-layers fuse``: each map through ReLU, resized (bilinear)
    and min-max scaled, then their mean min-max scaled again. Written here rather than called from
    pytorch-grad-cam because that runs in NumPy, outside the graph a training loss back-propagates through."""
    size = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
    scaled = [_min_max(F.interpolate(F.relu(m), size=size, mode="bilinear", align_corners=False)
                       if m.shape[-2:] != size else F.relu(m)) for m in maps]
    return _min_max(torch.stack(scaled).mean(dim=0))


def refine_maps(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several layers' class activation maps ``(B, L, h_i, w_i)``, shallow to deep -> one ``(B, L, H, W)`` at the
    largest size, refined from the deepest map down (Poly-CAM's backward recursion: Englebert et al., "Poly-CAM:
    High resolution class activation map for convolutional neural networks", ICPR 2022): starting from the
    deepest map ``P``, each finer map ``A`` (after ReLU) is divided by its own local mean over the cells of ``P``'s
    grid (averaged over each cell, then bilinear back up) and multiplied by ``P`` upsampled, so the coarse map decides
    which cell holds the evidence and the finer map only where within that cell (a layer no finer than the map
    so far is passed over; a cell where a finer map is all zero ends at zero). The result is min-max scaled.
    Unlike :func:`fuse_maps`, a fine layer cannot outvote the deep one elsewhere in the image. Written here, not
    taken from pytorch-grad-cam (which has no such fusion), and in torch so that a loss can back-propagate
    through it; ``explain --cam-layers poly`` calls it on pytorch-grad-cam's per-layer maps."""
    out = F.relu(maps[-1])
    for fine in reversed(maps[:-1]):
        if fine.shape[-2] * fine.shape[-1] <= out.shape[-2] * out.shape[-1]:
            continue  # a layer no finer than the map so far has nothing to place within its cells
        fine = F.relu(fine)
        local = F.interpolate(F.adaptive_avg_pool2d(fine, out.shape[-2:]), size=fine.shape[-2:], mode="bilinear",
                              align_corners=False)
        up = F.interpolate(out, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        out = F.relu(fine / local.clamp_min(EPS) * up)
    return _min_max(out)
