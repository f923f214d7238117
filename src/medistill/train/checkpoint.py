"""Resume state and per-epoch history of a training run.

``state.pt`` holds, in one atomic file, everything resume needs: weights, optimizer, scheduler, epoch, best
metric, RNG states and the training objective's own parameters (a FitNets projector). Because the weights are in
it too, a crash between ``last.safetensors`` and ``state.pt`` can never pair new weights with an old optimizer.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import runs
from ..errors import MedistillError
from ..models import load_weights
from ..models.weights import load_checkpoint
from ..utils.io import atomic_write, atomic_write_text

HISTORY_FILE = runs.HISTORY_FILE


class TrainingError(MedistillError):
    """Training cannot go on (NaN loss, nothing to train on, a bad resume state); the message says where."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best: float = -math.inf  # best validation value of the task's main metric
    best_epoch: int = -1
    stale: int = 0  # epochs without improvement
    history: list[dict[str, float]] = field(default_factory=list)  # one row per completed epoch


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") else model


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.frombuffer(
        np.random.get_state()[1].astype(np.uint32).tobytes(), dtype=np.uint8).copy()),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}


def save_state(run: runs.RunDir, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, st: TrainState,
               extra: dict[str, nn.Module], labels: list[str], task: str, *, weights: nn.Module | None = None) -> None:
    """``last.safetensors`` (for people and tools: ``weights``, e.g. the EMA model, else ``model``) and
    ``state.pt`` (for resume: the trained weights themselves), each written atomically."""
    runs.save_model(run, weights if weights is not None else unwrap(model), labels=labels, task=task, which="last")
    state = {"epoch": st.epoch, "best": st.best, "best_epoch": st.best_epoch, "stale": st.stale,
             "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(),
             "extra": {k: m.state_dict() for k, m in extra.items()}}
    atomic_write(run.file(runs.STATE_FILE), lambda p: _torch_save(state, p))


def _torch_save(obj: Any, path: Any) -> None:
    # through a Python file object: a full disk is then an OSError (ENOSPC), where torch's own writer on a path
    # reports it as "RuntimeError: [enforce fail at inline_container.cc] . unexpected pos"
    with open(path, "wb") as f:
        torch.save(obj, f)


def load_state(run: runs.RunDir, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
               extra: dict[str, nn.Module]) -> TrainState:
    """Restore what :func:`save_state` wrote (``torch.load`` with ``weights_only``: a crafted file runs nothing)."""
    path = run.file(runs.STATE_FILE)
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"epoch", "optimizer", "scheduler"} <= set(state):
        raise TrainingError(f"{path}: not a medistill resume state (expected epoch, optimizer and scheduler entries)")
    if "model" in state:
        unwrap(model).load_state_dict(state["model"], strict=True)
    else:  # a state.pt of an earlier medistill: weights only in last.safetensors
        load_weights(unwrap(model), run.file(runs.LAST_WEIGHTS), strict=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    saved_extra = state.get("extra", {})
    for k, m in extra.items():
        if k not in saved_extra:
            raise TrainingError(f"{path}: no saved state for the objective's '{k}' parameters (was the run started "
                                f"with another distillation setup?)")
        m.load_state_dict(saved_extra[k])
    st = TrainState(epoch=int(state["epoch"]), best=float(state["best"]), best_epoch=int(state["best_epoch"]),
                    stale=int(state["stale"]))
    st.history = read_history(run)[: st.epoch]
    return st


def read_history(run: runs.RunDir) -> list[dict[str, float]]:
    """The rows of ``history.csv`` (empty when there is none)."""
    path = run.file(HISTORY_FILE)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_history(run: runs.RunDir, history: list[dict[str, float]]) -> None:
    """Rewrite ``history.csv`` atomically (one row per completed epoch)."""
    if not history:
        return
    keys = list(history[0].keys())
    lines = [",".join(keys)] + [",".join(f"{row.get(k, float('nan')):.6g}" for k in keys) for row in history]
    atomic_write_text(run.file(HISTORY_FILE), "\n".join(lines) + "\n")
