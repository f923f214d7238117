"""Losses: golden values (tests/golden/losses.json, written by make_golden.py with numpy) and properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medistill.errors import MedistillError
from medistill.losses import (AttentionTransfer, FitNetsHint, KDLoss, LossError, attention_transfer,
                              build_hard_loss, build_kd_loss, class_weights_from_targets, combine_teacher_logits)

GOLDEN = json.loads((Path(__file__).parent / "golden" / "losses.json").read_text())
EXP = GOLDEN["expected"]
PAR = GOLDEN["params"]


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


ML = {k: t64(v) for k, v in GOLDEN["multilabel"].items()}
MC = {k: t64(v) for k, v in GOLDEN["multiclass"].items()}
FEAT = {k: t64(v) for k, v in GOLDEN["features"].items()}


def close(value: torch.Tensor, expected: float, tol: float = 1e-6) -> None:
    value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    assert abs(value - expected) <= tol * max(1.0, abs(expected)), (value, expected)


# ------------------------------------------------------------------------------------------------------------
# golden values
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind, weights", [("bce", "bce", None), ("bce_pos_weight", "bce", "pos_weight"),
                                                 ("focal_gamma2", "focal", None),
                                                 ("focal_gamma2_pos_weight", "focal", "pos_weight")])
def test_golden_multilabel_hard(name, kind, weights):
    loss = build_hard_loss("multilabel", kind, class_weights=None if weights is None else ML[weights],
                           focal_gamma=PAR["focal_gamma"]).double()
    close(loss(ML["student"], ML["target"], ML["mask"]), EXP[name])


@pytest.mark.parametrize("name, weights", [("ce", False), ("ce_weighted", True)])
def test_golden_ce(name, weights):
    loss = build_hard_loss("multiclass", class_weights=MC["class_weights"] if weights else None).double()
    close(loss(MC["student"], MC["target"], MC["mask"]), EXP[name])


def test_golden_kd():
    close(build_kd_loss("multiclass", temperature=PAR["T_multiclass"])(MC["student"], MC["teacher"], MC["mask"]),
          EXP["kd_kl_T4"])
    close(build_kd_loss("multilabel", temperature=PAR["T_multilabel"])(ML["student"], ML["teacher"], ML["mask"]),
          EXP["kd_bce_T2"])
    close(build_kd_loss("multilabel", "mse", temperature=3.0)(ML["student"], ML["teacher"], ML["mask"]),
          EXP["kd_mse_multilabel"])


def test_golden_kdloss_totals():
    kd = KDLoss.build("multiclass", alpha=PAR["alpha"], temperature=PAR["T_multiclass"]).double()
    out = kd(MC["student"], MC["teacher"], MC["target"], MC["mask"])
    assert set(out) == {"loss", "hard", "soft"}
    close(out["loss"], EXP["kdloss_multiclass_total"])
    close(out["hard"], EXP["ce"])
    close(out["soft"], EXP["kd_kl_T4"])
    kd = KDLoss.build("multilabel", alpha=PAR["alpha"], temperature=PAR["T_multilabel"]).double()
    close(kd(ML["student"], ML["teacher"], ML["target"], ML["mask"])["loss"], EXP["kdloss_multilabel_total"])


def test_golden_combine_teachers():
    w = PAR["teacher_weights"]
    out = combine_teacher_logits([t64(t) for t in GOLDEN["teachers_multiclass"]], w, task="multiclass",
                                 temperature=PAR["T_multiclass"])
    np.testing.assert_allclose(out.numpy(), EXP["combine_multiclass_T4"], rtol=1e-6, atol=1e-6)
    out = combine_teacher_logits([t64(t) for t in GOLDEN["teachers_multilabel"]], w, task="multilabel",
                                 temperature=PAR["T_multilabel"])
    np.testing.assert_allclose(out.numpy(), EXP["combine_multilabel_T2"], rtol=1e-6, atol=1e-6)


def test_golden_fitnets():
    hint = FitNetsHint(3, 5).double().train()
    with torch.no_grad():
        hint.projector[0].weight.copy_(FEAT["weight"].view(5, 3, 1, 1))
    close(hint(FEAT["student"], FEAT["teacher"], FEAT["keep"]), EXP["fitnets"])


@pytest.mark.parametrize("p, name", [(2.0, "attention_p2"), (1.0, "attention_p1")])
def test_golden_attention(p, name):
    close(attention_transfer(FEAT["student"], FEAT["teacher"], p, FEAT["keep"]), EXP[name])
    close(AttentionTransfer(p)(FEAT["student"], FEAT["teacher"], FEAT["keep"]), EXP[name])


def test_float32_close_to_golden():
    loss = build_kd_loss("multilabel", temperature=PAR["T_multilabel"])
    close(loss(ML["student"].float(), ML["teacher"].float(), ML["mask"].float()), EXP["kd_bce_T2"], tol=1e-5)
    half = build_hard_loss("multilabel")(ML["student"].half(), ML["target"].half(), ML["mask"].half())
    assert half.dtype == torch.float32  # half precision is summed in float32
    close(half, EXP["bce"], tol=1e-2)


# ------------------------------------------------------------------------------------------------------------
# references: torch / torchvision where they exist
# ------------------------------------------------------------------------------------------------------------

def test_matches_torch_and_torchvision_without_mask():
    from torchvision.ops import sigmoid_focal_loss

    z, y = ML["student"], ML["target"]
    close(build_hard_loss("multilabel")(z, y, None), F.binary_cross_entropy_with_logits(z, y))
    close(build_hard_loss("multilabel", "focal", focal_gamma=1.5)(z, y, None),
          sigmoid_focal_loss(z, y, alpha=-1, gamma=1.5, reduction="mean"))
    w = MC["class_weights"]
    cls = MC["target"].argmax(1)
    close(build_hard_loss("multiclass", class_weights=w).double()(MC["student"], MC["target"], None),
          F.cross_entropy(MC["student"], cls, weight=w))
    T = 3.0
    ref = F.kl_div(F.log_softmax(MC["student"] / T, 1), F.softmax(MC["teacher"] / T, 1), reduction="batchmean") * T * T
    close(build_kd_loss("multiclass", temperature=T)(MC["student"], MC["teacher"], None), ref)


# ------------------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------------------

def _losses_multilabel():
    return {"bce": lambda s, t, m: build_hard_loss("multilabel")(s, ML["target"], m),
            "focal": lambda s, t, m: build_hard_loss("multilabel", "focal")(s, ML["target"], m),
            "kd_bce": lambda s, t, m: build_kd_loss("multilabel", temperature=2.0)(s, t, m),
            "kd_mse": lambda s, t, m: build_kd_loss("multilabel", "mse", temperature=2.0)(s, t, m)}


@pytest.mark.parametrize("name", ["bce", "focal", "kd_bce", "kd_mse"])
def test_masked_entries_change_nothing_and_get_no_gradient(name):
    fn = _losses_multilabel()[name]
    m = ML["mask"]
    s = ML["student"].clone().requires_grad_(True)
    base = fn(s, ML["teacher"], m)
    base.backward()
    assert torch.all(s.grad[m == 0] == 0)
    assert torch.any(s.grad[m == 1] != 0)
    # arbitrary values (even NaN / inf) at masked entries of student, teacher or target do not change the value
    s2 = ML["student"].clone()
    s2[m == 0] = 1e4
    t2 = ML["teacher"].clone()
    t2[m == 0] = float("nan")
    assert torch.isclose(fn(s2, t2, m), base.detach(), rtol=0, atol=1e-12)
    nan_target = ML["target"].clone()
    nan_target[m == 0] = float("nan")
    s3 = ML["student"].clone().requires_grad_(True)
    out = build_hard_loss("multilabel")(s3, nan_target, m)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s3.grad).all()


def test_single_label_dropped_samples_change_nothing():
    keep = MC["keep"]
    s = MC["student"].clone().requires_grad_(True)
    out = KDLoss.build("multiclass", alpha=0.5, temperature=4.0).double()(s, MC["teacher"], MC["target"], MC["mask"])
    out["loss"].backward()
    assert torch.all(s.grad[keep == 0] == 0)
    s2 = MC["student"].clone()
    s2[keep == 0] = -50.0
    again = KDLoss.build("multiclass", alpha=0.5, temperature=4.0).double()(s2, MC["teacher"], MC["target"], MC["mask"])
    assert torch.isclose(again["loss"], out["loss"].detach(), rtol=0, atol=1e-12)


def test_partly_masked_single_label_row_is_an_error():
    m = MC["mask"].clone()
    m[0, 1] = 0
    with pytest.raises(LossError, match="partly masked"):
        build_hard_loss("multiclass")(MC["student"], MC["target"], m)


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_nothing_valid_gives_zero_with_grad(task):
    B, L = 3, 4
    s = torch.randn(B, L, requires_grad=True)
    y = torch.eye(L)[:B] if task == "multiclass" else torch.zeros(B, L)
    zero = torch.zeros(B, L)
    for kind in ["auto", "mse"]:
        out = KDLoss.build(task, kd=kind, alpha=0.5, temperature=2.0)(s, torch.randn(B, L), y, zero)
        assert out["loss"].item() == 0.0 and out["loss"].grad_fn is not None
        out["loss"].backward()
        assert torch.all(s.grad == 0)
    feat = attention_transfer(torch.randn(B, 2, 4, 4, requires_grad=True), torch.randn(B, 3, 4, 4), mask=torch.zeros(B))
    assert feat.item() == 0.0 and feat.grad_fn is not None


@pytest.mark.parametrize("task, kind", [("multilabel", "bce"), ("multiclass", "kl"), ("multilabel", "mse"),
                                        ("multiclass", "mse")])
def test_kd_is_zero_when_student_equals_teacher(task, kind):
    z = torch.randn(5, 4) * 3
    s = z.clone().requires_grad_(True)
    out = build_kd_loss(task, kind, temperature=3.0)(s, z, None)
    assert abs(out.item()) < 1e-6
    out.backward()
    assert s.grad.abs().max() < 1e-6


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
def test_t_squared_scaling(task):
    """At fixed tempered logits (s/T, t/T), the loss is T^2 times the T = 1 value."""
    a, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    base = build_kd_loss(task, temperature=1.0)(a, b, None)
    for T in (2.0, 4.0, 7.5):
        scaled = build_kd_loss(task, temperature=T)(a * T, b * T, None)
        close(scaled, T * T * float(base), tol=1e-9)
    mse = build_kd_loss(task, "mse", temperature=5.0)(a, b, None)
    close(mse, float(((a - b) ** 2).mean()), tol=1e-12)  # no T^2 for logit MSE


def test_kdloss_alpha_extremes_and_feature_term():
    s, t = ML["student"], ML["teacher"]
    hard = build_hard_loss("multilabel")(s, ML["target"], ML["mask"])
    soft = build_kd_loss("multilabel", temperature=2.0)(s, t, ML["mask"])
    close(KDLoss.build("multilabel", alpha=1.0, temperature=2.0)(s, t, ML["target"], ML["mask"])["loss"], float(hard))
    close(KDLoss.build("multilabel", alpha=0.0, temperature=2.0)(s, t, ML["target"], ML["mask"])["loss"], float(soft))
    kd = KDLoss.build("multilabel", alpha=0.5, temperature=2.0, feature=AttentionTransfer(), feature_weight=2.0)
    fs, ft = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randn(6, 7, 4, 4, dtype=torch.float64)
    out = kd(s, t, ML["target"], ML["mask"], student_features=fs, teacher_features=ft)
    assert set(out) == {"loss", "hard", "soft", "feature"}
    close(out["loss"], 0.5 * float(hard) + 0.5 * float(soft) + 2.0 * out["feature"].item())
    with pytest.raises(LossError, match="student_features"):
        kd(s, t, ML["target"], ML["mask"])


def test_kdloss_fitnets_projector_is_trained_with_it():
    hint = FitNetsHint(4, 6)
    kd = KDLoss.build("multiclass", alpha=0.5, temperature=4.0, feature=hint)
    assert any(p is hint.projector[0].weight for p in kd.parameters())
    s = torch.randn(3, 5, requires_grad=True)
    out = kd(s, torch.randn(3, 5), torch.eye(5)[:3], None,
             student_features=torch.randn(3, 4, 2, 2), teacher_features=torch.randn(3, 6, 5, 5))
    out["loss"].backward()
    assert hint.projector[0].weight.grad is not None and hint.projector[0].weight.grad.abs().sum() > 0


def test_feature_losses_resize_and_mask():
    s = torch.randn(4, 3, 4, 4, requires_grad=True)
    t = torch.randn(4, 5, 8, 8)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # FitNets in eval mode: in training mode its BatchNorm takes statistics over the whole batch (as the student's
    # own BatchNorm layers do), so there a dropped sample still shifts the others through those statistics
    for fn in (FitNetsHint(3, 5).eval(), AttentionTransfer()):
        out = fn(s, t, keep)
        assert out.dim() == 0 and torch.isfinite(out)
        s.grad = None
        out.backward()
        assert torch.all(s.grad[1] == 0) and s.grad[0].abs().sum() > 0
    same = torch.randn(2, 3, 5, 5)
    assert float(attention_transfer(same, same * 2.0)) < 1e-6  # attention maps are normalised
    with pytest.raises(LossError, match=r"\(B, C, h, w\)"):
        attention_transfer(torch.randn(2, 16, 3), torch.randn(2, 16, 3))
    with pytest.raises(LossError, match="channel"):
        FitNetsHint(3, 5)(torch.randn(2, 4, 4, 4), torch.randn(2, 5, 4, 4))


def test_one_teacher_returns_itself_and_average():
    z = torch.randn(4, 5, dtype=torch.float64) * 4
    for T in (1.0, 3.0):
        close(torch.max(torch.abs(combine_teacher_logits([z], task="multilabel", temperature=T) - z)), 0.0, tol=1e-9)
        out = combine_teacher_logits([z], task="multiclass", temperature=T)
        norm = T * F.log_softmax(z / T, dim=1)  # the same logits up to a per-row constant
        close(torch.max(torch.abs(out - norm)), 0.0, tol=1e-9)
    a, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    T = 2.0
    out = combine_teacher_logits([a, b], [3.0, 1.0], task="multilabel", temperature=T)
    np.testing.assert_allclose(torch.sigmoid(out / T), 0.75 * torch.sigmoid(a / T) + 0.25 * torch.sigmoid(b / T))
    out = combine_teacher_logits([a, b], task="multiclass", temperature=T)
    np.testing.assert_allclose(F.softmax(out / T, 1), 0.5 * F.softmax(a / T, 1) + 0.5 * F.softmax(b / T, 1))
    # same teacher twice = that teacher; extreme logits stay finite
    np.testing.assert_allclose(combine_teacher_logits([a, a], task="multilabel"), a, atol=1e-9)
    big = torch.tensor([[200.0, -200.0]])
    assert torch.isfinite(combine_teacher_logits([big, big * 0.5], task="multilabel")).all()


def test_bad_input_errors_are_clear():
    assert issubclass(LossError, MedistillError)
    with pytest.raises(LossError, match="softmax across labels"):
        build_kd_loss("multilabel", "kl", temperature=4.0)
    with pytest.raises(LossError, match="one label per image"):
        build_hard_loss("multilabel", "ce")
    with pytest.raises(LossError, match="'focal' on single-label"):
        build_hard_loss("multiclass", "focal")
    with pytest.raises(LossError, match="'bce'.*single-label"):
        build_kd_loss("multiclass", "bce", temperature=4.0)
    with pytest.raises(LossError, match="temperature: got 0"):
        build_kd_loss("multiclass", temperature=0)
    with pytest.raises(LossError, match="task: got 'binary'"):
        build_hard_loss("binary")
    with pytest.raises(LossError, match="kd kind: got 'xyz'"):
        build_kd_loss("multiclass", "xyz", temperature=1.0)
    with pytest.raises(LossError, match=r"target: shape \(3, 4\).*\(3, 5\)"):
        build_hard_loss("multilabel")(torch.zeros(3, 5), torch.zeros(3, 4), None)
    with pytest.raises(LossError, match=r"pos_weight: shape \(2,\)"):
        build_hard_loss("multilabel", class_weights=torch.ones(2))(torch.zeros(3, 5), torch.zeros(3, 5), None)
    with pytest.raises(LossError, match="alpha: got 1.5"):
        KDLoss.build("multiclass", alpha=1.5, temperature=2.0)
    with pytest.raises(LossError, match=r"teacher 1 logits: shape \(2, 4\)"):
        combine_teacher_logits([torch.zeros(2, 5), torch.zeros(2, 4)], task="multilabel")
    with pytest.raises(LossError, match="teacher weights"):
        combine_teacher_logits([torch.zeros(2, 5)] * 2, [1.0, -1.0], task="multilabel")


def test_auto_kinds_are_the_tasks_defaults():
    """Issue 36, item 3: "auto" is what the Task says (Task.hard_loss, Task.kd_loss), a Task or its name alike."""
    import dataclasses

    from medistill.losses import BinaryKL, FocalBCE, LogitMSE, MaskedBCE, MaskedCE, SoftmaxKL
    from medistill.task import MULTICLASS, MULTILABEL

    for task, hard, soft in ((MULTILABEL, MaskedBCE, BinaryKL), (MULTICLASS, MaskedCE, SoftmaxKL)):
        for given in (task, task.name):
            assert type(build_hard_loss(given)) is hard and type(build_kd_loss(given, temperature=2.0)) is soft
            kd = KDLoss.build(given, alpha=0.5, temperature=2.0)
            assert type(kd.hard) is hard and type(kd.soft) is soft
    other = dataclasses.replace(MULTILABEL, hard_loss="focal", kd_loss="mse")  # the fields are read, not names
    assert type(build_hard_loss(other)) is FocalBCE and type(build_kd_loss(other, temperature=2.0)) is LogitMSE
    z = torch.randn(2, 4, 3, dtype=torch.float64)
    for task in (MULTILABEL, MULTICLASS):
        torch.testing.assert_close(combine_teacher_logits(list(z), task=task),
                                   combine_teacher_logits(list(z), task=task.name))
        y = torch.eye(3)[[0, 1, 1, 2]]
        torch.testing.assert_close(class_weights_from_targets(y, None, task),
                                   class_weights_from_targets(y, None, task.name))


def test_class_weights_from_targets():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]], float)
    m = np.ones_like(y)
    m[0, 0] = 0  # excluded
    w = class_weights_from_targets(y, m, "multilabel")
    np.testing.assert_allclose(w.numpy(), [2 / 2, 4 / 1, 3 / 2])
    assert w.dtype == torch.float32
    cls = np.array([0, 0, 0, 1, 2, 2, 0, 1])
    onehot = np.eye(3)[cls]
    mm = np.ones_like(onehot)
    mm[6] = 0  # a dropped sample does not count
    ref = compute_class_weight("balanced", classes=np.arange(3), y=cls[mm[:, 0] > 0])
    np.testing.assert_allclose(class_weights_from_targets(torch.tensor(onehot), torch.tensor(mm), "multiclass").numpy(),
                               ref, rtol=1e-6)
    only_neg = class_weights_from_targets(np.zeros((4, 2)), None, "multilabel")
    np.testing.assert_allclose(only_neg.numpy(), [1.0, 1.0])


def test_weights_follow_the_logits_dtype():
    z = ML["student"]  # float64 logits with a float32 weight buffer
    close(build_hard_loss("multilabel", class_weights=ML["pos_weight"].float())(z, ML["target"], ML["mask"]),
          EXP["bce_pos_weight"], tol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# explanation-aware KD (e2KD, CAT-KD) and the Grad-CAM maps they use
# ------------------------------------------------------------------------------------------------------------

MAPS = {k: t64(v) for k, v in GOLDEN["maps"].items()}


def test_golden_e2kd():
    from medistill.losses import E2KDLoss

    close(E2KDLoss()(MAPS["student"], MAPS["teacher"], MAPS["mask"]), EXP["e2kd_multilabel"])
    close(E2KDLoss(single_label=True)(MAPS["student"], MAPS["teacher"], MAPS["mask"], MAPS["teacher_logits"]),
          EXP["e2kd_single_label"])



def test_e2kd_predicted_only_explains_the_labels_the_teacher_predicts_present():
    """Multi-label e2KD on the teacher's predicted labels: the golden pairs, masked to teacher logit > 0."""
    from medistill.losses import E2KDLoss

    s, t, m, lg = MAPS["student"], MAPS["teacher"], MAPS["mask"], MAPS["teacher_logits"]
    keep = (lg > 0).to(m.dtype)
    assert 0 < float((keep * m).sum()) < float(m.sum())  # the golden logits leave some valid labels out
    got = E2KDLoss(predicted_only=True)(s, t, m, lg)
    close(got, float(E2KDLoss()(s, t, m * keep)))
    assert not torch.isclose(got, E2KDLoss()(s, t, m))
    with pytest.raises(LossError, match=r"predicted_only=True\) needs teacher_logits"):
        E2KDLoss(predicted_only=True)(s, t, m)


