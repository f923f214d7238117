"""Explanation-aware distillation in training: e2KD / CAT-KD terms with online and cached teachers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from medistill import runs
from medistill.config import ConfigError
from medistill.losses import gradcam_maps
from medistill.models.cam_layers import choose_layers
from medistill.train import run_training
from medistill.train.distillation import features_and_logits
from medistill.train.views import ViewDataset

from test_train import _cfg, teacher_run  # noqa: F401  (the module fixture)


def _row(out: Path) -> dict:
    return next(csv.DictReader(open(out / "history.csv")))


def test_e2kd_online_adds_a_named_explanation_term(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    out = tmp_path / "e2kd"
    run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher_run), "data.augment": "light",
                                            "distill.explain_loss": "e2kd", "distill.explain_weight": 2.0,
                                            "train.epochs": 1}))
    assert runs.RunDir(out).info()["distill_mode"] == "online"
    row = _row(out)
    assert 0.0 < float(row["train_explain"]) <= 1.0  # 1 - cosine of two non-negative maps lies in [0, 1]
    total = 0.5 * float(row["train_hard"]) + 0.5 * float(row["train_soft"]) + 2.0 * float(row["train_explain"])
    assert abs(float(row["train_loss"]) - total) < 1e-3  # alpha 0.5: hard and soft halves, explanation x 2


def test_cat_offline_caches_the_teachers_maps(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    out = tmp_path / "cat"
    run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher_run), "distill.explain_loss": "cat",
                                            "distill.teacher_precision": "fp32", "train.epochs": 1}))
    assert runs.RunDir(out).info()["distill_mode"] == "offline"
    maps = np.load(out / "teacher_logits-maps.npy")
    assert maps.shape[:3] == (96, 1, 6) and maps.dtype == np.float16
    assert float(_row(out)["train_explain"]) > 0
    teacher, _ = runs.load_model(teacher_run)
    cfg = runs.RunDir(out).config()
    from medistill.data import Preprocess, build_dataset
    from medistill.models import input_config

    inp = input_config(teacher)
    ds = ViewDataset(build_dataset(cfg.data, "train", Preprocess(inp.size, 1, inp.mean, inp.std)), 1, 0)
    ds.fix_view(0)
    # the maps come from the layer explain hooks under the same policy (auto), not the declared stride-32 one
    [layer] = choose_layers(teacher, "auto", input_shape=(1, inp.size, inp.size))
    assert maps.shape[-1] == layer.side
    feat, logits = features_and_logits(teacher, ds[7]["image"][None], detach=True, layer=layer.name)
    want = gradcam_maps(feat, logits).detach().numpy()[0]
    np.testing.assert_allclose(maps[7, 0].astype(np.float32), want, rtol=2e-2, atol=2e-3)


def test_explanation_loss_layers_follow_the_cam_layer_policy(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    """distill.cam_layers / cam_min_size pick the maps' layers as explain's --cam-layers / --cam-min-size do;
    ``model`` keeps the declared one, a larger minimum a finer stage, and each choice has its own teacher-map
    cache."""
    teacher, _ = runs.load_model(teacher_run)
    sides, seen = {}, set()
    choices = (("auto", 8), ("auto", 16), ("model", 8), ("fuse", 16), ("poly", 16))
    for policy, min_size in choices:
        out = tmp_path / f"{policy}{min_size}"
        run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher_run), "distill.explain_loss": "e2kd",
                                                "distill.teacher_views": 2, "data.augment": "light",
                                                "distill.teacher_views_dir": str(tmp_path / "shared"),
                                                "distill.cam_layers": policy, "distill.cam_min_size": min_size,
                                                "train.epochs": 1}))
        new = set((tmp_path / "shared").glob("*-maps.npy")) - seen
        assert len(new) == 1, "each choice caches its own teacher maps"
        seen |= new
        sides[policy, min_size] = np.load(new.pop()).shape[-1]
    inp = runs.RunDir(teacher_run).config().data.image_size
    want = {(p, m): max(c.side for c in choose_layers(teacher, p, min_size=m, input_shape=(1, inp, inp)))
            for p, m in choices}
    assert sides == want
    assert want["auto", 16] >= 16 > want["auto", 8] > want["model", 8]
    assert want["fuse", 16] == want["auto", 16]  # the fused map has its finest layer's side
    assert want["poly", 16] == want["fuse", 16]  # the same layers, combined otherwise: a cache of its own (above)


@pytest.mark.parametrize("policy", ["fuse", "poly"])
def test_the_combined_map_a_student_trains_on_is_the_one_explain_shows(policy: str):
    """cam_layers fuse / poly: the loss's differentiable combination of the student's Grad-CAMs (at the finest
    layer's side) matches the map that ``explain --cam-layers fuse|poly`` scores (pytorch-grad-cam's per-layer
    maps, combined), pooled to that side."""
    from medistill.explain.cams import cam_maps
    from medistill.models import create_model
    from medistill.train.distillation import forward_hooked

    torch.manual_seed(0)
    model = create_model("kdfmv", num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    chosen = choose_layers(model, policy, min_size=16, input_shape=(1, 64, 64))
    assert len(chosen) > 1
    feats, logits = forward_hooked(model, x, [c.name for c in chosen])
    ours = gradcam_maps(feats, logits, combine=policy).detach()  # (2, 3, 16, 16)
    rows, labels = x.repeat_interleave(3, dim=0), [0, 1, 2] * 2
    shown = cam_maps(model, rows, labels, cam_layers=policy, min_size=16)  # (6, 64, 64), as explain scores it
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(shown)[:, None], 16)[:, 0]
    ours = ours.reshape(6, 16, 16)
    blank = ours.flatten(1).amax(1) == 0  # an untrained model's label with no positive evidence (poly: at a layer)
    assert blank.tolist() == (pooled.flatten(1).amax(1) == 0).tolist() and int((~blank).sum()) >= 2
    for a, b in zip(ours[~blank], pooled[~blank]):
        r = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert r > 0.95, r
    assert float((ours - pooled).abs().mean()) < 0.05


def test_e2kd_with_cached_views(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    out = tmp_path / "e2kd_views"
    run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher_run), "data.augment": "light",
                                            "distill.teacher_views": 2, "distill.explain_loss": "e2kd",
                                            "train.epochs": 1}))
    assert runs.RunDir(out).info()["distill_mode"] == "views"
    [maps] = list(out.glob("teacher_views-*-maps.npy"))
    assert np.load(maps).shape[:3] == (96, 2, 6)
    assert float(_row(out)["train_explain"]) > 0
    assert torch.isfinite(torch.tensor(float(_row(out)["train_loss"])))


def test_attribution_teacher_maps_are_pooled_gradientshap_of_each_label():
    """AttributionMaps on a linear model with a one-image background: GradientShap's gradient is constant, so
    each label's attribution is exactly |w_l * (x - b)| summed over channels; divided by its maximum, then
    area-pooled to the student's grid."""
    from medistill.train.distillation import AttributionMaps

    g = torch.Generator().manual_seed(0)
    c, s, labels = 2, 8, 3
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * s * s, labels))
    x, b = torch.randn(2, c, s, s, generator=g), torch.randn(1, c, s, s, generator=g)
    maps = AttributionMaps(b, side=4, samples=3)(model, x, b, labels)
    w = model[1].weight.detach().view(labels, c, s, s)
    want = (w[None] * (x - b)[:, None]).abs().sum(2)  # (B, L, s, s)
    want = want / want.flatten(2).max(2).values[..., None, None]
    want = torch.nn.functional.avg_pool2d(want, 2)  # 8 -> 4 a side
    assert maps.shape == (2, labels, 4, 4)
    torch.testing.assert_close(maps, want, rtol=1e-4, atol=1e-5)


