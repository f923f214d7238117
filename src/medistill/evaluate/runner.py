"""Evaluate a run directory on a split (``medistill evaluate``) and compare runs (``medistill compare``).

``evaluate_run`` writes into the run's ``metrics.json``: the split's metrics at top level (multi-label:
``macro_auc``, ``per_label_auc`` ...; single-label: ``accuracy``, ``macro_f1`` ...), the per-label thresholds chosen
on the validation split, and efficiency (``params``, ``macs``, ``size_bytes``, ``latency_ms``). Predictions are
kept in ``predictions_<split>.npz`` for reports (ROC curves, calibration) with each image's patient, so that the
intervals here and in ``medistill compare`` draw patients, not images, when a patient has several images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import runs
from ..data import collate
from ..evaluate.bootstrap import patient_groups
from ..evaluate.metrics import choose_thresholds, compute_metrics, majority_baseline
from ..task import get_task
from ..utils.io import staged_write

log = logging.getLogger(__name__)


def _loader(run: runs.RunDir, record: dict[str, Any], split: str, batch_size: int, limit: int | None = None,
            data: Any = None):
    from torch.utils.data import DataLoader

    ds = runs.run_dataset(run, split, limit=limit, record=record, data=data)
    return ds, DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)


def run_predictions(run_dir: str | Path, split: str, *, batch_size: int = 64, device: str = "cpu",
                    limit: int | None = None, weights: str = "best", data: Any = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Logits / probs / targets / mask (N, L) of the run's best model (``weights="last"``: its last epoch's) on
    ``split`` of its own data (or of the DataConfig ``data``: :func:`medistill.runs.run_dataset`), and ``patients``
    (N,) (the dataset's patient id of each image, as strings); ``progress(done, total)`` after each batch."""
    import torch

    from .predict import predict

    model, record = runs.load_model(run_dir, which=weights, device=device)
    ds, loader = _loader(runs.RunDir(run_dir), record, split, batch_size, limit, data)
    out = predict(model, loader, torch.device(device), task=record["task"], labels=record["labels"],
                  progress=progress).arrays()
    return out | {"patients": ds.data.records["patient_id"].astype(str).to_numpy(dtype=str)}


def evaluate_run(run_dir: str | Path, split: str = "test", *, batch_size: int = 64, latency: bool = True,
                 n_bootstrap: int = 1000, device: str = "cpu", weights: str = "best",
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Metrics of the run's best model (``weights="last"``: its last epoch's, the moving average's with EMA) on
    ``split`` (thresholds chosen on validation); updates metrics.json. Single-label runs also get the majority-class
    rate and chance (:func:`.metrics.majority_baseline`). ``progress(split, done, total)`` is called after each
    batch of each split predicted (val, then ``split``)."""
    from ..evaluate.efficiency import efficiency_report

    run = runs.RunDir(run_dir)
    model, record = runs.load_model(run_dir, which=weights, device=device)
    task, labels = get_task(record["task"]), list(record["labels"])
    thresholds = None
    if task.uses_thresholds:
        val = run_predictions(run_dir, "val", batch_size=batch_size, device=device, weights=weights,
                              progress=(lambda d, t: progress("val", d, t)) if progress else None)
        thresholds = choose_thresholds(val["probs"], val["targets"], val["mask"])
    pred = run_predictions(run_dir, split, batch_size=batch_size, device=device, weights=weights,
                           progress=(lambda d, t: progress(split, d, t)) if progress else None)
    metrics = compute_metrics(task, pred["probs"], pred["targets"], pred["mask"], labels, thresholds=thresholds,
                              n_bootstrap=n_bootstrap, groups=patient_groups(pred["patients"]))
    if not task.multilabel:
        metrics.update(majority_baseline(train_label_counts(run, record), pred["targets"], pred["mask"], labels))
    inp = record["input"]
    eff = efficiency_report(model, run.file(runs.BEST_WEIGHTS if weights == "best" else runs.LAST_WEIGHTS),
                            size=inp["size"], channels=inp["channels"], latency=latency)
    # the predictions and metrics.json are one result: the predictions are written under a hidden name first and
    # take their own only once metrics.json is written (a full disk leaves neither half)
    final = run.file(runs.predictions_file(split))
    staged = staged_write(final, lambda p: _save_npz(p, probs=pred["probs"], logits=pred["logits"],
                                                     targets=pred["targets"], mask=pred["mask"],
                                                     patients=pred["patients"]))
    info = run.info()
    result = {**metrics, **eff, "split": split, "weights": weights, "num_images": int(len(pred["probs"])),
              "task": task.name,
              "labels": labels, "model": record["model"], "kind": info.get("kind"),
              "teacher": info.get("teacher"), "input_size": inp["size"]}
    if thresholds is not None:
        result["thresholds"] = {lab: float(v) for lab, v in zip(labels, thresholds)}
    try:
        run.write_metrics(result)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, final)
    log.info("evaluated %s on %s: %s", run.path, split,
             {k: result[k] for k in task.headline_metrics if k in result})
    return result


def train_label_counts(run: runs.RunDir, record: dict[str, Any]) -> list[float]:
    """Images per label (single-label: per class) in the run's training split: the run record's
    ``train_label_counts`` (written by training), else counted from the run's dataset (runs trained before it)."""
    counts = record.get("train_label_counts")
    if isinstance(counts, dict) and list(counts) == list(record["labels"]):
        return [float(counts[lab]) for lab in record["labels"]]
    ds = runs.run_dataset(run, "train", record=record)
    return (ds.targets * ds.masks).sum(axis=0).astype(float).tolist()


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
        np.savez_compressed(f, **arrays)
