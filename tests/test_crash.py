"""Crash safety: a training process killed with SIGKILL in the middle of an epoch loses nothing.

``medistill train`` runs as a subprocess on the phantom (tiny_cnn, 32 px, light augmentation, CPU, one thread). Once
its log shows that epoch 1 was saved, the test waits a fraction of an epoch and sends SIGKILL, so the process dies
inside epoch 2 with that epoch's optimiser steps done in memory only. Then:

- no file of the run directory is half-written: every JSON parses, the YAML parses, the safetensors and the
  weights-only ``state.pt`` load, ``history.csv`` has whole rows, one per saved epoch;
- ``medistill train --resume`` finishes the run, and its history, metrics and weights equal those of an
  uninterrupted run with the same seed, bit for bit.

A second test crashes (in-process) between the two files of one checkpoint (``last.safetensors`` written,
``state.pt`` not yet) and checks that resume still reproduces the uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medistill import runs
from medistill.cli import main
from medistill.models.weights import load_checkpoint

EPOCHS = 3
KNOWN_FILES = {"config.yaml", "run.json", "log.txt", "history.csv", "metrics.json", "model.safetensors",
               "last.safetensors", "state.pt", runs.LOCK_FILE}


def _args(phantom_root: Path, out: Path) -> list[str]:
    return ["train", "--dataset", "phantom", "--root", str(phantom_root), "--model", "tiny_cnn", "--image-size", "32",
            "--limit", "192", "--epochs", str(EPOCHS), "--batch-size", "16", "--lr", "0.003", "--augment", "light",
            "--cache", "false", "--seed", "7", "--device", "cpu", "--threads", "1", "--out", str(out)]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _without_time(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def check_run_files(run_dir: Path) -> int:
    """Every file of ``run_dir`` is whole and readable; returns the number of epochs the checkpoint holds."""
    names = {p.name for p in run_dir.iterdir()}
    leftovers = {n for n in names - KNOWN_FILES if n.startswith(".") and n.endswith(".tmp")}
    assert names - KNOWN_FILES - leftovers == set(), f"unexpected files {names - KNOWN_FILES - leftovers}"
    for name in names - leftovers:
        path = run_dir / name
        if name.endswith(".json"):
            assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict), name
        elif name.endswith(".yaml"):
            assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), name
        elif name.endswith(".safetensors"):
            assert load_file(str(path)), name
    state = load_checkpoint(run_dir / "state.pt")
    epoch = int(state["epoch"])
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == epoch + 1 and all(len(r) == len(rows[0]) for r in rows), rows
    assert [int(float(r[0])) for r in rows[1:]] == list(range(1, epoch + 1))
    runs.load_model(run_dir)  # the best model rebuilds from run.json + model.safetensors
    return epoch


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"{a.name}: tensors differ: {diff[:5]}"


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(phantom_root: Path, tmp_path: Path, capsys):
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medistill", *_args(phantom_root, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 400
        log = killed / "log.txt"
        while "epoch 1/3:" not in (log.read_text(errors="replace") if log.exists() else ""):
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.02)
        # epoch 1 is saved (history, weights, state); the process is now inside epoch 2: let it take some steps
        # (epoch 1 is the slowest: first decodes and warm-up, so a share of it is well inside epoch 2)
        epoch_seconds = float(_history(killed)[0]["seconds"])
        delay = min(max(0.1 * epoch_seconds, 0.1), 1.0)
        time.sleep(delay)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # killed inside epoch 2: epoch 1 is complete on disk, epoch 2 left nothing behind, nothing is half-written
    assert check_run_files(killed) == 1
    assert len(_history(killed)) == 1
    assert "epoch 2/3:" not in (killed / "log.txt").read_text()

    r = subprocess.run([sys.executable, "-m", "medistill", *_args(phantom_root, killed), "--resume"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert check_run_files(killed) == EPOCHS
    assert len(runs.RunDir(killed).info()["resumed"]) == 1

    straight = tmp_path / "straight"  # the same command, never interrupted (in this process: same code path)
    assert main(_args(phantom_root, straight)) == 0
    a, b = _history(straight), _history(killed)
    assert _without_time(a) == _without_time(b)
    assert json.loads((straight / "metrics.json").read_text()) == json.loads((killed / "metrics.json").read_text())
    for name in ("model.safetensors", "last.safetensors"):
        _same_weights(straight / name, killed / name)
    with capsys.disabled():
        metric = "val_macro_auc"
        print(f"\n[crash] SIGKILL {delay:.2f} s into epoch 2 of {EPOCHS} (epoch 1 took "
              f"{epoch_seconds:.2f} s); resumed final {metric} {b[-1][metric]}, train_loss {b[-1]['train_loss']}; "
              f"uninterrupted {a[-1][metric]}, train_loss {a[-1]['train_loss']}; "
              f"metrics.json {json.loads((killed / 'metrics.json').read_text())['train']}")


def test_crash_between_weights_and_state_then_resume(phantom_root: Path, tmp_path: Path, monkeypatch):
    """The checkpoint is two files; a crash after ``last.safetensors`` of epoch 2 but before its ``state.pt``
    leaves new weights beside the old state. Resume must still reproduce the uninterrupted run."""
    from medistill.config import RunConfig, build
    from medistill.train import checkpoint, run_training

    def cfg(out: Path) -> RunConfig:
        return build(RunConfig, overrides={
            "out": str(out), "data.dataset": "phantom", "data.root": str(phantom_root), "data.image_size": "32",
            "data.limit": "48", "data.augment": "light", "data.cache": "false", "model.name": "tiny_cnn",
            "train.epochs": "3", "train.batch_size": "16", "train.lr": "0.003", "train.device": "cpu"})

    run_training(cfg(tmp_path / "straight"))

    real = checkpoint.atomic_write
    saves = {"n": 0}

    def dies_before_second_state(path, writer):
        if Path(path).name == runs.STATE_FILE:
            saves["n"] += 1
            if saves["n"] == 2:  # epoch 2: last.safetensors is already replaced, state.pt is not
                raise KeyboardInterrupt("power cut")
        return real(path, writer)

    monkeypatch.setattr(checkpoint, "atomic_write", dies_before_second_state)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg(tmp_path / "crashed"))
    monkeypatch.setattr(checkpoint, "atomic_write", real)
    assert int(load_checkpoint(tmp_path / "crashed" / "state.pt")["epoch"]) == 1
    run_training(cfg(tmp_path / "crashed"), resume=True)
    a, b = _history(tmp_path / "straight"), _history(tmp_path / "crashed")
    assert _without_time(a) == _without_time(b)
    for name in ("model.safetensors", "last.safetensors"):
        _same_weights(tmp_path / "straight" / name, tmp_path / "crashed" / name)
