"""The explain graph: logits and a Grad-CAM map for every label in one forward pass, with no autograd.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017) weights the channels of the last feature maps ``A`` (B, C, h, w) by the spatial mean of the gradient of
the class score ``y_l``::

    alpha_lc = 1/(h w) * sum_ij d y_l / d A_cij        CAM_l = ReLU(sum_c alpha_lc A_c)

When the head is global average pooling ``p = mean_ij A`` followed by layers applied to ``p`` alone,
``d y_l / d A_cij = (1/(h w)) d y_l / d p_c`` for every pixel, so ``alpha_l = (1/(h w)) d y_l / d p`` and the
gradient is that of a small per-image function of ``p``, which we write analytically:

- linear head ``y = W p + b``: ``d y / d p = W`` (L, C), the same for every image (the original CAM of Zhou et al.,
  CVPR 2016, up to the 1/(h w) factor);
- an MLP head ``y = W2 act(W1 p + b1) + b2`` (EEEA-Net-C2 / MobileNetV3: 1x1 conv 960->1280, hard-swish, Linear):
  chain rule, ``d y / d p = (W2 * act'(z1)) @ W1`` (B, L, C), with ``act'`` evaluated in the graph.

Each map is then normalised to [0, 1] per (image, label) as pytorch-grad-cam does (``scale_cam_image``), so the
ONNX graph exports with plain MatMul / Where / ReduceMin ops that every runtime has. Why our own module and not
pytorch-grad-cam: it needs ``torch.autograd`` at run time, which ONNX graphs (and phones) do not have; the tests
check this graph against pytorch-grad-cam's ``GradCAM`` on the same layer.

The ``cams`` output stays at the layer's resolution; where its cells sit on the input (:func:`cam_grid`: an
EfficientNet's or ResNet's cell ``i`` is centred on pixel ``stride * i``, not where an even resize puts it) goes into
the model file's metadata, and the runtime places the map by it (``medistill.inference.place_map``). The export's
parity check compares like with like: the graph's maps and pytorch-grad-cam's, both resized evenly by OpenCV
(:func:`upsample_maps`, as pytorch-grad-cam resizes), which says the graph computes Grad-CAM, not where it is drawn.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..cam_policy import Grid
from ..models import ModelError, cam_layer, input_config
from ..models.cam_layers import layer_grids

log = logging.getLogger(__name__)

#: added to (max - min) when normalising a map, as pytorch-grad-cam's ``scale_cam_image`` does
EPS = 1e-7

ACTIVATIONS = ("identity", "relu", "hard_swish", "silu")


@dataclasses.dataclass
class HeadLayer:
    """One affine layer of a pooled-feature head, ``act(x @ weight.T + bias)``."""

    weight: torch.Tensor  # (out, in)
    bias: torch.Tensor | None  # (out,)
    act: str  # one of ACTIVATIONS


def _act_name(module: nn.Module | None) -> str:
    if module is None or isinstance(module, (nn.Identity, nn.Dropout, nn.Flatten)):
        return "identity"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Hardswish):
        return "hard_swish"
    if isinstance(module, nn.SiLU):
        return "silu"
    raise ModelError(f"explain graph: head activation {type(module).__name__} is not supported; "
                     f"expected one of {', '.join(ACTIVATIONS)}")


def _is_avg_pool(module: nn.Module | None) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return module.output_size in (1, (1, 1))
    pool_type = getattr(module, "pool_type", None)  # timm SelectAdaptivePool2d
    return pool_type == "avg"


def _linear(module: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(module, nn.Linear):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
        w = module.weight.detach().flatten(1)  # (out, in)
        return w, None if module.bias is None else module.bias.detach()
    raise ModelError(f"explain graph: {where} is {type(module).__name__}, expected a Linear or a 1x1 Conv2d")


def _fold_norm(weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fold an eval-mode BatchNorm that follows the affine layer into it (timm's optional ``norm_head``)."""
    if isinstance(norm, nn.Identity):
        return weight, bias
    if type(norm) in (nn.BatchNorm2d, nn.BatchNorm1d):  # not timm's BatchNormAct2d (it has an activation)
        scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
        b = bias if bias is not None else torch.zeros_like(norm.running_mean)
        return weight * scale[:, None], (b - norm.running_mean) * scale + norm.bias.detach()
    raise ModelError(f"explain graph: head norm {type(norm).__name__} is not supported (expected Identity or "
                     f"BatchNorm without activation)")


