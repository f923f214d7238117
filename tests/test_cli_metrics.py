"""Issue 15, item 6: one rule per task everywhere: ``evaluate`` and the quickstart's final table lead with the task's
main metric (``Task.main_metric``: macro AUC for multi-label, accuracy for single-label), as ``compare`` does."""

from __future__ import annotations

from medistill.cli.common import metrics_text


def test_single_label_leads_with_accuracy():
    # the quickstart's table led with macro AUC whenever it was present, also for single-label runs
    m = {"task": "multiclass", "accuracy": 0.91, "macro_f1": 0.9, "macro_auc": 0.98}
    assert metrics_text(m) == "Accuracy 0.9100, macro AUC 0.9800, macro F1 0.9000"


def test_single_label_states_balanced_accuracy_and_the_majority_rate():
    m = {"task": "multiclass", "accuracy": 0.52, "balanced_accuracy": 0.31, "majority_rate": 0.498,
         "majority_class": "NonDemented", "chance": 0.25}
    assert metrics_text(m) == ("Accuracy 0.5200, balanced accuracy 0.3100, majority-class rate 0.4980 "
                               "(always 'NonDemented'; chance 0.2500)")


def test_multi_label_leads_with_macro_auc():
    m = {"task": "multilabel", "macro_auc": 0.78, "macro_f1": 0.31, "accuracy": 0.9}
    assert metrics_text(m) == "Macro AUC 0.7800, macro F1 0.3100"  # no accuracy: not a multi-label figure


def test_missing_values_say_so():
    assert metrics_text({"task": "multilabel", "macro_auc": float("nan")}) == "Macro AUC n/a"


# --- issue 15, item 5: progress in images, with a rate and an ETA, in the CLI only ------------------------------
def test_stage_bars_count_images_per_stage(monkeypatch):
    import medistill.cli.common as common

    made = []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n, self.total, self.closed = kw, 0, kw["total"], False
            made.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(common, "progress", lambda **kw: Bar(**kw))
    bars = common.StageBars("predicting ")
    for done in (64, 128, 150):
        bars("val", done, 150)
    bars("test", 64, 300)
    bars.close()
    assert [b.kw["desc"] for b in made] == ["predicting val", "predicting test"]
    assert made[0].n == 150 and made[0].kw["unit"] == "img" and made[1].n == 64
    assert all(b.closed for b in made)


def test_training_bar_counts_images(monkeypatch):
    import medistill.cli.common as common
    from medistill.cli.train import progress_callbacks

    seen = {}
    monkeypatch.setattr(common, "progress", lambda **kw: seen.update(kw) or type(
        "B", (), {"update": lambda self, k: None, "set_postfix": lambda self, **k: None, "close": lambda self: None})())
    cb = progress_callbacks("tiny", 2, batch_size=32)
    cb.on_epoch_start(0, 10)
    assert seen["unit"] == "img" and seen["unit_scale"] == 32 and seen["total"] == 10


def test_evaluate_reports_progress_per_split(phantom_root, tmp_path):
    """The library takes a callback (no bar in library code): evaluate_run calls it per batch of val and test."""
    from medistill.config import RunConfig, build
    from medistill.evaluate.runner import evaluate_run
    from medistill.train import run_training

    cfg = build(RunConfig, overrides={"out": str(tmp_path / "r"), "data.dataset": "phantom",
                                      "data.root": str(phantom_root), "data.image_size": "32", "data.limit": "40",
                                      "data.augment": "none", "data.cache": "false", "model.name": "tiny_cnn",
                                      "train.epochs": "1", "train.batch_size": "16"})
    run = run_training(cfg)
    calls = []
    evaluate_run(run.path, "test", batch_size=16, latency=False, n_bootstrap=0,
                 progress=lambda split, done, total: calls.append((split, done, total)))
    assert [c[0] for c in calls if c[0] == "val"] and calls[-1][0] == "test"
    assert calls[-1][1] == calls[-1][2] == 40
