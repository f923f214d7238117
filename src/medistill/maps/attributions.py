"""Pixel attributions with captum, one map per (image, label) pair.

Methods (captum classes; papers):

=====================  =================================================================================
integrated_gradients   Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017:
                       (x - x') * mean over the path x' -> x of d score / d input. Baseline x': a black image
                       (0 before normalisation).
gradientshap           Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions" (SHAP), NeurIPS
                       2017, in its expected-gradients form (captum ``GradientShap``, the estimator of shap's
                       ``GradientExplainer``): gradients at random points between the input and baselines drawn
                       from a background of training images, times (x - baseline), averaged.
occlusion              Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014
                       (captum ``Occlusion``): a square window slides over the image; each pixel gets the mean
                       drop of the label's score over the windows that covered it, the window filled with 0
                       after normalisation (the dataset mean). No gradients: what the model's output does
                       when that region is hidden. Costs one forward pass per window position; the reference
                       for where a model's evidence is (Grad-CAM on a network whose late layers mix space, such
                       as EfficientNet, can point elsewhere while occluding the lesion still removes the
                       finding).
=====================  =================================================================================

The score explained for label ``k`` is its raw logit (one sigmoid per label; see ``cams``). An attribution
(N, C, H, W) becomes a map by taking absolute values (occlusion: the positive part, evidence for the label) and
summing over channels, then it is upsampled to the
requested size and divided by its maximum, so maps lie in [0, 1] like CAMs (an all-zero map stays zero).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from captum.attr import GradientShap, IntegratedGradients, Occlusion

from ..models import ModelError, input_config
from .base import ExplainError, check_inputs, explaining, model_device, resize_maps

log = logging.getLogger(__name__)

ATTRIBUTION_METHODS = ("integrated_gradients", "gradientshap", "occlusion")


def occlusion_window(side: int, window: int = 0, stride: int = 0) -> tuple[int, int]:
    """(window, stride) in pixels for an image ``side`` px a side: given values, else a window of about a tenth
    of the side (22 px at 224, the pointing game's tolerance scale) and a stride of a third of the window."""
    w = window or max(3, round(side / 10))
    return w, stride or max(1, w // 3)


def black_baseline(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W): a black image (0 in [0, 1]) normalised with the model's mean and std; zeros if unknown."""
    c = images.shape[1]
    try:
        cfg = input_config(model)
    except ModelError:
        log.warning("%s has no input config: the Integrated Gradients baseline is 0 after normalisation",
                    type(model).__name__)
        return torch.zeros(1, *images.shape[1:], dtype=images.dtype)
    mean, std = list(cfg.mean), list(cfg.std)
    mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
    if len(mean) != c or len(std) != c:
        raise ExplainError(f"input config mean/std of length {len(cfg.mean)}/{len(cfg.std)} do not fit "
                           f"{c}-channel images")
    mean, std = torch.tensor(mean), torch.tensor(std)
    return (-mean / std).view(1, c, 1, 1).expand(1, *images.shape[1:]).to(images.dtype).clone()


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed numpy's and torch's global generators for the block (captum draws from both), then restore them."""
    np_state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def to_map(attr: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attributions -> (N, H, W): absolute values summed over channels."""
    return attr.detach().abs().sum(dim=1)


def normalise_max(maps: np.ndarray) -> np.ndarray:
    """Divide each (H, W) map by its maximum (maps >= 0); all-zero maps stay zero."""
    peak = maps.reshape(maps.shape[0], -1).max(axis=1) if maps.size else np.zeros(0, np.float32)
    return (maps / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def attribution_maps(model: nn.Module, images: torch.Tensor, labels: Sequence[int], *,
                     method: str = "integrated_gradients", background: torch.Tensor | None = None,
                     size: int | None = None, batch_size: int = 32, n_steps: int = 32, n_samples: int = 16,
                     stdevs: float = 0.0, seed: int = 0, window: int = 0, stride: int = 0) -> np.ndarray:
    """One attribution map per row: ``images`` (N, C, H, W) normalised, ``labels`` (N,) label indices.

    ``background`` (M, C, H, W): normalised training images, required by ``gradientshap``. ``n_steps``: path
    steps of Integrated Gradients; ``n_samples`` and ``stdevs``: random points per input and input noise of
    GradientShap. ``batch_size``: at most this many images go through the model at once (each image becomes
    ``n_samples`` or ``n_steps`` model inputs, so memory stays bounded for a DenseNet at 224 px). Random draws
    are seeded with ``seed`` without disturbing the caller's generators. ``window`` / ``stride``: the occlusion
    square and its step in pixels (0: :func:`occlusion_window`).
    Returns float32 (N, S, S) in [0, 1], S = ``size`` or the input size.
    """
    if method not in ATTRIBUTION_METHODS:
        raise ExplainError(f"method {method!r}: expected one of {list(ATTRIBUTION_METHODS)}")
    labels = check_inputs(images, labels, getattr(model, "num_classes", None))
    for name, value in (("batch_size", batch_size), ("n_steps", n_steps), ("n_samples", n_samples)):
        if value < 1:
            raise ExplainError(f"{name}: got {value}, expected at least 1")
    for name, value in (("window", window), ("stride", stride)):
        if not 0 <= value <= min(images.shape[-2:]):
            raise ExplainError(f"occlusion {name}: got {value} px, expected 0 (automatic) to "
                               f"{min(images.shape[-2:])} (the image side)")
    if method == "gradientshap":
        if background is None or len(background) == 0:
            raise ExplainError("gradientshap needs a background: a (M, C, H, W) tensor of normalised training "
                               "images (got none)")
        if tuple(background.shape[1:]) != tuple(images.shape[1:]):
            raise ExplainError(f"background: got shape {tuple(background.shape)}, expected (M, "
                               f"{', '.join(str(s) for s in images.shape[1:])}) like the images")
    if method == "occlusion":
        return _occlusion_maps(model, images, labels, size=size, batch_size=batch_size,
                               window=occlusion_window(min(images.shape[-2:]), window, stride))
    out = []
    with explaining(model):
        device = model_device(model)
        explainer = IntegratedGradients(model) if method == "integrated_gradients" else GradientShap(model)
        base = black_baseline(model, images).to(device) if method == "integrated_gradients" else None
        bg = background.to(device) if background is not None else None
        with seeded(seed, device), torch.enable_grad():
            # rows per call: GradientShap runs rows * n_samples inputs at once; Integrated Gradients chunks its
            # rows * n_steps inputs into passes of batch_size (captum's internal_batch_size)
            rows = max(1, batch_size // n_samples) if method == "gradientshap" else max(1, batch_size // 2)
            for start in range(0, len(labels), rows):
                x = images[start:start + rows].to(device).requires_grad_(True)  # (b, C, H, W)
                target = labels[start:start + rows]
                if method == "integrated_gradients":
                    attr = explainer.attribute(x, baselines=base.expand_as(x), target=target, n_steps=n_steps,
                                               internal_batch_size=max(batch_size, 2 * len(target)))
                else:
                    attr = explainer.attribute(x, baselines=bg, target=target, n_samples=n_samples,
                                               stdevs=stdevs)
                out.append(to_map(attr).cpu())  # (b, H, W)
    maps = torch.cat(out).numpy() if out else np.zeros((0, images.shape[-2], images.shape[-1]), np.float32)
    return normalise_max(resize_maps(maps, size))


def _occlusion_maps(model: nn.Module, images: torch.Tensor, labels: list[int], *, size: int | None,
                    batch_size: int, window: tuple[int, int]) -> np.ndarray:
    """Occlusion maps (see the module docstring): one image at a time, ``batch_size`` window positions per
    forward pass; positive part, max-normalised."""
    w, st = window
    c = images.shape[1]
    out = []
    with explaining(model), torch.no_grad():
        device = model_device(model)
        explainer = Occlusion(model)
        for i, k in enumerate(labels):
            x = images[i:i + 1].to(device)
            attr = explainer.attribute(x, sliding_window_shapes=(c, w, w), strides=(c, st, st), baselines=0.0,
                                       target=int(k), perturbations_per_eval=batch_size)
            out.append(attr.detach().clamp(min=0).sum(dim=1).cpu())  # (1, H, W)
    maps = torch.cat(out).numpy() if out else np.zeros((0, images.shape[-2], images.shape[-1]), np.float32)
    return normalise_max(resize_maps(maps, size))
