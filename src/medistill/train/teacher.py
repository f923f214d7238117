"""Teachers for distillation: loading, checks against the student, cross-resolution inputs, cached outputs.

Cross-resolution distillation (as in resolution-aware KD): the teacher may see the image at its own input size
(e.g. 224 px) while the student sees it smaller (e.g. 128 px). The loader produces the larger of the two sizes;
each model gets the batch resized (antialiased bilinear) and re-normalised with its own mean / std.

Offline distillation: when nothing random happens to a training image (no augmentation) and no feature term is
used, the teacher's logits are computed once before training and cached on disk (``teacher_logits.npy`` in the
run directory), so epochs do not run the teacher at all. With augmentation the teacher must see the same
augmented view as the student, so it runs online; the run log says which mode was used and why.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import InputConfig, ModelError, create_model, input_config, load_weights, set_input_config
from ..runs import load_model

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


def load_teacher(source: str, *, labels: list[str], channels: int, model_name: str | None = None,
                 image_size: int | None = None, device: torch.device | str = "cpu") -> Teacher:
    """A teacher from a run directory (knows its own architecture) or a bare checkpoint + ``model_name``."""
    path = Path(source)
    if path.is_dir() or (path.is_file() and (path.parent / "run.json").is_file()):
        model, record = load_model(path, device=device)
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
    return Teacher(model.eval(), record, str(source))


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


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare path
        np.save(f, arr)


class TeacherCache:
    """Teacher logits of every training image, computed once (offline distillation).

    Stored as float32 ``(N, L)`` in ``teacher_logits.npy`` with a key over the teachers, the image list and sizes,
    so a resumed run reuses it and a changed setup recomputes it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.logits: torch.Tensor | None = None

    @staticmethod
    def key(teachers: list[Teacher], image_paths: list[str], size: int | str) -> str:
        h = hashlib.sha1()
        for t in teachers:
            h.update(f"{t.source}|{t.weight}|{t.input.size}".encode())
        h.update(f"{size}".encode())
        h.update("\n".join(image_paths).encode())
        return h.hexdigest()[:16]

    def load_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> torch.Tensor:
        from ..utils.io import atomic_write

        key_path = self.path.with_suffix(".key")
        if self.path.is_file() and key_path.is_file() and key_path.read_text().strip() == key:
            arr = np.load(self.path)
            log.info("reusing cached teacher logits %s", self.path)
        else:
            arr = compute().astype(np.float32)
            atomic_write(self.path, lambda p: _save_npy(p, arr))
            atomic_write(key_path, lambda p: p.write_text(key))
        self.logits = torch.from_numpy(arr)
        return self.logits
