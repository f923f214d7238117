"""One sample structure for every source.

A source class (``NIHChestXray14``, ``CheXpert``, ``ImageFolder``, ``Phantom`` ...) parses its native files
once into a :class:`Table`: one row per image with its split, a float target ``[L]`` and a mask ``[L]``.
:class:`MedicalDataset` turns one split of that table into samples::

    {"image": Tensor (C, H, W) float32 normalised,
     "target": Tensor (L,) float32      multi-label 0/1 (uncertain resolved by policy); single-label one-hot,
     "mask": Tensor (L,) float32        0 where the label is uncertain/missing and the policy ignores it,
     "index": int,                      row in this split
     "meta": {"image_id", "patient_id", "view", "path", "size": (H, W) of the stored image}}

Ground truth for explanations (boxes or per-finding masks) comes from ``dataset.truth(i, size)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import images as im
from .cache import ImageCache
from .table import DatasetError, Table, canonical_split, limit_rows
from .transforms import train_augmentation

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Preprocess:
    """How a decoded image becomes a model input (from the model's own config)."""

    size: int = 128
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    augment: str = "none"  # none, light, strong (train split only)


def files_fingerprint(paths: Any) -> str:
    """The decoded-image cache's key: each file's path, size and modification time, and the decoding rule, so a
    file rewritten in place (a phantom regenerated with other parameters, a re-exported image) or a changed
    intensity rule never gets a stale cached image. One ``stat`` per file."""
    h = hashlib.sha1(f"decode:{im.INTENSITY_RULE}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


class MedicalDataset:
    """One split of a source as a map-style torch dataset (see module docstring).

    Subclasses set ``name`` and implement ``load_table(root, **options) -> Table`` (all splits). The table is
    parsed once per (class, root, options) and shared across splits.
    """

    name = "base"
    default_labels: list[str] = []
    _table_cache: dict[tuple, Table] = {}

    def __init__(self, root: str | Path, split: str = "train", *, preprocess: Preprocess | None = None,
                 limit: int | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                 skip_unreadable: bool = False, **options: Any):
        self.root = Path(root)
        self.split = canonical_split(split)
        self.preprocess = preprocess or Preprocess()
        self.seed = seed
        self.skip_unreadable = skip_unreadable
        self.options = options
        table = self.table(self.root, seed=seed, **options)
        rows = table.split_rows(self.split)
        if len(rows) == 0:
            counts = table.records["split"].value_counts().to_dict()
            raise DatasetError(f"{self.name} dataset at {self.root}: the {self.split!r} split is empty "
                               f"(images per split: {counts})")
        rows = limit_rows(rows, limit, seed)
        self.data = table.select(rows)
        self.labels = list(table.labels)
        self.task = table.task
        self.report = dict(table.report)
        self.boxes = table.boxes
        self.unreadable: list[str] = []
        self._cache = None
        if cache_dir is not None:
            key = files_fingerprint(self.data.records["path"].astype(str))
            self._cache = ImageCache(Path(cache_dir), f"{self.name}-{self.split}-{key}", len(self.data.records),
                                     self.preprocess.channels, self.preprocess.size)
        self._augment = None

    # --- parsing --------------------------------------------------------------------------------------
    @classmethod
    def table(cls, root: Path, seed: int = 0, **options: Any) -> Table:
        key = (cls.__name__, str(Path(root).resolve()), seed, tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key not in cls._table_cache:
            if not Path(root).exists():
                raise DatasetError(f"{cls.name} dataset root {str(root)!r} does not exist")
            cls._table_cache[key] = cls.load_table(Path(root), seed=seed, **options)
        return cls._table_cache[key]

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, **options: Any) -> Table:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def ensure_generated(cls, root: str | Path) -> Path:  # pragma: no cover - only generated sources have one
        """A source the registry marks ``generated`` draws its files into ``root`` here when they are missing."""
        raise NotImplementedError(f"{cls.name}: not a generated source")

    # --- samples --------------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> np.ndarray:
        return self.data.targets

    @property
    def masks(self) -> np.ndarray:
        return self.data.mask

    def __len__(self) -> int:
        return len(self.data.records)

    def path(self, i: int) -> Path:
        return Path(self.data.records.at[i, "path"])

    def read(self, i: int) -> np.ndarray:
        """The stored image ``i`` as float32 [0, 1], (H, W) or (H, W, 3)."""
        return im.read_image(self.path(i))

    def load_input(self, i: int) -> np.ndarray:
        """Image ``i`` resized to the preprocess size and channels, float [0, 1] (C, S, S), via the cache."""
        p = self.preprocess

        def load() -> np.ndarray:
            return im.to_channels(im.resize(self.read(i), p.size), p.channels)

        if self._cache is None:
            return load()
        return self._cache.get(i, load).astype(np.float32) / 255.0

    def meta(self, i: int) -> dict[str, Any]:
        r = self.data.records.iloc[i]
        return {"image_id": str(r["image_id"]), "patient_id": str(r["patient_id"]), "view": str(r["view"]),
                "path": str(r["path"])}

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        try:
            x = self.load_input(i)
        except im.ImageReadError as e:
            if not self.skip_unreadable:
                raise
            # replaced by a blank image with an all-zero mask, so it contributes nothing to losses or metrics
            self.unreadable.append(e.path)
            log.warning("skipping unreadable image %s (%s)", e.path, e.reason)
            p = self.preprocess
            x = np.zeros((p.channels, p.size, p.size), np.float32)
            mask = torch.zeros(self.num_labels)
        else:
            mask = torch.from_numpy(self.data.mask[i].copy())
        img = torch.from_numpy(x)  # (C, S, S) in [0, 1]
        if self.split == "train" and self.preprocess.augment != "none":
            img = self._augmenter()(img)
        mean = torch.tensor(im.fit_channels(self.preprocess.mean, img.shape[0])).view(-1, 1, 1)
        std = torch.tensor(im.fit_channels(self.preprocess.std, img.shape[0])).view(-1, 1, 1)
        return {"image": (img - mean) / std, "target": torch.from_numpy(self.data.targets[i].copy()),
                "mask": mask, "index": i, "meta": self.meta(i)}

    def _augmenter(self):
        if self._augment is None:
            self._augment = train_augmentation(self.preprocess.augment, self.preprocess.size)
        return self._augment

    # --- ground truth for explanations ----------------------------------------------------------------
    def truth(self, i: int, size: int | None = None) -> np.ndarray | None:
        """Where the evidence is: bool ``(L, size, size)`` per label (boxes or masks), or None if unknown."""
        image_id = self.meta(i)["image_id"]
        boxes = self.boxes.get(image_id)
        if not boxes:
            return None
        h, w = self.stored_size(i)
        out = np.zeros((self.num_labels, h, w), dtype=bool)
        for b in boxes:
            if b["label"] not in self.labels:
                continue
            k = self.labels.index(b["label"])
            x0, y0 = max(int(np.floor(b["x"])), 0), max(int(np.floor(b["y"])), 0)
            x1, y1 = min(int(np.ceil(b["x"] + b["w"])), w), min(int(np.ceil(b["y"] + b["h"])), h)
            out[k, y0:y1, x0:x1] = True
        return resize_masks(out, size) if size else out

    def stored_size(self, i: int) -> tuple[int, int]:
        """(H, W) of the stored image ``i`` (read from the header, not decoded; DICOM too)."""
        return im.image_size(self.path(i))


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """bool (L, H, W) -> bool (L, size, size) by nearest neighbour."""
    from PIL import Image

    out = np.zeros((masks.shape[0], size, size), dtype=bool)
    for k in range(masks.shape[0]):
        if masks[k].any():
            out[k] = np.asarray(Image.fromarray(masks[k].astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    return out


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep ``meta`` as a list of dicts."""
    import torch

    return {"image": torch.stack([b["image"] for b in batch]), "target": torch.stack([b["target"] for b in batch]),
            "mask": torch.stack([b["mask"] for b in batch]), "index": torch.tensor([b["index"] for b in batch]),
            "meta": [b["meta"] for b in batch]}
