"""What every explainer shares: the side-effect scope, input checks, map resizing and placing (on the image,
:func:`place_maps`, or on another map's cells, :func:`regrid`), and the error class.

Side effects: everything an explainer changes on the caller's model is undone. Explainers hook layers, switch
the model to eval mode (pytorch-grad-cam's ``BaseCAM.__init__`` calls ``model.eval()`` and never restores it)
and run backward passes (which would fill or, through ``zero_grad``, clear the caller's ``.grad``). Inside
:func:`explaining` the model is in eval mode and its parameters do not require gradients (so backward passes
compute only the activation and input gradients explainers need, and never touch ``.grad``); on exit, even
after an exception, every module's mode, every parameter's ``requires_grad`` and ``.grad`` are restored, and
any hook added during the block and still registered is removed.
"""

from __future__ import annotations

import functools
import logging
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cam_policy import cell_weights
from ..models.cam_layers import Grid
from .errors import ExplainError

log = logging.getLogger(__name__)

__all__ = ["ExplainError", "check_inputs", "explaining", "model_device", "place_maps", "regrid", "related_evenly",
           "resize_maps"]

# the per-module hook dictionaries of torch.nn.Module (a leaked handle is a key left in one of them)
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hook_keys(model: nn.Module) -> dict[tuple[str, str], set[int]]:
    out = {}
    for name, module in model.named_modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks is not None:
                out[(name, attr)] = set(hooks.keys())
    return out


@contextmanager
def explaining(model: nn.Module) -> Iterator[nn.Module]:
    """Run explainers on ``model`` without leaving a trace on it (see the module docstring)."""
    modes = {name: m.training for name, m in model.named_modules()}
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    hooks_before = _hook_keys(model)
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        yield model
    finally:
        for name, m in model.named_modules():
            if name in modes:
                m.training = modes[name]
        for p, r, g in zip(params, requires, grads):
            p.requires_grad_(r)
            p.grad = g
        leaked = 0
        for name, module in model.named_modules():
            for attr in _HOOK_DICTS:
                hooks = getattr(module, attr, None)
                if not hooks:
                    continue
                for key in set(hooks.keys()) - hooks_before.get((name, attr), set()):
                    del hooks[key]
                    leaked += 1
        if leaked:
            log.debug("removed %d hook(s) an explainer left on %s", leaked, type(model).__name__)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_inputs(images: torch.Tensor, labels: Sequence[int], num_classes: int | None) -> list[int]:
    """Validate a (N, C, H, W) batch and one label index per row; returns the labels as ints."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ExplainError(f"images: got shape {shape}, expected a (N, C, H, W) tensor")
    labels = [int(k) for k in labels]
    if len(labels) != images.shape[0]:
        raise ExplainError(f"labels: got {len(labels)} label indices for {images.shape[0]} images, "
                           f"expected one per image row")
    if num_classes is not None:
        bad = [k for k in labels if not 0 <= k < num_classes]
        if bad:
            raise ExplainError(f"labels: got index {bad[0]}, expected 0..{num_classes - 1} "
                               f"(the model has {num_classes} outputs)")
    return labels


def resize_maps(maps: np.ndarray | torch.Tensor, size: int | None) -> np.ndarray:
    """(N, h, w) -> (N, size, size) float32 by bilinear interpolation (unchanged when ``size`` is None)."""
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if size is not None and tuple(t.shape[-2:]) != (size, size):
        t = F.interpolate(t[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return t.numpy().astype(np.float32, copy=False)


def place_maps(maps: np.ndarray | torch.Tensor, grid: Grid, size: tuple[int, int]) -> np.ndarray:
    """A layer's maps (N, h, w) laid over the input: (N, H, W) float32 with ``size`` = (H, W), cell ``(i, j)``'s
    value on the pixel its receptive field is centred on (``grid``, :func:`medistill.models.cam_layers.layer_grids`),
    bilinear between cell centres and the edge cell's value beyond them. With ``Grid.half_pixel`` this is
    :func:`resize_maps`' bilinear resize; with a stride-2 convolution's grid the map moves up-left onto the evidence.
    The torch-free runtime's twin (an exported model's map, grid in fractions of the side) is
    :func:`medistill.inference.place_map`; ``tests/test_cam_grid.py`` checks that both lay a map on the same pixels."""
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]  # (N, 1, h, w)
    n, (h, w) = t.shape[0], t.shape[-2:]

    def axis(pixels: int, cells: int, stride: float, offset: float) -> torch.Tensor:
        """Each pixel's position on the map, in grid_sample's align_corners=True coordinates (-1: first cell)."""
        if cells == 1:
            return torch.zeros(pixels)
        u = (torch.arange(pixels, dtype=torch.float32) - offset) / stride  # (pixels,) in cells
        return 2 * u / (cells - 1) - 1

    ys = axis(size[0], h, grid.stride[0], grid.offset[0])
    xs = axis(size[1], w, grid.stride[1], grid.offset[1])
    where = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    out = F.grid_sample(t, where.expand(n, *where.shape), mode="bilinear", padding_mode="border",
                        align_corners=True)  # (N, 1, H, W)
    return out[:, 0].numpy().astype(np.float32, copy=False)


@functools.lru_cache(maxsize=256)
def _axis_weights(src_stride: float, src_offset: float, src_cells: int, dst_stride: float, dst_offset: float,
                  dst_cells: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(dst_cells, src_cells): row ``j`` holds the bilinear weights of the source cells at destination cell ``j``'s
    centre, the edge cell's value beyond the source's first and last centres."""
    centres = dst_offset + dst_stride * np.arange(dst_cells, dtype=np.float64)
    w = torch.from_numpy(cell_weights(centres, src_cells, src_stride, src_offset))
    return w.to(device=device, dtype=dtype)


