"""A parsed source as one table, and its splits.

A source class parses its native files once into a :class:`Table`: one row per image with its split, a float
target ``[L]`` and a mask ``[L]``. Splits without an official assignment are made patient-wise
(:func:`group_split`); ``--limit`` takes a seeded subset of a split (:func:`limit_rows`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import MedistillError
from ..task import get_task

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
    task: str  # "multilabel" or "multiclass" (a ``medistill.task.Task`` name)
    records: pd.DataFrame
    targets: np.ndarray
    mask: np.ndarray
    boxes: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n, nl = len(self.records), len(self.labels)
        self.task = get_task(self.task).name  # an unknown name is a TaskError listing the valid ones
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
