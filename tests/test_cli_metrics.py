"""Issue 15, item 6: one rule per task everywhere: ``evaluate`` and the quickstart's final table lead with the task's
main metric (``Task.main_metric``: macro AUC for multi-label, accuracy for single-label), as ``compare`` does."""

from __future__ import annotations

from medistill.cli.common import metrics_text


def test_single_label_leads_with_accuracy():
    # the quickstart's table led with macro AUC whenever it was present, also for single-label runs
    m = {"task": "multiclass", "accuracy": 0.91, "macro_f1": 0.9, "macro_auc": 0.98}
    assert metrics_text(m) == "Accuracy 0.9100, macro AUC 0.9800, macro F1 0.9000"


def test_multi_label_leads_with_macro_auc():
    m = {"task": "multilabel", "macro_auc": 0.78, "macro_f1": 0.31, "accuracy": 0.9}
    assert metrics_text(m) == "Macro AUC 0.7800, macro F1 0.3100"  # no accuracy: not a multi-label figure


def test_missing_values_say_so():
    assert metrics_text({"task": "multilabel", "macro_auc": float("nan")}) == "Macro AUC n/a"
