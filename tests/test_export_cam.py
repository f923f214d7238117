"""The explain graph: analytic Grad-CAM in the forward pass, against autograd and pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from medistill.export.cam_graph import (CamGraph, _act, _act_grad, gradcam_reference, map_correlations,
                                        pooled_head, upsample_maps)
from medistill.models import ModelError, create_model


@pytest.mark.parametrize("act", ["relu", "hard_swish", "silu", "identity"])
def test_activation_derivative_matches_autograd(act):
    # the branch points of hard-swish (-3, 3) and ReLU (0) included
    z = torch.cat([torch.linspace(-5, 5, 101), torch.tensor([-3.0, 3.0, 0.0, -2.9999, 2.9999])]).double()
    z.requires_grad_(True)
    (g,) = torch.autograd.grad(_act(z, act).sum(), z)
    assert torch.allclose(_act_grad(z.detach(), act), g, atol=1e-12)


@pytest.mark.parametrize("name,channels,size", [("tiny_cnn", 1, 64), ("eeea_net_c2", 3, 128)])
def test_cam_graph_matches_pytorch_grad_cam(name, channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_chans=channels, image_size=size, drop_rate=0.0).eval()
    x = torch.randn(2, channels, size, size)
    graph = CamGraph(model)
    with torch.no_grad():
        logits, cams = graph(x)
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert cams.shape[:2] == (2, 5) and float(cams.min()) >= 0 and float(cams.max()) <= 1
    ref = gradcam_reference(model, x).numpy()  # (2, 5, size, size)
    corr = map_correlations(upsample_maps(cams.numpy(), (size, size)), ref)
    assert corr.shape == (2, 5)
    assert corr.min() >= 0.99, corr


def test_eeea_head_is_the_mlp_with_hard_swish():
    model = create_model("eeea_net_c2", num_classes=14, in_chans=3, image_size=64)
    layers = pooled_head(model)
    assert [tuple(layer.weight.shape) for layer in layers] == [(1280, 960), (14, 1280)]
    assert [layer.act for layer in layers] == ["hard_swish", "identity"]


def test_caller_model_is_not_touched():
    model = create_model("tiny_cnn", num_classes=3, in_chans=1, image_size=32)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    CamGraph(model)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _NoPool(nn.Module):
    num_classes = 2

    def forward_features(self, x):
        return x

    def forward_head(self, x):
        return x.flatten(1)[:, :2]


class _GeluHead(nn.Module):
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(4, 4, 1)
        self.act2 = nn.GELU()
        self.classifier = nn.Linear(4, 2)

    def get_classifier(self):
        return self.classifier


def test_unsupported_models_are_refused_with_a_reason():
    with pytest.raises(ModelError, match="global average pooling"):
        pooled_head(_NoPool())
    gelu = type("MobileNetV3", (_GeluHead,), {})()  # a MobileNetV3-shaped head with an unsupported activation
    with pytest.raises(ModelError, match="GELU"):
        pooled_head(gelu)


def test_map_correlations_edge_cases():
    a = np.random.default_rng(0).random((1, 3, 4, 4))
    b = a.copy()
    b[0, 1] = 0.0  # one constant map against a varying one
    a[0, 2] = 0.0
    b[0, 2] = 0.0  # both constant: identical
    corr = map_correlations(a, b)
    assert corr[0, 0] == pytest.approx(1.0)
    assert corr[0, 1] == 0.0
    assert corr[0, 2] == 1.0


@pytest.mark.slow
def test_eeea_explain_graph_in_onnx_runtime(tmp_path):
    """EEEA-Net-C2 at 64 px through the exporter: logits and maps in ONNX Runtime match PyTorch and Grad-CAM."""
    from medistill.export.onnx import export_onnx, ort_outputs

    torch.manual_seed(0)
    model = create_model("eeea_net_c2", num_classes=4, in_chans=3, image_size=64, drop_rate=0.0).eval()
    path = export_onnx(model, tmp_path / "m.onnx", labels=list("abcd"), task="multilabel", explain=True)
    x = torch.randn(3, 3, 64, 64)
    logits, cams = ort_outputs(path, x.numpy(), maps=True)
    with torch.no_grad():
        ref_logits, ref_cams = CamGraph(model)(x)
    assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4
    assert np.abs(cams - ref_cams.numpy()).max() <= 1e-4
    corr = map_correlations(upsample_maps(cams, (64, 64)), gradcam_reference(model, x).numpy())
    assert corr.min() >= 0.99
    import onnx  # the graph holds plain inference ops, no gradient ops

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any("Grad" in op for op in ops)
