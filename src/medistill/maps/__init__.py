"""Low-level maps shared by the explanation-aware losses (and the training that feeds them) and ``explain``.

- :mod:`.errors`: ``ExplainError``, torch-free (``explain``'s options and the CLI raise it without torch).
- :mod:`.base`: the side-effect scope explainers run in (``explaining``), input checks, map resizing.
- :mod:`.attributions`: the pixel-attribution engine (captum: Integrated Gradients, GradientShap, occlusion).
- :mod:`.combine`: several layers' class activation maps combined into one (``fuse_maps``, ``refine_maps``).

Importing this package does not import torch; its modules but ``errors`` do.
"""
