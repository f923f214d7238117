"""Groups of near-identical images: the slices of one scan, or one image saved twice with other bytes.

Image folders often hold several images of one patient that no file name ties together. The Kaggle Alzheimer MRI
set is one: 32 axial slices of each of 200 subjects, file names shuffled (``mildDem17.jpg``), adjacent slices
almost identical (a 1-nearest-neighbour on thumbnails names the class of every one of its training images from the
others). A validation share drawn image by image then holds the neighbours of training slices, so validation
accuracy says little about a new patient (98% where the test folder gives 76%).

:func:`similar_groups` links two images when their small grey thumbnails correlate at or above a threshold and
takes the connected components as groups. At 0.98 or 0.985 this finds 200 groups of 32 images in that set's 6,400
(train and test folders together), each of one class: its subjects. Splits drawn by these groups keep each subject
in one. (With 32 px thumbnails, 0.98 chains 68 subjects into one component: 48 px keeps them apart.)

Neighbours within a radius come from scikit-learn (a neighbour search over the unit-norm thumbnails, where a
correlation of ``t`` is a Euclidean distance of ``sqrt(2 - 2t)``) and the components from SciPy's graph routines.
The 6,400 Alzheimer images take about 5 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .images import read_image

#: side of the thumbnails compared (px): enough to tell one subject's slices from another's (see above)
THUMB = 48


def thumbnail(path: str | Path, side: int = THUMB) -> np.ndarray:
    """The image as a ``side`` x ``side`` grey thumbnail, standardised and scaled to unit norm (so the dot product
    of two thumbnails is their Pearson correlation); a flat image gives zeros."""
    img = read_image(path, min_side=2 * side)
    if img.ndim == 3:
        img = img.mean(axis=2)
    small = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((side, side), Image.BILINEAR),
                       dtype=np.float64).ravel()
    small -= small.mean()
    norm = np.linalg.norm(small)
    return (small / norm if norm > 0 else small).astype(np.float32)


def similar_groups(paths: Sequence[str | Path], threshold: float, side: int = THUMB) -> np.ndarray:
    """A group number per path: images whose thumbnails correlate at ``threshold`` or more share a group, and so
    (transitively) do their neighbours'. Numbers run from 0 in order of each group's first image."""
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import radius_neighbors_graph

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold}: expected a correlation between 0 and 1")
    if len(paths) == 0:
        return np.zeros(0, dtype=np.int64)
    x = np.stack([thumbnail(p, side) for p in paths])
    radius = float(np.sqrt(2.0 - 2.0 * threshold))
    graph = radius_neighbors_graph(x, radius, mode="connectivity", include_self=False)
    _, labels = connected_components(graph, directed=False)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber by first appearance, so numbers follow the file order
    return order[inverse].astype(np.int64)
