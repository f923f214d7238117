"""The data layer: one dataset class per source, one sample structure for all (``dataset``); tables and splits in
``table``, the table-file helpers of the sources in ``sources``, the decoded-image cache in ``cache``.

``build_dataset(cfg, split, preprocess)`` is the one entry point the rest of medistill uses. Which sources exist,
the class reading each and the options each takes are the registry's (:mod:`medistill.datasets`), read here by
``source_of``, ``dataset_class`` and ``source_options``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..datasets import SOURCES, Source
from .dataset import MedicalDataset, Preprocess, collate
from .table import DatasetError, Table
from .images import ImageReadError, read_image

__all__ = ["DatasetError", "ImageReadError", "MedicalDataset", "Preprocess", "Table", "build_dataset",
           "collate", "dataset_class", "image_cache_dir", "read_image", "source_of", "source_options"]


def source_of(name: str) -> Source:
    """The registry entry (:mod:`medistill.datasets`) of a source name, or DatasetError listing the names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DatasetError(f"dataset {name!r}: expected one of {', '.join(SOURCES)}") from None


def dataset_class(name: str) -> type[MedicalDataset]:
    """The dataset class of a source name (its module imported lazily, as the registry names it)."""
    source = source_of(name)
    return getattr(importlib.import_module(f".{source.module}", __name__), source.class_name)


#: DataConfig options a source is given only when set (not None, empty or False); the others it takes always are
_WHEN_SET = ("views", "labels", "group_by", "group_similar", "resplit", "drop_near_copies")


def _is_set(value: Any) -> bool:
    return not (value is None or value is False or (isinstance(value, (str, list, tuple)) and not value))


def source_options(cfg: DataConfig) -> dict[str, Any]:
    """The options of ``cfg`` that the chosen source takes (the registry says which), passed to its
    ``load_table``; lists as tuples."""
    opts: dict[str, Any] = {}
    for name in source_of(cfg.dataset).options:
        value = getattr(cfg, name)
        if name in _WHEN_SET and not _is_set(value):
            continue
        opts[name] = tuple(value) if isinstance(value, list) else value
    return opts


def resolve_root(cfg: DataConfig) -> Path:
    """The dataset root (the source's default when ``cfg.root`` is None and it has one); a generated source (the
    phantom) is generated there first when the folder is empty or absent."""
    source = SOURCES.get(cfg.dataset)  # None: an unknown name, refused below without a root, else by dataset_class
    if cfg.root is None:
        if source is None or source.default_root is None:
            raise DatasetError(f"dataset {cfg.dataset!r} needs --root (the folder holding its files)")
        root = Path(source.default_root)
    else:
        root = Path(cfg.root)
    if source is not None and source.generated:
        dataset_class(cfg.dataset).ensure_generated(root)
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
