"""CheXpert (Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels", AAAI 2019).

Layout: ``train.csv`` and ``valid.csv`` (also ``.csv.gz``; ``test.csv`` when a test set is there) whose
``Path`` column names images relative to the folder *above* the dataset folder
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``). ``root`` may be the dataset folder
itself, its parent (the tables are then found in its ``CheXpert*`` sub-folder), or a renamed dataset folder:
the layout under which most of a sample of the listed files exist is used.

Each of the 14 observations is 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned).
Uncertainty policies (the paper's section 4.1):

=========  ======================================================================================
ignore     U-Ignore: -1 is masked out (mask 0), so it adds nothing to losses or metrics
ones       U-Ones: -1 becomes 1
zeros      U-Zeros: -1 becomes 0
mixed      U-Ones for Atelectasis and Edema, U-Zeros for the others (the per-label choice that did
           best for those labels in the paper's Table 2; we use U-Zeros in place of its U-MultiClass /
           U-SelfTrained for the rest)
=========  ======================================================================================

Blank is negative with mask 1 by default (``blank="ignore"`` masks it instead). Splits: ``train.csv`` is train
with a patient-wise validation share carved out; ``valid.csv`` is the test split when there is no
``test.csv`` (the usual case: the official test set is hidden), else the validation split.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .dataset import MedicalDataset
from .sources import find_table, match_views, missing_files, read_csv, resolve_labels
from .table import DatasetError, Table, group_split

log = logging.getLogger(__name__)

#: The 14 observations in the order of the released tables.
LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
          "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
          "Fracture", "Support Devices"]
#: The 5 competition labels (the paper's evaluation set), in its order.
COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
#: Labels that get U-Ones under the ``mixed`` policy; all others get U-Zeros.
MIXED_ONES = ("Atelectasis", "Edema")
POLICIES = ("ignore", "ones", "zeros", "mixed")
PATIENT_RE = re.compile(r"(patient\d+)")


def label_policy(label: str, uncertainty: str) -> str:
    """The policy (ignore, ones, zeros) applied to ``label``'s -1 values under ``uncertainty``."""
    if uncertainty == "mixed":
        return "ones" if label in MIXED_ONES else "zeros"
    return uncertainty


