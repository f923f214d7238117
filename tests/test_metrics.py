"""Metrics against scikit-learn, with masked entries excluded and the one-class-label NaN policy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             recall_score, roc_auc_score)

from medistill.errors import MedistillError
from medistill.evaluate.bootstrap import bootstrap_macro_auc, resample_counts, weighted_auc
from medistill.evaluate.metrics import (MetricAccumulator, MetricError, MetricWarning, choose_thresholds, compute_metrics,
                                        expected_calibration_error, multiclass_metrics, multilabel_metrics)

LABELS = ["Atelectasis", "Effusion", "Nodule", "Hernia"]


@pytest.fixture
def ml():
    """80 images x 4 labels; ~25% masked; 'Hernia' has only negatives among its valid entries."""
    rng = np.random.default_rng(0)
    n, L = 80, 4
    y = (rng.random((n, L)) < 0.35).astype(float)
    probs = np.clip(0.35 * y + rng.random((n, L)) * 0.65, 0, 1)
    probs[:5, 0] = probs[5, 0]  # ties
    mask = (rng.random((n, L)) < 0.75).astype(float)
    y[:, 3] = np.where(mask[:, 3] > 0, 0.0, 1.0)  # positives only where masked
    return probs, y, mask


def _valid(a, m, k):
    return a[m[:, k] > 0, k]


def test_multilabel_matches_sklearn(ml):
    probs, y, m = ml
    thr = np.array([0.4, 0.5, 0.6, 0.5])
    with pytest.warns(MetricWarning, match="Hernia"):
        out = multilabel_metrics(probs, y, m, LABELS, thresholds=thr, n_bootstrap=0)
    aucs = []
    for k, lab in enumerate(LABELS[:3]):
        yt, ps = _valid(y, m, k), _valid(probs, m, k)
        aucs.append(roc_auc_score(yt, ps))
        assert out["per_label_auc"][lab] == pytest.approx(aucs[-1], abs=1e-12)
        assert out["per_label_ap"][lab] == pytest.approx(average_precision_score(yt, ps), abs=1e-12)
        pred = (ps >= thr[k]).astype(int)
        tn, fp, fn, tp = confusion_matrix(yt, pred, labels=[0, 1]).ravel()
        assert out["per_label_sensitivity"][lab] == pytest.approx(recall_score(yt, pred))
        assert out["per_label_specificity"][lab] == pytest.approx(tn / (tn + fp))
        assert out["per_label_f1"][lab] == pytest.approx(f1_score(yt, pred, zero_division=0))
        assert out["per_label_positives"][lab] == int(yt.sum())
    assert np.isnan(out["per_label_auc"]["Hernia"]) and np.isnan(out["per_label_ap"]["Hernia"])
    assert out["labels_without_both_classes"] == {"count": 1, "names": ["Hernia"]}
    assert out["macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert out["macro_f1"] == pytest.approx(np.mean([out["per_label_f1"][lab] for lab in LABELS[:3]]))
    valid = m > 0
    assert out["micro_auc"] == pytest.approx(roc_auc_score(y[valid], probs[valid]), abs=1e-12)
    assert out["thresholds"] == dict(zip(LABELS, thr.tolist())) and out["threshold_source"] == "given"
    assert np.isnan(out["per_label_sensitivity"]["Hernia"])  # no positives to measure
    assert out["auc_ci95"] is None
    assert out["num_valid_entries"] == int(valid.sum())


def test_masked_entries_are_excluded(ml):
    probs, y, m = ml
    with pytest.warns(MetricWarning):
        base = multilabel_metrics(probs, y, m, LABELS, n_bootstrap=50)
    p2, y2 = probs.copy(), y.copy()
    p2[m == 0] = np.nan  # anything at masked entries: NaN probabilities, uncertain (-1) targets
    y2[m == 0] = -1
    with pytest.warns(MetricWarning):
        again = multilabel_metrics(p2, y2, m, LABELS, n_bootstrap=50)
    for key in ("macro_auc", "micro_auc", "macro_ap", "macro_f1", "ece", "auc_ci95"):
        np.testing.assert_allclose(again[key], base[key], rtol=0, atol=0)
    assert again["per_label_f1"] == base["per_label_f1"]


def test_default_threshold_and_all_labels_valid():
    rng = np.random.default_rng(1)
    y = (rng.random((40, 3)) < 0.5).astype(float)
    p = rng.random((40, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricWarning)  # no warning when every label has both classes
        out = multilabel_metrics(p, y, None, ["a", "b", "c"], n_bootstrap=0)
    assert out["threshold_source"] == "default 0.5" and out["thresholds"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert out["labels_without_both_classes"] == {"count": 0, "names": []}
    assert out["macro_auc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert out["micro_auc"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert out["macro_ap"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert out["macro_f1"] == pytest.approx(f1_score(y, (p >= 0.5).astype(int), average="macro", zero_division=0))


def test_ece_matches_calibration_curve():
    rng = np.random.default_rng(2)
    conf = rng.random(500)
    outcome = (rng.random(500) < conf ** 1.5).astype(float)
    prob_true, prob_pred = calibration_curve(outcome, conf, n_bins=15, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 16)[1:-1], conf), minlength=15)
    counts = counts[counts > 0]
    ref = float(np.sum(counts / conf.size * np.abs(prob_true - prob_pred)))
    assert expected_calibration_error(conf, outcome) == pytest.approx(ref, abs=1e-12)
    # explicit loop over right-closed bins
    loop = 0.0
    for b in range(15):
        sel = (conf > b / 15) & (conf <= (b + 1) / 15) if b else (conf <= 1 / 15)
        if sel.any():
            loop += sel.sum() / conf.size * abs(outcome[sel].mean() - conf[sel].mean())
    assert expected_calibration_error(conf, outcome) == pytest.approx(loop, abs=1e-12)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0


def test_weighted_auc_equals_sklearn_on_resampled_rows():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(30), 1)  # many ties
    pos = rng.random(30) < 0.4
    counts = next(resample_counts(30, 25, seed=4))
    got = weighted_auc(scores, pos, counts)
    for b in range(25):
        rows = np.repeat(np.arange(30), counts[:, b])
        yb = pos[rows]
        ref = roc_auc_score(yb, scores[rows]) if 0 < yb.sum() < len(yb) else np.nan
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-12)


def test_bootstrap_ci_is_seeded_and_matches_naive(ml):
    probs, y, m = ml
    valid = m > 0
    boots = bootstrap_macro_auc(probs, y, valid, n_bootstrap=20, seed=7)
    counts = next(resample_counts(len(probs), 20, seed=7))
    for b in range(20):
        rows = np.repeat(np.arange(len(probs)), counts[:, b])
        aucs = []
        for k in range(3):
            v = valid[rows, k]
            yt = y[rows, k][v]
            if 0 < yt.sum() < len(yt):
                aucs.append(roc_auc_score(yt, probs[rows, k][v]))
        assert boots[b] == pytest.approx(np.mean(aucs), abs=1e-12)
    with pytest.warns(MetricWarning):
        a = multilabel_metrics(probs, y, m, LABELS, n_bootstrap=200, seed=1)
    with pytest.warns(MetricWarning):
        b = multilabel_metrics(probs, y, m, LABELS, n_bootstrap=200, seed=1)
    assert a["auc_ci95"] == b["auc_ci95"]
    lo, hi = a["auc_ci95"]
    assert lo < a["macro_auc"] < hi and 0 <= lo and hi <= 1


def test_choose_thresholds_maximises_youden():
    rng = np.random.default_rng(5)
    y = (rng.random((60, 3)) < 0.4).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random((60, 3)), 0, 1)
    m = np.ones_like(y)
    m[:10, 1] = 0
    y[:, 2] = 0  # one class only -> 0.5
    thr = choose_thresholds(p, y, m)
    assert thr.shape == (3,) and thr[2] == 0.5
    for k in range(2):
        v = m[:, k] > 0
        yt, ps = y[v, k] > 0, p[v, k]

        def youden(t):
            pred = ps >= t
            return pred[yt].mean() - pred[~yt].mean()

        best = max(youden(t) for t in np.unique(ps))
        assert youden(thr[k]) == pytest.approx(best)
    assert np.isnan(choose_thresholds(p, np.eye(3)[rng.integers(0, 3, 60)], None, task="multiclass")).all()


@pytest.fixture
def mc():
    rng = np.random.default_rng(6)
    n, C = 90, 4
    cls = rng.integers(0, C, n)
    logits = rng.normal(size=(n, C)) + 1.2 * np.eye(C)[cls]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    mask = np.ones((n, C))
    mask[::7] = 0  # dropped samples
    return probs, np.eye(C)[cls], mask, ["glioma", "meningioma", "notumor", "pituitary"]


def test_multiclass_matches_sklearn(mc):
    probs, y, m, labels = mc
    out = multiclass_metrics(probs, y, m, labels, n_bootstrap=100)
    keep = m.all(1)
    yt, pr = y[keep].argmax(1), probs[keep].argmax(1)
    assert out["num_valid"] == keep.sum()
    assert out["accuracy"] == pytest.approx(np.mean(yt == pr))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yt, pr))
    assert out["macro_f1"] == pytest.approx(f1_score(yt, pr, average="macro"))
    assert out["confusion_matrix"] == confusion_matrix(yt, pr, labels=range(4)).tolist()
    rec = recall_score(yt, pr, average=None, labels=range(4))
    assert [out["per_class_recall"][lab] for lab in labels] == pytest.approx(rec.tolist())
    assert out["macro_auc"] == pytest.approx(roc_auc_score(yt, probs[keep], multi_class="ovr", average="macro"))
    conf = probs[keep].max(1)
    assert out["ece"] == pytest.approx(expected_calibration_error(conf, (yt == pr).astype(float)))
    lo, hi = out["accuracy_ci95"]
    assert lo <= out["accuracy"] <= hi
    # dropped rows can hold anything
    p2, y2 = probs.copy(), y.copy()
    p2[~keep] = np.nan
    y2[~keep] = 0
    again = multiclass_metrics(p2, y2, m, labels, n_bootstrap=100)
    assert again == out


def test_multiclass_absent_class_policy():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    y = np.eye(3)[[0, 1, 0, 1]]  # class 2 absent from the targets
    with pytest.warns(MetricWarning, match="c2"):
        out = multiclass_metrics(probs, y, None, ["c0", "c1", "c2"], n_bootstrap=0)
    assert np.isnan(out["per_class_recall"]["c2"]) and np.isnan(out["per_class_auc"]["c2"])
    assert out["labels_without_both_classes"] == {"count": 1, "names": ["c2"]}
    yt, pr = [0, 1, 0, 1], [0, 1, 0, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred has a class not in y_true
        ref = balanced_accuracy_score(yt, pr)
    assert out["balanced_accuracy"] == pytest.approx(ref)
    assert out["macro_f1"] == pytest.approx(f1_score(yt, pr, average="macro", zero_division=0))
    assert out["macro_auc"] == pytest.approx(np.mean([roc_auc_score(np.array(yt) == c, probs[:, c]) for c in (0, 1)]))


def test_compute_metrics_and_accumulator(ml, mc):
    probs, y, m = ml
    logits = np.log(np.clip(probs, 1e-9, 1 - 1e-9) / np.clip(1 - probs, 1e-9, 1))
    acc = MetricAccumulator("multilabel", LABELS)
    for s in range(0, 80, 32):
        acc.update(logits[s:s + 32], y[s:s + 32], m[s:s + 32])
    assert len(acc) == 80
    with pytest.warns(MetricWarning):
        a = acc.compute(n_bootstrap=0)
    with pytest.warns(MetricWarning):
        b = compute_metrics("multilabel", 1 / (1 + np.exp(-logits)), y, m, LABELS, n_bootstrap=0)
    assert a["macro_auc"] == pytest.approx(b["macro_auc"]) and a["per_label_f1"] == pytest.approx(b["per_label_f1"])
    acc.reset()
    with pytest.raises(MetricError, match="no batches"):
        acc.compute()
    torch = pytest.importorskip("torch")
    pc, yc, mk, labels = mc
    acc = MetricAccumulator("multiclass", labels, inputs="probs")
    acc.update(torch.tensor(pc), torch.tensor(yc), torch.tensor(mk))
    assert acc.compute(n_bootstrap=0)["accuracy"] == pytest.approx(
        compute_metrics("multiclass", pc, yc, mk, labels, n_bootstrap=0)["accuracy"], abs=1e-6)


def test_bad_inputs_raise_clear_errors(mc):
    probs, y, m, labels = mc
    assert issubclass(MetricError, MedistillError)
    with pytest.raises(MetricError, match="not probabilities"):
        compute_metrics("multilabel", probs * 5 - 2, y, m, labels)
    with pytest.raises(MetricError, match=r"targets: shape \(90, 3\)"):
        compute_metrics("multiclass", probs, y[:, :3], m, labels)
    with pytest.raises(MetricError, match="labels: got 2 names"):
        compute_metrics("multiclass", probs, y, m, labels[:2])
    with pytest.raises(MetricError, match="task: got 'binary'"):
        compute_metrics("binary", probs, y, m, labels)
    m2 = m.copy()
    m2[1, 0] = 0
    with pytest.raises(MetricError, match="partly masked"):
        multiclass_metrics(probs, y, m2, labels)
    y2 = y.copy()
    y2[1] = 1
    with pytest.raises(MetricError, match="not one-hot"):
        multiclass_metrics(probs, y2, m, labels)
    with pytest.raises(MetricError, match=r"thresholds: got shape \(2,\)"):
        multilabel_metrics(probs, y, m, labels, thresholds=np.array([0.5, 0.5]))
    with pytest.raises(MetricError, match="expected 0 or 1"):
        multilabel_metrics(probs, y * 0.5, m, labels)


def test_intervals_draw_patients_when_patients_have_several_images(ml):
    """Each image repeated 4 times as one patient's: drawing patients gives exactly the intervals of one image
    per patient (same seed), drawing images a narrower, overconfident one; the method names the unit."""
    from medistill.evaluate.bootstrap import patient_groups

    probs, y, m = ml
    rep = lambda a: np.repeat(a, 4, axis=0)  # noqa: E731
    patients = rep(np.array([f"p{i:03d}" for i in range(len(probs))]))  # sorted as the rows: the same draws
    assert patient_groups(patients) is patients and patient_groups(np.arange(5)) is None
    assert patient_groups(None) is None
    with pytest.warns(MetricWarning):
        one = multilabel_metrics(probs, y, m, LABELS, n_bootstrap=200, seed=1)
    with pytest.warns(MetricWarning):
        grouped = multilabel_metrics(rep(probs), rep(y), rep(m), LABELS, n_bootstrap=200, seed=1, groups=patients)
    with pytest.warns(MetricWarning):
        flat = multilabel_metrics(rep(probs), rep(y), rep(m), LABELS, n_bootstrap=200, seed=1)
    assert grouped["auc_ci95"] == pytest.approx(one["auc_ci95"], abs=1e-12)
    assert grouped["auc_ci95_method"] == "percentile bootstrap over patients (80), 200 resamples, seed 1"
    assert one["auc_ci95_method"].startswith("percentile bootstrap over images")
    assert np.diff(flat["auc_ci95"])[0] < 0.7 * np.diff(one["auc_ci95"])[0]

    true = np.arange(len(probs)) % 3
    pc, yc = np.eye(3)[(true + (probs[:, 0] > 0.7)) % 3] * 0.8 + 0.1, np.eye(3)[true]
    mc = np.ones_like(yc)
    mc[0] = 0  # a dropped row: the patients are taken from the kept rows
    one = multiclass_metrics(pc[1:], yc[1:], mc[1:], None, n_bootstrap=300, seed=2)
    grouped = multiclass_metrics(rep(pc), rep(yc), rep(mc), None, n_bootstrap=300, seed=2, groups=patients)
    assert grouped["accuracy"] == pytest.approx(one["accuracy"])
    assert grouped["accuracy_ci95"] == pytest.approx(one["accuracy_ci95"], abs=1e-12)
    assert grouped["accuracy_ci95_method"].startswith("percentile bootstrap over patients (79)")
