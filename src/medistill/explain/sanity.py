"""The model-parameter randomisation test of Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.

An explanation that still looks the same (or still finds the lesion) after the model's weights are destroyed
explains the image, not the model. :func:`randomized_copy` returns a copy of a model whose every parameter tensor
has its entries shuffled (so each layer keeps its weight distribution, but what it learned is gone); explaining
both and comparing is the check. The caller's model is never touched.

:func:`verdict` judges one method's check (``medistill explain`` runs it for every method it uses, the student's
and the teacher's, and writes the verdict beside the scores):

- the maps must change: the mean Spearman rank correlation of each map with the randomised model's map of the same
  image and label (``spearman_to_trained``) must stay below :data:`MAX_SPEARMAN` (Adebayo et al. rank the same
  correlation; a map that keeps its ranking of pixels without the learned weights shows the input's structure, the
  failure they report for Guided Backprop and gradient x input);
- where truth exists, the randomised model's maps must not find it: their strict pointing game at most
  :data:`MAX_CHANCE_RATIO` x its chance (the truth's area share), the bar issue 38 sets.

A method that fails either is flagged (``passed`` false, with its ``reasons``): its maps are drawn and reported as
not evidence of what the model uses.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn as nn

#: the highest mean Spearman between a method's maps of the trained and of the weight-randomised model that passes
MAX_SPEARMAN = 0.5
#: the randomised model's strict pointing game may be at most this many times chance
MAX_CHANCE_RATIO = 2.0
TEST_NAME = "model parameter randomisation (Adebayo et al. 2018)"


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


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def verdict(scores: dict[str, Any]) -> dict[str, Any]:
    """``{"passed": bool | None, "reasons": [str]}`` for one method's randomisation check: ``scores`` holds the
    randomised model's ``spearman_to_trained`` and, where truth exists, its ``pointing_game`` and
    ``pointing_chance``. ``passed`` is None when neither criterion could be judged (no map had a ranking)."""
    reasons = []
    judged = False
    rho = _number(scores.get("spearman_to_trained"))
    if rho is not None:
        judged = True
        if rho >= MAX_SPEARMAN:
            reasons.append(f"maps barely change when the weights are randomised (Spearman {rho:.2f} >= "
                           f"{MAX_SPEARMAN:g})")
    pg, chance = _number(scores.get("pointing_game")), _number(scores.get("pointing_chance"))
    if pg is not None and chance is not None and chance > 0:
        judged = True
        if pg > MAX_CHANCE_RATIO * chance:
            reasons.append(f"the randomised model's maps still find the truth (pointing game {pg:.3f} > "
                           f"{MAX_CHANCE_RATIO:g} x chance {chance:.3f})")
    return {"passed": (not reasons) if judged else None, "reasons": reasons}


def describe(summary: dict[str, Any]) -> list[str]:
    """One line per side of an ``explain.json`` summary (the student's method, then the teacher's): its
    randomisation check passed, failed (why), or was not run."""
    sides = [("student", summary.get("method"), summary.get("sanity"))]
    if isinstance(summary.get("teacher"), dict):
        t = summary["teacher"]
        sides.append(("teacher", t.get("method"), t.get("sanity")))
    out = []
    for who, method, block in sides:
        if not isinstance(block, dict):
            out.append(f"sanity check of {method} ({who}): not run; its maps are not checked against a "
                       f"weight-randomised model")
            continue
        figures = [f"Spearman to the trained maps {v:.2f}" if (v := _number(block.get("spearman_to_trained")))
                   is not None else "", f"randomised pointing game {v:.3f} (chance {c:.3f})"
                   if (v := _number(block.get("pointing_game"))) is not None
                   and (c := _number(block.get("pointing_chance"))) is not None else ""]
        figures = "; ".join(f for f in figures if f)
        state = {True: "passed", False: "FAILED, not evidence: " + "; ".join(block.get("reasons") or []),
                 None: "not judged (no map had a ranking or truth)"}[block.get("passed")]
        out.append(f"sanity check of {method} ({who}): {state}" + (f" ({figures})" if figures else ""))
    return out
