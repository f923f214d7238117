"""Models: one registry (timm's) for timm models and medistill's own, one contract for all.

``create_model(name, num_classes=, in_chans=, pretrained=)`` builds any timm model by name or a medistill model
(``eeea_net_c2``, ``kdfmv``, ``tiny_cnn``, registered into timm's registry). Every model then offers:

- ``forward_features(x) -> (B, C, h, w)`` features before pooling (token models: ``(B, N, C)``),
- ``forward_head(f, pre_logits=False) -> (B, L)``,
- ``num_features`` and ``num_classes``,
- ``input_config(model)``: size, channels, mean, std it expects,
- ``cam_layer(model)``: the module explanations target, with a reshape function for token models.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import MedistillError

from . import eeea as _eeea  # noqa: F401 - registers eeea_net_c2
from . import kdfmv as _kdfmv  # noqa: F401 - registers kdfmv, tiny_cnn

log = logging.getLogger(__name__)

OWN_MODELS = ("eeea_net_c2", "kdfmv", "tiny_cnn")


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


def create_model(name: str, *, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                 image_size: int | None = None, drop_rate: float | None = None, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs and ``in_chans`` input channels.

    ``pretrained=True`` loads ImageNet weights from a file shipped in a Python package (EfficientNet-Lite0 here);
    model hubs are not contacted, and a model without offline weights raises ModelError saying so.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ModelError(f"model {name!r} is not a medistill or timm model"
                         + (f"; similar names: {', '.join(close)}" if close else ""))
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    if image_size is not None and _takes_img_size(name):
        kwargs["img_size"] = image_size
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, name, in_chans=in_chans)
    model.medistill_name = name
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if in_chans == 1:  # grayscale: one mean/std (the average of the RGB ones, matching timm's conv adaptation)
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    model.medistill_input = InputConfig(size, in_chans, mean, std)
    return model


def _takes_img_size(name: str) -> bool:
    return any(k in name for k in ("vit", "deit", "swin", "beit", "eva", "cait", "xcit"))


def input_config(model: nn.Module) -> InputConfig:
    cfg = getattr(model, "medistill_input", None)
    if cfg is None:
        raise ModelError(f"{type(model).__name__} was not built by medistill.create_model: no input config")
    return cfg


def is_token_model(model: nn.Module) -> bool:
    """Transformers whose features are tokens (B, N, C) rather than maps (B, C, h, w)."""
    return hasattr(model, "patch_embed") and not hasattr(model, "stages") or type(model).__name__ in (
        "VisionTransformer", "Deit", "VisionTransformerDistilled", "Eva", "Beit")


def cam_layer(model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The module Grad-CAM-style explanations hook, and a reshape turning its output into (B, C, h, w) maps.

    CNNs: the last feature stage (``pretrained_cfg['cam_layer']`` when set, else timm's ``feature_info[-1]``).
    Vision transformers: the last block's first norm, tokens reshaped to the patch grid (class tokens dropped).
    Swin-like models output (B, h, w, C) maps, permuted to (B, C, h, w).
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("cam_layer")
    if name:
        return model.get_submodule(name), None
    if is_token_model(model) and hasattr(model, "blocks"):
        n_prefix = getattr(model, "num_prefix_tokens", 1)

        def tokens_to_map(t: torch.Tensor) -> torch.Tensor:
            t = t[:, n_prefix:, :]  # (B, h*w, C)
            side = int(round(t.shape[1] ** 0.5))
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)  # (B, C, h, w)

        return model.blocks[-1].norm1, tokens_to_map
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.info[-1]
        module = model.get_submodule(last["module"])
        if "swin" in type(model).__name__.lower():
            return module, lambda t: t.permute(0, 3, 1, 2)
        return module, None
    raise ModelError(f"{type(model).__name__}: cannot tell which layer explanations should target")


def feature_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv stage, shallow to deep (for KD-FMV per-layer average feature maps)."""
    if hasattr(model, "stages") and isinstance(model.stages, nn.Sequential) and type(model).__name__ == "KDFMVNet":
        return [(f"stages.{i}", m) for i, m in enumerate(model.stages)]
    info = getattr(model, "feature_info", None)
    if info:
        items = info if isinstance(info, list) else info.info
        return [(d["module"], model.get_submodule(d["module"])) for d in items]
    return [("cam_layer", cam_layer(model)[0])]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int | None = None, channels: int | None = None) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (``torch.utils.flop_counter``; FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = getattr(model, "medistill_input", None)
    size = size or (cfg.size if cfg else 224)
    channels = channels or (cfg.channels if cfg else 3)
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, channels, size, size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


from .weights import load_weights, save_weights  # noqa: E402

__all__ = ["InputConfig", "ModelError", "OWN_MODELS", "cam_layer", "count_macs", "count_params", "create_model",
           "feature_stages", "input_config", "load_weights", "save_weights"]