@pytest.mark.parametrize("pool, name", [(2, "cat_pool2"), (1, "cat_pool1")])
def test_golden_cat(pool, name):
    from medistill.losses import CATLoss

    close(CATLoss(pool)(MAPS["student"], MAPS["teacher"], MAPS["mask"]), EXP[name])


def test_golden_gradcam_of_a_gap_linear_head_is_cam():
    from medistill.losses import gradcam_maps

    feat = MAPS["features"].clone().requires_grad_(True)
    head = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        head.weight.copy_(MAPS["head_weight"])
    logits = head(feat.mean(dim=(2, 3)))
    maps = gradcam_maps(feat, logits)
    np.testing.assert_allclose(maps.detach().numpy(), EXP["gradcam_gap_linear"], rtol=1e-9, atol=1e-12)


def test_golden_fused_maps_relu_resize_scale_average_scale():
    """Two layers: a 4 x 4 map with one positive cell, and a 2 x 2 ramp that bilinear resizing (half-pixel
    centres, edges clamped) spreads to 0, 1, 3, 4 along each row; each min-max scaled, averaged, scaled again."""
    from medistill.maps.combine import fuse_maps

    fine = torch.zeros(1, 1, 4, 4)
    fine[0, 0, 0, 3], fine[0, 0, 3, 0] = 2.0, -1.0  # the ReLU drops the negative cell
    coarse = torch.tensor([[[[0.0, 4.0], [0.0, 4.0]]]])
    row = torch.tensor([0.0, 0.125, 0.375, 0.5])
    want = row.repeat(4, 1)
    want[0, 3] = 1.0
    torch.testing.assert_close(fuse_maps([fine, coarse])[0, 0], want)
    # a layer with no positive evidence adds zeros, it is not blown up by its scaling
    torch.testing.assert_close(fuse_maps([fine, -coarse])[0, 0], fine.clamp_min(0)[0, 0] / 2)


