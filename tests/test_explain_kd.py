"""Explanation-aware distillation in training: e2KD / CAT-KD terms with online and cached teachers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from medistill import runs
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
    """distill.cam_layers picks the maps' layers as explain's --cam-layers does; ``model`` keeps the declared one,
    and each policy has its own teacher-map cache."""
    teacher, _ = runs.load_model(teacher_run)
    sides, seen = {}, set()
    for policy in ("auto", "model"):
        out = tmp_path / policy
        run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher_run), "distill.explain_loss": "e2kd",
                                                "distill.teacher_views": 2, "data.augment": "light",
                                                "distill.teacher_views_dir": str(tmp_path / "shared"),
                                                "distill.cam_layers": policy, "train.epochs": 1}))
        new = set((tmp_path / "shared").glob("*-maps.npy")) - seen
        assert len(new) == 1, "each policy caches its own teacher maps"
        seen |= new
        sides[policy] = np.load(new.pop()).shape[-1]
    inp = runs.RunDir(teacher_run).config().data.image_size
    want = {p: choose_layers(teacher, p, input_shape=(1, inp, inp))[-1].side for p in ("auto", "model")}
    assert sides == want and want["auto"] > want["model"]


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
