"""medistill study: data hygiene, the plan fixed before any run, the arms chosen on validation, KD minus no-KD with
its interval, the sentences, and the smoke form of the issue on the phantom."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medistill.cli import main
from medistill.study import ARMS, StudyConfig
from medistill.study.plan import Plan, PlannedRun, StudyError, check_same_splits, prepare_data
from medistill.study.results import Results, sentences

from conftest import make_class_folder
from test_train import _cfg


@pytest.fixture(scope="module")
def tiny_teacher(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medistill.train import run_training

    out = tmp_path_factory.mktemp("study") / "teacher"
    run_training(_cfg(phantom_root, out, **{"data.limit": 100, "train.epochs": 1}))
    return out


def _smoke(phantom_root: Path, teacher: Path, out: Path, *extra: str) -> int:
    return main(["study", "--dataset", "phantom", "--root", str(phantom_root), "--teacher", str(teacher),
                 "--model", "kdfmv", "--widths", "0.25,0.5", "--image-sizes", "32", "--epochs", "1", "--seeds", "1",
                 "--limit", "100", "--arms", "plain,kd", "--teacher-views", "2", "--bootstrap", "50",
                 "--no-latency", "--cache-dir", str(out.parent / "cache"), "--out", str(out), *extra])


@pytest.mark.slow
def test_the_smoke_study_writes_its_answer_and_resumes_without_retraining(phantom_root, tiny_teacher, tmp_path,
                                                                          capsys):
    out = tmp_path / "study"
    assert _smoke(phantom_root, tiny_teacher, out) == 0
    s = json.loads((out / "study.json").read_text())
    assert [x["name"] for x in s["sizes"]] == ["kdfmv_w0.25 @ 32 px", "kdfmv_w0.5 @ 32 px"]  # by MACs
    for x in s["sizes"]:
        assert x["macs"] > 0 and x["kd"]["arm"] == "kd" and x["nokd"]["arm"] == "plain"
        assert len(x["kd"]["test"]) == len(x["nokd"]["test"]) == 1
        g = x["gain"]
        assert g["ci_low"] <= g["value"] <= g["ci_high"]
        assert g["value"] == pytest.approx(x["kd"]["test"][0] - x["nokd"]["test"][0])
        assert set(x["arms"]["kd"]["grid"]) == {"0.5:4", "0.2:2"}
    assert s["sizes"][0]["macs"] < s["sizes"][1]["macs"] and s["metric"] == "macro_auc"
    assert s["teacher"]["test"] > 0 and s["complete"] and len(s["sentences"]) == 2
    assert s["runs_scored"] == s["runs_planned"] == 6  # 2 sizes x (plain + the kd arm's 2 grid points)
    assert s["date"].startswith("20") and s["machine"]["cpu_count"] and s["command"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["rule"]["stop"] == "ema" and plan["arms"]["kd"]["kd"] and plan["teachers"] == [str(tiny_teacher)]
    run = out / "runs" / "kdfmv_w0.5_32px" / "plain_s0"
    assert (run / "config.yaml").is_file() and (run / "predictions_val.npz").is_file()  # an ordinary run folder
    assert (out / "study.md").read_text().count("| kdfmv_w0.") >= 2 and (out / "frontier.png").is_file()
    assert "Does KD pay, and how small can the student be?" in (out / "report.html").read_text()
    printed = capsys.readouterr()
    assert s["sentences"][0] in printed.out
    # the same command again: every run is found scored, nothing is trained
    stamp = (run / "model.safetensors").stat().st_mtime_ns
    assert _smoke(phantom_root, tiny_teacher, out) == 0
    assert "training" not in capsys.readouterr().err and (run / "model.safetensors").stat().st_mtime_ns == stamp
    # a run lost (or killed before it was scored) is trained again, alone; --summarise trains nothing and
    # summarises each size at the seeds all its arms have (here none at kdfmv_w0.5: its plain run is missing)
    shutil.rmtree(run)
    assert _smoke(phantom_root, tiny_teacher, out, "--summarise") == 0
    assert "training" not in capsys.readouterr().err and not run.exists()
    part = json.loads((out / "study.json").read_text())
    assert not part["complete"] and part["runs_scored"] == 5 and part["seeds_summarised"] == 0
    w25, w50 = part["sizes"]
    assert w25["seeds_summarised"] == 1 and w25["gain"]["ci_low"] is not None
    assert w50["seeds_summarised"] == 0 and w50["kd"] is None and w50["gain"] is None
    assert "partial: 5 of 6 runs scored" in part["sentences"][0]
    assert _smoke(phantom_root, tiny_teacher, out) == 0
    err = capsys.readouterr().err
    assert err.count("training kdfmv") == 1 and "kdfmv_w0.5 @ 32 px, plain_s0" in err
    # the rule is fixed: the same folder with other settings is refused
    assert _smoke(phantom_root, tiny_teacher, out, "--kd-grid", "0.5:1") == 2
    assert "planned with other settings (differs in" in capsys.readouterr().err


def _scored(plan: Plan, results: Results, r: PlannedRun, val: float, test: float, probs: np.ndarray,
            y: np.ndarray) -> None:
    results._scores[r] = {"run": str(plan.run_dir(r)), "val": val, "test": test,
                          "pred": {"probs": probs, "targets": y, "mask": np.ones_like(y),
                                   "patients": np.arange(len(y)).astype(str)}}


def test_the_chosen_arms_are_the_best_on_validation_not_on_test(tmp_path):
    """Two no-KD arms: the one better on validation is chosen even though the other is better on test; the kd
    arm's seeds are those at the grid point its seed 0 chose on validation; the gain is the chosen arms' seed-mean
    difference on the metric."""
    cfg = StudyConfig(out=str(tmp_path), arms=["plain", "smooth", "kd"], seeds=2, kd_grid=["0.5:4", "0.2:2"],
                      teacher=["t"])
    plan = Plan.make(cfg, cfg.data, [], [Path("t")])
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, 300)
    y = np.eye(3)[true]

    def model(skill: float, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        return np.eye(3)[np.where(r.random(300) < skill, true, (true + 1) % 3)] * 0.9 + 0.03

    teacher = {"metric": "accuracy", "task": "multiclass", "members": [{"run": "t", "model": "m", "image_size": 64}],
               "macs": 10**9, "params": 1, "val": 0.9, "test": 0.9, "pred": {"test": {"targets": y}}}
    results = Results(plan, teacher)
    size = plan.sizes[0]
    results._model[size.key] = {"macs": 10**7, "params": 1}
    acc = lambda p: float((p.argmax(1) == true).mean())  # noqa: E731
    for s in range(2):
        p = model(0.8, s)
        _scored(plan, results, PlannedRun(size, "plain", s), 0.90, acc(p), p, y)  # best on validation
        p = model(0.95, 10 + s)
        _scored(plan, results, PlannedRun(size, "smooth", s), 0.85, acc(p), p, y)  # better on test
    grid = plan.grid_runs(size)
    assert results.chosen_point(size) is None  # no grid point scored yet
    p = model(0.7, 20)
    _scored(plan, results, grid[0], 0.80, acc(p), p, y)
    p = model(0.9, 21)
    _scored(plan, results, grid[1], 0.88, acc(p), p, y)
    assert results.chosen_point(size) == (0.2, 2.0)
    x = results.size_summary(size, n_bootstrap=100)  # the kd arm's second seed is not scored yet: every arm at 1
    assert x["seeds_summarised"] == 1 and [len(x["arms"][a]["test"]) for a in ("plain", "smooth", "kd")] == [1, 1, 1]
    assert x["kd"]["arm"] == "kd" and x["gain"]["value"] == pytest.approx(x["kd"]["test"][0] - x["nokd"]["test"][0])
    p = model(0.9, 22)
    _scored(plan, results, plan.runs_of(size, "kd", (0.2, 2.0))[1], 0.86, acc(p), p, y)
    x = results.size_summary(size, n_bootstrap=100)
    assert x["seeds_summarised"] == 2 and x["nokd"]["arm"] == "plain" and x["kd"]["arm"] == "kd"
    assert x["arms"]["smooth"]["test_mean"] > x["nokd"]["test_mean"]  # smooth was better on test, and not chosen
    assert x["kd"]["point"] == {"alpha": 0.2, "temperature": 2.0} and len(x["kd"]["test"]) == 2
    assert x["gain"]["value"] == pytest.approx(x["kd"]["test_mean"] - x["nokd"]["test_mean"])
    assert x["gain"]["verdict"] == "KD helped" and x["gain"]["ci_low"] > 0


def _size(name: str, macs: float, kd: float, nokd: float, ci: tuple[float, float]) -> dict:
    return {"name": name, "macs": macs, "kd": {"test_mean": kd}, "nokd": {"test_mean": nokd},
            "gain": {"value": kd - nokd, "ci_low": ci[0], "ci_high": ci[1]}}


def test_the_sentences_say_how_much_smaller_kd_lets_the_student_be_and_where_it_paid():
    s = {"metric": "accuracy", "within": 0.01, "complete": True, "seeds": 3, "teacher": {"test": 0.95, "macs": 4e8},
         "sizes": [_size("w0.25", 1e6, 0.945, 0.90, (0.02, 0.07)), _size("w0.5", 4e6, 0.95, 0.93, (-0.01, 0.05)),
                   _size("w1", 1.6e7, 0.955, 0.945, (-0.02, 0.03))]}
    first, second = sentences(s)
    assert "w0.25" in first and "with KD and w1" in first and "KD lets the student be 16.0x smaller" in first
    assert "within 1 point of the teacher" in first
    assert second.startswith("KD's interval is above 0 at 1 of 3 sizes: w0.25 (+4.50 points, CI +2.00 points")
    s["sizes"] = [_size("w1", 1.6e7, 0.90, 0.91, (-0.04, -0.001))]
    first, second = sentences(s)
    assert first.startswith("No student size studied is within 1 point of the teacher")
    assert "above 0 at none of the 1 sizes" in second and "KD hurt" in second
    s["sizes"] = [_size("w0.5", 4e6, 0.945, 0.92, (-0.01, 0.05)), _size("w1", 1.6e7, 0.95, 0.93, (-0.01, 0.05))]
    first, _ = sentences(s)
    assert first.startswith("With KD, the smallest student within 1 point of the teacher") and "without KD, no size" in first


def test_data_hygiene_drops_near_copies_and_refuses_patients_in_two_splits(tmp_path):
    from PIL import Image

    root = make_class_folder(tmp_path / "d", {"a": (20, 6), "b": (20, 6)}, seed=1)
    for k in range(3):  # three training images saved again into test: near copies
        src = root / "train" / "a" / f"atrain{k:03d}.png"
        Image.open(src).save(root / "test" / "a" / f"copy{k}.png")
    cfg = StudyConfig(out=str(tmp_path / "s"), teacher=["t"])
    cfg.data.dataset, cfg.data.root = "folder", str(root)
    said: list[str] = []
    data, notes = prepare_data(cfg, said.append)
    assert data.drop_near_copies == 0.98 and "3 of 15 test images have a near copy" in notes[0]
    assert said == [f"data: {n}" for n in notes]
    cfg.near_copies = None
    data, notes = prepare_data(cfg, said.append)
    assert data.drop_near_copies is None and "kept" in notes[0]
    cfg.data.group_by = r"^([a-z])"  # every image of a class is one "patient": in train and in test
    with pytest.raises(StudyError, match="in more than one split"):
        prepare_data(cfg, said.append)


def test_a_teacher_trained_on_other_splits_is_refused(tmp_path):
    from medistill.config import DataConfig

    a = DataConfig(dataset="folder", root=str(tmp_path), split_seed=0)
    check_same_splits(tmp_path / "t", a, DataConfig(dataset="folder", root=str(tmp_path), limit=5,
                                                    drop_near_copies=0.98))  # same splits: fine
    with pytest.raises(StudyError, match="differs in split_seed"):
        check_same_splits(tmp_path / "t", a, DataConfig(dataset="folder", root=str(tmp_path), split_seed=1))


def test_study_options_are_checked_before_anything_runs(tmp_path, capsys):
    assert main(["study", "--arms", "plain,magic", "--out", str(tmp_path)]) == 2
    assert "arms" in capsys.readouterr().err
    assert main(["study", "--model", "resnet18", "--widths", "0.5", "--out", str(tmp_path)]) == 2
    assert "only kdfmv and tiny_cnn take a width multiplier" in capsys.readouterr().err
    assert main(["study", "--kd-grid", "0.5", "--out", str(tmp_path)]) == 2
    assert "is not alpha:T" in capsys.readouterr().err
    assert list(ARMS) == ["plain", "smooth", "mixup", "kd", "fm"]
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.slow
def test_a_study_killed_mid_run_resumes_where_it_stopped(phantom_root, tiny_teacher, tmp_path):
    """SIGKILL while a run trains: the same command continues that run from its checkpoint and finishes the
    study; the plan is kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "medistill", "study", "--dataset", "phantom", "--root", str(phantom_root),
           "--teacher", str(tiny_teacher), "--model", "kdfmv", "--widths", "0.25", "--image-sizes", "32",
           "--epochs", "3", "--seeds", "1", "--limit", "100", "--arms", "plain,kd", "--kd-grid", "0.5:4",
           "--teacher-views", "2", "--bootstrap", "20", "--no-latency", "--cache-dir", str(tmp_path / "cache"),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "runs").glob("*/*/state.pt")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = [p.parent for p in (out / "runs").glob("*/*/state.pt")]
    assert killed and not (out / "study.json").exists() or not json.loads((out / "study.json").read_text())[
        "complete"]
    plan = (out / "plan.json").read_text()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    s = json.loads((out / "study.json").read_text())
    assert s["complete"] and s["runs_scored"] == s["runs_planned"] == 2
    assert (out / "plan.json").read_text() == plan
    resumed = [json.loads((k / "run.json").read_text()).get("resumed") for k in killed]
    finished = [json.loads((k / "run.json").read_text()).get("finished") for k in killed]
    assert all(finished) and any(resumed)  # the killed run was continued from its checkpoint, not restarted


