"""Image folders: ``<split>/<class>/*`` (Kaggle brain tumour / Alzheimer / eye disease layouts) or ``<class>/*``.

Split folder names are matched case-insensitively (Training/train, Testing/test, val/valid/validation). When
there is no validation folder, a seeded stratified share of train becomes validation; when there are no split
folders at all, train / val / test are all drawn (stratified, seeded). Byte-identical images are detected by
content hash: duplicates within a split and across splits are counted in ``report`` (across-split duplicates
leak test images into training, so they are named in a warning).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .dataset import MedicalDataset
from .sources import resolve_labels
from .table import SPLIT_ALIASES, DatasetError, Table, group_split
from .images import DICOM_SUFFIXES, IMAGE_SUFFIXES

log = logging.getLogger(__name__)


def _split_name(folder: str) -> str | None:
    name = folder.lower()
    name = SPLIT_ALIASES.get(name, name)
    return name if name in ("train", "val", "test") else None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
                  and not p.name.startswith("."))


def file_hash(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


class ImageFolder(MedicalDataset):
    """Single-label dataset from class folders (one class per sub-folder, sorted by name)."""

    name = "folder"

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                   check_duplicates: bool = True, labels: Sequence[str] | None = None, **options: Any) -> Table:
        if options:
            raise DatasetError(f"folder: unsupported options {sorted(options)}; valid: val_fraction, test_fraction, "
                               f"labels, check_duplicates")
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        split_dirs = {_split_name(p.name): p for p in subdirs if _split_name(p.name)}
        rows: list[dict[str, Any]] = []
        if split_dirs:
            for split, folder in split_dirs.items():
                for cdir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    rows += [{"path": str(f), "cls": cdir.name, "split": split} for f in _images_in(cdir)]
        else:
            for cdir in subdirs:
                rows += [{"path": str(f), "cls": cdir.name, "split": None} for f in _images_in(cdir)]
        if not rows:
            raise DatasetError(f"folder dataset at {root}: no images found; expected <split>/<class>/*.png|jpg "
                               f"or <class>/*.png|jpg")
        df = pd.DataFrame(rows)
        classes = sorted(df["cls"].unique())
        if labels:  # a class order of the user's (must name every class folder exactly once)
            order = resolve_labels(labels, classes, "folder")
            if sorted(order) != classes:
                raise DatasetError(f"folder dataset at {root}: labels {list(labels)} must list every class folder "
                                   f"once; found classes {classes}")
            classes = order
        if len(classes) < 2:
            raise DatasetError(f"folder dataset at {root}: found one class folder ({classes}), expected at least 2")
        df["image_id"] = [str(Path(p).relative_to(root)) for p in df["path"]]
        df["patient_id"] = df["image_id"]  # image folders carry no patient ids
        df["view"] = ""
        if df["split"].isna().all():
            df["split"] = group_split(df["image_id"], {"val": val_fraction, "test": test_fraction}, seed,
                                      strata=df["cls"])
        elif "val" not in split_dirs and val_fraction > 0:
            tr = np.flatnonzero(df["split"].to_numpy() == "train")
            assign = group_split(df["image_id"].iloc[tr], {"val": val_fraction}, seed, strata=df["cls"].iloc[tr])
            df.loc[df.index[tr], "split"] = assign
        report: dict[str, Any] = {"classes": classes}
        if check_duplicates:
            report.update(cls.duplicates(df))
        y = np.array([classes.index(c) for c in df["cls"]])
        targets = np.eye(len(classes), dtype=np.float32)[y]
        return Table(classes, "multiclass", df[["path", "image_id", "patient_id", "view", "split"]], targets,
                     np.ones_like(targets), report=report)

    @staticmethod
    def duplicates(df: pd.DataFrame) -> dict[str, Any]:
        """Count byte-identical images within and across splits (content hash)."""
        hashes = [file_hash(Path(p)) for p in df["path"]]
        h = pd.DataFrame({"hash": hashes, "split": df["split"].to_numpy(), "path": df["path"].to_numpy()})
        dup = h[h.duplicated("hash", keep=False)]
        across = dup.groupby("hash")["split"].nunique()
        across_hashes = set(across[across > 1].index)
        n_within = int(len(dup) - dup["hash"].nunique()) if len(dup) else 0
        examples = dup[dup["hash"].isin(across_hashes)].groupby("hash")["path"].apply(list).head(5).tolist()
        if across_hashes:
            log.warning("%d images appear in more than one split (identical bytes), e.g. %s",
                        len(across_hashes), examples[:2])
        return {"duplicate_images": n_within, "duplicates_across_splits": len(across_hashes),
                "duplicate_examples": examples}
