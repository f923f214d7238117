"""A decoded image (float32 [0, 1], (H, W) or (H, W, 3), from :mod:`medistill.data.images`) turned into a model
input: resize, channels, normalisation. numpy and Pillow only (no torch), so training, ``medistill predict`` and
``medistill serve`` preprocess alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a float [0, 1] image to ``size`` (square side or (H, W)) with bilinear filtering (antialiased)."""
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32, copy=False)
    if img.ndim == 2:
        out = Image.fromarray(img.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)
        return np.array(out, dtype=np.float32)  # a writable copy (torch.from_numpy warns on read-only arrays)
    chans = [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((w, h), Image.BILINEAR),
                        dtype=np.float32) for c in range(img.shape[2])]
    return np.stack(chans, axis=-1)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (C, H, W) with C = ``channels`` (1 or 3); colour to gray by luminance."""
    if img.ndim == 2:
        chw = img[None]
    else:
        chw = np.moveaxis(img[..., :3], -1, 0)
    if channels == 1 and chw.shape[0] == 3:
        chw = (0.299 * chw[0] + 0.587 * chw[1] + 0.114 * chw[2])[None]
    elif channels == 3 and chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
    elif channels not in (1, 3):
        raise ValueError(f"channels: got {channels}, expected 1 or 3")
    return np.ascontiguousarray(chw, dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def normalize(chw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (x - mean) / std per channel; mean/std of length 1 or C."""
    c = chw.shape[0]
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    if m.shape[0] not in (1, c) or s.shape[0] not in (1, c):
        raise ValueError(f"mean/std of length {m.shape[0]}/{s.shape[0]} do not fit {c} channels")
    return ((chw - m) / s).astype(np.float32)


def preprocess(img: np.ndarray, size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The model input of one decoded image: resize -> channels -> normalise; (C, size, size) float32."""
    chw = to_channels(resize(img, size), channels)
    return normalize(chw, fit_channels(mean, channels), fit_channels(std, channels))


def fit_channels(v: Sequence[float], channels: int) -> list[float]:
    """A per-channel mean or std fitted to ``channels``: 3 values averaged for 1 channel, 1 value repeated for 3."""
    v = list(v)
    if len(v) == channels:
        return v
    if channels == 1 and len(v) == 3:
        return [float(np.mean(v))]
    if channels == 3 and len(v) == 1:
        return v * 3
    raise ValueError(f"mean/std {v} do not fit {channels} channels")
