"""Logit distillation losses, their KD-FMV combination with a hard loss, and several-teacher soft targets.

Every soft loss takes ``(student_logits, teacher_logits, mask)``, each ``(B, L)``, and returns a scalar that is
ALREADY multiplied by ``T^2`` where the paper says so (Hinton et al. 2015: the soft gradients scale as
``1 / T^2``, so ``T^2`` keeps the soft and hard terms comparable when ``T`` changes). Teacher logits are
detached: the teacher is fixed and gets no gradient.

Cross-resolution distillation (the teacher sees the image at 224 px, the student at 128 px, as in
resolution-aware KD) needs nothing here: logits ``(B, L)`` do not depend on the input size, so these losses are
resolution-agnostic; the trainer simply feeds each network its own size. Feature losses
(:mod:`medistill.losses.feature`) align spatial sizes themselves.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..task import Task
from .hard import (LossError, as_compute, as_task, build_hard_loss, check_pair, masked_mean, resolve_mask,
                   sample_mask)

log = logging.getLogger(__name__)

KD_KINDS = ("auto", "kl", "bce", "mse")


def _check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise LossError(f"temperature: got {temperature!r}, expected a finite number > 0")
    return float(temperature)


def _prepare(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = as_compute(student)
    check_pair("student_logits", s, "teacher_logits", teacher)
    t = teacher.detach().to(s.dtype)
    m = resolve_mask(mask, s)  # (B, L)
    t = torch.where(m > 0, t, torch.zeros_like(t))  # masked teacher entries cannot leak NaN / inf
    return s, t, m


class _TemperedKD(nn.Module):
    """A soft loss with a temperature ``T`` (checked: finite, > 0)."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = _check_temperature(temperature)