def encode(values: np.ndarray, policy: str, blank: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """One label's raw column (float with NaN for blank) -> (target, mask, counts of each raw kind)."""
    pos, neg, unc = values == 1, values == 0, values == -1
    nan = np.isnan(values)
    bad = ~(pos | neg | unc | nan)
    target = pos.astype(np.float32)
    mask = (pos | neg).astype(np.float32)
    if policy == "ones":
        target[unc], mask[unc] = 1.0, 1.0
    elif policy == "zeros":
        mask[unc] = 1.0
    if blank == "negative":
        mask[nan] = 1.0
    counts = {"positive": int(pos.sum()), "negative": int(neg.sum()), "uncertain": int(unc.sum()),
              "blank": int(nan.sum()), "invalid": int(bad.sum())}
    return target, mask, counts


def _strip_first(p: str) -> str:
    parts = PurePosixPath(p).parts
    return str(PurePosixPath(*parts[1:])) if len(parts) > 1 else p


def resolve_paths(root: Path, rel: Sequence[str]) -> tuple[list[str], str]:
    """Absolute paths of the table's ``Path`` values, under the first layout where the sampled files exist.

    Tried: ``root/Path``, ``root.parent/Path`` (root is ``CheXpert-v1.0-small``), ``root/Path minus its first
    folder`` (the dataset folder was renamed). Returns the paths and the layout's description.
    """
    layouts = [("root/Path", lambda p: root / p), ("root.parent/Path", lambda p: root.parent / p),
               ("root/Path without its first folder", lambda p: root / _strip_first(p))]
    step = max(len(rel) // 200, 1)
    sample = list(rel[::step])[:200]
    hits = [sum(os.path.exists(f(p)) for p in sample) for _, f in layouts]
    best = int(np.argmax(hits))
    name, f = layouts[best]
    return [str(f(p)) for p in rel], name


class CheXpert(MedicalDataset):
    """CheXpert: 14 observations with uncertainty labels, multi-label."""

    name = "chexpert"
    default_labels = LABELS

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                   uncertainty: str = "ignore", blank: str = "negative", frontal_only: bool = False,
                   views: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                   missing: str = "skip", **options: Any) -> Table:
        if options:
            raise DatasetError(f"chexpert: unknown options {sorted(options)}; valid: val_fraction, test_fraction, "
                               f"uncertainty, blank, frontal_only, views, labels, missing")
        if uncertainty not in POLICIES:
            raise DatasetError(f"chexpert: uncertainty={uncertainty!r}, expected one of {list(POLICIES)}")
        if blank not in ("negative", "ignore"):
            raise DatasetError(f"chexpert: blank={blank!r}, expected 'negative' or 'ignore'")
        if labels and [str(x).lower() for x in labels] == ["competition"]:
            labels = COMPETITION
        labels = resolve_labels(labels, LABELS, "chexpert (or labels=competition for the 5 competition labels)")

        table_dir = root
        if not any(find_table(root, s) for s in ("train", "valid")):  # root is the folder above the dataset
            inner = [d for d in sorted(root.glob("CheXpert*")) if d.is_dir() and find_table(d, "train")]
            table_dir = inner[0] if inner else root
        files = {s: find_table(table_dir, s) for s in ("train", "valid", "test")}
        if not any(files.values()):
            raise DatasetError(f"chexpert dataset at {root}: no train.csv or valid.csv (or .csv.gz) found; expected "
                               f"the CheXpert layout (train.csv, valid.csv, train/, valid/)")
        split_of = {"train": "train", "valid": "test" if files["test"] is None else "val", "test": "test"}
        required = ["Path", *labels] + (["Frontal/Lateral"] if frontal_only else []) + (["AP/PA"] if views else [])
        frames = []
        for key, path in files.items():
            if path is None:
                continue
            df = read_csv(path, required=required, columns=["Path", "Frontal/Lateral", "AP/PA", *labels],
                          dtype={"Path": str, "Frontal/Lateral": str, "AP/PA": str})
            df["split"] = split_of[key]
            df["_table"] = path.name
            frames.append(df)
        df = pd.concat(frames, ignore_index=True)
        report: dict[str, Any] = {"tables": [str(p) for p in files.values() if p], "rows_in_table": len(df),
                                  "uncertainty": {lab: label_policy(lab, uncertainty) for lab in labels},
                                  "blank": blank}
        for col in ("Frontal/Lateral", "AP/PA"):
            if col not in df.columns:
                df[col] = ""
        df["Path"] = df["Path"].fillna("").astype(str).str.strip()
        df = df[df["Path"] != ""].reset_index(drop=True)
        patients = [m.group(1) if (m := PATIENT_RE.search(p)) else str(PurePosixPath(p).parent.parent)
                    for p in df["Path"]]
        df["patient_id"] = patients

        # carve the validation (and, without valid.csv, the test) share from train, patient-wise
        tr = np.flatnonzero(df["split"].to_numpy() == "train")
        carve = {"val": val_fraction}
        if files["valid"] is None and files["test"] is None:
            carve["test"] = test_fraction
        if len(tr):
            split = df["split"].to_numpy(dtype=object)
            split[tr] = group_split(df["patient_id"].to_numpy()[tr], carve, seed)
            df["split"] = split

        frontal = df["Frontal/Lateral"].fillna("").astype(str).str.strip()
        appa = df["AP/PA"].fillna("").astype(str).str.strip()
        df["view"] = np.where(appa != "", appa, frontal)
        keep = np.ones(len(df), dtype=bool)
        if frontal_only:
            is_frontal = (frontal.str.lower() == "frontal").to_numpy()
            report["filtered_lateral"] = int((~is_frontal).sum())
            keep &= is_frontal
        if views:
            view_ok = match_views(df["view"], views)
            report["filtered_by_view"] = int((keep & ~view_ok).sum())
            keep &= view_ok
        if not keep.any():
            raise DatasetError(f"chexpert: no rows left after the filters (frontal_only={frontal_only}, "
                               f"views={list(views or [])}); views in the tables: {sorted(df['view'].unique())}")
        df = df[keep].reset_index(drop=True)

        paths, layout = resolve_paths(root, df["Path"].tolist())
        report["path_layout"] = layout
        exists = np.fromiter((os.path.exists(p) for p in paths), dtype=bool, count=len(paths))
        report.update(missing_files(exists, paths, source="chexpert", table=Path(report["tables"][0]),
                                    policy=missing))
        df = df[exists].reset_index(drop=True)
        df["path"] = [p for p, e in zip(paths, exists) if e]

        targets = np.zeros((len(df), len(labels)), np.float32)
        mask = np.zeros_like(targets)
        counts: dict[str, dict[str, int]] = {}
        for k, lab in enumerate(labels):
            values = pd.to_numeric(df[lab], errors="coerce").to_numpy(dtype=np.float64, copy=True)
            # a non-numeric cell is invalid, not blank: find those before coercion hides them as NaN
            non_numeric = df[lab].notna().to_numpy() & np.isnan(values)
            values[non_numeric] = 9.0
            targets[:, k], mask[:, k], counts[lab] = encode(values, label_policy(lab, uncertainty), blank)
        report["uncertain"] = {lab: c["uncertain"] for lab, c in counts.items()}
        report["blank_labels"] = {lab: c["blank"] for lab, c in counts.items()}
        invalid = {lab: c["invalid"] for lab, c in counts.items() if c["invalid"]}
        if invalid:
            log.warning("chexpert: label cells other than 1, 0, -1 or blank were masked out: %s", invalid)
            report["invalid_labels"] = invalid
        records = pd.DataFrame({"path": df["path"], "image_id": df["Path"], "patient_id": df["patient_id"],
                                "view": df["view"], "split": df["split"]})
        return Table(labels, "multilabel", records, targets, mask, report=report)