def test_the_kd_arms_later_seeds_are_queued_with_their_seed_not_at_the_end(tmp_path):
    """The kd arm's seeds 1.. are known only once its grid is scored; they join the queue before the first run of a
    later seed, so a study stopped early has every arm at the same seeds."""
    from collections import deque

    from medistill.study.runner import insert_by_seed

    cfg = StudyConfig(out=str(tmp_path), arms=["plain", "kd"], seeds=3, widths=[0.5, 1.0], teacher=["t"])
    plan = Plan.make(cfg, cfg.data, [], [Path("t")])
    queue = deque(r for r in plan.first_runs() if r.arm != "kd")  # the grids are running
    small, large = plan.sizes
    for size in (small, large):
        for later in plan.runs_of(size, "kd", (0.5, 4.0))[1:]:
            insert_by_seed(queue, later)
    order = [(r.seed, r.size.key, r.arm) for r in queue]
    assert [s for s, _, _ in order] == sorted(s for s, _, _ in order)  # seed by seed
    assert order[:6] == [(0, small.key, "plain"), (0, large.key, "plain"), (1, small.key, "plain"),
                         (1, large.key, "plain"), (1, small.key, "kd"), (1, large.key, "kd")]


@pytest.mark.parametrize("name, other", [("study_brain_tumour", "balanced acc. KD / no-KD"),
                                         ("study_alzheimer", "accuracy KD / no-KD")])
def test_study_md_gives_the_other_single_label_figure_beside_the_measure(name, other):
    """The committed studies re-rendered: beside a study on accuracy its balanced accuracy, beside a study on
    balanced accuracy its accuracy (not the measure twice); the teacher's line likewise."""
    from medistill.study.output import markdown

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    s = json.loads((root / f"{name}.json").read_text())
    md = markdown(s, f"{name}_frontier.png")
    assert f"| verdict | {other} |" in md
    t = s["teacher"]
    figure = "accuracy" if s["metric"] == "balanced_accuracy" else "balanced_accuracy"
    assert f"{figure.replace('_', ' ')} {100 * t[figure]:.2f} %." in md
    assert md == (root / f"{name}.md").read_text()  # the committed Markdown is this code's rendering
