"""Hard-label losses: BCE and focal BCE per label (multi-label), cross-entropy (single-label).

Conventions shared by every loss in :mod:`medistill.losses`:

- ``logits`` ``(B, L)``; ``target`` float ``(B, L)`` (multi-label 0/1, single-label one-hot);
  ``mask`` float ``(B, L)``, 0 where a label is uncertain or missing. A masked entry contributes nothing to the
  value and receives no gradient, whatever its target holds (even NaN).
- Single-label: a sample's mask row is all ones or all zeros (a zero row drops the sample); a partly masked row
  is an error, since a softmax over classes cannot leave one class out.
- Multi-label losses average over the valid (mask = 1) entries, single-label losses over valid samples. A batch
  with nothing valid gives a zero that still has a ``grad_fn`` (so ``backward()`` works and changes nothing).
- Half-precision inputs are computed in float32; float64 stays float64.

This module also holds the small checks the other loss modules share (shapes, masks, dtypes).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MedistillError
from ..task import Task, TaskError, get_task

log = logging.getLogger(__name__)

HARD_KINDS = ("auto", "bce", "focal", "ce")


class LossError(MedistillError):
    """A loss was asked for something it cannot do, or got tensors of the wrong shape; the message says which."""


# ------------------------------------------------------------------------------------------------------------
# shared checks
# ------------------------------------------------------------------------------------------------------------

def as_task(task: str | Task) -> Task:
    """The :class:`~medistill.task.Task` of ``task`` (a Task, or its name at the public entry points), or
    LossError naming the valid tasks. The Task answers every single- / multi-label question of the losses."""
    try:
        return get_task(task)
    except TaskError as e:
        raise LossError(str(e)) from None


def as_compute(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 -> float32 (losses are summed in full precision); float32 / float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x


def check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Both ``(B, L)`` with the same shape, or LossError showing the shapes."""
    if a.dim() != 2:
        raise LossError(f"{name_a}: shape {tuple(a.shape)}, expected (B, L)")
    if b.shape != a.shape:
        raise LossError(f"{name_b}: shape {tuple(b.shape)}, expected the shape of {name_a} {tuple(a.shape)}")


def resolve_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The float ``(B, L)`` mask (all ones when None), checked against ``like`` ``(B, L)``."""
    if mask is None:
        return torch.ones_like(like)
    check_pair("logits", like, "mask", mask)
    return (mask > 0).to(like.dtype)


def sample_mask(mask: torch.Tensor) -> torch.Tensor:
    """Single-label ``(B, L)`` mask -> ``(B,)`` 1 for kept samples; a partly masked row is a LossError."""
    keep = mask.amax(dim=1)  # (B,)
    partial = (mask.amin(dim=1) != keep)
    if bool(partial.any()):
        rows = torch.nonzero(partial).flatten()[:5].tolist()
        raise LossError(f"mask: rows {rows} are partly masked; a single-label (softmax) loss needs each sample's "
                        f"mask to be all ones (kept) or all zeros (dropped)")
    return keep


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(values * weights) / sum(weights); 0 (with grad_fn) when the weights sum to 0.

    ``values`` at zero-weight entries are replaced by 0 first, so a NaN or inf there cannot leak in.
    """
    values = torch.where(weights > 0, values, torch.zeros_like(values))
    num = (values * weights).sum()
    den = weights.sum()
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(num.dtype).tiny), num * 0.0)


def clean_target(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets with masked entries set to 0, so that their (discarded) loss terms stay finite."""
    return torch.where(mask > 0, target, torch.zeros_like(target))


# ------------------------------------------------------------------------------------------------------------
# the losses
# ------------------------------------------------------------------------------------------------------------

def _bce_terms(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
               pos_weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked ``(logits, clean target, mask, per-entry BCE)``, each ``(B, L)``: what BCE and focal BCE share."""
    logits = as_compute(logits)
    check_pair("logits", logits, "target", target)
    m = resolve_mask(mask, logits)  # (B, L)
    y = clean_target(target.to(logits.dtype), m)  # (B, L)
    pw = _check_weights(pos_weight, logits.shape[1], "pos_weight", logits)
    return logits, y, m, F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="none")


