"""Losses for training and distillation; every one respects the label mask and cites its paper.

- :mod:`.hard`: hard-label terms: BCE and focal BCE per label (multi-label), CE with class weights (single-label);
  ``build_hard_loss``, ``class_weights_from_targets``.
- :mod:`.kd`: soft terms on logits: per-label binary KL (multi-label), Hinton's softmax KL (single-label),
  logit MSE; ``KDLoss`` (KD-FMV: ``alpha * hard + (1 - alpha) * T^2 * soft``); ``combine_teacher_logits``.
- :mod:`.feature`: FitNets hints with a learned 1x1 projector, attention transfer.
- :mod:`.explanation`: explanation-aware KD on per-label Grad-CAM maps: e2KD, CAT-KD.

Shapes: logits, targets and masks ``(B, L)``; feature maps ``(B, C, h, w)`` with a per-sample mask ``(B,)``.
"""

from .explanation import CATLoss, E2KDLoss, gradcam_maps
from .feature import AttentionTransfer, FitNetsHint, attention_map, attention_transfer
from .hard import (FocalBCE, LossError, MaskedBCE, MaskedCE, build_hard_loss, class_weights_from_targets)
from .kd import BinaryKL, KDLoss, LogitMSE, SoftmaxKL, build_kd_loss, combine_teacher_logits

__all__ = ["AttentionTransfer", "BinaryKL", "CATLoss", "E2KDLoss", "FitNetsHint", "FocalBCE", "KDLoss", "LogitMSE",
           "LossError", "MaskedBCE", "MaskedCE", "SoftmaxKL", "attention_map", "attention_transfer", "build_hard_loss",
           "build_kd_loss", "class_weights_from_targets", "combine_teacher_logits", "gradcam_maps"]
