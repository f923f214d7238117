"""PadChest (Bustos et al., "PadChest: A large chest x-ray image dataset with multi-label annotated reports",
Medical Image Analysis 2020).

Layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (also ``.csv.gz``; any ``PADCHEST*.csv``)
and the images at ``root/<ImageDir>/<ImageID>`` (the release's numbered folders) or ``root/<ImageID>``.

The ``Labels`` column holds a Python-style list written as text (``['pleural effusion', 'cardiomegaly']``).
It is parsed by a strict regular expression, never evaluated. Rows whose cell is not such a list (``nan``,
truncated text) are *malformed*; rows whose list holds no finding (``[]``, ``['']``) are *empty*; rows labelled
``exclude`` (the release's marker for images unfit for reading) are *excluded*. All three are dropped and
counted in ``report``. ``normal`` means all labels negative.

Findings map to labels through ``LABEL_MAP``: by default the 14 NIH ChestX-ray14 findings (same names, same
order), each gathering the PadChest strings that name it, so that NIH-trained teachers and PadChest students
speak the same labels. ``labels`` may instead name (a) some of those default labels, (b) any finding string of
the table (``"COPD signs"``), or (c) a new label as ``"Name=finding a|finding b"``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import nih
from .dataset import MedicalDataset
from .sources import find_table, match_views, missing_files, read_csv, resolve_labels
from .table import DatasetError, Table, group_split

log = logging.getLogger(__name__)

#: Default labels (NIH names) -> the PadChest finding strings that count as that finding.
LABEL_MAP: dict[str, list[str]] = {
    "Atelectasis": ["atelectasis", "laminar atelectasis", "lobar atelectasis", "segmental atelectasis",
                    "atelectasis basal", "total atelectasis", "round atelectasis"],
    "Cardiomegaly": ["cardiomegaly"],
    "Effusion": ["pleural effusion", "loculated pleural effusion", "loculated fissural effusion",
                 "hydropneumothorax"],
    "Infiltration": ["infiltrates"],
    "Mass": ["mass", "pulmonary mass"],
    "Nodule": ["nodule", "multiple nodules"],
    "Pneumonia": ["pneumonia", "atypical pneumonia"],
    "Pneumothorax": ["pneumothorax", "hydropneumothorax"],
    "Consolidation": ["consolidation"],
    "Edema": ["pulmonary edema"],
    "Emphysema": ["emphysema"],
    "Fibrosis": ["pulmonary fibrosis"],
    "Pleural_Thickening": ["pleural thickening", "apical pleural thickening", "calcified pleural thickening"],
    "Hernia": ["hiatal hernia"],
}
assert list(LABEL_MAP) == nih.LABELS
EXCLUDE = "exclude"
COLUMNS = ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"]

_ITEM = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
_LIST_RE = re.compile(rf"^\[\s*(?:(?:{_ITEM})(?:\s*,\s*(?:{_ITEM}))*\s*,?)?\s*\]$", re.DOTALL)
_ITEM_RE = re.compile(_ITEM)


def parse_labels(cell: Any) -> list[str] | None:
    """A ``Labels`` cell -> its finding strings (stripped, empty ones dropped), or None when malformed.

    Accepts exactly a bracketed list of single- or double-quoted strings, e.g. ``['a', "b's"]``; anything else
    (``nan``, a bare word, an unclosed list) is malformed. Nothing is evaluated.
    """
    if not isinstance(cell, str):
        return None
    text = cell.strip()
    if not _LIST_RE.match(text):
        return None
    out = []
    for tok in _ITEM_RE.findall(text):
        s = re.sub(r"\\(.)", r"\1", tok[1:-1]).strip()
        if s:
            out.append(s)
    return out


def label_map(requested: Sequence[str] | None, vocabulary: set[str]) -> dict[str, list[str]]:
    """Label name -> finding strings for the ``labels`` option (see the module docstring)."""
    if not requested:
        return dict(LABEL_MAP)
    out: dict[str, list[str]] = {}
    valid = (f"valid labels: the defaults {', '.join(LABEL_MAP)}; any finding string of the table "
             f"({len(vocabulary)} of them, e.g. {', '.join(sorted(vocabulary)[:12])}, ...); or 'Name=finding a|finding b'")
    for item in requested:
        item = str(item).strip()
        if "=" in item:
            name, rhs = (s.strip() for s in item.split("=", 1))
            findings = [f.strip() for f in rhs.split("|") if f.strip()]
            unknown = [f for f in findings if f not in vocabulary]
            if not name or not findings or unknown:
                raise DatasetError(f"padchest: label {item!r}: unknown finding {unknown[0]!r}" if unknown else
                                   f"padchest: label {item!r}: expected 'Name=finding a|finding b'")
        elif item in vocabulary:
            name, findings = item, [item]
        else:
            try:
                name = resolve_labels([item], list(LABEL_MAP), "padchest")[0]
            except DatasetError:
                raise DatasetError(f"padchest: unknown label {item!r}; {valid}") from None
            findings = LABEL_MAP[name]
        if name in out:
            raise DatasetError(f"padchest: label {name!r} is given twice in labels {list(requested)}")
        out[name] = findings
    return out


def index_images(root: Path, dirs: Sequence[str]) -> dict[tuple[str, str], str]:
    """(ImageDir, ImageID) -> path for files at ``root/<dir>/<name>``, and ("", name) for ``root/<name>``."""
    found: dict[tuple[str, str], str] = {}
    for d in ["", *sorted(set(dirs))]:
        folder = root / d if d else root
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for entry in it:
                if not entry.name.startswith(".") and entry.is_file():
                    found[(d, entry.name)] = entry.path
    return found


class PadChest(MedicalDataset):
    """PadChest: 160k chest X-rays, findings parsed from report-derived labels, multi-label."""

    name = "padchest"
    default_labels = list(LABEL_MAP)

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                   views: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                   drop_excluded: bool = True, missing: str = "skip", **options: Any) -> Table:
        if options:
            raise DatasetError(f"padchest: unknown options {sorted(options)}; valid: val_fraction, test_fraction, "
                               f"views, labels, drop_excluded, missing")
        table = find_table(root, "PADCHEST*") or find_table(root, "padchest*")
        if table is None:
            raise DatasetError(f"padchest dataset at {root}: no PADCHEST*.csv(.gz) label table found; expected "
                               f"PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv and the image folders")
        required = ["ImageID", "PatientID", "Labels"] + (["Projection"] if views else [])
        df = read_csv(table, required=required, columns=COLUMNS, dtype=str, keep_default_na=False)
        for col in ("ImageDir", "Projection"):
            if col not in df.columns:
                df[col] = ""
        report: dict[str, Any] = {"table": str(table), "rows_in_table": len(df)}
        # the split is drawn over the whole table, so that it does not depend on filters or on the files present
        df["split"] = group_split(df["PatientID"].str.strip().to_numpy(), {"val": val_fraction,
                                                                           "test": test_fraction}, seed)

        parsed = [parse_labels(c) for c in df["Labels"]]
        malformed = np.array([p is None for p in parsed])
        empty = np.array([p is not None and not p for p in parsed])
        excluded = np.array([p is not None and EXCLUDE in p for p in parsed]) if drop_excluded else \
            np.zeros(len(df), bool)
        report["malformed_labels"] = int(malformed.sum())
        report["malformed_examples"] = [{"row": int(i), "ImageID": str(df["ImageID"].iat[i]),
                                         "Labels": str(df["Labels"].iat[i])[:80]} for i in np.flatnonzero(malformed)[:5]]
        report["empty_labels"] = int(empty.sum())
        report["excluded"] = int(excluded.sum())
        if malformed.any() or empty.any():
            log.warning("padchest: %s has %d rows with malformed and %d with empty Labels; they are skipped",
                        table.name, int(malformed.sum()), int(empty.sum()))
        keep = ~(malformed | empty | excluded)
        vocabulary = {f for p in parsed if p for f in p}
        mapping = label_map(labels, vocabulary)
        report["label_map"] = mapping
        view_ok = match_views(df["Projection"], views)
        if views:
            report["filtered_by_view"] = int((keep & ~view_ok).sum())
            if not view_ok.any():
                raise DatasetError(f"padchest: no rows of {table.name} have projections {list(views)}; projections "
                                   f"in the table: {sorted(df['Projection'].unique())}")
        keep &= view_ok
        rows = np.flatnonzero(keep)
        df = df.iloc[rows].reset_index(drop=True)
        parsed = [parsed[i] for i in rows]

        dirs = df["ImageDir"].str.strip().str.replace(r"\.0$", "", regex=True)  # "3.0" when a tool wrote floats
        files = index_images(root, [d for d in dirs.unique() if d])
        paths = [files.get((d, n)) or files.get(("", n)) for d, n in zip(dirs, df["ImageID"].str.strip())]
        exists = np.array([p is not None for p in paths], dtype=bool)
        expected = [str(root / d / n) if d else str(root / n) for d, n in zip(dirs, df["ImageID"])]
        report.update(missing_files(exists, expected, source="padchest", table=table, policy=missing))
        df = df[exists].reset_index(drop=True)
        parsed = [p for p, e in zip(parsed, exists) if e]

        names = list(mapping)
        targets = np.zeros((len(df), len(names)), np.float32)
        for i, findings in enumerate(parsed):
            present = set(findings)
            for k, name in enumerate(names):
                if present.intersection(mapping[name]):
                    targets[i, k] = 1.0
        records = pd.DataFrame({"path": [p for p in paths if p is not None], "image_id": df["ImageID"].str.strip(),
                                "patient_id": df["PatientID"].str.strip(), "view": df["Projection"].str.strip(),
                                "split": df["split"]})
        return Table(names, "multilabel", records, targets, np.ones_like(targets), report=report)
