"""compare: roles, the KD gain with a paired bootstrap CI, and the --json contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medistill.cli import main
from medistill.evaluate.compare import CompareError, kd_gain, paired_bootstrap_gain
from medistill.evaluate.runner import evaluate_run
from medistill.train import run_training

from test_train import _cfg


def _two_models(n: int = 400, skill_a: float = 2.0, skill_b: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < 0.4).astype(float)
    pa = 1 / (1 + np.exp(-(skill_a * (2 * y - 1) + rng.normal(size=y.shape))))
    pb = 1 / (1 + np.exp(-(skill_b * (2 * y - 1) + rng.normal(size=y.shape))))
    return pa, pb, y, np.ones_like(y)


def test_paired_gain_multilabel_matches_sklearn_and_its_ci_excludes_zero_for_a_better_model():
    pa, pb, y, m = _two_models()
    g = paired_bootstrap_gain("multilabel", pa, pb, y, m, n_bootstrap=300)
    want = np.mean([roc_auc_score(y[:, k], pa[:, k]) for k in range(3)]) - \
        np.mean([roc_auc_score(y[:, k], pb[:, k]) for k in range(3)])
    assert g["value"] == pytest.approx(want, abs=1e-9)
    assert 0 < g["ci_low"] < g["value"] < g["ci_high"]


def test_paired_gain_of_a_model_against_itself_is_exactly_zero():
    pa, _, y, m = _two_models()
    g = paired_bootstrap_gain("multilabel", pa, pa, y, m, n_bootstrap=100)
    assert g == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_paired_gain_multiclass_is_the_accuracy_difference():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, 300)
    y = np.eye(4)[true]
    pa = np.eye(4)[np.where(rng.random(300) < 0.9, true, (true + 1) % 4)] * 0.7 + 0.075
    pb = np.eye(4)[np.where(rng.random(300) < 0.6, true, (true + 1) % 4)] * 0.7 + 0.075
    g = paired_bootstrap_gain("multiclass", pa, pb, y, np.ones_like(y), n_bootstrap=300)
    want = (pa.argmax(1) == true).mean() - (pb.argmax(1) == true).mean()
    assert g["value"] == pytest.approx(want) and g["ci_low"] > 0.15


@pytest.fixture(scope="module")
def three_runs(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("cmp")
    teacher, kd, nokd = base / "teacher", base / "kd", base / "nokd"
    run_training(_cfg(phantom_root, teacher, **{"train.epochs": 2}))
    run_training(_cfg(phantom_root, kd, **{"distill.teacher": str(teacher), "model.name": "kdfmv"}))
    run_training(_cfg(phantom_root, nokd, **{"model.name": "kdfmv"}))
    for r in (teacher, kd, nokd):
        evaluate_run(r, "test", latency=False, n_bootstrap=20)
    return [teacher, kd, nokd]


def test_compare_json_contract(three_runs: list[Path], capsys: pytest.CaptureFixture):
    assert main(["compare", *map(str, three_runs), "--json", "--bootstrap", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["role"] for r in out["runs"]] == ["teacher", "student (KD)", "student (no KD)"]
    g = out["kd_gain"]
    assert g["metric"] == "macro_auc" and g["ci_low"] <= g["value"] <= g["ci_high"]
    kd, nokd = out["runs"][1]["value"], out["runs"][2]["value"]
    assert g["value"] == pytest.approx(kd - nokd, abs=1e-9)
    assert g["verdict"] in ("KD helped", "KD hurt", "no clear difference")


def test_compare_text_says_whether_kd_paid(three_runs: list[Path], capsys: pytest.CaptureFixture):
    assert main(["compare", *map(str, three_runs), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "| macro AUC |" in text and "KD minus no-KD (kdfmv, macro_auc on test)" in text
    assert re.search(r"95% CI [-+]\d\.\d{4} to [-+]\d\.\d{4} over test patients \(\d+\)\)", text)


def test_kd_gain_refuses_runs_scored_on_other_images(three_runs: list[Path], tmp_path: Path):
    import shutil

    from medistill import runs
    from medistill.evaluate.compare import compare_runs

    other = tmp_path / "nokd"
    shutil.copytree(three_runs[2], other)
    f = other / runs.predictions_file("test")
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["targets"] = 1 - arrays["targets"]
    np.savez_compressed(f, **arrays)
    with pytest.raises(CompareError, match="different test images"):
        kd_gain(compare_runs([three_runs[0], three_runs[1], other]), n_bootstrap=10)


def test_the_patient_bootstrap_draws_patients_not_their_images():
    """40 patients, each seen in 8 identical images: resampling images treats the 320 as independent and gives a
    narrower interval; resampling patients gives exactly the interval of one image per patient."""
    from medistill.evaluate.bootstrap import resample_counts

    rng = np.random.default_rng(3)
    k, m = 40, 8
    targets1 = np.eye(2)[rng.integers(0, 2, k)]
    probs_a1 = np.where(rng.random((k, 1)) < 0.7, targets1, 1 - targets1)  # right on ~70 % of patients
    probs_b1 = np.where(rng.random((k, 1)) < 0.5, targets1, 1 - targets1)
    rep = lambda x: np.repeat(x, m, axis=0)  # noqa: E731
    groups = np.repeat(np.arange(k), m)
    one = paired_bootstrap_gain("multiclass", probs_a1, probs_b1, targets1, np.ones_like(targets1), n_bootstrap=500)
    by_patient = paired_bootstrap_gain("multiclass", rep(probs_a1), rep(probs_b1), rep(targets1),
                                       np.ones((k * m, 2)), n_bootstrap=500, groups=groups)
    by_image = paired_bootstrap_gain("multiclass", rep(probs_a1), rep(probs_b1), rep(targets1),
                                     np.ones((k * m, 2)), n_bootstrap=500)
    assert by_patient == pytest.approx(one)
    assert by_image["value"] == pytest.approx(one["value"])
    assert by_image["ci_high"] - by_image["ci_low"] < 0.6 * (one["ci_high"] - one["ci_low"])
    counts = next(resample_counts(k * m, 3, seed=0, groups=groups))
    assert (counts.reshape(k, m, 3) == counts.reshape(k, m, 3)[:, :1]).all()  # a patient's images drawn together
    with pytest.raises(ValueError, match="groups: 5 ids for 320 rows"):
        next(resample_counts(k * m, 3, seed=0, groups=np.arange(5)))


def test_evaluate_records_each_images_patient_and_compare_draws_patients(three_runs: list[Path], tmp_path: Path):
    """The phantom's patients have 1-3 images each: evaluate stores each test image's patient, its interval and
    compare's KD gain draw patients; runs evaluated before patients were stored fall back to images, and runs
    whose patients differ are refused."""
    import shutil

    from medistill import runs
    from medistill.evaluate.compare import compare_runs

    with np.load(three_runs[1] / runs.predictions_file("test")) as z:
        patients, n = z["patients"], len(z["targets"])
    ds = runs.run_dataset(three_runs[1], "test")
    assert patients.tolist() == ds.data.records["patient_id"].astype(str).tolist() and len(patients) == n
    k = len(np.unique(patients))
    assert k < n  # some patient has several test images
    method = runs.RunDir(three_runs[1]).metrics()["auc_ci95_method"]
    assert method.startswith(f"percentile bootstrap over patients ({k})")
    g = kd_gain(compare_runs(three_runs), n_bootstrap=50)
    assert g["method"].startswith(f"paired percentile bootstrap over test patients ({k})")
    forced = kd_gain(compare_runs(three_runs), n_bootstrap=50, groups=patients)
    assert (g["ci_low"], g["ci_high"]) == (forced["ci_low"], forced["ci_high"])

    def copy_without(name: str, change) -> Path:
        other = tmp_path / name
        shutil.copytree(three_runs[2], other)
        f = other / runs.predictions_file("test")
        with np.load(f) as z:
            arrays = {key: z[key] for key in z.files}
        change(arrays)
        np.savez_compressed(f, **arrays)
        return other

    old = copy_without("old", lambda a: a.pop("patients"))
    assert kd_gain(compare_runs([three_runs[0], three_runs[1], old]), n_bootstrap=50)["method"].startswith(
        "paired percentile bootstrap over test images")
    moved = copy_without("moved", lambda a: a.update(patients=np.roll(a["patients"], 1)))
    with pytest.raises(CompareError, match="patients differ"):
        kd_gain(compare_runs([three_runs[0], three_runs[1], moved]), n_bootstrap=10)


def test_evaluate_states_the_majority_rate_and_chance_and_can_score_the_last_weights(class_folder, tmp_path):
    """Single-label runs: the majority-class rate (always answering the training split's most frequent class)
    and chance stand beside accuracy and balanced accuracy; ``weights="last"`` scores the last epoch's weights."""
    from medistill import runs
    from medistill.evaluate.metrics import majority_baseline

    out = tmp_path / "run"
    run_training(_cfg(class_folder, out, **{"data.dataset": "folder", "data.image_size": 16, "data.limit": "null",
                                            "train.epochs": 3, "train.ema_decay": 0.9}))
    assert runs.RunDir(out).info()["train_label_counts"]["common"] > runs.RunDir(out).info()[
        "train_label_counts"]["rare"]
    best = evaluate_run(out, "test", latency=False, n_bootstrap=0)
    assert best["majority_class"] == "common" and best["majority_rate"] == pytest.approx(20 / 40)
    assert best["chance"] == pytest.approx(1 / 3) and best["weights"] == "best"
    last = evaluate_run(out, "test", latency=False, n_bootstrap=0, weights="last")
    assert last["weights"] == "last" and runs.RunDir(out).metrics()["weights"] == "last"
    model, _ = runs.load_model(out, which="last")
    p = np.load(out / runs.predictions_file("test"))
    import torch

    ds = runs.run_dataset(out, "test")
    with torch.no_grad():
        direct = model(torch.stack([ds[i]["image"] for i in range(4)])).softmax(1).numpy()
    np.testing.assert_allclose(p["probs"][:4], direct, atol=1e-5)
    y = np.eye(3)[[0, 0, 1, 2]]
    m = majority_baseline([5, 1, 1], y, np.ones_like(y), ["a", "b", "c"])
    assert m["majority_rate"] == 0.5 and m["majority_balanced_accuracy"] == pytest.approx(1 / 3)
    m = majority_baseline([5, 1, 1], y[:2], np.ones((2, 3)), ["a", "b", "c"])  # only class a in the test rows
    assert m["majority_balanced_accuracy"] == 1.0 and m["chance"] == pytest.approx(1 / 3)


def test_compare_pools_as_seeds_only_runs_identical_but_for_the_seed(three_runs: list[Path], phantom_root: Path,
                                                                      tmp_path: Path):
    """A no-KD run with another recipe (here mixup) is another baseline, not a second seed: it is left out of the
    seeds and named with the fields it differs in; a true second seed is pooled."""
    from medistill.evaluate.compare import compare_runs, describe_gain

    seed1, mixed = tmp_path / "nokd_s1", tmp_path / "nokd_mix"
    run_training(_cfg(phantom_root, seed1, **{"model.name": "kdfmv", "train.seed": 1}))
    run_training(_cfg(phantom_root, mixed, **{"model.name": "kdfmv", "train.mixup": 1.0}))
    for r in (seed1, mixed):
        evaluate_run(r, "test", latency=False, n_bootstrap=0)
    g = kd_gain(compare_runs([*three_runs, seed1, mixed]), n_bootstrap=20)
    assert g["pooled"]["nokd"] == [str(three_runs[2]), str(seed1)]
    assert g["not_pooled"] == [{"run": str(mixed), "role": "student (no KD)", "differs_in": ["train.mixup"]}]
    assert len(g["seeds"]["nokd"]) == 2 and len(g["seeds"]["kd"]) == 1
    text = describe_gain(g)
    assert "against no-KD run nokd" in text and "2 no-KD runs identical but for the seed" in text
    assert "Not pooled: nokd_mix (student (no KD); another recipe, differs in train.mixup)" in text


def test_resampled_metrics_match_sklearn_on_the_plain_sample():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from medistill.evaluate.bootstrap import resampled_metric

    rng = np.random.default_rng(4)
    true = rng.choice(3, 200, p=[0.6, 0.3, 0.1])
    pred = np.where(rng.random(200) < 0.7, true, rng.integers(0, 3, 200))
    y, p = np.eye(3)[true], np.eye(3)[pred] * 0.8 + 0.05
    ones = np.ones((200, 1))
    m = np.ones_like(y)
    assert resampled_metric("accuracy", p, y, m, ones)[0] == pytest.approx(accuracy_score(true, pred))
    assert resampled_metric("balanced_accuracy", p, y, m, ones)[0] == pytest.approx(
        balanced_accuracy_score(true, pred))
    twice = np.repeat(ones, 2, axis=1)
    twice[:50, 1] = 0  # the second resample leaves out the first 50 rows
    got = resampled_metric("balanced_accuracy", p, y, m, twice)
    assert got[1] == pytest.approx(balanced_accuracy_score(true[50:], pred[50:]))
    with pytest.raises(ValueError, match="expected one of"):
        resampled_metric("f1", p, y, m, ones)


def test_seed_mean_gain_holds_the_seeds_variation():
    """Three seeds per arm: the value is the difference of the seed means; the two-level interval (patients and
    seeds) is wider than the patients-only interval of the seed-averaged gain, and an arm against itself is 0."""
    from medistill.evaluate.compare import seed_mean_gain

    rng = np.random.default_rng(5)
    true = rng.integers(0, 4, 400)
    y = np.eye(4)[true]

    def model(skill: float, s: int) -> np.ndarray:
        r = np.random.default_rng(s)
        return np.eye(4)[np.where(r.random(400) < skill, true, (true + 1) % 4)] * 0.7 + 0.075

    kd = [model(0.8, 1), model(0.7, 2), model(0.9, 3)]
    nokd = [model(0.6, 4), model(0.65, 5), model(0.55, 6)]
    g = seed_mean_gain("multiclass", kd, nokd, y, np.ones_like(y), n_bootstrap=400)
    acc = lambda p: (p.argmax(1) == true).mean()  # noqa: E731
    assert g["kd"] == pytest.approx([acc(p) for p in kd]) and g["metric"] == "accuracy"
    assert g["value"] == pytest.approx(np.mean([acc(p) for p in kd]) - np.mean([acc(p) for p in nokd]))
    one = seed_mean_gain("multiclass", kd[:1], nokd[:1], y, np.ones_like(y), n_bootstrap=400)
    assert g["ci_high"] - g["ci_low"] > one["ci_high"] - one["ci_low"]
    same = seed_mean_gain("multiclass", kd, kd, y, np.ones_like(y), n_bootstrap=50, metric="balanced_accuracy")
    assert same["value"] == 0.0 and same["ci_low"] <= 0 <= same["ci_high"]
    with pytest.raises(CompareError, match="expected macro_auc"):
        seed_mean_gain("multilabel", kd, nokd, y, np.ones_like(y), metric="accuracy")


def test_compare_and_the_report_state_balanced_accuracy_and_the_majority_rate(class_folder, tmp_path, capsys):
    from medistill.report import render_report

    out = tmp_path / "run"
    run_training(_cfg(class_folder, out, **{"data.dataset": "folder", "data.image_size": 16, "data.limit": "null",
                                            "train.epochs": 1}))
    evaluate_run(out, "test", latency=False, n_bootstrap=0)
    assert main(["compare", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| balanced acc. |" in text and "always answering 'common'" in text and "accuracy 0.5000" in text
    html = render_report([out])
    assert "always answering common" in html and "50.00 % accuracy" in html
