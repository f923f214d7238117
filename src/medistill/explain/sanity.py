"""The model-parameter randomisation test of Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.

An explanation that still looks the same (or still finds the lesion) after the model's weights are destroyed
explains the image, not the model. :func:`randomized_copy` returns a copy of a model whose every parameter tensor
has its entries shuffled (so each layer keeps its weight distribution, but what it learned is gone); explaining
both and comparing scores is the check. The caller's model is never touched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with the entries of every parameter randomly permuted (buffers kept), in eval mode.

    Batch-norm running statistics are buffers and stay, so activations keep a sane scale; the learned weights
    (convolutions, batch-norm affine terms, the classifier) are shuffled.
    """
    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in clone.parameters():
            perm = torch.randperm(p.numel(), generator=gen).to(p.device)
            p.copy_(p.reshape(-1)[perm].reshape(p.shape))
    return clone.eval()
