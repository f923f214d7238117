"""Issue 15, item 2: the input channels follow the data unless given. A colour class folder trains a 3-channel
model, a grayscale one a 1-channel model; the choice and its reason are in the run record; a distilled student
with ``in_chans: auto`` takes its teacher's channel count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medistill.config import ConfigError, RunConfig, build
from medistill.data import build_dataset
from medistill.data.inspect import detect_channels
from medistill.runs import RunDir
from medistill.train import run_training


def colour_folder(root: Path, colour: bool, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for c, tint in (("red", (200, 40, 40)), ("green", (40, 200, 40))):
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            px = np.clip(rng.normal(0, 20, (16, 16, 3)) + np.array(tint), 0, 255).astype(np.uint8)
            if not colour:  # the same picture stored as RGB with equal channels: grayscale
                px = np.repeat(px.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
            Image.fromarray(px).save(root / c / f"{k:02d}.png")
    return root


def _cfg(root: Path, out: Path, **over: str) -> RunConfig:
    base = {"out": str(out), "data.dataset": "folder", "data.root": str(root), "data.image_size": 16,
            "data.augment": "none", "data.cache": "false", "model.name": "tiny_cnn", "train.epochs": "1",
            "train.batch_size": "8"}
    return build(RunConfig, overrides={**base, **over})


@pytest.mark.parametrize("colour", [True, False])
def test_detect_channels_from_a_sample(tmp_path, colour):
    root = colour_folder(tmp_path / "d", colour)
    ds = build_dataset(build(RunConfig, overrides={"data.dataset": "folder", "data.root": str(root)}).data, "train")
    chans, why = detect_channels(ds)
    assert chans == (3 if colour else 1)
    assert "sampled training images" in why


def test_colour_folder_trains_a_colour_model_and_says_so(tmp_path):
    root = colour_folder(tmp_path / "d", True)
    run = run_training(_cfg(root, tmp_path / "colour"))
    info = RunDir(run.path).info()
    assert info["input"]["channels"] == 3  # was 1: colour silently made grayscale
    assert info["input_channels"]["channels"] == 3 and info["input_channels"]["source"].startswith("detected")
    assert info["intensity"] == "voi-window-else-bit-depth"
    gray = run_training(_cfg(colour_folder(tmp_path / "g", False), tmp_path / "gray"))
    assert RunDir(gray.path).info()["input"]["channels"] == 1
    given = run_training(_cfg(root, tmp_path / "given", **{"model.in_chans": "1"}))
    assert RunDir(given.path).info()["input_channels"] == {"channels": 1, "source": "given (model.in_chans)"}

    # a student with in_chans auto takes its teacher's channel count (here 3, as the data)
    student = run_training(_cfg(root, tmp_path / "student", **{"distill.teacher": str(run.path)}))
    sinfo = RunDir(student.path).info()
    assert sinfo["input"]["channels"] == 3 and sinfo["input_channels"]["source"].startswith("the teacher's")


def test_in_chans_values():
    assert build(RunConfig).model.in_chans == "auto"
    assert build(RunConfig, overrides={"model.in_chans": "3"}).model.in_chans == 3
    with pytest.raises(ConfigError, match=r"in_chans: got 2, expected one of \[1, 3\] or 'auto'"):
        build(RunConfig, overrides={"model.in_chans": "2"})