def related_evenly(src: Grid, src_hw: tuple[int, int], dst: Grid, dst_hw: tuple[int, int]) -> bool:
    """Whether ``dst``'s ``dst_hw`` cells lie on ``src``'s ``src_hw`` cells as bilinear resizing (align_corners=False)
    assumes: destination cell ``j`` on source position ``(j + 0.5) h / H - 0.5``, as when both tile evenly."""
    return all(math.isclose((do - so) / ss, 0.5 * n / m - 0.5, abs_tol=1e-9)
               and math.isclose(ds / ss, n / m, rel_tol=1e-9)
               for ss, so, ds, do, n, m in zip(src.stride, src.offset, dst.stride, dst.offset, src_hw, dst_hw))


def regrid(maps: torch.Tensor, src: Grid, dst: Grid, size: tuple[int, int]) -> torch.Tensor:
    """Maps ``(..., h, w)`` whose cells sit on ``src`` -> ``(..., *size)`` sampled bilinearly at the centres of
    ``dst``'s cells (``size`` of them), the edge cell's value beyond ``src``'s outer centres; both grids in the same
    units (one model's input pixels, or :meth:`Grid.on_image` for two models). Differentiable (gradients reach
    ``maps``), as a product with two small per-axis weight matrices, cached by grid and size. Where the two grids
    relate as bilinear resizing assumes (both tile the image evenly: :meth:`Grid.half_pixel`, :meth:`Grid.even`)
    this is ``F.interpolate(..., mode="bilinear", align_corners=False)`` itself, so those maps are unchanged."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size) and src == dst:
        return maps
    if related_evenly(src, (h, w), dst, size):
        flat = maps if maps.ndim == 4 else maps.reshape(-1, 1, h, w)
        out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
        return out if maps.ndim == 4 else out.reshape(*maps.shape[:-2], *size)
    wy = _axis_weights(src.stride[0], src.offset[0], h, dst.stride[0], dst.offset[0], size[0], maps.device,
                       maps.dtype)  # (H', h)
    wx = _axis_weights(src.stride[1], src.offset[1], w, dst.stride[1], dst.offset[1], size[1], maps.device,
                       maps.dtype)  # (W', w)
    return torch.einsum("ih,...hw,jw->...ij", wy, maps, wx)
