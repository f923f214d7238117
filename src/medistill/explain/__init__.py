"""Explanations: what a model looks at, per label, and how to measure it.

- ``cams``: Grad-CAM, Grad-CAM++, HiResCAM, EigenCAM, LayerCAM (pytorch-grad-cam).
- ``medistill.maps.attributions``: Integrated Gradients, GradientShap and occlusion (captum), shared with the
  explanation-aware losses.
- ``featuremaps``: KD-FMV per-layer average feature maps.
- ``metrics``: teacher/student agreement, localisation against truth, deletion/insertion faithfulness.
- ``sanity``: the weight-randomisation sanity check.
- ``runner``: explain a run over images or a dataset split, teacher beside student, and write the results;
  its parts: ``options`` (what to explain and how: the CLI's flags), ``inputs`` (images, a split of the run's
  data or of another dataset, each side's model inputs), ``sides`` (the student and its teacher), ``labels``
  (which labels to explain), ``scoring`` (maps and their scores), ``figures`` (overlays and feature-map grids).

``explain_maps(model, images, labels, method)`` is the one entry point for maps: ``images`` (N, C, H, W)
normalised model inputs, ``labels`` (N,) one label index per row (repeat an image to explain several labels);
it returns float32 (N, S, S) maps in [0, 1]. The caller's model keeps its mode, gradients and hooks.

Importing this package does not import torch (the CLI builds its flags from :mod:`.options` at start-up, and
``medistill predict`` must stay torch-free); the explainers import it when called.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..cam_policy import CAM_LAYER_POLICIES, DEFAULT_CAM_LAYERS, DEFAULT_CAM_MIN_SIZE
from ..maps.errors import ExplainError
from ..runs import EXPLAIN_FILE  # the summary ``medistill explain`` writes (every artefact is named in ``runs``)

#: method -> (module, kind). Names as the papers write them; ``shap`` and ``ig`` are the short forms.
METHODS = {
    "gradcam": "cam", "gradcam++": "cam", "hirescam": "cam", "eigencam": "cam", "layercam": "cam",
    "integrated_gradients": "attribution", "gradientshap": "attribution",
    "occlusion": "attribution", "fmv": "featuremap",
}
ALIASES = {"ig": "integrated_gradients", "shap": "gradientshap"}
#: methods whose map is the same for every label of an image
LABEL_AGNOSTIC = ("eigencam", "fmv")
#: ``labels`` value asking for each image's ground-truth positive labels
TRUTH_LABELS = "truth"


def canonical_method(method: str) -> str:
    """The method's canonical name; ExplainError naming the valid ones when unknown."""
    name = ALIASES.get(method.lower(), method.lower())
    if name not in METHODS:
        raise ExplainError(f"method {method!r}: expected one of {', '.join([*METHODS, *ALIASES])}")
    return name


def explain_maps(model: Any, images: Any, labels: Sequence[int], method: str = "gradcam", *,
                 size: int | None = None, batch_size: int | None = None, layer: Any = None,
                 background: Any = None, cam_layers: str = DEFAULT_CAM_LAYERS,
                 cam_min_size: int = DEFAULT_CAM_MIN_SIZE, **options: Any) -> np.ndarray:
    """Maps (N, S, S) in [0, 1] of ``method`` for ``images`` (N, C, H, W) and ``labels`` (N,).

    ``layer``: module or name for CAMs; without it ``cam_layers`` / ``cam_min_size`` choose the layer(s)
    (:func:`medistill.models.cam_layers.choose_layers`). ``background``: (M, C, H, W) training
    images for GradientShap. ``options`` go to the method (``n_steps``, ``n_samples``, ``stdevs``, ``seed``; occlusion's
    ``window`` and ``stride``).
    """
    method = canonical_method(method)
    kind = METHODS[method]
    if kind == "cam":
        from .cams import cam_maps

        return cam_maps(model, images, labels, method=method, layer=layer, size=size, batch_size=batch_size or 32,
                        cam_layers=cam_layers, min_size=cam_min_size)
    if kind == "attribution":
        from ..maps.attributions import attribution_maps

        return attribution_maps(model, images, labels, method=method, background=background, size=size,
                                batch_size=batch_size or 32, **options)
    from .featuremaps import fmv_maps

    return fmv_maps(model, images, labels, size=size, batch_size=batch_size or 32)


def __getattr__(name: str) -> Any:
    if name == "explaining":  # lazily: maps.base imports torch
        from ..maps.base import explaining

        return explaining
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALIASES", "CAM_LAYER_POLICIES", "DEFAULT_CAM_LAYERS", "DEFAULT_CAM_MIN_SIZE", "EXPLAIN_FILE",
           "LABEL_AGNOSTIC", "METHODS", "TRUTH_LABELS", "ExplainError", "canonical_method", "explain_maps",
           "explaining"]
