"""Teachers for distillation: loading, checks against the student, cross-resolution inputs, cached outputs.

Cross-resolution distillation (as in resolution-aware KD): the teacher may see the image at its own input size
(e.g. 224 px) while the student sees it smaller (e.g. 128 px). The loader produces the larger of the two sizes;
each model gets the batch resized (antialiased bilinear) and re-normalised with its own mean / std.

Caching the teachers' outputs (offline KD, cached consistent KD) is :mod:`.views`; the policy is in :mod:`.setup`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import InputConfig, ModelError, create_model, input_config, load_weights, set_input_config
from ..runs import RUN_FILE, RunDir, load_model

log = logging.getLogger(__name__)


class DistillError(ModelError):
    """Teacher and student (or data) do not fit together."""


@dataclass
class Teacher:
    model: nn.Module
    record: dict[str, Any]
    source: str
    weight: float = 1.0

    @property
    def input(self) -> InputConfig:
        return input_config(self.model)

    def fingerprint(self) -> str:
        """A digest of the teacher's weights (names, shapes, values), for cache keys: a teacher retrained or resumed
        in place keeps its path but not its fingerprint, so outputs cached from its old weights are not reused."""
        h = hashlib.sha1()
        for name, t in sorted(self.model.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
        return h.hexdigest()[:16]


def load_teacher(source: str, *, labels: list[str], channels: int, model_name: str | None = None,
                 image_size: int | None = None, device: torch.device | str = "cpu") -> Teacher:
    """A teacher from a run directory (knows its own architecture) or a bare checkpoint + ``model_name``."""
    path = Path(source)
    if path.is_dir() or (path.is_file() and (path.parent / RUN_FILE).is_file()):
        model, record = load_model(path, device=device)
        _warn_if_training(RunDir(path if path.is_dir() else path.parent))
    elif path.is_file():
        if not model_name:
            raise DistillError(f"teacher {path} is a bare checkpoint: name its architecture with --teacher-model")
        model = create_model(model_name, num_classes=len(labels), in_chans=channels, image_size=image_size)
        load_weights(model, path, strict=True)
        model.eval().to(device)
        record = {"model": model_name, "labels": list(labels), "task": None, "input": input_config(model).to_dict()}
    else:
        raise DistillError(f"teacher {source!r} does not exist (expected a run directory or a weights file)")
    if list(record["labels"]) != list(labels):
        raise DistillError(f"teacher {source} was trained on labels {record['labels']}, the student's data has "
                           f"{labels}: teacher and student must share one label set in the same order")
    if input_config(model).channels != channels:
        raise DistillError(f"teacher {source} takes {input_config(model).channels}-channel input, the student "
                           f"{channels}: set --in-chans to match")
    if image_size is not None and image_size != input_config(model).size:
        set_input_config(model, InputConfig(image_size, channels, input_config(model).mean, input_config(model).std))
    for p in model.parameters():
        p.requires_grad_(False)
    # teachers only infer, so their memory format is a pure speed choice: on this project's CPU NHWC takes 0.51-0.81x
    # the NCHW time in fp32 and 0.20-0.51x with bf16 autocast (benchmarks/results/cpu_speed.md); the inputs follow
    # in DistillationObjective.teacher_outputs
    return Teacher(model.eval().to(memory_format=torch.channels_last), record, str(source))


def _warn_if_training(run: RunDir) -> None:
    """A teacher run another process is still training: its weights will change under the student."""
    if run.info().get("finished"):
        return
    pid = run.holder()
    if pid is not None:
        log.warning("teacher %s is still being trained (by pid %s): distilling from the best weights it has saved "
                    "so far, which will change", run.path, pid)


def adapt_input(x: torch.Tensor, src: InputConfig, dst: InputConfig) -> torch.Tensor:
    """A normalised batch for model ``src`` -> the same images for model ``dst`` (size and mean/std).

    x: (B, C, H, W) normalised with src.mean/std -> (B, C, dst.size, dst.size) normalised with dst.mean/std.
    """
    if tuple(src.mean) != tuple(dst.mean) or tuple(src.std) != tuple(dst.std):
        ms = torch.tensor(src.mean, device=x.device).view(1, -1, 1, 1)
        ss = torch.tensor(src.std, device=x.device).view(1, -1, 1, 1)
        md = torch.tensor(dst.mean, device=x.device).view(1, -1, 1, 1)
        sd = torch.tensor(dst.std, device=x.device).view(1, -1, 1, 1)
        x = (x * ss + ms - md) / sd
    if x.shape[-1] != dst.size or x.shape[-2] != dst.size:
        x = F.interpolate(x, size=(dst.size, dst.size), mode="bilinear", align_corners=False,
                          antialias=dst.size < x.shape[-1])
    return x
