"""The layers a class activation map hooks under a CAM-layer policy (:mod:`medistill.cam_policy`).

A CAM is as coarse as the layer it hooks. The model's declared CAM layer is usually its last stage, stride 32: a
2x2 to 4x4 map at 64-128 px, too coarse to point at a nodule. :func:`choose_layers` measures each feature stage's
map side at the size the model runs at and picks by the policy. ``explain`` (the maps shown and scored) and the
explanation-aware distillation losses (the maps matched in training) both call it, so they agree.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn

from ..cam_policy import CAM_LAYER_POLICIES, DEFAULT_CAM_MIN_SIZE
from .contract import ModelError, cam_layer, input_config


@dataclasses.dataclass
class CamLayer:
    """One hooked layer: its dotted name, module, reshape to (B, C, h, w) (None for conv maps) and map side."""

    name: str
    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    side: int


def map_sides(model: nn.Module, modules: dict[str, nn.Module], reshape: Callable | None,
              input_shape: tuple[int, ...]) -> dict[str, int]:
    """The spatial side (min of h, w) of each module's output for one zero input of ``input_shape`` (C, H, W).
    The model's train / eval mode is kept."""
    sides: dict[str, int] = {}

    def hook(name: str):
        def record(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            t = out if reshape is None else reshape(out)
            sides[name] = int(min(t.shape[-2:])) if isinstance(t, torch.Tensor) and t.ndim == 4 else 0
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sides


def layer_by_name(model: nn.Module, name: str | None) -> tuple[nn.Module, Callable | None]:
    """The module called ``name`` (None: the declared CAM layer) and its reshape to ``(B, C, h, w)``: the declared
    layer's own; a feature stage's when the model's maps are NHWC (a stage's tokens are never reshaped)."""
    declared, reshape = cam_layer(model)
    cfg = model.pretrained_cfg
    if name is None or name == cfg.get("cam_layer"):
        return declared, reshape
    return model.get_submodule(name), reshape if cfg.get("cam_reshape") == "nhwc" else None


def choose_layers(model: nn.Module, policy: str = "auto", *, min_size: int = DEFAULT_CAM_MIN_SIZE,
                  input_shape: tuple[int, ...] | None = None) -> list[CamLayer]:
    """The layers a CAM hooks under ``policy`` (``auto``, ``fuse``, ``poly``, ``model``; see
    :mod:`medistill.cam_policy`), shallow to deep; ``input_shape`` (C, H, W) is what the model runs at (default: its
    declared input)."""
    if policy not in CAM_LAYER_POLICIES:
        raise ModelError(f"cam_layers: got {policy!r}, expected one of {', '.join(CAM_LAYER_POLICIES)}")
    if min_size < 1:
        raise ModelError(f"cam_min_size: got {min_size}, expected at least 1")
    cfg = model.pretrained_cfg
    declared, reshape = cam_layer(model)
    if input_shape is None:
        inp = input_config(model)
        input_shape = (inp.channels, inp.size, inp.size)
    # a vision transformer's blocks all share one token grid: only the declared layer is meaningful
    names = [] if policy == "model" or cfg.get("cam_reshape") == "tokens" else list(cfg.get("feature_stages") or [])
    resolved = {n: layer_by_name(model, n) for n in names}
    stage_reshape = reshape if cfg.get("cam_reshape") == "nhwc" else None  # what layer_by_name gives a stage
    modules = {n: m for n, (m, _r) in resolved.items()}
    modules.setdefault(cfg["cam_layer"], declared)
    sides = map_sides(model, modules, stage_reshape, tuple(input_shape))
    own = CamLayer(cfg["cam_layer"], declared, reshape, sides.get(cfg["cam_layer"], 0))
    stages = [CamLayer(n, m, r, sides.get(n, 0)) for n, (m, r) in resolved.items() if sides.get(n, 0) > 0]
    if policy == "model" or not stages:
        return [own]
    fine = [k for k, st in enumerate(stages) if st.side >= min_size]
    if not fine:
        return [own]
    first = fine[-1]  # the deepest stage fine enough
    return stages[first:] if policy in ("fuse", "poly") else [stages[first]]
