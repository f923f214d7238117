"""Which layer a class activation map hooks: the policies and their defaults (torch-free, so option dataclasses
can name them; :func:`medistill.models.cam_layers.choose_layers` applies them).

One policy serves both sides of explanation: ``medistill explain --cam-layers`` (the maps shown and scored) and the
explanation-aware distillation losses (``distill.cam_layers``: the maps e2KD / CAT-KD match), so a student is
trained on the very maps it is later judged by.

- ``auto``: the deepest of the model's feature stages whose map is at least ``cam_min_size`` px a side;
- ``fuse``: that stage and every deeper one, their min-max scaled maps averaged (LayerCAM-style; the losses
  fuse them in the graph: :func:`medistill.maps.combine.fuse_maps`);
- ``poly``: the same stages as ``fuse``, the deepest map refined by each finer one (Poly-CAM's backward
  recursion, :func:`medistill.maps.combine.refine_maps`): the deep map says which cell holds the evidence, the
  fine maps where in that cell;
- ``model``: the model's declared CAM layer (``pretrained_cfg["cam_layer"]``, often stride 32).
"""

from __future__ import annotations

CAM_LAYER_POLICIES = ("auto", "fuse", "poly", "model")
DEFAULT_CAM_LAYERS = "auto"
DEFAULT_CAM_MIN_SIZE = 8