def test_golden_refined_maps_the_deep_map_picks_the_cell_the_fine_map_the_place_in_it():
    """Poly-CAM's recursion, a 2 x 2 deep map over a 4 x 4 fine one. A fine map constant in every cell only
    carries the deep map up (bilinear: half-pixel centres, edges clamped). A fine peak in the cell the deep map
    holds becomes the maximum; a larger one in a cell the deep map rules out is dropped, where the mean fusion
    ranks it level with the deep map's peak."""
    from medistill.maps.combine import fuse_maps, refine_maps

    deep = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]]]])
    row = torch.tensor([4.0, 3.0, 1.0, 0.0])
    want = torch.stack([row, 0.75 * row, 0.25 * row, 0 * row]) / 4
    torch.testing.assert_close(refine_maps([torch.full((1, 1, 4, 4), 3.0), deep])[0, 0], want)
    fine = torch.zeros(1, 1, 4, 4)
    fine[0, 0, 0, 1], fine[0, 0, 3, 3] = 1.0, 5.0  # in the deep map's cell / in a cell it scores 0
    # at (0, 1): local mean 0.75 * 0.25 (cell means 0.25 and 0 along the row), deep map upsampled 3
    want = torch.zeros(4, 4)
    want[0, 1] = 1.0
    torch.testing.assert_close(refine_maps([fine, deep])[0, 0], want)
    fused = fuse_maps([fine, deep])[0, 0]
    assert fused[3, 3] == fused.max() == 1.0  # the mean ranks the stray fine peak as high as the deep map's own
    assert refine_maps([fine, deep]).shape == (1, 1, 4, 4)