def pooled_head(model: nn.Module) -> list[HeadLayer]:
    """The layers between global average pooling and the logits, as a chain of affine layers + activations.

    Supported: GAP -> (dropout) -> Linear (KD-FMV, tiny_cnn, timm DenseNet / ResNet / EfficientNet ...) and
    MobileNetV3-style GAP -> 1x1 conv -> (BN) -> activation -> (dropout) -> Linear (EEEA-Net-C2). Anything else
    raises ModelError naming what was found.
    """
    name = type(model).__name__
    if not _is_avg_pool(getattr(model, "global_pool", None)):
        raise ModelError(f"explain graph: {name} does not end in global average pooling (model.global_pool), "
                         f"so Grad-CAM's weights are not a function of the pooled features alone")
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if classifier is None:
        raise ModelError(f"explain graph: {name} has no get_classifier()")
    layers: list[HeadLayer] = []
    conv_head = getattr(model, "conv_head", None)
    # MobileNetV3 applies conv_head after pooling; EfficientNet applies it before (inside forward_features)
    if conv_head is not None and type(model).__name__ == "MobileNetV3":
        w, b = _linear(conv_head, "conv_head")
        w, b = _fold_norm(w, b, getattr(model, "norm_head", nn.Identity()))
        layers.append(HeadLayer(w, b, _act_name(getattr(model, "act2", None))))
    w, b = _linear(classifier, "the classifier")
    layers.append(HeadLayer(w, b, "identity"))
    return layers


def _act(z: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(z)
    if name == "hard_swish":
        return F.hardswish(z)
    if name == "silu":
        return F.silu(z)
    return z


def _act_grad(z: torch.Tensor, name: str) -> torch.Tensor:
    """d act(z) / d z, elementwise, with the same branch boundaries as torch's backward formulas."""
    one, zero = torch.ones_like(z), torch.zeros_like(z)
    if name == "relu":
        return torch.where(z > 0, one, zero)
    if name == "hard_swish":  # torch: 0 for z <= -3, z/3 + 1/2 for -3 < z < 3, 1 from 3 on
        return torch.where(z <= -3.0, zero, torch.where(z < 3.0, z / 3.0 + 0.5, one))
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    return one


class CamGraph(nn.Module):
    """``forward(x) -> (logits (B, L), cams (B, L, h, w))``: Grad-CAM of every label on ``cam_layer(model)``.

    Holds an eval-mode copy of ``model`` (the caller's model is not touched). The CAM layer must be the output of
    ``model.forward_features`` and the head a ``pooled_head``; both are checked here, and the analytic head is
    checked against ``model.forward_head`` on random features.
    """

    def __init__(self, model: nn.Module, *, check_size: int | None = None):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        layers = pooled_head(self.model)
        self.acts = [layer.act for layer in layers]
        self.weights = nn.ParameterList([nn.Parameter(layer.weight.clone(), requires_grad=False) for layer in layers])
        self.biases = nn.ParameterList([nn.Parameter(layer.bias.clone() if layer.bias is not None
                                                     else torch.zeros(layer.weight.shape[0]), requires_grad=False)
                                        for layer in layers])
        self._check(check_size)

    @torch.no_grad()
    def _check(self, size: int | None) -> None:
        inp = input_config(self.model)
        size, channels = size or min(inp.size, 64), inp.channels
        p = next(self.model.parameters())
        x = torch.randn(2, channels, size, size, device=p.device, dtype=p.dtype)
        layer, reshape = cam_layer(self.model)
        if reshape is not None:
            raise ModelError(f"explain graph: {type(self.model).__name__} is a token model; the in-graph CAM "
                             f"supports convolutional feature maps only")
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            feats = self.model.forward_features(x)
        finally:
            handle.remove()
        if not seen or seen[-1].shape != feats.shape or not torch.equal(seen[-1], feats):
            raise ModelError(f"explain graph: the CAM layer of {type(self.model).__name__} is not the output of "
                             f"forward_features, so Grad-CAM weights are not a function of the pooled features")
        expected = self.model.forward_head(feats)
        got = self._head(feats.mean(dim=(2, 3)))[0]
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
            raise ModelError(f"explain graph: the analytic head of {type(self.model).__name__} does not reproduce "
                             f"forward_head (max difference {float((got - expected).abs().max()):.3g})")

    def _head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, L) of pooled features (B, C) and every layer's pre-activation."""
        pre: list[torch.Tensor] = []
        a = pooled
        for w, b, act in zip(self.weights, self.biases, self.acts):
            z = F.linear(a, w, b)  # (B, out)
            pre.append(z)
            a = _act(z, act)
        return a, pre

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)  # (B, C, h, w)
        b, c, h, w = feats.shape
        # keepdim + flatten: exports as GlobalAveragePool (``onnx.global_average_pools``), integer in INT8 graphs
        logits, pre = self._head(feats.mean(dim=(2, 3), keepdim=True).flatten(1))  # (B, L)
        # gradient of every logit w.r.t. the pooled features, last layer first: (1 or B, L, C)
        grad = self.weights[-1].unsqueeze(0)  # (1, L, n)
        for i in range(len(self.weights) - 2, -1, -1):
            grad = grad * _act_grad(pre[i], self.acts[i]).unsqueeze(1)  # (B, L, n_i)
            grad = torch.matmul(grad, self.weights[i])  # (B, L, n_{i-1})
        alpha = grad / float(h * w)  # Grad-CAM channel weights: spatial mean of d y / d A  (., L, C)
        cams = F.relu(torch.matmul(alpha, feats.reshape(b, c, h * w)))  # (B, L, h*w)
        lo = cams.amin(dim=2, keepdim=True)
        cams = cams - lo
        cams = cams / (cams.amax(dim=2, keepdim=True) + EPS)  # per-map [0, 1], as pytorch-grad-cam
        return logits, cams.reshape(b, -1, h, w)  # (B, L), (B, L, h, w)


