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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import MedistillError
from . import images as im

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"valid": "val", "validation": "val", "training": "train", "testing": "test"}


class DatasetError(MedistillError):
    """A dataset's files or tables are not as expected; the message names the file, column or value."""


def canonical_split(split: str) -> str:
    s = SPLIT_ALIASES.get(split.lower(), split.lower())
    if s not in SPLITS:
        raise DatasetError(f"split {split!r}: expected one of {list(SPLITS)}")
    return s


@dataclasses.dataclass
class Table:
    """A parsed source: all splits, one row per image.

    ``records`` has columns ``path`` (absolute), ``image_id``, ``patient_id``, ``view``, ``split``.
    ``targets`` and ``mask`` are float32 ``(N, L)`` aligned with ``records``. ``boxes`` maps image_id to a list
    of ``{"label", "x", "y", "w", "h"}`` in the stored image's pixels. ``report`` holds counts a user should
    see (missing files, malformed rows ...).
    """

    labels: list[str]
    task: str  # "multilabel" or "multiclass"
    records: pd.DataFrame
    targets: np.ndarray
    mask: np.ndarray
    boxes: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n, nl = len(self.records), len(self.labels)
        if self.task not in ("multilabel", "multiclass"):
            raise ValueError(f"task: got {self.task!r}, expected 'multilabel' or 'multiclass'")
        for name, arr in (("targets", self.targets), ("mask", self.mask)):
            if arr.shape != (n, nl):
                raise ValueError(f"{name}: shape {arr.shape}, expected ({n}, {nl}) for {n} rows and {nl} labels")
        self.records = self.records.reset_index(drop=True)
        self.targets = self.targets.astype(np.float32, copy=False)
        self.mask = self.mask.astype(np.float32, copy=False)

    def select(self, rows: np.ndarray) -> "Table":
        rows = np.asarray(rows)
        boxes = {k: v for k, v in self.boxes.items()}
        return Table(self.labels, self.task, self.records.iloc[rows].reset_index(drop=True),
                     self.targets[rows], self.mask[rows], boxes, dict(self.report))

    def split_rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.records["split"].to_numpy() == canonical_split(split))


@dataclasses.dataclass
class Preprocess:
    """How a decoded image becomes a model input (from the model's own config)."""

    size: int = 128
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    augment: str = "none"  # none, light, strong (train split only)


# --------------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------------

def group_split(groups: Sequence[Any], fractions: dict[str, float], seed: int,
                strata: Sequence[Any] | None = None) -> np.ndarray:
    """Assign each row a split so that no group (patient) is in two splits.

    ``fractions`` maps split name -> share of groups, e.g. ``{"val": 0.1, "test": 0.2}``; the rest is train.
    With ``strata`` (a class per row), groups are split within each stratum (a group takes its first row's
    stratum), so class balance is kept.
    """
    groups = np.asarray(groups).astype(str)
    uniq, first = np.unique(groups, return_index=True)
    rng = np.random.default_rng(seed)
    strata_of_group = (np.asarray(strata).astype(str)[first] if strata is not None
                       else np.zeros(len(uniq), dtype="<U1"))
    assign = np.full(len(uniq), "train", dtype=object)
    for s in np.unique(strata_of_group):
        idx = np.flatnonzero(strata_of_group == s)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for name, frac in fractions.items():
            k = int(round(frac * len(idx)))
            assign[idx[start:start + k]] = name
            start += k
    lookup = dict(zip(uniq, assign))
    return np.array([lookup[g] for g in groups], dtype=object)


