"""The model contract: what every medistill model (timm's or our own) declares in ``model.pretrained_cfg``.

timm keeps a model's input settings in its ``pretrained_cfg`` (``input_size`` ``(C, S, S)``, ``mean``, ``std``), so
``timm.data.resolve_model_data_config(model)`` and :func:`input_config` read the same dict and always agree.
medistill adds three plain-data keys to the same dict, written once when the model is built
(:func:`declare_layers`) and only read afterwards:

- ``cam_layer``: dotted name of the module Grad-CAM-style explanations hook,
- ``cam_reshape``: ``None`` (conv maps ``(B, C, h, w)``), ``"tokens"`` (``(B, N, C)`` tokens of a vision
  transformer, prefix tokens dropped) or ``"nhwc"`` (Swin-like ``(B, h, w, C)`` maps),
- ``feature_stages``: dotted names of the feature stages, shallow to deep (KD-FMV's per-layer feature maps).

Our own models declare these in their modules (``eeea.py``, ``kdfmv.py``); timm models get them from their own
structure (``feature_info``, ``output_fmt``, ``patch_embed`` / ``blocks``) when :func:`declare_layers` runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import MedistillError
from ..utils.runtime import eval_mode

#: the ``pretrained_cfg`` keys medistill adds to timm's
LAYER_KEYS = ("cam_layer", "cam_reshape", "feature_stages")
RESHAPES = (None, "tokens", "nhwc")


class ModelError(MedistillError):
    """A model name, checkpoint or weight file does not fit; the message says which and what was expected."""


@dataclasses.dataclass
class InputConfig:
    """What a model expects as input: a (channels, size, size) tensor normalised with mean / std."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "channels": self.channels, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputConfig":
        return cls(int(d["size"]), int(d["channels"]), tuple(float(v) for v in d["mean"]),
                   tuple(float(v) for v in d["std"]))


def _cfg(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        raise ModelError(f"{type(model).__name__} has no pretrained_cfg: build it with medistill.models.create_model")
    return cfg


def input_config(model: nn.Module) -> InputConfig:
    """Size, channels, mean and std of ``model``'s input, from ``model.pretrained_cfg`` (as timm resolves them)."""
    cfg = _cfg(model)
    if "input_size" not in cfg:
        raise ModelError(f"{type(model).__name__}: pretrained_cfg has no input_size")
    channels, _, size = (int(v) for v in cfg["input_size"])
    return InputConfig(size, channels, tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]))


def set_input_config(model: nn.Module, inp: InputConfig) -> nn.Module:
    """Write ``inp`` into ``model.pretrained_cfg`` (a fresh dict: a cfg shared with timm's registry is not
    touched); returns ``model``."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(input_size=(inp.channels, inp.size, inp.size), mean=tuple(inp.mean), std=tuple(inp.std))
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's alias
    return model


def declare_layers(model: nn.Module) -> None:
    """Fill ``cam_layer`` / ``cam_reshape`` / ``feature_stages`` of ``model.pretrained_cfg`` where the model's
    own module did not declare them, from its timm structure; raises ModelError when no CAM layer can be found."""
    cfg = _cfg(model)
    if not cfg.get("cam_layer"):
        info = _feature_info(model)
        if getattr(model, "output_fmt", "NCHW") == "NHWC" and info:  # Swin-like: (B, h, w, C) stage outputs
            cfg.update(cam_layer=info[-1], cam_reshape="nhwc")
        elif hasattr(model, "patch_embed") and hasattr(model, "blocks") and not hasattr(model, "stages"):
            # vision transformers: the last block's first norm, tokens reshaped to the patch grid
            cfg.update(cam_layer=f"blocks.{len(model.blocks) - 1}.norm1", cam_reshape="tokens")
        elif info:
            cfg.update(cam_layer=info[-1], cam_reshape=None)
        else:
            raise ModelError(f"{type(model).__name__}: cannot tell which layer explanations should target "
                             f"(no feature_info and no pretrained_cfg['cam_layer'])")
    cfg.setdefault("cam_reshape", None)
    if not cfg.get("feature_stages"):
        cfg["feature_stages"] = _feature_info(model) or [cfg["cam_layer"]]
    if cfg["cam_reshape"] not in RESHAPES:
        raise ModelError(f"{type(model).__name__}: pretrained_cfg['cam_reshape'] is {cfg['cam_reshape']!r}, "
                         f"expected one of {list(RESHAPES)}")


def _feature_info(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if not info:
        return []
    items = info if isinstance(info, list) else info.info
    return [d["module"] for d in items]


def _layers(model: nn.Module) -> dict[str, Any]:
    cfg = _cfg(model)
    if not cfg.get("cam_layer"):
        raise ModelError(f"{type(model).__name__}: pretrained_cfg declares no cam_layer (build the model with "
                         f"medistill.models.create_model)")
    return cfg


def cam_layer(model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The module Grad-CAM-style explanations hook (``pretrained_cfg['cam_layer']``), and a reshape turning its
    output into ``(B, C, h, w)`` maps (None for conv maps)."""
    cfg = _layers(model)
    module = model.get_submodule(cfg["cam_layer"])
    kind = cfg.get("cam_reshape")
    if kind == "tokens":
        n_prefix = getattr(model, "num_prefix_tokens", 1)

        def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
            t = t[:, n_prefix:, :]  # (B, h*w, C)
            side = int(round(t.shape[1] ** 0.5))
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)  # (B, C, h, w)

        return module, tokens_to_map
    if kind == "nhwc":
        return module, lambda t: t.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
    return module, None


def feature_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every feature stage, shallow to deep (``pretrained_cfg['feature_stages']``)."""
    return [(name, model.get_submodule(name)) for name in _layers(model)["feature_stages"]]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int | None = None, channels: int | None = None) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (``torch.utils.flop_counter``; FLOPs / 2), at the
    model's own input size and channels unless given."""
    if size is None or channels is None:
        inp = input_config(model)
        size, channels = size or inp.size, channels or inp.channels
    p = next(model.parameters())
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, channels, size, size, device=p.device, dtype=p.dtype))
    return int(counter.get_total_flops() // 2)
