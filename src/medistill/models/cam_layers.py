"""The layers a class activation map hooks under a CAM-layer policy (:mod:`medistill.cam_policy`).

A CAM is as coarse as the layer it hooks. The model's declared CAM layer is usually its last stage, stride 32: a
2x2 to 4x4 map at 64-128 px, too coarse to point at a nodule. :func:`choose_layers` measures each feature stage's
map side at the size the model runs at and picks by the policy. ``explain`` (the maps shown and scored) and the
explanation-aware distillation losses (the maps matched in training) both call it, so they agree.

Where a map's cells sit on the image (:func:`layer_grids`): a CAM is a grid of cells to be laid over the input. Bilinear
resizing (``F.interpolate``, OpenCV's ``resize``, which pytorch-grad-cam calls) assumes cell ``i`` of an ``h``-cell map
is centred on input pixel ``(i + 0.5) * H / h - 0.5``. That holds for 2x2 max-pooling (KD-FMV) and for patch
embeddings, but not for a stride-2 convolution with symmetric padding ``k // 2`` (EfficientNet, MobileNet, ResNet's
stem): its cell ``i`` is centred on pixel ``2 i``, half a pixel up-left, and the offsets add up over the network,
so a stride-16 cell is centred on ``16 i``, 7.5 px up-left of where the resize puts it (15.5 px at stride 32). A map
laid over the image that way points 7.5 px right of and below the evidence, past the truth of a small lesion and past
the pointing game's tolerance (8.6 px at 128 px). :func:`layer_grids` traces the convolutions and pools the model runs
to find each layer's true cell centres, and ``explain`` places the map by them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn
from timm.layers import Conv2dSame
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

from ..cam_policy import CAM_LAYER_POLICIES, DEFAULT_CAM_MIN_SIZE, Grid  # noqa: F401 - Grid: importable from here
from .contract import ModelError, cam_layer, input_config


@dataclasses.dataclass
class CamLayer:
    """One hooked layer: its dotted name, module, reshape to (B, C, h, w) (None for conv maps) and map side."""

    name: str
    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    side: int


_SAMPLERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)  # the modules that move or space out a map's cells


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _step(module: nn.Module, in_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[float, float]]:
    """Stride and centre shift of one convolution or pool: output cell ``i`` is centred on its input's cell
    ``stride * i + shift`` (the kernel's centre less the padding before it)."""
    k, s = _pair(module.kernel_size), _pair(module.stride)
    d = _pair(getattr(module, "dilation", 1))
    pad = getattr(module, "padding", 0)
    if isinstance(module, (Conv2dSame, MaxPool2dSame, AvgPool2dSame)):  # TF "SAME": padded in forward, less before
        before = tuple(max((-(-n // si) - 1) * si + (ki - 1) * di + 1 - n, 0) // 2
                       for n, ki, si, di in zip(in_hw, k, s, d))
    elif pad == "same":
        before = tuple((ki - 1) * di // 2 for ki, di in zip(k, d))
    elif pad == "valid":
        before = (0, 0)
    else:
        before = _pair(pad)
    return s, tuple((ki - 1) * di / 2 - b for ki, di, b in zip(k, d, before))  # type: ignore[return-value]


def layer_grids(model: nn.Module, modules: dict[str, nn.Module],
                input_shape: tuple[int, ...]) -> dict[str, Grid | None]:
    """Where each module's output map sits on a ``input_shape`` (C, H, W) input (see the module docstring):
    found by running the model once and composing the stride and padding of every convolution and pool on the way,
    map size by map size. None for a module whose output is not a ``(B, C, h, w)`` map or whose map size the trace
    cannot place (reached through an operation other than a convolution or pool, or two ways that disagree); the
    caller then keeps bilinear resizing's even tiling. The model's train / eval mode is kept."""
    in_hw = (int(input_shape[-2]), int(input_shape[-1]))
    # map size -> (stride, offset) per axis in input pixels; None where two paths to that size disagree
    placed: dict[tuple[int, int], tuple[tuple[float, float], tuple[float, float]] | None] = {in_hw: ((1, 1), (0, 0))}
    outputs: dict[str, tuple[int, int] | None] = {}

    def trace(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if not (inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].ndim == 4 and out.ndim == 4):
            return
        src, dst = tuple(inputs[0].shape[-2:]), tuple(out.shape[-2:])
        if placed.get(src) is None:
            return
        (s0, o0), (step, shift) = placed[src], _step(module, src)
        new = (tuple(a * b for a, b in zip(s0, step)), tuple(o + a * b for o, a, b in zip(o0, s0, shift)))
        if dst not in placed:
            placed[dst] = new
        elif placed[dst] is not None and placed[dst] != new:
            placed[dst] = None

    def record(name: str):
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            outputs[name] = tuple(out.shape[-2:]) if isinstance(out, torch.Tensor) and out.ndim == 4 else None
        return hook

    handles = [m.register_forward_hook(trace) for m in model.modules() if isinstance(m, _SAMPLERS)]
    handles += [m.register_forward_hook(record(n)) for n, m in modules.items()]
    _probe(model, handles, input_shape)
    grids: dict[str, Grid | None] = {}
    for name in modules:
        hw = outputs.get(name)
        where = placed.get(hw) if hw is not None else None
        grids[name] = Grid(*where) if where is not None else None
    return grids


def chosen_grids(model: nn.Module, chosen: list[CamLayer], input_shape: tuple[int, ...]) -> list[Grid | None]:
    """Each chosen layer's :class:`Grid` on a ``input_shape`` (C, H, W) input (:func:`layer_grids`); None for a
    layer whose map is reshaped (tokens, NHWC), which keeps the even tiling, as ``explain`` keeps it."""
    convs = {c.name: c.module for c in chosen if c.reshape is None}
    found = layer_grids(model, convs, tuple(input_shape)) if convs else {}
    return [found.get(c.name) for c in chosen]


def _probe(model: nn.Module, handles: list, input_shape: tuple[int, ...]) -> None:
    """One zero input of ``input_shape`` (C, H, W) through ``model`` in eval mode, for the forward hooks whose
    ``handles`` are removed afterwards; the model's train / eval mode is kept."""
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
    _probe(model, handles, input_shape)
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
