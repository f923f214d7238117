"""What decides whether a map can find a lesion: the CAM layer's resolution (auto / fuse / model), blank maps for
labels with no positive evidence, explaining the true labels (``--labels truth``) and the tolerant pointing game in
``explain.json``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from medistill.explain import ExplainError, explain_maps
from medistill.models import ModelError
from medistill.models.cam_layers import choose_layers
from medistill.explain.labels import choose_labels
from medistill.explain.options import ExplainConfig, ExplainOptions, ExplainSource
from medistill.explain.scoring import blank
from medistill.models import create_model


def test_auto_takes_the_deepest_stage_at_least_min_size_and_fuse_adds_the_deeper_ones():
    model = create_model("resnet18", num_classes=3, in_chans=1, image_size=128)
    pick = {p: [(c.name, c.side) for c in choose_layers(model, p)] for p in ("model", "auto", "fuse")}
    assert pick["model"] == [("layer4", 4)]  # stride 32 at 128 px: a 4 x 4 map
    assert pick["auto"] == [("layer3", 8)]
    assert pick["fuse"] == [("layer3", 8), ("layer4", 4)]
    # the side is measured at the size explained: at 256 px the last stage is 8 x 8 already
    assert [c.name for c in choose_layers(model, "auto", input_shape=(1, 256, 256))] == ["layer4"]
    assert [c.name for c in choose_layers(model, "auto", min_size=16)] == ["layer2"]
    # no stage is fine enough: the declared layer
    assert [c.name for c in choose_layers(model, "auto", min_size=1000)] == ["layer4"]
    with pytest.raises(ModelError, match="cam_layers: got 'widest'"):
        choose_layers(model, "widest")


def test_vision_transformer_keeps_its_declared_token_layer():
    model = create_model("vit_tiny_patch16_224", num_classes=3, in_chans=1, image_size=32)
    assert [c.name for c in choose_layers(model, "auto")] == ["blocks.11.norm1"]


def test_policies_give_maps_at_their_resolution():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, in_chans=1, image_size=64).eval()
    x = torch.randn(2, 1, 64, 64)
    coarse = explain_maps(model, x, [0, 1], "gradcam", cam_layers="model")  # layer4: 2 x 2 upsampled
    fine = explain_maps(model, x, [0, 1], "gradcam", cam_layers="auto")  # layer2: 8 x 8
    fused = explain_maps(model, x, [0, 1], "gradcam", cam_layers="fuse")
    for m in (coarse, fine, fused):
        assert m.shape == (2, 64, 64) and 0.0 <= m.min() and m.max() <= 1.0 + 1e-6
    # a 2 x 2 map bilinearly upsampled has far fewer distinct local maxima than an 8 x 8 one
    assert not np.allclose(coarse, fine)
    # an explicit layer overrides the policy
    np.testing.assert_allclose(explain_maps(model, x, [0, 1], "gradcam", layer="layer4", cam_layers="auto"), coarse,
                               atol=1e-6)


class NegativeHead(nn.Module):
    """conv -> ReLU -> mean -> a linear head whose weights are all negative: Grad-CAM's weighted sum of the
    (non-negative) activations is negative everywhere, so its ReLU leaves a blank map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.fill_(-1.0)
        self.num_classes = 2
        self.pretrained_cfg = {"input_size": (1, 16, 16), "mean": (0.5,), "std": (0.5,), "cam_layer": "act",
                               "cam_reshape": None, "feature_stages": ["act"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_a_label_with_no_positive_evidence_gives_a_blank_map_that_is_reported():
    torch.manual_seed(0)
    model = NegativeHead()
    maps = explain_maps(model, torch.rand(2, 1, 16, 16), [0, 1], "gradcam")
    assert not maps.any()  # all zero: pytorch-grad-cam's ReLU, then min-max scaling of a zero map
    assert blank(maps[0]) == 1.0
    assert blank(np.eye(4)) == 0.0


def test_truth_labels_are_each_images_true_positives():
    labels = ["A", "B", "C"]
    probs = np.array([[0.1, 0.9, 0.2], [0.8, 0.1, 0.1]])
    chosen = choose_labels(probs, labels, "multilabel", ["truth"], 3, np.full(3, 0.5), [["C", "A"], []])
    assert chosen == [["A", "C"], []]  # the model's label order; an image without findings gets no map
    with pytest.raises(ExplainError, match="needs a dataset split"):
        choose_labels(probs, labels, "multilabel", ["truth"], 3, np.full(3, 0.5), None)


def test_options_refuse_truth_with_image_files_and_unknown_policies():
    with pytest.raises(ExplainError, match="'truth' needs a dataset split"):
        ExplainConfig(ExplainSource(images=["a.png"]), ExplainOptions(labels=["truth"])).validate()
    with pytest.raises(ExplainError, match="stands alone"):
        ExplainOptions(labels=["truth", "A"]).validate()
    with pytest.raises(ExplainError, match="cam_layers: got 'all'"):
        ExplainOptions(cam_layers="all").validate()
    with pytest.raises(ExplainError, match="cam_min_size: got 0"):
        ExplainOptions(cam_min_size=0).validate()


def test_cli_explains_true_labels_with_tolerant_pointing_game(phantom_root, tmp_path):
    """A run on the phantom explained with --labels truth --cam-layers fuse: every map is of a label the image
    really has, explain.json reports both pointing games, the layers hooked and the share of blank maps."""
    import pandas as pd

    from medistill.cli import main
    from medistill.config import DataConfig, RunConfig
    from medistill.runs import RunDir, save_model

    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=6, in_chans=1, image_size=64)
    run = RunDir.create(tmp_path / "run", RunConfig(data=DataConfig(dataset="phantom", root=str(phantom_root),
                                                                    image_size=64)), kind="train")
    table = pd.read_csv(phantom_root / "labels.csv")
    labels = [c for c in table.columns if c not in ("image_id", "patient_id", "view", "split")]
    save_model(run, model, labels=labels, task="multilabel")
    out = tmp_path / "explain"
    rc = main(["explain", str(run.path), "--split", "test", "--limit", "8", "--labels", "truth", "--cam-layers",
               "fuse", "--no-faithfulness", "--feature-grid", "0", "--overlays", "2", "--out", str(out)])
    assert rc == 0
    s = json.loads((out / "explain.json").read_text())
    truth = table.set_index("image_id")
    for entry in s["images"]:
        assert [m["label"] for m in entry["maps"]] == [lab for lab in labels if truth.at[entry["name"], lab] == 1]
    assert s["num_maps"] >= 1
    assert s["cam_layers"] == {"student": ["layer2", "layer3", "layer4"]}  # 64 px: 8, 4 and 2 px a side
    for key in ("pointing_game", "pointing_game_tolerant", "pointing_chance", "pointing_chance_tolerant"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["pointing_chance_tolerant"] > s["pointing_chance"]
    assert 0.0 <= s["blank"] <= 1.0
    assert "pointing_game_tolerant" in next(iter(s["per_label"].values()))