class MaskedBCE(nn.Module):
    """Binary cross-entropy per label on ``sigmoid(logits)``, averaged over valid (mask = 1) entries.

    ``l_ij = -[w_j y_ij log s(z_ij) + (1 - y_ij) log(1 - s(z_ij))]`` with ``w_j`` the optional per-label
    ``pos_weight`` ``(L,)`` (e.g. negatives / positives, :func:`class_weights_from_targets`); loss
    ``= sum_ij m_ij l_ij / sum_ij m_ij``. The standard multi-label loss of CheXNet-style classifiers
    (Rajpurkar et al. 2017) and the hard term of paper A.
    """

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """logits, target, mask ``(B, L)`` -> scalar."""
        _, _, m, loss = _bce_terms(logits, target, mask, self.pos_weight)
        return masked_mean(loss, m)


class FocalBCE(nn.Module):
    """Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection") applied per label, as paper A does.

    With ``p = sigmoid(z)`` and ``p_t = p y + (1 - p)(1 - y)``:
    ``FL = (1 - p_t)^gamma * BCE(z, y)`` (``BCE`` with the optional per-label ``pos_weight``), optionally
    times ``alpha_t = alpha y + (1 - alpha)(1 - y)``; averaged over valid entries. ``gamma = 0`` and no
    ``alpha`` is plain BCE. Without ``pos_weight`` this is ``torchvision.ops.sigmoid_focal_loss``; it is
    written out here because torchvision's has neither a ``pos_weight`` nor a label mask.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, pos_weight: torch.Tensor | None = None):
        super().__init__()
        if not (np.isfinite(gamma) and gamma >= 0):
            raise LossError(f"focal_gamma: got {gamma!r}, expected a finite number >= 0")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise LossError(f"focal alpha: got {alpha!r}, expected a value in [0, 1] or None")
        self.gamma = float(gamma)
        self.alpha = alpha
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """logits, target, mask ``(B, L)`` -> scalar."""
        logits, y, m, ce = _bce_terms(logits, target, mask, self.pos_weight)
        p = torch.sigmoid(logits)
        p_t = p * y + (1 - p) * (1 - y)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * y + (1 - self.alpha) * (1 - y))
        return masked_mean(loss, m)


class MaskedCE(nn.Module):
    """Softmax cross-entropy for single-label targets (one-hot or soft ``(B, C)``), optional class weights ``(C,)``.

    ``l_i = -w_{y_i} log softmax(z_i)_{y_i}``; loss ``= sum_i k_i l_i / sum_i k_i w_{y_i}`` with ``k_i`` the
    sample mask: exactly ``nn.CrossEntropyLoss(weight=w)`` (its weighted mean) over the kept samples.
    Soft targets (label smoothing, mixup) give ``l_i = -sum_c w_c y_ic log softmax(z_i)_c`` normalised by
    ``sum_i k_i sum_c w_c y_ic``, the same thing for one-hot rows. The hard term of KD-FMV (paper B).
    """

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """logits, target (one-hot), mask ``(B, C)`` -> scalar."""
        logits = as_compute(logits)
        check_pair("logits", logits, "target", target)
        keep = sample_mask(resolve_mask(mask, logits))  # (B,)
        target = torch.nan_to_num(target.to(logits.dtype))
        w = _check_weights(self.weight, logits.shape[1], "class_weights", logits)
        if bool(((target == 0) | (target == 1)).all()):
            y = target.argmax(dim=1)  # (B,) class index of the one-hot target
            per = F.cross_entropy(logits, y, weight=w, reduction="none")  # (B,), already times w[y]
            wy = w[y] if w is not None else torch.ones_like(per)  # (B,)
        else:  # soft targets (label smoothing, mixup): -sum_c w_c y_c log p_c, normalised by sum_c w_c y_c
            per = F.cross_entropy(logits, target, weight=w, reduction="none")  # (B,)
            wy = target @ w if w is not None else target.sum(dim=1)  # (B,)
        per = torch.where(keep > 0, per, torch.zeros_like(per))
        den = (keep * wy).sum()
        num = (per * keep).sum()
        return torch.where(den > 0, num / den.clamp_min(torch.finfo(num.dtype).tiny), num * 0.0)


def _check_weights(w: torch.Tensor | None, n: int, name: str, like: torch.Tensor) -> torch.Tensor | None:
    """``w`` ``(n,)`` in the dtype and device of ``like``, or LossError showing its shape."""
    if w is None:
        return None
    if w.shape != (n,):
        raise LossError(f"{name}: shape {tuple(w.shape)}, expected ({n},), one weight per label")
    return w.to(dtype=like.dtype, device=like.device)


def build_hard_loss(task: str | Task, kind: str = "auto", *, class_weights: torch.Tensor | None = None,
                    focal_gamma: float = 2.0) -> nn.Module:
    """The hard-label loss for ``task`` (a :class:`~medistill.task.Task`, or its name).

    ``kind``: ``auto`` (the task's ``hard_loss``: bce for multi-label, ce for single-label), ``bce``, ``focal``
    (per-label focal BCE) or ``ce``. ``class_weights`` ``(L,)``: per-class CE weights, or the per-label ``pos_weight`` of BCE / focal.
    The module's ``forward(logits, target, mask)`` returns a scalar.
    """
    t = as_task(task)
    if kind not in HARD_KINDS:
        raise LossError(f"hard loss kind: got {kind!r}, expected one of {list(HARD_KINDS)}")
    if kind == "auto":
        kind = t.hard_loss
    if t.multilabel and kind == "ce":
        raise LossError("hard loss 'ce' on multi-label targets: softmax cross-entropy assumes exactly one label per "
                        "image, but a multi-label image can have several findings or none; use 'bce' or 'focal'")
    if not t.multilabel and kind in ("bce", "focal"):
        raise LossError(f"hard loss {kind!r} on single-label targets: it scores each class independently, while "
                        f"single-label logits are only defined up to a shared constant (softmax); use 'ce'")
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
        if class_weights.dim() != 1 or not bool(torch.isfinite(class_weights).all()) or bool((class_weights < 0).any()):
            raise LossError(f"class_weights: got {class_weights.tolist()}, expected a 1-D tensor of finite values >= 0")
    if kind == "bce":
        return MaskedBCE(pos_weight=class_weights)
    if kind == "focal":
        return FocalBCE(gamma=focal_gamma, pos_weight=class_weights)
    return MaskedCE(weight=class_weights)


def class_weights_from_targets(targets: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray | None,
                               task: str | Task) -> torch.Tensor:
    """Inverse-frequency weights from training targets ``(N, L)`` and mask ``(N, L)`` -> float32 ``(L,)``.

    - multi-label: ``pos_weight_j = negatives_j / positives_j`` over valid entries (BCE's ``pos_weight``);
    - single-label: ``w_c = n / (C * n_c)`` over kept samples (scikit-learn's ``class_weight="balanced"``).

    A label with no positives (or no negatives) in the training data gets weight 1 and a logged warning.
    """
    t = as_task(task)
    y = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.float64)
    if y.ndim != 2:
        raise LossError(f"targets: shape {y.shape}, expected (N, L)")
    m = (np.ones_like(y) if mask is None else
         np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=np.float64))
    if m.shape != y.shape:
        raise LossError(f"mask: shape {m.shape}, expected the shape of targets {y.shape}")
    valid = m > 0
    if t.multilabel:
        pos = ((y > 0.5) & valid).sum(0).astype(np.float64)
        neg = ((y <= 0.5) & valid).sum(0).astype(np.float64)
        ok = (pos > 0) & (neg > 0)
        w = np.where(ok, neg / np.where(pos > 0, pos, 1.0), 1.0)
    else:
        kept = valid.all(axis=1)
        counts = np.bincount(y[kept].argmax(axis=1), minlength=y.shape[1]).astype(np.float64)
        ok = counts > 0
        w = np.where(ok, kept.sum() / (y.shape[1] * np.where(ok, counts, 1.0)), 1.0)
    if not ok.all():
        log.warning("class weights: labels %s have only one class among the valid training targets; weight 1 used",
                    np.flatnonzero(~ok).tolist())
    return torch.tensor(w, dtype=torch.float32)
