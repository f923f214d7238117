"""Mixup / CutMix / label smoothing and consistent KD: the teacher sees exactly the student's mixed view."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medistill import runs
from medistill.losses import MaskedCE
from medistill.models import InputConfig
from medistill.models.contract import set_input_config
from medistill.task import MULTICLASS, MULTILABEL
from medistill.train.distillation import Batch, DistillationObjective
from medistill.train.mixing import Mixer, smooth_targets
from medistill.train.teacher import Teacher

from test_train import _cfg, teacher_run  # noqa: F401  (the module fixture)


def _batch(b: int = 6, l: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 1, 16, 16, generator=g)
    y = (torch.rand(b, l, generator=g) > 0.5).float()
    m = torch.ones(b, l)
    m[0, 1] = 0.0
    return x, y, m


def test_mixup_mixes_images_targets_and_masks_with_the_reversed_batch():
    np.random.seed(3)
    x, y, m = _batch()
    xm, ym, mm, lam = Mixer(mixup=0.4)(x, y, m)
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(ym, lam * y + (1 - lam) * y.flip(0))
    assert mm[0, 1] == 0 and mm[-1, 1] == 0 and mm.sum() == m.numel() - 2  # valid only where both were


def test_cutmix_pastes_a_box_and_lam_is_the_share_left():
    np.random.seed(1)
    x, y, m = _batch()
    xm, ym, _, lam = Mixer(cutmix=1.0)(x, y, m)
    pasted = (xm != x).float().mean().item()
    assert pasted == pytest.approx(1 - lam, abs=0.02)
    torch.testing.assert_close(ym, lam * y + (1 - lam) * y.flip(0))


def test_mixer_off_or_skipped_returns_the_batch_untouched():
    x, y, m = _batch()
    for mixer in (Mixer(), Mixer(mixup=0.4, prob=0.0)):
        xm, ym, mm, lam = mixer(x, y, m)
        assert xm is x and ym is y and mm is m and lam == 1.0


def test_label_smoothing():
    y = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(smooth_targets(y, 0.1, MULTICLASS), torch.tensor([[0.025, 0.925, 0.025, 0.025]]))
    torch.testing.assert_close(smooth_targets(y, 0.1, MULTILABEL), torch.tensor([[0.05, 0.95, 0.05, 0.05]]))
    assert smooth_targets(y, 0.0, MULTICLASS) is y


def test_masked_ce_with_soft_targets_is_torch_cross_entropy_with_probabilities():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, generator=g)
    y = torch.softmax(torch.randn(5, 4, generator=g), dim=1)
    torch.testing.assert_close(MaskedCE()(z, y), F.cross_entropy(z, y))
    onehot = F.one_hot(torch.tensor([0, 3, 1, 2, 2]), 4).float()
    torch.testing.assert_close(MaskedCE()(z, onehot), F.cross_entropy(z, onehot.argmax(1)))
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    torch.testing.assert_close(MaskedCE(w)(z, onehot), F.cross_entropy(z, onehot.argmax(1), weight=w))


class _Recorder(torch.nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size, self.seen = size, []
        self.lin = torch.nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.lin(x.mean(dim=(2, 3)))


def test_teacher_sees_the_students_mixed_view_at_its_own_size():
    """Consistent KD (Beyer et al. 2022): one mixed batch, each model at its own resolution."""
    from medistill.losses import KDLoss

    np.random.seed(0)
    x, y, m = _batch(l=3)
    xm, ym, mm, lam = Mixer(mixup=0.5)(x, y, m)
    load_in = InputConfig(16, 1, (0.5,), (0.25,))
    s_in = InputConfig(8, 1, (0.5,), (0.25,))
    teacher = set_input_config(_Recorder(16), load_in)
    student = set_input_config(_Recorder(8), s_in)
    from medistill.train.teacher import adapt_input

    obj = DistillationObjective(KDLoss.build("multilabel", alpha=0.5, temperature=2.0), [Teacher(teacher, {}, "t")],
                                load_in, MULTILABEL, lambda v: adapt_input(v, load_in, s_in), temperature=2.0,
                                precision="fp32", cached=torch.zeros(6, 3))
    terms = obj(student, Batch(xm, ym, mm, torch.arange(6), mixed=True))
    assert set(terms) == {"loss", "hard", "soft"} and torch.isfinite(terms["loss"])
    torch.testing.assert_close(teacher.seen[-1], xm)  # not the cache: the mixed view itself
    torch.testing.assert_close(student.seen[-1], adapt_input(xm, load_in, s_in))
    assert student.seen[-1].shape[-1] == 8


def test_distill_with_mixup_runs_online_and_is_deterministic(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    over = {"distill.teacher": str(teacher_run), "train.mixup": 0.4, "train.cutmix": 1.0, "train.label_smoothing": 0.1,
            "train.epochs": 1}
    for name in ("a", "b"):
        run_dir = tmp_path / name
        from medistill.train import run_training

        run_training(_cfg(phantom_root, run_dir, **over))
        assert runs.RunDir(run_dir).info()["distill_mode"] == "online"
    rows = [next(csv.DictReader(open(tmp_path / n / "history.csv"))) for n in ("a", "b")]
    assert rows[0]["train_loss"] == rows[1]["train_loss"] and float(rows[0]["train_soft"]) > 0
