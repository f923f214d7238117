"""A model's outputs over a whole loader, and the validation number model selection maximises.

Used by training (validation each epoch) and by ``medistill evaluate``; it sits below both so that neither
imports the other.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..task import Task, get_task
from ..utils.runtime import eval_mode
from .metrics import MetricAccumulator


@torch.inference_mode()
def predict(model: nn.Module, loader: Any, device: torch.device | str, *, task: str | Task,
            labels: Sequence[str] | None = None,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
            channels_last: bool = False,
            progress: Callable[[int, int], None] | None = None) -> MetricAccumulator:
    """Run ``model`` (eval mode, restored afterwards) over every batch of ``loader``.

    ``transform`` maps the loaded batch to the model's input (cross-resolution runs load at the teacher's size).
    Returns the filled :class:`MetricAccumulator`: ``.arrays()`` gives logits / probs / targets / mask ``(N, L)``,
    ``.compute()`` the metrics. ``progress(done, total)`` is called after each batch with the images done so far
    and the loader's total (the CLI draws a progress bar from it).
    """
    acc: MetricAccumulator | None = None
    total, done = len(getattr(loader, "dataset", ())), 0
    with eval_mode(model):
        for batch in loader:
            x = batch["image"].to(device)
            if transform is not None:
                x = transform(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float().cpu()
            if acc is None:
                acc = MetricAccumulator(get_task(task), labels or [f"label_{i}" for i in range(logits.shape[1])])
            acc.update(logits, batch["target"], batch["mask"])
            done += int(logits.shape[0])
            if progress is not None:
                progress(done, max(total, done))
    if acc is None:
        raise ValueError("predict: the loader yielded no batch")
    return acc


def validation_metric(acc: MetricAccumulator) -> tuple[str, float]:
    """``(name, value)`` of the task's main metric (macro AUC multi-label, accuracy single-label); NaN when
    undefined (for example one class only in the split)."""
    name = acc.task.main_metric
    value = acc.compute(n_bootstrap=0).get(name)
    return name, float("nan") if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

