"""Feature distillation: FitNets hints and attention transfer.

Both take a student map ``(B, Cs, h, w)`` and a teacher map ``(B, Ct, H, W)`` (teacher maps are detached) and an
optional per-sample mask ``(B,)`` (0 drops a sample, e.g. an unreadable image), and average over kept samples;
nothing kept gives a zero with a ``grad_fn``. Spatial sizes may differ (other architectures, or cross-resolution
distillation where the teacher sees a larger image): the student's map is resized to the teacher's size by
bilinear interpolation (``align_corners=False``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .hard import LossError, as_compute, masked_mean


def _check_maps(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Checks shapes; returns the ``(B,)`` sample mask (all ones when None)."""
    if s.dim() != 4 or t.dim() != 4:
        raise LossError(f"feature maps: student {tuple(s.shape)}, teacher {tuple(t.shape)}, expected (B, C, h, w) "
                        f"and (B, C, H, W); token features (B, N, C) must be reshaped to maps first")
    if s.shape[0] != t.shape[0]:
        raise LossError(f"feature maps: student batch {s.shape[0]} vs teacher batch {t.shape[0]}, expected equal")
    if mask is None:
        return torch.ones(s.shape[0], dtype=s.dtype, device=s.device)
    if mask.shape != (s.shape[0],):
        raise LossError(f"feature mask: shape {tuple(mask.shape)}, expected ({s.shape[0]},), one value per sample")
    return (mask > 0).to(s.dtype)


def _resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FitNetsHint(nn.Module):
    """Romero et al. 2015, "FitNets: Hints for Thin Deep Nets": ``|| u_t - r(v_s) ||^2``.

    ``r`` is a learned regressor, here a 1x1 convolution ``Cs -> Ct`` followed by batch norm (as in later FitNets
    reimplementations, e.g. torchdistill's), applied to the student map and then resized to the teacher's
    spatial size. The squared error is averaged over ``(C, H, W)`` per sample (the paper's ``1/2 * sum``, up to a
    constant factor), then over kept samples. The projector is trained with the student. In training mode its
    BatchNorm takes statistics over the whole batch, dropped samples included (as the student's own BatchNorm
    layers do), so only in eval mode is a dropped sample fully without influence.
    """

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        if student_channels < 1 or teacher_channels < 1:
            raise LossError(f"FitNetsHint channels: got student {student_channels}, teacher {teacher_channels}, "
                            f"expected positive integers")
        self.student_channels = int(student_channels)
        self.teacher_channels = int(teacher_channels)
        self.projector = nn.Sequential(nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
                                       nn.BatchNorm2d(teacher_channels))

    def forward(self, s_feat: torch.Tensor, t_feat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """s_feat ``(B, Cs, h, w)``, t_feat ``(B, Ct, H, W)``, mask ``(B,)`` -> scalar."""
        keep = _check_maps(s_feat, t_feat, mask)
        if s_feat.shape[1] != self.student_channels or t_feat.shape[1] != self.teacher_channels:
            raise LossError(f"FitNetsHint({self.student_channels} -> {self.teacher_channels}): got student "
                            f"{tuple(s_feat.shape)}, teacher {tuple(t_feat.shape)}, expected those channel counts")
        p = self.projector(s_feat)  # (B, Ct, h, w)
        p = as_compute(_resize_to(p, tuple(t_feat.shape[-2:])))  # (B, Ct, H, W)
        t = t_feat.detach().to(p.dtype)
        per = ((p - t) ** 2).flatten(1).mean(dim=1)  # (B,)
        return masked_mean(per, keep.to(per.dtype))


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention ``sum_c |A_c|^p`` of a map ``(B, C, h, w)`` -> ``(B, 1, h, w)``."""
    return feat.abs().pow(p).sum(dim=1, keepdim=True)


def attention_transfer(s_feat: torch.Tensor, t_feat: torch.Tensor, p: float = 2.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (activation-based AT).

    ``Q = vec(sum_c |A_c|^p)`` per sample; loss ``= || Q_s / ||Q_s||_2 - Q_t / ||Q_t||_2 ||_2`` averaged over kept
    samples (the paper's term without its ``beta / 2``, which is the caller's feature weight; the authors' code
    uses the squared distance divided by ``h * w`` instead, a smaller number needing ``beta ~ 1000``). Channel
    counts may differ; the student's attention map is resized to the teacher's ``(H, W)`` before normalising.
    s_feat ``(B, Cs, h, w)``, t_feat ``(B, Ct, H, W)``, mask ``(B,)`` -> scalar.
    """
    keep = _check_maps(s_feat, t_feat, mask)
    a_s = as_compute(_resize_to(attention_map(as_compute(s_feat), p), tuple(t_feat.shape[-2:])))  # (B, 1, H, W)
    a_t = attention_map(as_compute(t_feat.detach()), p).to(a_s.dtype)  # (B, 1, H, W)
    q_s = F.normalize(a_s.flatten(1), dim=1)  # (B, H*W)
    q_t = F.normalize(a_t.flatten(1), dim=1)  # (B, H*W)
    dist = torch.linalg.vector_norm(q_s - q_t, dim=1)  # (B,); its gradient is 0 (not NaN) where they agree
    return masked_mean(dist, keep.to(dist.dtype))


class AttentionTransfer(nn.Module):
    """:func:`attention_transfer` as a module (no parameters), to pass as ``KDLoss(feature=...)``."""

    def __init__(self, p: float = 2.0):
        super().__init__()
        if not p > 0:
            raise LossError(f"attention transfer p: got {p!r}, expected a number > 0")
        self.p = float(p)

    def forward(self, s_feat: torch.Tensor, t_feat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return attention_transfer(s_feat, t_feat, self.p, mask)