class SoftmaxKL(_TemperedKD):
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (single-label):

    ``T^2 * KL(softmax(t / T) || softmax(s / T))`` per sample, averaged over kept samples (``batchmean``).
    The soft term of KD-FMV (paper B). Student and teacher logits ``(B, C)``, mask ``(B, C)``.
    """

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        s, t, m = _prepare(student_logits, teacher_logits, mask)
        keep = sample_mask(m)  # (B,)
        T = self.temperature
        log_p_s = F.log_softmax(s / T, dim=1)  # (B, C)
        log_p_t = F.log_softmax(t / T, dim=1)  # (B, C)
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)  # (B,)
        return masked_mean(kl, keep) * T * T


class BinaryKL(_TemperedKD):
    """Per-label binary distillation for multi-label targets (sigmoid per label, never softmax across labels).

    With ``q = sigmoid(t / T)`` and ``p = sigmoid(s / T)`` per label:
    ``KL(q || p) = q log(q / p) + (1 - q) log((1 - q) / (1 - p)) = BCE(p, q) - H(q)`` (the soft BCE of
    multi-label KD minus the teacher's entropy, so it is 0 when student and teacher agree; the gradient is the
    soft BCE's). Loss ``= T^2 * sum_ij m_ij KL_ij / sum_ij m_ij``: Hinton's ``T^2``-scaled KD applied to each
    label's Bernoulli distribution, as paper A distils multi-label chest X-ray classifiers.
    """

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        s, t, m = _prepare(student_logits, teacher_logits, mask)
        T = self.temperature
        q = torch.sigmoid(t / T)  # (B, L)
        soft_bce = F.binary_cross_entropy_with_logits(s / T, q, reduction="none")  # (B, L)
        entropy = F.binary_cross_entropy_with_logits(t / T, q, reduction="none")  # (B, L), H(q)
        return masked_mean(soft_bce - entropy, m) * T * T


class LogitMSE(nn.Module):
    """Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?": ``mean_ij m_ij (s_ij - t_ij)^2 / sum m``.

    Regresses the raw logits, so there is no temperature and NO ``T^2`` factor. Works for both tasks.
    """

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        s, t, m = _prepare(student_logits, teacher_logits, mask)
        return masked_mean((s - t) ** 2, m)


def build_kd_loss(task: str | Task, kind: str = "auto", *, temperature: float) -> nn.Module:
    """The soft (distillation) loss for ``task`` (a :class:`~medistill.task.Task`, or its name);
    ``forward(student_logits, teacher_logits, mask) -> scalar``.

    ``kind``: ``auto`` (the task's ``kd_loss``: ``kl`` for single-label, ``bce`` for multi-label), ``kl``
    (:class:`SoftmaxKL`), ``bce`` (:class:`BinaryKL`), ``mse`` (:class:`LogitMSE`, no ``T^2``).
    """
    t = as_task(task)
    if kind not in KD_KINDS:
        raise LossError(f"kd kind: got {kind!r}, expected one of {list(KD_KINDS)}")
    temperature = _check_temperature(temperature)
    if kind == "auto":
        kind = t.kd_loss
    if kind == "kl" and t.multilabel:
        raise LossError("kd 'kl' (softmax across labels) on multi-label targets: a softmax makes the labels compete "
                        "for one unit of probability, as if each image had exactly one finding, so a teacher that "
                        "is confident about two findings (or none) would be distilled wrongly; use 'bce' (per-label "
                        "binary KL on sigmoid(z / T)) or 'mse'")
    if kind == "bce" and not t.multilabel:
        raise LossError("kd 'bce' (per-class sigmoid) on single-label targets: softmax logits are only defined up "
                        "to a shared constant, so per-class sigmoids of them are meaningless; use 'kl' or 'mse'")
    if kind == "kl":
        return SoftmaxKL(temperature)
    if kind == "bce":
        return BinaryKL(temperature)
    return LogitMSE()


class KDLoss(nn.Module):
    """The KD-FMV objective (paper B): ``alpha * hard + (1 - alpha) * soft [+ feature_weight * feature]
    [+ explanation_weight * explain]`` (the explanation terms: :mod:`medistill.losses.explanation`).

    ``soft`` already holds its ``T^2`` (Hinton et al. 2015), so with CE and softmax KL this is exactly
    ``alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``. ``forward`` returns a dict of named
    terms, like timm's distillation task: ``{"loss", "hard", "soft"}`` plus ``"feature"`` when a feature loss is
    set; ``"loss"`` is the one to ``backward()``.

    A :class:`~medistill.losses.feature.FitNetsHint` feature loss has learnable parameters (its projector):
    they are submodules of this module, so give ``KDLoss.parameters()`` to the optimiser along with the
    student's, and move this module to the student's device.
    """

    def __init__(self, hard: nn.Module, soft: nn.Module, alpha: float, *, feature: nn.Module | None = None,
                 feature_weight: float = 1.0, explanation: nn.Module | None = None, explanation_weight: float = 1.0):
        super().__init__()
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise LossError(f"alpha: got {alpha!r}, expected a value in [0, 1]")
        for name, w in (("feature_weight", feature_weight), ("explanation_weight", explanation_weight)):
            if not (math.isfinite(w) and w >= 0):
                raise LossError(f"{name}: got {w!r}, expected a finite number >= 0")
        self.hard = hard
        self.soft = soft
        self.feature = feature
        self.explanation = explanation
        self.alpha = float(alpha)
        self.feature_weight = float(feature_weight)
        self.explanation_weight = float(explanation_weight)

    @classmethod
    def build(cls, task: str | Task, *, alpha: float, temperature: float, kd: str = "auto", hard: str = "auto",
              class_weights: torch.Tensor | None = None, focal_gamma: float = 2.0, feature: nn.Module | None = None,
              feature_weight: float = 1.0, explanation: nn.Module | None = None,
              explanation_weight: float = 1.0) -> "KDLoss":
        """From names: ``build_hard_loss(task, hard, ...)`` and ``build_kd_loss(task, kd, temperature=...)``."""
        task = as_task(task)
        return cls(build_hard_loss(task, hard, class_weights=class_weights, focal_gamma=focal_gamma),
                   build_kd_loss(task, kd, temperature=temperature), alpha, feature=feature,
                   feature_weight=feature_weight, explanation=explanation, explanation_weight=explanation_weight)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None, *, student_features: torch.Tensor | None = None,
                teacher_features: torch.Tensor | None = None, student_maps: torch.Tensor | None = None,
                teacher_maps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits, target, mask ``(B, L)``; features ``(B, C, h, w)`` when a feature loss is set; per-label
        explanation maps ``(B, L, h, w)`` when an explanation loss is set -> named scalars.

        Feature losses get the per-sample mask ``(B,)``: a sample counts when any of its labels is valid;
        explanation losses the ``(B, L)`` mask and the teacher's logits.
        """
        hard = self.hard(student_logits, target, mask)
        soft = self.soft(student_logits, teacher_logits, mask)
        out = {"hard": hard, "soft": soft}
        total = self.alpha * hard + (1.0 - self.alpha) * soft
        if self.feature is not None:
            if student_features is None or teacher_features is None:
                raise LossError("KDLoss has a feature loss: pass student_features and teacher_features (B, C, h, w)")
            m = resolve_mask(mask, as_compute(student_logits))
            feat = self.feature(student_features, teacher_features, m.amax(dim=1))
            out["feature"] = feat
            total = total + self.feature_weight * feat
        if self.explanation is not None:
            if student_maps is None or teacher_maps is None:
                raise LossError("KDLoss has an explanation loss: pass student_maps and teacher_maps (B, L, h, w)")
            ex = self.explanation(student_maps, teacher_maps, resolve_mask(mask, as_compute(student_logits)),
                                  teacher_logits=teacher_logits)
            out["explain"] = ex
            total = total + self.explanation_weight * ex
        out["loss"] = total
        return out


def combine_teacher_logits(list_of_logits: Sequence[torch.Tensor], weights: Sequence[float] | None = None, *,
                           task: str | Task, temperature: float = 1.0) -> torch.Tensor:
    """Several teachers' logits ``[(B, L), ...]`` -> one ``(B, L)`` whose tempered probabilities are their average.

    Averaging happens in probability space at temperature ``T`` (weights normalised to sum 1, equal by default):

    - single-label: ``p = sum_k w_k softmax(z_k / T)``; returns ``T * log p`` (so ``softmax(out / T) = p``;
      logits are defined up to a per-row constant, and these are the normalised ones);
    - multi-label: ``p = sum_k w_k sigmoid(z_k / T)`` per label; returns ``T * logit(p)`` (so
      ``sigmoid(out / T) = p``).

    Computed with log-sum-exp, so it stays finite for confident teachers and one teacher returns its own logits
    (single-label: up to that per-row constant). Feed the result to the KD loss with the SAME temperature.
    """
    t = as_task(task)
    T = _check_temperature(temperature)
    if len(list_of_logits) == 0:
        raise LossError("combine_teacher_logits: got no teacher logits, expected at least one (B, L) tensor")
    first = list_of_logits[0]
    for i, z in enumerate(list_of_logits):
        if z.dim() != 2 or z.shape != first.shape:
            raise LossError(f"teacher {i} logits: shape {tuple(z.shape)}, expected (B, L) = {tuple(first.shape)} "
                            f"like teacher 0 (teachers must share the label set)")
    if weights is None:
        w = torch.full((len(list_of_logits),), 1.0 / len(list_of_logits), dtype=torch.float64)
    else:
        w = torch.as_tensor(list(weights), dtype=torch.float64)
        if w.shape != (len(list_of_logits),) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
                or float(w.sum()) <= 0:
            raise LossError(f"teacher weights: got {list(weights)}, expected {len(list_of_logits)} finite values "
                            f">= 0 with a positive sum")
        w = w / w.sum()
    z = torch.stack([as_compute(x.detach()) for x in list_of_logits])  # (K, B, L)
    log_w = torch.log(w).to(z.dtype).view(-1, 1, 1)  # (K, 1, 1); -inf for a zero weight drops that teacher
    if not t.multilabel:
        log_p = torch.logsumexp(log_w + F.log_softmax(z / T, dim=2), dim=0)  # (B, L)
        return T * log_p
    log_p = torch.logsumexp(log_w + F.logsigmoid(z / T), dim=0)  # (B, L), log p
    log_1mp = torch.logsumexp(log_w + F.logsigmoid(-z / T), dim=0)  # (B, L), log (1 - p)
    return T * (log_p - log_1mp)
