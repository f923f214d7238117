"""Class activation maps with pytorch-grad-cam, one map per (image, label) pair.

Methods (each a pytorch-grad-cam class; papers):

=========  ==========================================================================================
gradcam    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
           Localization", ICCV 2017: channel weights = spatial mean of d score / d activation.
gradcam++  Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep
           Convolutional Networks", WACV 2018: weights from higher-order gradient terms.
hirescam   Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional
           neural networks", arXiv:2011.08891, 2020: element-wise gradient x activation, summed over channels.
eigencam   Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", IJCNN 2020:
           first principal component of the activations. Uses no gradients, so it is the same for every label.
layercam   Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
           IEEE TIP 2021: element-wise positive gradient x activation.
=========  ==========================================================================================

Targets follow house rule 1 (multi-label first): the score explained for label ``k`` is the raw logit of ``k``,
i.e. the input of that label's own sigmoid (pytorch-grad-cam's ``ClassifierOutputTarget``), never a softmax over
labels. For a single-label model that is the pre-softmax class score, as in the Grad-CAM paper.

Which layer (``cam_layers``): a CAM is as coarse as the layer it hooks. The model's declared CAM layer is usually
its last stage, stride 32: a 2x2 to 4x4 map at 64-128 px, too coarse to point at a nodule. ``"model"`` keeps that
layer; ``"auto"`` takes the deepest of the model's feature stages (``pretrained_cfg["feature_stages"]``) whose
map is at least ``min_size`` x ``min_size`` (the declared layer when none is, or when the model declares no
stages); ``"fuse"`` hooks every stage from that one to the deepest and averages their min-max scaled maps
(pytorch-grad-cam's multi-layer aggregation; with ``method="layercam"`` this is LayerCAM's hierarchical fusion,
Jiang et al. 2021); ``"poly"`` hooks the same stages and refines the deepest map with each finer one, Poly-CAM's
backward recursion (:func:`medistill.maps.combine.refine_maps`: the deep map says which cell, the fine ones
where in it). :func:`medistill.models.cam_layers.choose_layers` says which layers a policy picks (the explanation-aware
distillation losses use it too).

Where the map goes: each layer's map is laid over the image by where its cells' receptive fields are centred
(:func:`medistill.models.cam_layers.layer_grids`, :func:`medistill.maps.base.place_maps`), not by pytorch-grad-cam's
even resize, which puts a stride-16 EfficientNet map 7.5 px right of and below the evidence (see
:mod:`medistill.models.cam_layers`). For a network whose cells do tile the image evenly (2x2 max-pooling, patch
embeddings) the two are the same.

Several labels of one image are explained by repeating the image, one row per (image, label) pair, so a batch
of pairs goes through the model once forward and once backward.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import pytorch_grad_cam
import torch
import torch.nn as nn
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ..cam_policy import DEFAULT_CAM_MIN_SIZE as DEFAULT_MIN_SIZE
from ..maps.base import ExplainError, check_inputs, explaining, model_device, place_maps, resize_maps
from ..maps.combine import refine_maps
from ..models import cam_layer
from ..models.cam_layers import Grid, choose_layers, layer_grids

log = logging.getLogger(__name__)

#: method name -> pytorch-grad-cam class name
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
               "eigencam": "EigenCAM", "layercam": "LayerCAM"}




def _placed(cam_cls: type, grids: dict[int, Grid]) -> type:
    """``cam_cls`` whose per-layer map is laid over the input by its layer's grid (``grids``: id of the module ->
    :class:`Grid`) before pytorch-grad-cam min-max scales it and resizes it to the input, which is then a no-op.
    Through ``BaseCAM.get_cam_image``, the one public step that returns a layer's map at its own grid (each
    method's own computation is untouched); the ReLU the library applies next is applied first, as the library
    applies it before its resize."""
    class Placed(cam_cls):
        def get_cam_image(self, input_tensor, target_layer, *args, **kwargs):
            cam = super().get_cam_image(input_tensor, target_layer, *args, **kwargs)  # (B, h, w) at the layer's grid
            grid = grids.get(id(target_layer))
            if grid is None:
                return cam
            return place_maps(np.maximum(cam, 0), grid, tuple(input_tensor.shape[-2:]))  # (B, H, W)

    Placed.__name__ = f"Placed{cam_cls.__name__}"
    return Placed


def _poly(cam_cls: type, grids: list[Grid | None] | None = None) -> type:
    """``cam_cls`` whose several layers' maps are combined by :func:`medistill.maps.combine.refine_maps` (each
    layer's map at its own grid, as the method computes it, then refined from the deepest down) instead of
    pytorch-grad-cam's mean of maps already resized to the input. Through two public methods of the library's
    ``BaseCAM``: ``get_cam_image`` (one layer's map, the step its own LayerCAM, HiResCAM and EigenCAM override)
    is extended to keep each layer's map before the library resizes it, and ``aggregate_multi_layers`` (the
    combination of the layers' maps) refines those instead of averaging the resized ones, each layer placed by its
    ``grids`` entry (shallow to deep; see :mod:`medistill.maps.combine`); the refined map, at the finest layer's
    grid, is laid over the input by that layer's grid when known."""
    class Poly(cam_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.layer_maps: list[torch.Tensor] = []  # this forward pass's maps so far, each (B, 1, h_i, w_i)

        def get_cam_image(self, *args, **kwargs):
            cam = super().get_cam_image(*args, **kwargs)  # (B, h_i, w_i) at the layer's grid
            self.layer_maps.append(torch.from_numpy(np.maximum(cam, 0)).float()[:, None])
            return cam

        def aggregate_multi_layers(self, cam_per_target_layer):
            per_layer, self.layer_maps = self.layer_maps, []
            if len(per_layer) != len(self.target_layers):
                raise ExplainError(f"poly: got {len(per_layer)} per-layer maps for {len(self.target_layers)} "
                                   f"layers")
            refined = refine_maps(per_layer, grids)[:, 0].numpy()  # (B, h, w) at the finest layer's grid
            if grids and grids[0] is not None:
                refined = place_maps(refined, grids[0], tuple(cam_per_target_layer[0].shape[-2:]))
            size = cam_per_target_layer[0].shape[-1], cam_per_target_layer[0].shape[-2]  # (width, height)
            return super().aggregate_multi_layers([scale_cam_image(refined, size)[:, None, :]])

    Poly.__name__ = f"Poly{cam_cls.__name__}"
    return Poly


def resolve_layer(model: nn.Module, layer: nn.Module | str | None = None
                  ) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The module to explain and its reshape: ``layer`` by name or module, else ``models.cam_layer(model)``."""
    if layer is None:
        return cam_layer(model)
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer), None
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n][-8:]
            raise ExplainError(f"layer {layer!r}: no such module in {type(model).__name__}; "
                               f"expected a module name such as {', '.join(names)}") from None
    return layer, None


def cam_maps(model: nn.Module, images: torch.Tensor, labels: Sequence[int], *, method: str = "gradcam",
             layer: nn.Module | str | None = None, size: int | None = None, batch_size: int = 32,
             cam_layers: str = "model", min_size: int = DEFAULT_MIN_SIZE) -> np.ndarray:
    """One class activation map per row: ``images`` (N, C, H, W) normalised, ``labels`` (N,) label indices.

    ``layer`` (a module or name) overrides the ``cam_layers`` policy (:func:`choose_layers`). Returns float32
    (N, S, S) in [0, 1] (each map min-max scaled by pytorch-grad-cam, after its ReLU), with S = ``size`` or the
    input size H. A map is all zero (blank) when the label's evidence at the layer is nowhere positive (Grad-CAM's
    ReLU of a negative weighted sum: typical for a label the model scores low). The caller's model keeps its mode,
    gradients and hooks (``explaining``).
    """
    if method not in CAM_METHODS:
        raise ExplainError(f"method {method!r}: expected one of {sorted(CAM_METHODS)}")
    labels = check_inputs(images, labels, getattr(model, "num_classes", None))
    if batch_size < 1:
        raise ExplainError(f"batch_size: got {batch_size}, expected at least 1")
    cam_cls = getattr(pytorch_grad_cam, CAM_METHODS[method])
    uses_gradients = method != "eigencam"
    out = []
    with explaining(model):
        if layer is not None:
            target_layer, reshape = resolve_layer(model, layer)
            targets_layers = [target_layer]
        else:
            chosen = choose_layers(model, cam_layers, min_size=min_size, input_shape=tuple(images.shape[1:]))
            targets_layers, reshape = [c.module for c in chosen], chosen[-1].reshape
            target_layer = targets_layers[-1]
        device = model_device(model)
        # where each layer's cells sit on the input (conv maps only: a reshaped map keeps the even tiling)
        found = {} if reshape is not None else layer_grids(
            model, {str(k): m for k, m in enumerate(targets_layers)}, tuple(images.shape[1:]))
        grids = {id(m): found[str(k)] for k, m in enumerate(targets_layers) if found.get(str(k)) is not None}
        if cam_layers == "poly" and layer is None and len(targets_layers) > 1:
            cam_cls = _poly(cam_cls, [grids.get(id(m)) for m in targets_layers])
        elif grids:
            cam_cls = _placed(cam_cls, grids)
        # compute_input_gradient: the parameters are frozen inside `explaining`, so the input is what makes
        # the backward graph exist (and weight gradients are never computed).
        cam = cam_cls(model=model, target_layers=targets_layers, reshape_transform=reshape)
        cam.compute_input_gradient = uses_gradients
        try:
            for start in range(0, len(labels), batch_size):
                x = images[start:start + batch_size].to(device)  # (b, C, H, W)
                targets = [ClassifierOutputTarget(k) for k in labels[start:start + batch_size]]
                with torch.enable_grad() if uses_gradients else torch.no_grad():
                    maps = cam(input_tensor=x, targets=targets)  # (b, H, W) in [0, 1]
                if cam.activations_and_grads.gradients == [] and uses_gradients:
                    raise ExplainError(f"{method}: no gradient reached layer {type(target_layer).__name__}; "
                                       f"is it part of the forward pass?")
                out.append(np.asarray(maps, dtype=np.float32))
                cam.activations_and_grads.clear()
        finally:
            # release ourselves: BaseCAM.__exit__ would swallow IndexError and print it
            cam.activations_and_grads.release()
    maps = np.concatenate(out) if out else np.zeros((0, images.shape[-2], images.shape[-1]), np.float32)
    return resize_maps(maps, size)
