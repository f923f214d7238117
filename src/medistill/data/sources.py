"""Helpers of the table-based sources (NIH, CheXpert, PadChest ...): finding and reading their CSV tables, label
names as users spell them, view filters and the report of listed images that are missing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .table import DatasetError

log = logging.getLogger(__name__)


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