def cam_grid(model: nn.Module) -> Grid | None:
    """Where the explain graph's ``cams`` cells sit on ``model``'s declared input, as fractions of its side
    (:meth:`Grid.on_image`; stored as ``ModelInfo.cam_grid``), traced by :func:`layer_grids`; None for a reshaped
    (token) map or a layer the trace cannot place, which the runtime lays out evenly, as before."""
    layer, reshape = cam_layer(model)
    if reshape is not None:
        return None
    inp = input_config(model)
    grid = layer_grids(model, {"cam": layer}, (inp.channels, inp.size, inp.size))["cam"]
    return None if grid is None else grid.on_image((inp.size, inp.size))


def gradcam_reference(model: nn.Module, x: torch.Tensor, labels: list[int] | None = None) -> torch.Tensor:
    """pytorch-grad-cam's GradCAM of every label on ``cam_layer(model)``: (B, L, H, W) in [0, 1] at input size.

    Runs on an eval-mode copy of ``model`` (GradCAM switches the model to eval and leaves it there), with the
    hooks released by GradCAM's context manager.
    """
    ref = copy.deepcopy(model).eval()
    layer, reshape = cam_layer(ref)
    n_labels = ref.num_classes if labels is None else len(labels)
    labels = list(range(n_labels)) if labels is None else labels
    out = []
    with GradCAM(model=ref, target_layers=[layer], reshape_transform=reshape) as cam:
        for k in labels:
            out.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(k)] * x.shape[0]))  # (B, H, W)
    return torch.from_numpy(np.stack(out, axis=1))  # (B, L, H, W)


def upsample_maps(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, L, h, w) maps -> (B, L, H, W) with OpenCV's bilinear resize, as pytorch-grad-cam resizes its maps."""
    h, w = size
    out = np.empty(cams.shape[:2] + (h, w), np.float32)
    for i in range(cams.shape[0]):
        for k in range(cams.shape[1]):
            out[i, k] = cv2.resize(np.float32(cams[i, k]), (w, h))
    return out


def map_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each map pair: (B, L, H, W) x2 -> (B, L).

    Two constant maps (both all-zero after ReLU) count as identical (1.0); one constant map against a varying
    one scores 0.0.
    """
    a = a.reshape(a.shape[0], a.shape[1], -1).astype(np.float64)
    b = b.reshape(b.shape[0], b.shape[1], -1).astype(np.float64)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    na, nb = np.sqrt((a * a).sum(-1)), np.sqrt((b * b).sum(-1))
    const_a, const_b = na < 1e-6, nb < 1e-6
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (a * b).sum(-1) / (na * nb)
    corr = np.where(const_a & const_b, 1.0, np.where(const_a | const_b, 0.0, corr))
    return corr
