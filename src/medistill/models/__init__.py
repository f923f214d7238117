"""Models: one registry (timm's) for timm models and medistill's own, one contract for all.

``create_model(name, num_classes=, in_chans=, pretrained=)`` builds any timm model by name or a medistill model
(``eeea_net_c2``, ``kdfmv``, ``tiny_cnn``, registered into timm's registry; ``kdfmv_w0.5`` is kdfmv at half its
width, see :mod:`.kdfmv`). Every model then offers:

- ``forward_features(x) -> (B, C, h, w)`` features before pooling (token models: ``(B, N, C)``),
- ``forward_head(f, pre_logits=False) -> (B, L)``,
- ``num_features`` and ``num_classes``,
- ``pretrained_cfg`` holding its input settings and layers (see ``contract``): ``input_config(model)`` (size,
  channels, mean, std; what ``timm.data.resolve_model_data_config`` gives too), ``cam_layer(model)`` and
  ``feature_stages(model)``.
"""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch.nn as nn
from timm.models import get_pretrained_cfg

from . import eeea as _eeea  # noqa: F401 - registers eeea_net_c2
from . import kdfmv as _kdfmv  # noqa: F401 - registers kdfmv, tiny_cnn
from .contract import (InputConfig, ModelError, count_macs, count_params, cam_layer, declare_layers,
                       feature_stages, input_config, set_input_config)
from .weights import load_pretrained, load_weights, save_weights

log = logging.getLogger(__name__)

OWN_MODELS = ("eeea_net_c2", "kdfmv", "tiny_cnn")


def create_model(name: str, *, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                 image_size: int | None = None, drop_rate: float | None = None, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs and ``in_chans`` input channels.

    The model's ``pretrained_cfg`` is its own copy, set to the input it takes: ``(in_chans, image_size,
    image_size)`` (the architecture's default size when ``image_size`` is None), and for one channel the mean of
    the RGB mean / std (matching the summed RGB filters of timm's ``adapt_input_conv``).

    ``pretrained=True`` loads ImageNet weights from a file shipped in a Python package (EfficientNet-Lite0 here);
    model hubs are not contacted, and a model without offline weights raises ModelError saying so.
    """
    try:
        variant = _kdfmv.width_variant(name)
    except ValueError as e:
        raise ModelError(str(e)) from None
    full_name = name
    if variant is not None:  # kdfmv_w0.5: the base architecture at a width multiplier
        name, kwargs["width"] = variant
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ModelError(f"model {name!r} is not a medistill or timm model"
                         + (f"; similar names: {', '.join(close)}" if close else ""))
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    registered = get_pretrained_cfg(name)
    if image_size is not None and registered is not None and registered.fixed_input_size:
        kwargs["img_size"] = image_size  # position embeddings and windows are sized at build time
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if pretrained:
        load_pretrained(model, name, in_chans=in_chans)
    model.medistill_name = full_name
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    model.pretrained_cfg = cfg
    mean, std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if in_chans == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    set_input_config(model, InputConfig(size, in_chans, mean, std))
    declare_layers(model)
    return model


__all__ = ["InputConfig", "ModelError", "OWN_MODELS", "cam_layer", "count_macs", "count_params", "create_model",
           "feature_stages", "input_config", "load_weights", "save_weights", "set_input_config"]
