"""Determinism on CPU: the same seed and config give the same metrics and the same weights, bit for bit; another
seed gives others (so the seed really drives weights, data order, augmentation and dropout)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medistill.config import RunConfig, build
from medistill.train import run_training


def _run(phantom_root: Path, out: Path, seed: int) -> tuple[list[dict[str, str]], dict[str, torch.Tensor], dict]:
    cfg = build(RunConfig, overrides={
        "out": str(out), "data.dataset": "phantom", "data.root": str(phantom_root), "data.image_size": "32",
        "data.limit": "64", "data.augment": "light", "data.cache_dir": str(out.parent / "cache"),
        "model.name": "tiny_cnn", "model.drop_rate": "0.2", "train.epochs": "2", "train.batch_size": "16",
        "train.lr": "0.003", "train.seed": str(seed), "train.device": "cpu"})
    run = run_training(cfg)
    with open(run.file("history.csv"), newline="") as f:
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
    return history, load_file(str(run.file("model.safetensors"))), run.metrics()


@pytest.fixture(scope="module")
def three_runs(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture runs before the per-test one-thread fixture of conftest
    root = tmp_path_factory.mktemp("determinism")
    try:
        yield _run(phantom_root, root / "a", 3), _run(phantom_root, root / "b", 3), _run(phantom_root, root / "c", 4)
    finally:
        torch.set_num_threads(threads)


def test_same_seed_same_metrics_and_weights(three_runs):
    (ha, wa, ma), (hb, wb, mb), _ = three_runs
    assert ha == hb  # every logged number: losses, lr, validation loss and AUC, per epoch
    assert ma == mb
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_other_seed_other_run(three_runs):
    (ha, wa, _), _, (hc, wc, _) = three_runs
    assert [r["train_loss"] for r in ha] != [r["train_loss"] for r in hc]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())
