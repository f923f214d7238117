"""The models explained side by side: the student (the run) and, when known, its teacher."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..maps.errors import ExplainError
from ..models import input_config
from ..runs import RUN_FILE, load_model
from ..task import MULTILABEL, Task, get_task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Explained:
    """One model's side: the model, its record, inputs, probabilities, maps and timing."""

    name: str  # "student" or "teacher"
    model: Any
    record: dict[str, Any]
    run: str
    x: torch.Tensor | None = None  # (N, C, S, S) normalised inputs
    probs: np.ndarray | None = None  # (N, L)
    maps: np.ndarray | None = None  # (P, S_display, S_display)
    seconds: float = 0.0
    cam_layers: list[str] = dataclasses.field(default_factory=list)  # the layers a CAM hooked (names)
    grid: int | None = None  # the side of the maps' own grid (a CAM's finest hooked layer); None: pixel-level

    @property
    def labels(self) -> list[str]:
        return list(self.record["labels"])

    @property
    def task(self) -> Task:
        return get_task(self.record.get("task"), default=MULTILABEL.name)

    @property
    def input(self):
        return input_config(self.model)


def load_side(name: str, run: Path, device: Any) -> Explained:
    """The model of run directory (or weights file) ``run`` on ``device``, in eval mode."""
    model, record = load_model(run, device=device)
    return Explained(name, model, record, str(run))


def resolve_teacher(run_dir: Path, record: dict[str, Any], teacher: str | Path | None) -> Path | None:
    """The teacher run dir: ``teacher`` when given (must exist), else the student's record (skipped if gone)."""
    if teacher is not None:
        path = Path(teacher)
        if not path.exists():
            raise ExplainError(f"teacher {str(teacher)!r} does not exist; expected a run directory")
        return path
    recorded = record.get("teacher")
    if not recorded or not isinstance(recorded, str):
        return None
    for path in (Path(recorded), run_dir / recorded, run_dir.parent / recorded):
        if (path / RUN_FILE).is_file() or path.is_file():
            return path
    log.warning("the run's teacher %s is not found; explaining the student alone", recorded)
    return None