def test_e2kd_on_gradientshap_teacher_maps(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    """explain_teacher_maps gradientshap: the teacher's attributions, pooled to the student's map grid, are cached
    once (in teacher_views_dir, shared by a second seed) under their own key; online KD refuses them."""
    shared = tmp_path / "shared"
    over = {"distill.teacher": str(teacher_run), "distill.explain_loss": "e2kd", "distill.teacher_precision": "fp32",
            "distill.explain_teacher_maps": "gradientshap", "distill.explain_teacher_samples": 2,
            "distill.teacher_views_dir": str(shared), "train.epochs": 1}
    run_training(_cfg(phantom_root, tmp_path / "s0", **over))
    assert runs.RunDir(tmp_path / "s0").info()["distill_mode"] == "offline"
    [path] = shared.glob("teacher_views-*-maps.npy")
    maps = np.load(path).astype(np.float32)
    student, _ = runs.load_model(tmp_path / "s0")
    [layer] = choose_layers(student, "auto", input_shape=(1, 32, 32))
    assert maps.shape == (96, 1, 6, layer.side, layer.side)
    assert maps.min() >= 0 and 0 < maps.max() <= 1 and (maps.reshape(96 * 6, -1).max(1) > 0).all()
    assert float(_row(tmp_path / "s0")["train_explain"]) > 0
    stamp = path.stat().st_mtime_ns
    run_training(_cfg(phantom_root, tmp_path / "s1", **{**over, "train.seed": 1}))
    assert path.stat().st_mtime_ns == stamp and len(list(shared.glob("*-maps.npy"))) == 1  # reused, not redone
    run_training(_cfg(phantom_root, tmp_path / "cam", **{**over, "distill.explain_teacher_maps": "gradcam"}))
    assert len(list(shared.glob("*-maps.npy"))) == 2  # Grad-CAM maps are another cache
    with pytest.raises(ConfigError, match="explain_teacher_maps gradientshap.*augmentation 'light'"):
        run_training(_cfg(phantom_root, tmp_path / "online", **{**over, "data.augment": "light"}))