def test_gradcam_combines_several_layers_as_asked_and_refuses_an_unknown_combination():
    from medistill.losses import LossError, gradcam_maps
    from medistill.maps.combine import refine_maps

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    conv1, conv2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)
    a1 = torch.relu(conv1(x))
    a2 = torch.relu(conv2(a1))
    logits = torch.nn.Linear(5, 3)(a2.mean(dim=(2, 3)))
    poly = gradcam_maps([a1, a2], logits, create_graph=True, combine="poly")
    torch.testing.assert_close(poly.detach(), refine_maps([gradcam_maps(a1, logits), gradcam_maps(a2, logits)]))
    poly.sum().backward()
    assert conv1.weight.grad is not None and torch.isfinite(conv1.weight.grad).all()
    with pytest.raises(LossError, match="combine 'max'"):
        gradcam_maps([a1, a2], logits, combine="max")


def test_gradcam_of_several_layers_is_the_fusion_of_each_layers_gradcam_and_stays_differentiable():
    from medistill.losses import gradcam_maps
    from medistill.maps.combine import fuse_maps

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    conv1, conv2, head = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 5, 3, stride=2, padding=1), \
        torch.nn.Linear(5, 3)
    a1 = torch.relu(conv1(x))
    a2 = torch.relu(conv2(a1))
    logits = head(a2.mean(dim=(2, 3)))
    fused = gradcam_maps([a1, a2], logits, create_graph=True)
    assert fused.shape == (2, 3, 8, 8)
    each = fuse_maps([gradcam_maps(a1, logits), gradcam_maps(a2, logits)])
    torch.testing.assert_close(fused.detach(), each)
    fused.sum().backward()
    assert conv1.weight.grad is not None and float(conv1.weight.grad.abs().sum()) > 0
    with pytest.raises(LossError, match="no feature maps"):
        gradcam_maps([], logits)


