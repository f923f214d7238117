"""Training and distillation on the phantom (multi-label) with tiny models: real runs, real checks."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medistill import runs
from medistill.config import ConfigError, RunConfig, build
from medistill.models import ModelError, input_config
from medistill.train import Callbacks, DistillError, TrainingError, run_training


def _cfg(phantom_root: Path, out: Path, **over: object) -> RunConfig:
    base = {"out": str(out), "data.dataset": "phantom", "data.root": str(phantom_root), "data.image_size": 32,
            "data.limit": 96, "data.augment": "none", "data.cache_dir": str(out.parent / "cache"),
            "model.name": "tiny_cnn", "train.epochs": 2, "train.batch_size": 32, "train.lr": 0.003}
    base.update({k: str(v) if not isinstance(v, str) else v for k, v in over.items()})
    return build(RunConfig, overrides=base)


@pytest.fixture(scope="module")
def teacher_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    run_training(_cfg(phantom_root, out, **{"train.epochs": 2}))
    return out


def test_train_writes_a_complete_run(teacher_run: Path):
    run = runs.RunDir(teacher_run)
    for name in ("config.yaml", "run.json", "log.txt", "history.csv", "model.safetensors", "last.safetensors",
                 "state.pt", "metrics.json"):
        assert run.file(name).is_file(), name
    info = run.info()
    assert info["labels"] == ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "Consolidation", "Atelectasis"]
    assert info["task"] == "multilabel" and info["seed"] == 0 and info["versions"]["torch"]
    rows = list(csv.DictReader(open(run.file("history.csv"))))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["val_macro_auc"]) <= 1.0 for r in rows)
    assert run.config().data.image_size == 32
    model, record = runs.load_model(teacher_run)
    assert record["input"]["size"] == 32 and model(torch.zeros(2, 1, 32, 32)).shape == (2, 6)


def test_predictions_can_come_from_the_last_epochs_weights(teacher_run: Path, tmp_path: Path):
    """Every metric uses the best validation epoch's weights; ``weights="last"`` predicts with the last epoch's (to
    see what the validation split's choice of epoch cost). Here the copy's last weights answer a constant."""
    import shutil

    from medistill.evaluate.runner import run_predictions
    from medistill.models.weights import save_weights

    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    last, _ = runs.load_model(run, which="last")
    with torch.no_grad():
        for param in last.parameters():
            param.zero_()
        for buf in last.buffers():
            if buf.is_floating_point():
                buf.fill_(1.0)  # BatchNorm variances stay positive
    save_weights(last, run / runs.LAST_WEIGHTS)
    best = run_predictions(run, "test", limit=8)
    constant = run_predictions(run, "test", limit=8, weights="last")
    assert np.allclose(constant["logits"], 0.0) and not np.allclose(best["logits"], 0.0)
    assert np.array_equal(best["targets"], constant["targets"])
    with pytest.raises(ValueError, match="'best' or 'last', not 'lsat'"):
        runs.load_model(run, which="lsat")


def test_resume_reproduces_uninterrupted_run(phantom_root: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    run_training(_cfg(phantom_root, straight, **{"train.epochs": 2, "data.augment": "light"}))
    split = tmp_path / "split"
    cfg2 = _cfg(phantom_root, split, **{"train.epochs": 2, "data.augment": "light"})

    def crash(epoch, row):  # the process dies right after epoch 1 was saved
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg2, callbacks=Callbacks(on_epoch_end=crash))
    assert len(list(csv.DictReader(open(split / "history.csv")))) == 1
    run_training(cfg2, resume=True)
    a = list(csv.DictReader(open(straight / "history.csv")))
    b = list(csv.DictReader(open(split / "history.csv")))
    assert [r["val_macro_auc"] for r in a] == [r["val_macro_auc"] for r in b]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_existing_run_is_not_overwritten(teacher_run: Path, phantom_root: Path):
    with pytest.raises(ConfigError, match="already holds a run"):
        run_training(_cfg(phantom_root, teacher_run))


def test_distill_offline_cache_and_cross_resolution(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    out = tmp_path / "student"
    run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher_run), "data.image_size": 24,
                                            "distill.alpha": 0.5, "distill.temperature": 4,
                                            "distill.teacher_precision": "fp32"}))
    info = runs.RunDir(out).info()
    assert info["kind"] == "distill" and info["distill_mode"] == "offline"
    assert info["teacher"] == str(teacher_run.resolve()) and info["input"]["size"] == 24
    cached = np.load(out / "teacher_logits.npy")[:, 0]  # (N, views = 1, L)
    assert cached.shape == (96, 6)
    # the cache holds the teacher's real logits at its own 32 px input
    teacher, _ = runs.load_model(teacher_run)
    from medistill.data import Preprocess, build_dataset
    ds = build_dataset(runs.RunDir(out).config().data, "train", Preprocess(32, 1, input_config(teacher).mean,
                                                                           input_config(teacher).std))
    with torch.no_grad():
        direct = teacher(ds[3]["image"][None]).numpy()[0]
    np.testing.assert_allclose(cached[3], direct, atol=1e-4)
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert float(rows[0]["train_soft"]) > 0


def test_distill_online_with_augmentation_and_feature_term(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    out = tmp_path / "student_online"
    run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher_run), "data.augment": "light",
                                            "distill.feature": "attention", "train.epochs": 1}))
    info = runs.RunDir(out).info()
    assert info["distill_mode"] == "online" and not (out / "teacher_logits.npy").exists()
    row = next(csv.DictReader(open(out / "history.csv")))
    assert float(row["train_feature"]) >= 0


def test_softmax_kd_on_multilabel_is_refused(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    with pytest.raises(Exception, match="(?i)multi-label"):
        run_training(_cfg(phantom_root, tmp_path / "s", **{"distill.teacher": str(teacher_run), "distill.kd": "kl"}))


def test_teacher_with_other_labels_is_refused(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    with pytest.raises(DistillError, match="label set"):
        run_training(_cfg(phantom_root, tmp_path / "s", **{"distill.teacher": str(teacher_run),
                                                           "data.labels": "Effusion,Nodule"}))


def test_teacher_with_other_channels_is_refused(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    with pytest.raises(DistillError, match="channel"):
        run_training(_cfg(phantom_root, tmp_path / "s", **{"distill.teacher": str(teacher_run), "model.in_chans": 3}))


def test_checkpoint_of_another_architecture_is_refused(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    with pytest.raises(ModelError, match="does not fit|missing keys"):
        run_training(_cfg(phantom_root, tmp_path / "s", **{"model.name": "kdfmv",
                                                           "model.weights": str(teacher_run / "model.safetensors")}))


def test_nan_loss_stops_with_epoch_and_batch(phantom_root: Path, tmp_path: Path, monkeypatch):
    import medistill.train.setup as setup_module

    real = setup_module.build_dataset

    def poisoned(*a, **k):
        ds = real(*a, **k)
        ds.data.targets[:] = np.nan  # a corrupt label table
        return ds

    monkeypatch.setattr(setup_module, "build_dataset", poisoned)
    with pytest.raises(TrainingError, match=r"epoch 1, batch 1 of"):
        run_training(_cfg(phantom_root, tmp_path / "nan"))


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _torchrun(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` on CPU, one thread per rank. Its output goes to files, not
    pipes, and on a timeout the workers are killed by pid: torchrun starts each in a session of its own, so
    neither killing the launcher's group nor waiting for its pipes to close would end a hung job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    with open(tmp_path / "torchrun.out", "w+") as out, open(tmp_path / "torchrun.err", "w+") as err:
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=out, stderr=err)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in _children(proc.pid) + [proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            err.seek(0)
            pytest.fail(f"torchrun did not finish in {timeout} s; its stderr ends: {err.read()[-2000:]}")
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


@pytest.mark.slow
def test_torchrun_two_cpu_processes(phantom_root: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    done = _torchrun(["-m", "medistill", "train", "--dataset", "phantom", "--root", str(phantom_root), "--model",
                      "tiny_cnn", "--image-size", "32", "--limit", "64", "--epochs", "1", "--augment", "none",
                      "--cache-dir", str(tmp_path / "cache"), "--out", str(out)], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_rank_that_fails_stops_the_job_instead_of_hanging(tmp_path: Path):
    """Rank 1 fails while rank 0 waits for it in a collective (as when rank 1 failed building its data while rank 0
    was in DDP's constructor): process_group leaves without its closing barrier, so torchrun sees the failure,
    stops rank 0 and reports rank 1's error; with the barrier both ranks waited for each other forever."""
    script = tmp_path / "fail_on_rank1.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from medistill.train.distributed import process_group\n"
        "with process_group(torch.device('cpu')):\n"
        "    if dist.get_rank() == 1:\n"
        "        raise RuntimeError('rank 1 could not build its dataset')\n"
        "    dist.recv(torch.zeros(1), src=1)  # waits for rank 1, which never sends\n")
    done = _torchrun([str(script)], tmp_path, timeout=120)
    assert done.returncode != 0
    assert "rank 1 could not build its dataset" in done.stderr


def test_resume_before_the_first_checkpoint_starts_afresh(phantom_root: Path, tmp_path: Path):
    """A run killed before its first epoch ended left config.yaml and run.json but no state.pt: --resume starts it
    cleanly, and run.json does not claim a resume."""
    out = tmp_path / "early"
    runs.RunDir.create(out, _cfg(phantom_root, out), kind="train", seed=0)  # what the killed run left
    assert not (out / runs.STATE_FILE).exists()
    def stop_after_first(epoch: int, row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(phantom_root, out), resume=True, callbacks=Callbacks(on_epoch_end=stop_after_first))
    info = runs.RunDir(out).info()
    assert "resumed" not in info and (out / runs.STATE_FILE).is_file()
    run_training(_cfg(phantom_root, out), resume=True)  # a real resume is noted
    assert len(runs.RunDir(out).info()["resumed"]) == 1 and runs.RunDir(out).info()["epochs_run"] == 2


def test_resume_with_another_epoch_count_is_refused(teacher_run: Path, phantom_root: Path, tmp_path: Path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(teacher_run, out)
    with pytest.raises(ConfigError, match=r"started with epochs=2, now epochs=5"):
        run_training(_cfg(phantom_root, out, **{"train.epochs": 5}), resume=True)


def test_ema_weights_are_validated_saved_and_resumed(phantom_root: Path, tmp_path: Path):
    """train.ema_decay: the saved weights are the moving average (not the last step's), and a run interrupted after
    epoch 1 resumes to the same average as an uninterrupted one."""
    from safetensors.torch import load_file

    over = {"train.ema_decay": 0.9, "train.epochs": 2}
    straight = tmp_path / "straight"
    run_training(_cfg(phantom_root, straight, **over))
    state = torch.load(straight / "state.pt", weights_only=True)
    last = load_file(straight / "last.safetensors")
    raw = state["model"]
    assert any(not torch.equal(last[k], raw[k]) for k in raw if raw[k].is_floating_point())  # the EMA, not raw
    assert set(state["extra"]) == {"ema"}

    def stop(epoch: int, row: dict) -> None:
        raise KeyboardInterrupt

    split = tmp_path / "split"
    with pytest.raises(KeyboardInterrupt):
        run_training(_cfg(phantom_root, split, **over), callbacks=Callbacks(on_epoch_end=stop))
    run_training(_cfg(phantom_root, split, **over), resume=True)
    a, b = load_file(straight / "last.safetensors"), load_file(split / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_distillation_plan_is_decided_by_the_config_and_checked_before_any_work(phantom_root: Path, tmp_path: Path,
                                                                                    teacher_run: Path):
    """Impossible combinations fail when the config is built (not half-way through setup), a config made in code
    is validated by run_training too, and run.json records the plan the run followed."""
    from medistill.config import ConfigError, DistillConfig, RunConfig
    from medistill.train.distill_plan import DistillPlan

    kd = {"distill.teacher": str(teacher_run)}
    with pytest.raises(ConfigError, match="cache_teacher true: cannot cache teacher outputs, augmentation 'light'"):
        _cfg(phantom_root, tmp_path / "a", **kd, **{"data.augment": "light", "distill.cache_teacher": "true"})
    with pytest.raises(ConfigError, match="teacher_views 2: the teacher's outputs cannot be cached, the feature"):
        _cfg(phantom_root, tmp_path / "b", **kd, **{"distill.teacher_views": 2, "distill.feature": "attention"})
    with pytest.raises(ConfigError, match="explain_teacher_maps gradientshap"):
        _cfg(phantom_root, tmp_path / "c", **kd, **{"data.augment": "light", "distill.explain_loss": "e2kd",
                                                    "distill.explain_teacher_maps": "gradientshap"})
    made = RunConfig(out=str(tmp_path / "d"), distill=DistillConfig(teacher=str(teacher_run), cache_teacher="true"))
    made.data.augment = "strong"
    with pytest.raises(ConfigError, match="cache_teacher true"):
        run_training(made)
    assert not (tmp_path / "d").exists()  # refused before the run folder was made
    views = _cfg(phantom_root, tmp_path / "e", **kd, **{"data.augment": "light", "distill.teacher_views": 2,
                                                         "train.mixup": 1.0})
    from medistill.task import MULTICLASS, MULTILABEL

    plan = DistillPlan.decide(views, MULTILABEL)
    assert (plan.mode, plan.views, plan.mixed, plan.cached) == ("views", 2, True, True)
    # one default T, the task's: 1 for a sigmoid per label, 4 for a softmax; a given T wins
    assert plan.temperature == 1.0 and DistillPlan.decide(views, MULTICLASS).temperature == 4.0
    views.distill.temperature = 2.0
    assert DistillPlan.decide(views, MULTICLASS).temperature == 2.0
    views.distill.temperature = None
    assert DistillPlan.decide(_cfg(phantom_root, tmp_path / "f"), MULTILABEL).mode == "none"
    run_training(views)
    rec = runs.RunDir(tmp_path / "e").info()["distill_plan"]
    assert rec["mode"] == "views" and rec["views"] == 2 and rec["mixed"] and rec["cache_key"]
    assert rec["temperature"] == 1.0  # the phantom is multi-label
    assert rec["cache_path"].endswith(f"teacher_views-{rec['cache_key']}.npy") and rec["teacher_image_size"] == 32


def test_a_diverged_training_is_said_and_recorded(phantom_root: Path, tmp_path: Path, caplog):
    """--lr 10 with AdamW and no warm-up: the validation loss ends in the thousands and the AUC at chance. Before it
    ended with exit 0 and no word; now a warning says so (what happened, what to change), and run.json and
    metrics.json record it. A healthy run of the same size gets no such warning."""
    with caplog.at_level("WARNING", logger="medistill"):
        run_training(_cfg(phantom_root, tmp_path / "diverged", **{"train.lr": 10, "train.optimizer": "adamw",
                                                                    "train.warmup_epochs": 0}))
    said = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
    assert len(said) == 1 and "validation loss" in said[0] and "--lr" in said[0], said
    run = runs.RunDir(tmp_path / "diverged")
    assert run.info()["warnings"] == said and run.metrics()["train"]["warnings"] == said
    caplog.clear()
    with caplog.at_level("WARNING", logger="medistill"):
        run_training(_cfg(phantom_root, tmp_path / "healthy"))
    assert not [r for r in caplog.records if "diverged" in r.getMessage()]
    assert "warnings" not in runs.RunDir(tmp_path / "healthy").info()
