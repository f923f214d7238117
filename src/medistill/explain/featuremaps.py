"""KD-FMV per-layer average feature maps.

Jiang, Zhao, Wu & Chaddad, "A Knowledge Distillation-Based Approach to Enhance Transparency of Classifier
Models" (KD-FMV), arXiv:2502.15959, 2025: the output of every conv stage, averaged over channels, shows what
each layer of the (shallow, distilled) student responds to, from edges to the regions the decision rests on.
Each map is upsampled to the image size and min-max scaled to [0, 1].

Written here rather than taken from a library: neither pytorch-grad-cam nor captum averages stage outputs, and
timm's ``forward_intermediates`` is not implemented by every model medistill explains (the KD-FMV student,
EEEA-Net-C2), so a forward hook on each module of ``models.feature_stages`` does it in a few lines. The hooks
live only inside this function (removed in ``finally``, and ``explaining`` removes any left behind).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn

from ..maps.base import ExplainError, check_inputs, explaining, model_device, resize_maps
from ..models import cam_layer, feature_stages

log = logging.getLogger(__name__)


def minmax(maps: np.ndarray) -> np.ndarray:
    """Scale each (H, W) map of (N, H, W) to [0, 1]; a constant map becomes all zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    lo, hi = flat.min(axis=1)[:, None, None], flat.max(axis=1)[:, None, None]
    span = hi - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def _channel_mean(output: torch.Tensor, reshape) -> torch.Tensor:
    """A stage output -> (B, h, w): CNN maps (B, C, h, w) directly; transformer outputs (ViT tokens (B, N, C),
    Swin maps (B, h, w, C)) through the model's CAM reshape first."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if reshape is not None:
        output = reshape(output)
    if output.ndim != 4:
        raise ExplainError(f"feature stage output of shape {tuple(output.shape)}: expected (B, C, h, w) maps")
    return output.detach().float().mean(dim=1)


def average_feature_maps(model: nn.Module, images: torch.Tensor, *, size: int | None = None,
                         batch_size: int = 32) -> list[tuple[str, np.ndarray]]:
    """``[(stage name, maps (N, S, S) in [0, 1])]`` shallow to deep, for ``images`` (N, C, H, W) normalised.

    S = ``size`` or the input size. Stages come from ``models.feature_stages(model)``.
    """
    check_inputs(images, [0] * images.shape[0], None)
    if batch_size < 1:
        raise ExplainError(f"batch_size: got {batch_size}, expected at least 1")
    size = size or images.shape[-1]
    with explaining(model):
        stages = feature_stages(model)
        reshape = cam_layer(model)[1]  # None for CNNs
        device = model_device(model)
        captured: dict[str, torch.Tensor] = {}
        handles = []

        def hook_for(name: str):
            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
                captured[name] = _channel_mean(output, reshape)  # (b, h, w)
            return hook

        per_stage: dict[str, list[np.ndarray]] = {name: [] for name, _ in stages}
        try:
            for name, module in stages:
                handles.append(module.register_forward_hook(hook_for(name)))
            with torch.no_grad():
                for start in range(0, images.shape[0], batch_size):
                    captured.clear()
                    model(images[start:start + batch_size].to(device))
                    for name, _ in stages:
                        if name not in captured:
                            raise ExplainError(f"feature stage {name!r} of {type(model).__name__} was not run "
                                               f"by the forward pass")
                        per_stage[name].append(minmax(resize_maps(captured[name].cpu(), size)))
        finally:
            for h in handles:
                h.remove()
    return [(name, np.concatenate(chunks)) for name, chunks in per_stage.items()]


def fmv_maps(model: nn.Module, images: torch.Tensor, labels, *, size: int | None = None,
             batch_size: int = 32) -> np.ndarray:
    """Method ``fmv``: the deepest stage's average feature map for each row (N, S, S); the same for every label.

    ``labels`` is accepted (and checked) so that ``fmv`` fits the per-(image, label) interface of the other
    methods, but channel means carry no label: they show where the network is active, not why.
    """
    check_inputs(images, labels, getattr(model, "num_classes", None))
    return average_feature_maps(model, images, size=size, batch_size=batch_size)[-1][1]