def limit_rows(rows: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` rows, a seeded random subset kept in file order (so classes stay mixed)."""
    if limit is None or len(rows) <= limit:
        return rows
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=limit, replace=False))


# --------------------------------------------------------------------------------------------------------
# helpers of the table-based sources (NIH, CheXpert, PadChest)
# --------------------------------------------------------------------------------------------------------

def find_table(root: Path, stem: str) -> Path | None:
    """``root/<stem>.csv`` or ``.csv.gz`` (``stem`` may hold ``*``); the last by name when several match.

    "Last by name" prefers e.g. NIH's ``Data_Entry_2017_v2020.csv`` over the original ``Data_Entry_2017.csv``.
    """
    hits = sorted({*root.glob(f"{stem}.csv"), *root.glob(f"{stem}.csv.gz")}, key=lambda p: p.name)
    if len(hits) > 1:
        log.info("several %s tables in %s, using %s", stem, root, hits[-1].name)
    return hits[-1] if hits else None


def read_csv(path: Path, *, required: Sequence[str] = (), columns: Sequence[str] | None = None,
             **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` (plain or ``.gz``) whose errors name the file; ``required`` columns must exist.

    ``columns`` limits the columns read (those absent are simply not read, so ``required`` can name them).
    """
    if columns is not None:
        wanted = set(columns) | set(required)
        kwargs["usecols"] = lambda c: c in wanted
    try:
        df = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError,
            ValueError) as e:  # gzip / zlib errors are OSError or EOFError
        raise DatasetError(f"{path}: cannot be read as a CSV table ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}; expected columns {list(required)}, "
                           f"found {list(df.columns)[:30]}")
    return df


def _label_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def resolve_labels(requested: Sequence[str] | None, available: Sequence[str], source: str) -> list[str]:
    """The label list a user asked for, in their order, spelled as the source spells it.

    Matching ignores case, spaces and underscores ("pleural effusion" finds "Pleural Effusion"); an unknown
    name is a DatasetError naming it and listing the valid ones; ``None`` / empty means all ``available``.
    """
    if not requested:
        return list(available)
    by_key = {_label_key(a): a for a in available}
    out: list[str] = []
    for name in requested:
        hit = name if name in available else by_key.get(_label_key(name))
        if hit is None:
            raise DatasetError(f"{source}: unknown label {name!r}; valid labels: {', '.join(available)}")
        if hit in out:
            raise DatasetError(f"{source}: label {name!r} is given twice in labels {list(requested)}")
        out.append(hit)
    return out


def match_views(values: pd.Series, views: Sequence[str] | None) -> np.ndarray:
    """Rows whose view is one of ``views`` (case-insensitive; "AP" also matches "AP_horizontal")."""
    if not views:
        return np.ones(len(values), dtype=bool)
    wanted = {v.strip().upper() for v in views}
    v = values.fillna("").astype(str).str.strip().str.upper()
    return (v.isin(wanted) | v.str.split("_").str[0].isin(wanted)).to_numpy()


def missing_files(exists: np.ndarray, paths: Sequence[str], *, source: str, table: Path,
                  policy: str = "skip") -> dict[str, Any]:
    """Report (and log) the table rows whose image file is absent; raise instead when ``policy='error'``.

    ``exists`` is a bool per row. Returns ``{"missing_images": n, "missing_examples": [up to 5 paths]}``.
    """
    if policy not in ("skip", "error"):
        raise DatasetError(f"{source}: missing={policy!r}, expected 'skip' or 'error'")
    exists = np.asarray(exists, dtype=bool)
    n_missing = int((~exists).sum())
    examples = [str(paths[i]) for i in np.flatnonzero(~exists)[:5]]
    if n_missing and policy == "error":
        raise DatasetError(f"{source}: {n_missing} of the {len(exists)} images listed in {table} do not exist, "
                           f"e.g. {examples[:3]}; expected every listed image file (or missing='skip')")
    if n_missing == len(exists) and len(exists):
        raise DatasetError(f"{source}: none of the {len(exists)} images listed in {table} exists, e.g. "
                           f"{examples[:3]}; expected the image files under the dataset root")
    if n_missing:
        log.warning("%s: %d of the %d images listed in %s are missing and skipped (e.g. %s)", source, n_missing,
                    len(exists), table.name, examples[0])
    return {"missing_images": n_missing, "missing_examples": examples}


# --------------------------------------------------------------------------------------------------------
# decoded-image cache
# --------------------------------------------------------------------------------------------------------

class ImageCache:
    """uint8 memory-mapped array ``(N, C, S, S)`` of decoded, resized images, filled on first access.

    Size on disk is N * C * S * S bytes (e.g. 5,000 x 1 x 128 x 128 = 82 MB) and it is paged in by the OS, so
    memory use stays bounded. A sidecar ``.done`` array marks filled rows; concurrent DataLoader workers
    write disjoint rows.
    """

    def __init__(self, folder: Path, key: str, n: int, channels: int, size: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.shape = (n, channels, size, size)
        self.path = folder / f"{key}-{n}x{channels}x{size}.u8"
        self.done_path = folder / f"{key}-{n}x{channels}x{size}.done"
        whole = (self.path.is_file() and self.path.stat().st_size == int(np.prod(self.shape))
                 and self.done_path.is_file() and self.done_path.stat().st_size == n)
        if not whole:  # absent, resized, or left half-made by a crash between the two files: start afresh
            np.memmap(self.path, dtype=np.uint8, mode="w+", shape=self.shape).flush()
            np.memmap(self.done_path, dtype=np.uint8, mode="w+", shape=(n,)).flush()
        self._data: np.memmap | None = None
        self._done: np.memmap | None = None

    def _open(self) -> None:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=self.shape)
            self._done = np.memmap(self.done_path, dtype=np.uint8, mode="r+", shape=(self.shape[0],))

    def get(self, i: int, load: Callable[[], np.ndarray]) -> np.ndarray:
        """Row ``i`` as uint8 (C, S, S); ``load()`` gives the float [0, 1] (C, S, S) image when not cached."""
        self._open()
        assert self._data is not None and self._done is not None
        if self._done[i]:
            return np.asarray(self._data[i])
        arr = im.to_uint8(load())
        self._data[i] = arr
        self._done[i] = 1
        return arr

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened in each worker
        return {**self.__dict__, "_data": None, "_done": None}


# --------------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------------

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
            key = hashlib.sha1("\n".join(self.data.records["path"].astype(str)).encode()).hexdigest()[:16]
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
        mean = torch.tensor(im._fit(self.preprocess.mean, img.shape[0])).view(-1, 1, 1)
        std = torch.tensor(im._fit(self.preprocess.std, img.shape[0])).view(-1, 1, 1)
        return {"image": (img - mean) / std, "target": torch.from_numpy(self.data.targets[i].copy()),
                "mask": mask, "index": i, "meta": self.meta(i)}

    def _augmenter(self):
        if self._augment is None:
            from .transforms import train_augmentation

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
