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

The same thumbnails find near copies across splits (:func:`near_copies`): a validation or test image whose nearest
training image correlates at 0.98 or more is, for a model, a training image seen again, and accuracy on it
measures memory. The Alzheimer test folder is the other slices of the training subjects; in the Kaggle brain
tumour MRI set (``Training/`` and ``Testing/``), 304 of the 1,280 test images (23.8 %) have such a copy in
``Training/``, 266 of them at 0.995 or more, all of the same class (298 in the training split that is left once
the default validation share is drawn). ``data inspect`` counts them, and
``data.drop_near_copies`` leaves them out of validation and test.

Neighbours within a radius come from scikit-learn (a neighbour search over the unit-norm thumbnails, where a
correlation of ``t`` is a Euclidean distance of ``sqrt(2 - 2t)``) and the components from SciPy's graph routines.
The 6,400 Alzheimer images take about 5 s on 2 cores.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .images import ImageReadError, read_image

log = logging.getLogger(__name__)

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


def thumbnails(paths: Sequence[str | Path], side: int = THUMB) -> np.ndarray:
    """:func:`thumbnail` of each path -> ``(n, side * side)`` float32; an unreadable image gives zeros, as a flat
    one does (such rows are like nothing: see :func:`_informative`)."""
    out = np.zeros((len(paths), side * side), np.float32)
    for i, p in enumerate(paths):
        try:
            out[i] = thumbnail(p, side)
        except ImageReadError as e:  # data inspect reports unreadable files; here they simply match nothing
            log.debug("similar: %s unreadable (%s)", e.path, e.reason)
    return out


def _informative(x: np.ndarray) -> np.ndarray:
    """Rows with a picture: not flat, not unreadable (all-zero rows would all lie at one point)."""
    return np.abs(x).sum(axis=1) > 0


def _check(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold}: expected a correlation between 0 and 1")


def similar_groups(paths: Sequence[str | Path], threshold: float, side: int = THUMB, *,
                   thumbs: np.ndarray | None = None) -> np.ndarray:
    """A group number per path: images whose thumbnails correlate at ``threshold`` or more share a group, and so
    (transitively) do their neighbours'. Numbers run from 0 in order of each group's first image. ``thumbs``:
    the paths' :func:`thumbnails`, when already made."""
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import radius_neighbors_graph

    _check(threshold)
    if len(paths) == 0:
        return np.zeros(0, dtype=np.int64)
    x = thumbnails(paths, side) if thumbs is None else thumbs
    radius = float(np.sqrt(2.0 - 2.0 * threshold))
    graph = radius_neighbors_graph(x, radius, mode="connectivity", include_self=False)
    blank = np.flatnonzero(~_informative(x))
    if blank.size:  # flat or unreadable images (all at one point): each its own group
        graph = graph.tolil()
        graph[blank, :] = 0
        graph[:, blank] = 0
        graph = graph.tocsr()
    _, labels = connected_components(graph, directed=False)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber by first appearance, so numbers follow the file order
    return order[inverse].astype(np.int64)


def nearest(reference: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query thumbnail ``(m, d)``: the highest correlation with any ``reference`` thumbnail ``(n, d)``
    and that reference's row (-inf and -1 when there is no reference)."""
    from sklearn.neighbors import NearestNeighbors

    if len(reference) == 0 or len(queries) == 0:
        return np.full(len(queries), -np.inf), np.full(len(queries), -1, dtype=np.int64)
    dist, idx = NearestNeighbors(n_neighbors=1).fit(reference).kneighbors(queries)
    return 1.0 - dist[:, 0] ** 2 / 2.0, idx[:, 0].astype(np.int64)  # unit vectors: |a - b|^2 = 2 - 2 a.b


def near_copies(paths: Sequence[str | Path], splits: Sequence[str | None], threshold: float, *,
                thumbs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which non-training images have a near copy in the training split: per path, a bool (a ``val`` / ``test``
    image whose nearest ``train`` image's thumbnail correlates at ``threshold`` or more; False for training
    images), that correlation (NaN for training images, for flat or unreadable ones and when there is no training
    image) and that training image's row (-1)."""
    _check(threshold)
    splits = np.asarray(splits, dtype=object)
    x = thumbnails(paths) if thumbs is None else thumbs
    ok = _informative(x)  # flat or unreadable images are nobody's copy
    train, other = np.flatnonzero((splits == "train") & ok), np.flatnonzero((splits != "train") & ok)
    corr, row = np.full(len(splits), np.nan), np.full(len(splits), -1, dtype=np.int64)
    if len(train) and len(other):  # no training image: nothing is a copy
        c, i = nearest(x[train], x[other])
        corr[other], row[other] = c, train[i]
    return np.nan_to_num(corr, nan=-np.inf) >= threshold, corr, row