def test_e2kd_is_zero_when_the_student_looks_where_the_teacher_looks_and_gradients_reach_the_student():
    from medistill.losses import E2KDLoss, gradcam_maps

    feat = torch.randn(2, 4, 6, 6, requires_grad=True)
    head = torch.nn.Linear(4, 3)
    logits = head(feat.mean(dim=(2, 3)))
    s_maps = gradcam_maps(feat, logits, create_graph=True)
    assert float(E2KDLoss()(s_maps, s_maps.detach() * 2.5).detach()) == pytest.approx(0.0, abs=1e-6)  # scale-free
    loss = E2KDLoss()(s_maps, torch.rand(2, 3, 3, 3))
    loss.backward()
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0  # through the explanation


def test_kdloss_adds_the_explanation_term():
    from medistill.losses import CATLoss

    kd = KDLoss.build("multilabel", alpha=PAR["alpha"], temperature=PAR["T_multilabel"], explanation=CATLoss(2),
                      explanation_weight=3.0).double()
    s_maps, t_maps = MAPS["student"], MAPS["teacher"]
    b = s_maps.shape[0]
    out = kd(ML["student"][:b, :3], ML["teacher"][:b, :3], ML["target"][:b, :3], MAPS["mask"], student_maps=s_maps,
             teacher_maps=t_maps)
    close(out["explain"], EXP["cat_pool2"])
    close(out["loss"], float(out["hard"] * PAR["alpha"] + (1 - PAR["alpha"]) * out["soft"] + 3.0 * out["explain"]))
    with pytest.raises(Exception, match="student_maps and teacher_maps"):
        kd(ML["student"], ML["teacher"], ML["target"], ML["mask"])
