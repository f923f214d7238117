"""The shallow student of KD-FMV ("Knowledge distillation to enhance transparency": a DenseNet121 teacher
distilled into a five-layer CNN explained with per-layer average feature maps, Grad-CAM and SHAP).

Five conv layers (3x3 conv + BN + ReLU, each followed by 2x2 max-pooling but the last), widths 16-32-64-128-256,
then global average pooling and one linear layer. The paper names no exact widths; these keep the student at
~0.4M parameters and ~1/20 of DenseNet121's MACs at the same input size.

A student family for "how small can the model be": ``kdfmv_w0.5`` (any ``<name>_w<multiplier>`` of ``kdfmv`` or
``tiny_cnn``) scales every layer's width, rounded to a multiple of 4 (``kdfmv_w0.25``: 4-8-16-32-64, about 1/15 of
the MACs). The width lives in the model's name, so every record that names a model (``run.json``, ONNX metadata)
rebuilds it without another field.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

WIDTHS = (16, 32, 64, 128, 256)
TINY_WIDTHS = (8, 16, 32, 32, 64)

_IMAGENET = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
             "first_conv": "stages.0.0", "classifier": "fc"}
#: timm's registered configs (``create_model`` sets the size and channels of each instance)
default_cfgs = generate_default_cfgs({"kdfmv": {**_IMAGENET, "num_classes": 4},
                                      "tiny_cnn": {**_IMAGENET, "num_classes": 4}})
#: the CAM layer (the last conv stage) and the five stages of KD-FMV's per-layer average feature maps
LAYERS = {"cam_layer": "stages.4", "cam_reshape": None, "feature_stages": [f"stages.{i}" for i in range(5)]}


_WIDTH_NAME = re.compile(r"^(kdfmv|tiny_cnn)_w(\d+(?:\.\d+)?)$")


def width_variant(name: str) -> tuple[str, float] | None:
    """``("kdfmv", 0.5)`` for ``"kdfmv_w0.5"``; None for any other name. The multiplier must lie in (0, 8]."""
    m = _WIDTH_NAME.match(name)
    if m is None:
        return None
    width = float(m.group(2))
    if not 0 < width <= 8:
        raise ValueError(f"model {name!r}: width multiplier {width:g} outside (0, 8]")
    return m.group(1), width


def width_name(base: str, width: float) -> str:
    """The model name of ``base`` at ``width`` (``kdfmv`` at 1, ``kdfmv_w0.25`` ...); inverse of
    :func:`width_variant`."""
    return base if width == 1 else f"{base}_w{width:g}"


def scaled_widths(widths: tuple[int, ...], width: float) -> tuple[int, ...]:
    """Each layer's width times ``width``, rounded to a multiple of 4 (at least 4)."""
    return tuple(max(4, int(round(c * width / 4.0)) * 4) for c in widths)


class KDFMVNet(nn.Module):
    """conv1..conv5 -> GAP -> dropout -> fc. ``stages`` lists the five layers for average feature maps."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3, widths: tuple[int, ...] = WIDTHS,
                 drop_rate: float = 0.2):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            block = [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                block.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*block))
            c = w
        self.stages = nn.Sequential(*layers)
        self.num_features = c
        self.num_classes = num_classes
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # (B, 256, H/16, W/16)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x).flatten(1))  # (B, 256)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def kdfmv(pretrained: bool = False, num_classes: int = 4, in_chans: int = 3, drop_rate: float = 0.2,
          width: float = 1.0, **kwargs) -> KDFMVNet:
    if pretrained:
        raise RuntimeError("kdfmv: no pretrained weights exist; it is trained from scratch or distilled")
    return _build("kdfmv", num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                  widths=scaled_widths(WIDTHS, width), **kwargs)


@register_model
def tiny_cnn(pretrained: bool = False, num_classes: int = 4, in_chans: int = 3, drop_rate: float = 0.0,
             width: float = 1.0, **kwargs) -> KDFMVNet:
    """A ~25k-parameter CNN (widths 8-16-32-32-64) for tests that must train in seconds."""
    if pretrained:
        raise RuntimeError("tiny_cnn: no pretrained weights exist")
    return _build("tiny_cnn", num_classes=num_classes, in_chans=in_chans, widths=scaled_widths(TINY_WIDTHS, width),
                  drop_rate=drop_rate, **kwargs)


def _build(variant: str, **kwargs) -> KDFMVNet:
    model = build_model_with_cfg(KDFMVNet, variant, False, **kwargs)
    model.pretrained_cfg = {**model.pretrained_cfg, **LAYERS}
    model.default_cfg = model.pretrained_cfg
    return model
