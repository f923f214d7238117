"""The name of every file and folder medistill writes into a run directory and beside it, defined once.

Torch-free and low in the layers (``serve`` and ``predict`` read these names without importing ``runs``, which
builds models); :mod:`medistill.runs` re-exports them and documents the layout of a run directory.
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.txt"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
STATE_FILE = "state.pt"
HISTORY_FILE = "history.csv"
TEACHER_LOGITS = "teacher_logits.npy"
EXPORT_DIR = "export"
EXPORT_FILE = "export.json"  # ``medistill export``'s report, beside the model files
BENCHMARK_FILE = "benchmark.json"  # ``medistill benchmark --json``'s report as the quickstart keeps it
EXPLAIN_FILE = "explain.json"  # ``medistill explain``'s summary in its output folder (report and serve read it)
LOCK_FILE = "run.lock"
PREDICTIONS_PATTERN = "predictions_*.npz"


def predictions_file(split: str) -> str:
    """The name of evaluate's predictions of ``split``: ``predictions_<split>.npz``."""
    return f"predictions_{split}.npz"
