"""Which layer a CAM hooks: the policies and their defaults (torch-free; :func:`medistill.explain.cams.choose_layers`
applies them).

- ``auto``: the deepest of the model's feature stages whose map is at least ``cam_min_size`` px a side;
- ``fuse``: that stage and every deeper one, their min-max scaled maps averaged (LayerCAM-style);
- ``model``: the model's declared CAM layer (``pretrained_cfg["cam_layer"]``, often stride 32).
"""

from __future__ import annotations

CAM_LAYER_POLICIES = ("auto", "fuse", "model")
DEFAULT_CAM_LAYERS = "auto"
DEFAULT_CAM_MIN_SIZE = 8
