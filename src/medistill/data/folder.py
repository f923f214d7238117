"""Image folders: ``<split>/<class>/*`` (Kaggle brain tumour / Alzheimer / eye disease layouts) or ``<class>/*``.

Split folder names are matched case-insensitively (Training/train, Testing/test, val/valid/validation). When
there is no validation folder, a seeded stratified share of train becomes validation; when there are no split
folders at all, train / val / test are all drawn (stratified, seeded). Byte-identical images are detected by
content hash: duplicates within a split and across splits are counted in ``report`` (across-split duplicates
leak test images into training, so they are named in a warning).

Image folders name no patients: each image is its own patient unless ``group_by`` (a regular expression whose
first capture group names the patient or study in each file name, e.g. ``^([0-9]+)_`` for ``1234_left.jpg`` and
``1234_right.jpg``) groups them; the drawn splits then keep a group together and ``data inspect`` counts patients
by it. Where no file name tells, ``group_similar`` groups near-identical images (the slices of one scan; see
:mod:`.similar`) in the same way; ``data inspect``'s patient overlap then shows official split folders that share a
scan.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .dataset import MedicalDataset
from .images import DICOM_SUFFIXES, IMAGE_SUFFIXES
from .similar import near_copies, similar_groups, thumbnails
from .sources import resolve_labels
from .table import SPLIT_ALIASES, DatasetError, Table, group_split

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


def groups(paths: Sequence[str], pattern: str, root: Path) -> list[str]:
    """The group (patient / study) of each file: the first capture group of ``pattern`` searched in its file name;
    a DatasetError naming the pattern and up to three names it does not match."""
    rx = re.compile(pattern)
    out, unmatched = [], []
    for p in paths:
        m = rx.search(Path(p).name)
        if m is None or m.group(1) is None:
            unmatched.append(Path(p).name)
            continue
        out.append(m.group(1))
    if unmatched:
        raise DatasetError(f"folder dataset at {root}: group_by {pattern!r} does not match {len(unmatched)} of "
                           f"{len(paths)} file names (e.g. {unmatched[:3]}); expected a pattern whose first capture "
                           f"group names the patient in every file name")
    return out


#: a file name's group candidate: its stem without the last part after _ - . or a space (1234_left -> 1234)
_STEM_HEAD = re.compile(r"^(.+?)[_\-. ][^_\-. ]+$")


def grouping_hint(image_ids: Sequence[str]) -> dict[str, Any] | None:
    """Whether file names look grouped (``1234_left.jpg`` / ``1234_right.jpg``: several images share a name
    head) although no ``group_by`` was given: ``{images_in_groups, groups, examples, suggestion}`` when at least
    10% of the images share a head with 1 to 9 others, else None. Heads shared by many images (``Tr-gl_0001``:
    a class prefix) are not groups."""
    heads: dict[str, list[str]] = {}
    for image_id in image_ids:
        m = _STEM_HEAD.match(Path(str(image_id)).stem)
        if m:
            heads.setdefault(m.group(1), []).append(Path(str(image_id)).name)
    small = {h: names for h, names in heads.items() if 2 <= len(names) <= 10}
    n = sum(len(v) for v in small.values())
    if not image_ids or n < max(2, 0.1 * len(image_ids)):
        return None
    examples = [names[:2] for names in list(small.values())[:3]]
    return {"images_in_groups": n, "groups": len(small), "examples": examples,
            "suggestion": r"^(.+?)[_\-. ][^_\-. ]+\.\w+$"}


def _say_empty(root: Path, empty: list[tuple[Path, str, str | None]], present: set[str]) -> None:
    """Warn about class folders that hold no image: a class without an image anywhere is left out of the labels
    (one line naming its folders), a class missing from one split only is named with that split."""
    gone: dict[str, list[Path]] = {}
    for folder, cls, split in empty:
        if cls in present:
            log.warning("folder dataset at %s: %s holds no images: class %r has no %s images", root, folder, cls,
                        split)
        else:
            gone.setdefault(cls, []).append(folder)
    for cls, folders in gone.items():
        log.warning("folder dataset at %s: %s hold%s no images: class %r is left out", root,
                    ", ".join(str(f) for f in folders), "s" if len(folders) == 1 else "", cls)


class ImageFolder(MedicalDataset):
    """Single-label dataset from class folders (one class per sub-folder, sorted by name)."""

    name = "folder"

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                   check_duplicates: bool = True, labels: Sequence[str] | None = None, group_by: str | None = None,
                   group_similar: float | None = None, drop_near_copies: float | None = None,
                   resplit: bool = False, **options: Any) -> Table:
        if options:
            raise DatasetError(f"folder: unsupported options {sorted(options)}; valid: val_fraction, test_fraction, "
                               f"labels, check_duplicates, group_by, group_similar, drop_near_copies, resplit")
        if group_by and group_similar is not None:
            raise DatasetError(f"folder dataset at {root}: give group_by or group_similar, not both")
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        split_dirs = {_split_name(p.name): p for p in subdirs if _split_name(p.name)}
        rows: list[dict[str, Any]] = []
        empty: list[tuple[Path, str, str | None]] = []  # class folders without an image: (folder, class, split)
        class_dirs = ([(cdir, split) for split, folder in split_dirs.items() for cdir in
                       sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]
                      if split_dirs else [(cdir, None) for cdir in subdirs])
        for cdir, split in class_dirs:
            found = [{"path": str(f), "cls": cdir.name, "split": split} for f in _images_in(cdir)]
            rows += found
            if not found:
                empty.append((cdir, cdir.name, split))
        _say_empty(root, empty, {r["cls"] for r in rows})
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
        # image folders carry no patient ids: each image is its own patient, unless group_by or group_similar
        # names them
        thumbs = None
        if group_similar is not None or drop_near_copies is not None:
            thumbs = thumbnails(list(df["path"]))
        if group_similar is not None:
            df["patient_id"] = [f"similar-{g}" for g in similar_groups(list(df["path"]), group_similar,
                                                                        thumbs=thumbs)]
        else:
            df["patient_id"] = groups(df["path"], group_by, root) if group_by else df["image_id"]
        df["view"] = ""
        if resplit:  # the folders' split is not by patient: draw all three by group instead
            df["split"] = None
        if df["split"].isna().all():
            df["split"] = group_split(df["patient_id"], {"val": val_fraction, "test": test_fraction}, seed,
                                      strata=df["cls"])
        elif "val" not in split_dirs and val_fraction > 0:
            tr = np.flatnonzero(df["split"].to_numpy() == "train")
            assign = group_split(df["patient_id"].iloc[tr], {"val": val_fraction}, seed, strata=df["cls"].iloc[tr])
            df.loc[df.index[tr], "split"] = assign
        report: dict[str, Any] = {"classes": classes}
        if empty:
            report["empty_class_folders"] = sorted(str(d.relative_to(root)) for d, _, _ in empty)
        if drop_near_copies is not None:  # after the split: the test folder's copies of training images go
            copy, _, _ = near_copies(list(df["path"]), list(df["split"]), drop_near_copies, thumbs=thumbs)
            report["near_copies_dropped"] = {"threshold": drop_near_copies, **{
                s: int((copy & (df["split"] == s).to_numpy()).sum()) for s in ("val", "test")}}
            df = df[~copy].reset_index(drop=True)
        if group_by:
            report["grouped_by"] = group_by
        if group_similar is not None:
            report["grouped_by"] = f"similar >= {group_similar}"
        if resplit:
            report["resplit"] = "split folders ignored; train / val / test drawn by patient"
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
