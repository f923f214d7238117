"""Batch mixing for training and "function matching" distillation: mixup and CutMix on images, targets and masks.

Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization": ``x = lam x_i + (1 - lam) x_j``,
``y = lam y_i + (1 - lam) y_j`` with ``lam ~ Beta(a, a)``. Yun et al. 2019, "CutMix": a box of image ``j`` pasted
into image ``i``, ``lam`` = the share of ``i`` left. Beyer et al. 2022 ("Knowledge distillation: A good teacher
is patient and consistent") mix aggressively when distilling and let the teacher see the *same* mixed image as
the student: the trainer mixes the loaded batch before either model sees it, so KD stays consistent.

Why not ``timm.data.Mixup``: it takes class indices and returns smoothed one-hot targets, so it cannot mix
multi-label float targets or their masks of uncertain labels; the CutMix box is timm's
(``cutmix_bbox_and_lam``). A label kept in the mix only where both images have it valid:
``mask = m_i * m_j`` (single-label rows stay kept or dropped whole).

Cached consistent KD (:mod:`.views`) mixes per *item* instead (:meth:`Mixer.mix_pair`): a replayed view is one
image's augmented view mixed with a partner's, all drawn from the view's own seed, so the teacher's outputs on
the mixed image can be cached and replayed like any other view (function matching at the cost of plain training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from timm.data.mixup import cutmix_bbox_and_lam

from ..task import Task


@dataclass
class Mixer:
    mixup: float = 0.0  # Beta(a, a) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(a, a) of CutMix; 0 = off
    prob: float = 1.0  # share of batches mixed

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def __call__(self, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """x ``(B, C, H, W)``, target and mask ``(B, L)`` -> mixed copies and ``lam`` (1.0 when not mixed).

        Pairs each image with the batch reversed (as timm does), so one draw of ``lam`` serves the batch. Uses
        numpy's global RNG, which the trainer seeds per epoch, so runs are reproducible.
        """
        if not self.enabled or x.shape[0] < 2 or np.random.rand() >= self.prob:
            return x, target, mask, 1.0
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or np.random.rand() < 0.5)
        flip = torch.arange(x.shape[0] - 1, -1, -1, device=x.device)
        if use_cutmix:
            lam = float(np.random.beta(self.cutmix, self.cutmix))
            (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(x.shape, lam, correct_lam=True)
            x = x.clone()
            x[:, :, yl:yh, xl:xh] = x[flip][:, :, yl:yh, xl:xh]
        else:
            lam = float(np.random.beta(self.mixup, self.mixup))
            x = x * lam + x[flip] * (1.0 - lam)
        target = target * lam + target[flip] * (1.0 - lam)
        mask = mask * mask[flip]
        return x, target, mask, float(lam)

    def mix_pair(self, a: dict, b: dict, rng: np.random.Generator) -> dict:
        """Item ``b`` mixed into item ``a`` (``"image"`` ``(C, H, W)``, ``"target"`` and ``"mask"`` ``(L,)``), every
        draw from ``rng`` (a replayed view must not touch the global RNGs); returns a copy of ``a`` with the mixed
        image, target and mask and ``"lam"`` (the share of ``a``)."""
        x, y = a["image"], b["image"]
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < 0.5)
        if use_cutmix:
            lam = float(rng.beta(self.cutmix, self.cutmix))
            (yl, yh, xl, xh) = _cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
            lam = 1.0 - (yh - yl) * (xh - xl) / float(x.shape[-2] * x.shape[-1])  # the share actually left
            x = x.clone()
            x[:, yl:yh, xl:xh] = y[:, yl:yh, xl:xh]
        else:
            lam = float(rng.beta(self.mixup, self.mixup))
            x = x * lam + y * (1.0 - lam)
        return {**a, "image": x, "target": a["target"] * lam + b["target"] * (1.0 - lam),
                "mask": a["mask"] * b["mask"], "lam": lam}


def _cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """CutMix's box (Yun et al. 2019: side ``sqrt(1 - lam)`` of the image's, centre uniform, clipped), drawn from
    ``rng``. Not timm's ``rand_bbox``: that draws from numpy's global RNG, which a replayed view must not use."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    return (int(np.clip(cy - ch // 2, 0, h)), int(np.clip(cy + ch // 2, 0, h)),
            int(np.clip(cx - cw // 2, 0, w)), int(np.clip(cx + cw // 2, 0, w)))


def smooth_targets(target: torch.Tensor, eps: float, task: Task) -> torch.Tensor:
    """Label smoothing (Szegedy et al. 2016): ``y (1 - eps) + eps / K`` with ``K`` the classes (single-label) or
    2 per label (multi-label: each label is its own two-class problem). ``(B, L)`` -> ``(B, L)``."""
    if eps <= 0:
        return target
    k = 2 if task.multilabel else target.shape[1]
    return target * (1.0 - eps) + eps / k
