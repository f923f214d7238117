"""Which layer a class activation map hooks: the policies and their defaults (torch-free, so option dataclasses
can name them; :func:`medistill.models.cam_layers.choose_layers` applies them).

One policy serves both sides of explanation: ``medistill explain --cam-layers`` (the maps shown and scored) and the
explanation-aware distillation losses (``distill.cam_layers``: the maps e2KD / CAT-KD match), so a student is
trained on the very maps it is later judged by.

- ``auto``: the deepest of the model's feature stages whose map is at least ``cam_min_size`` px a side;
- ``fuse``: that stage and every deeper one, their min-max scaled maps averaged (LayerCAM-style; the losses
  fuse them in the graph: :func:`medistill.maps.combine.fuse_maps`);
- ``poly``: the same stages as ``fuse``, the deepest map refined by each finer one (Poly-CAM's backward
  recursion, :func:`medistill.maps.combine.refine_maps`): the deep map says which cell holds the evidence, the
  fine maps where in that cell;
- ``model``: the model's declared CAM layer (``pretrained_cfg["cam_layer"]``, often stride 32).

Where a hooked layer's cells sit on the image is a :class:`Grid` (traced by
:func:`medistill.models.cam_layers.layer_grids`). It lives here, torch-free, because an exported model carries its
CAM output's grid in its metadata (``medistill.cam_grid``) and the torch-free runtime places the map by it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CAM_LAYER_POLICIES = ("auto", "fuse", "poly", "model")
DEFAULT_CAM_LAYERS = "auto"
DEFAULT_CAM_MIN_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Grid:
    """Where a map's cells sit on the input, per axis ``(y, x)``: cell ``i`` is centred on input pixel
    ``offset + stride * i`` (pixel ``p`` spans ``[p - 0.5, p + 0.5]``)."""

    stride: tuple[float, float]
    offset: tuple[float, float]

    @classmethod
    def half_pixel(cls, input_hw: tuple[int, int], map_hw: tuple[int, int]) -> "Grid":
        """The grid bilinear resizing assumes (``align_corners=False``): the cells tile the image evenly."""
        stride = tuple(n / m for n, m in zip(input_hw, map_hw))
        return cls(stride, tuple((s - 1) / 2 for s in stride))  # type: ignore[arg-type]

    def on_image(self, input_hw: tuple[int, int]) -> "Grid":
        """This grid with positions as fractions of the image's side (0: the image's first edge, 1: its last), so
        that the maps of two models run at different input sizes (cross-resolution KD: the same image resized per
        model) can be compared: pixel ``p`` of an ``n``-pixel input spans ``[p / n, (p + 1) / n]``."""
        return Grid(tuple(s / n for s, n in zip(self.stride, input_hw)),  # type: ignore[arg-type]
                    tuple((o + 0.5) / n for o, n in zip(self.offset, input_hw)))

    @classmethod
    def even(cls, map_hw: tuple[int, int]) -> "Grid":
        """The even tiling of :meth:`half_pixel` on the image's side (:meth:`on_image`), whatever the input size."""
        return cls(tuple(1 / m for m in map_hw), tuple(0.5 / m for m in map_hw))  # type: ignore[arg-type]

    def tiles_evenly(self, map_hw: tuple[int, int]) -> bool:
        """Whether this on-image grid (:meth:`on_image`) of a ``map_hw`` map is :meth:`even`: the layout a plain
        bilinear resize assumes, so that resizing the map places it correctly."""
        return all(math.isclose(s * m, 1.0, rel_tol=1e-9) and math.isclose(o * m, 0.5, rel_tol=1e-9)
                   for s, o, m in zip(self.stride, self.offset, map_hw))


def cell_weights(points: np.ndarray, cells: int, stride: float, offset: float) -> np.ndarray:
    """(len(points), cells) float64: row ``p`` holds the bilinear weights of ``cells`` cells centred on
    ``offset + stride * i`` at position ``points[p]`` (the same units), the edge cell's value beyond the first and
    last centres. The one rule by which a map is read where its cells sit: the runtime's overlays
    (``inference.place_map``) and the explanation losses' resampling (``maps.base.regrid``) both use it."""
    u = np.clip((np.asarray(points, np.float64) - offset) / stride, 0, cells - 1)  # positions in cells
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, cells - 1)
    w = np.zeros((len(u), cells), np.float64)
    rows = np.arange(len(u))
    np.add.at(w, (rows, lo), 1 - (u - lo))
    np.add.at(w, (rows, hi), u - lo)
    return w

