"""The data layer: one dataset class per source, one sample structure for all (``dataset``); tables and splits in
``table``, the table-file helpers of the sources in ``sources``, the decoded-image cache in ``cache``.

``build_dataset(cfg, split, preprocess)`` is the one entry point the rest of medistill uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import DataConfig
from .dataset import MedicalDataset, Preprocess, collate
from .table import DatasetError, Table
from .images import ImageReadError, read_image

__all__ = ["DatasetError", "ImageReadError", "MedicalDataset", "Preprocess", "Table", "build_dataset",
           "collate", "dataset_class", "image_cache_dir", "read_image", "source_options"]


def dataset_class(name: str) -> type[MedicalDataset]:
    """The dataset class of a source name (imported lazily)."""
    if name == "phantom":
        from .phantom import Phantom
        return Phantom
    if name == "folder":
        from .folder import ImageFolder
        return ImageFolder
    if name == "nih":
        from .nih import NIHChestXray14
        return NIHChestXray14
    if name == "chexpert":
        from .chexpert import CheXpert
        return CheXpert
    if name == "padchest":
        from .padchest import PadChest
        return PadChest
    if name == "medmnist":
        from .medmnist import MedMNIST
        return MedMNIST
    raise DatasetError(f"dataset {name!r}: expected one of phantom, nih, chexpert, padchest, medmnist, folder")


def source_options(cfg: DataConfig) -> dict[str, Any]:
    """The options of ``cfg`` that the chosen source understands (passed to its ``load_table``)."""
    opts: dict[str, Any] = {}
    if cfg.dataset in ("folder", "nih", "medmnist", "padchest", "chexpert"):
        opts.update(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    if cfg.dataset in ("nih", "padchest", "chexpert") and cfg.views:
        opts["views"] = tuple(cfg.views)
    if cfg.dataset == "chexpert":
        opts.update(uncertainty=cfg.uncertainty, blank=cfg.blank, frontal_only=cfg.frontal_only)
    if cfg.dataset == "folder" and cfg.group_by:
        opts["group_by"] = cfg.group_by
    if cfg.dataset == "folder" and cfg.group_similar is not None:
        opts["group_similar"] = cfg.group_similar
    if cfg.dataset == "folder" and cfg.resplit:
        opts["resplit"] = True
    if cfg.dataset == "folder" and cfg.drop_near_copies is not None:
        opts["drop_near_copies"] = cfg.drop_near_copies
    if cfg.labels:
        opts["labels"] = tuple(cfg.labels)
    return opts


def resolve_root(cfg: DataConfig) -> Path:
    """The dataset root; for the phantom, generate it there first when the folder is empty or absent."""
    if cfg.root is None:
        if cfg.dataset == "phantom":
            root = Path("data/phantom")
        else:
            raise DatasetError(f"dataset {cfg.dataset!r} needs --root (the folder holding its files)")
    else:
        root = Path(cfg.root)
    if cfg.dataset == "phantom":
        from .phantom import ensure
        ensure(root)
    return root


def image_cache_dir(cfg: DataConfig) -> Path | None:
    """Where decoded images are cached (the one policy): ``None`` when ``cfg.cache`` is off, else ``cfg.cache_dir``
    when given, else ``$MEDISTILL_CACHE/images``, else ``~/.cache/medistill/images``."""
    if not cfg.cache:
        return None
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("MEDISTILL_CACHE", Path.home() / ".cache" / "medistill")) / "images"


def build_dataset(cfg: DataConfig, split: str, preprocess: Preprocess | None = None, *,
                  cache_dir: str | Path | None = None) -> MedicalDataset:
    """One split of the dataset ``cfg`` describes, preprocessed as ``preprocess`` says; images cached in
    ``cache_dir``, else where :func:`image_cache_dir` says (``cfg.cache`` false: not cached)."""
    root = resolve_root(cfg)
    cls = dataset_class(cfg.dataset)
    if cache_dir is None:
        cache_dir = image_cache_dir(cfg)  # the one policy (it was: no cache at all unless cache_dir was given)
    return cls(root, split, preprocess=preprocess, limit=cfg.limit, seed=cfg.split_seed,
               cache_dir=cache_dir if cfg.cache else None, skip_unreadable=cfg.skip_unreadable,
               **source_options(cfg))
