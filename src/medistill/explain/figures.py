"""Figures of an explanation: overlays (the image, then one heatmap per label; a teacher row below the student's)
and KD-FMV feature-map grids.

Each panel is composed as one RGB array (numpy) and drawn by matplotlib as a single image with text labels (object
API, Agg canvas: no pyplot state). One axes per figure keeps a 16-image run at well under a second of drawing; a
subplot per heatmap cost about a second per figure. The heatmap blend is :func:`medistill.inference.overlay` (the
one heatmap overlay, torch-free, shared with ``medistill predict``); here the truth is outlined and the map's
maximum marked on top of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Collection, Optional

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.ndimage import binary_erosion

from ..data import images as im
from ..inference import overlay
from .featuremaps import average_feature_maps
from .inputs import Inputs
from .options import ExplainOptions
from .sides import Explained

OVERLAY_ALPHA = 0.45  # weight of the heatmap in the blend
FAILED_COLOUR = (0.85, 0.1, 0.1)  # the frame of maps whose method failed the randomisation check


def _display(raw: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) RGB in [0, 1] of a raw (H, W) or (H, W, 3) image."""
    img = np.clip(im.resize(raw, size), 0, 1)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def _colour(values: np.ndarray, cmap: str) -> np.ndarray:
    """(S, S) in [0, 1] -> (S, S, 3) RGB through a matplotlib colormap."""
    return matplotlib.colormaps[cmap](np.clip(values, 0, 1))[..., :3]


def heat_overlay(image: np.ndarray, heat: np.ndarray, truth: np.ndarray | None = None,
                 alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(S, S, 3) in [0, 1]: ``image`` (S, S, 3) blended with the jet-coloured ``heat`` (S, S) by
    :func:`medistill.inference.overlay`; the truth outlined in white and the map's maximum marked with a white
    cross (unless the map is constant)."""
    out = overlay(image, heat, alpha=alpha, colormap="jet").astype(np.float64) / 255.0  # (S, S, 3)
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
    ax.imshow(np.clip(canvas, 0, 1), interpolation="nearest")  # overlays can overshoot [0, 1] by rounding: no warning
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


def safe_name(name: str) -> str:
    """``name`` as a file-name part (letters, digits, ``_.-``; at most 80 characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "image"


Cell = tuple[str, float, np.ndarray, Optional[np.ndarray]]  # (label, probability, map (S, S), truth (S, S))


def frame(cell: np.ndarray, colour: tuple[float, float, float] = FAILED_COLOUR) -> np.ndarray:
    """(S, S, 3): ``cell`` with a border of ``colour`` (a few px wide, scaled with the cell)."""
    out = cell.copy()
    w = max(2, cell.shape[0] // 32)
    out[:w], out[-w:], out[:, :w], out[:, -w:] = colour, colour, colour, colour
    return out


def draw_overlay(path: Path, raw: np.ndarray, rows: list[tuple[str, list[Cell]]], size: int,
                 not_evidence: Collection[str] = ()) -> Path:
    """One PNG: per row (model name, [(label, prob, map (S, S), truth (S, S) | None)]) the image then heatmaps.
    The maps of a row named in ``not_evidence`` (its method failed the weight-randomisation check) are framed in
    red and titled so: they are drawn, but not as evidence."""
    image = _display(raw, size)
    cells = [[image] + [frame(c) if name in not_evidence else c
                        for c in (heat_overlay(image, heat, truth) for _, _, heat, truth in row)]
             for name, row in rows]
    # a blank map (all zero: no positive evidence for the label) says so instead of showing a plain image
    titles = [[name + ("\nnot evidence" if name in not_evidence else "")]
              + [f"{label}\np={prob:.2f}" + (", blank" if not np.any(heat > 0) else "")
                 + (", fails sanity" if name in not_evidence else "")
                 for label, prob, heat, _ in row] for name, row in rows]
    return draw_panel(path, cells, titles)


def draw_feature_grid(path: Path, raw: list[np.ndarray], stages: list[tuple[str, np.ndarray]], size: int,
                      title: str) -> Path:
    """One PNG: rows = images, columns = the image then each stage's average feature map (viridis)."""
    cells = [[_display(r, size)] + [_colour(maps[i], "viridis") for _, maps in stages] for i, r in enumerate(raw)]
    titles = [["image"] + [name for name, _ in stages]]
    return draw_panel(path, cells, titles, title, cell_inches=1.5)


def write_feature_grids(out: Path, inputs: Inputs, sides: list[Explained], options: ExplainOptions,
                        size: int) -> list[str]:
    """KD-FMV average feature maps of the first ``options.feature_grid`` images, one grid PNG per model."""
    k = min(options.feature_grid, len(inputs.raw))
    files = []
    for side in sides if k else []:
        stages = average_feature_maps(side.model, side.x[:k], size=size, batch_size=options.batch_size)
        file = draw_feature_grid(out / f"featuremaps_{side.name}.png", inputs.raw[:k], stages, size,
                                 f"{side.name} ({side.record.get('model')}): average feature map per layer")
        files.append(str(file.relative_to(out)))
    return files
