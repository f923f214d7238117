"""NIH ChestX-ray14 (Wang et al., "ChestX-ray8", CVPR 2017) in its released layout.

Layout under ``root``::

    Data_Entry_2017.csv | Data_Entry_2017_v2020.csv   (also .csv.gz) one row per image
    images/*.png  or  images_001/images/*.png ...     the official release splits the images over 12 folders
    train_val_list.txt, test_list.txt                 optional: the official patient-wise split
    BBox_List_2017.csv                                optional: 984 boxes in the 1024x1024 frame

``Finding Labels`` is ``|``-separated; "No Finding" means all 14 negative, an empty cell means unknown (the row's
labels are masked out); an image listed twice is an error. Without the official lists the
split is seeded and patient-wise over the whole table (so a patient's split does not depend on which images
are present or on the view filter). Only rows whose image file exists are used; the missing count is in
``report``. Boxes are scaled from the 1024x1024 frame to each stored image's size (read from its header).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import images as im
from .dataset import MedicalDataset
from .sources import find_table, match_views, missing_files, read_csv, resolve_labels
from .table import DatasetError, Table, group_split

log = logging.getLogger(__name__)

#: The 14 findings in the order of the paper and of most published models.
LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
          "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
NO_FINDING = "No Finding"
#: Finding names of BBox_List_2017.csv that differ from Data_Entry's.
BOX_ALIASES = {"Infiltrate": "Infiltration"}
#: The frame the boxes are given in (the released images are 1024x1024).
BOX_FRAME = 1024
COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "View Position"]


def index_images(root: Path) -> dict[str, str]:
    """File name -> path of the PNGs in ``root/images``, ``root/images*/``, ``root/images*/images`` and ``root``."""
    folders = [root / "images", *sorted(root.glob("images*/")), *sorted(root.glob("images*/images")), root]
    found: dict[str, str] = {}
    seen: set[Path] = set()
    for folder in folders:
        if not folder.is_dir() or folder in seen:
            continue
        seen.add(folder)
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lower().endswith(".png") and entry.name not in found and entry.is_file():
                    found[entry.name] = entry.path
    return found


def parse_findings(cells: Sequence[str], labels: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """``|``-separated findings -> float32 ``(N, L)`` 0/1, and the counts of names that are not findings."""
    col = {lab: k for k, lab in enumerate(labels)}
    out = np.zeros((len(cells), len(labels)), np.float32)
    unknown: dict[str, int] = {}
    for i, cell in enumerate(cells):
        for name in str(cell).split("|"):
            name = name.strip()
            if name in col:
                out[i, col[name]] = 1.0
            elif name and name != NO_FINDING:
                unknown[name] = unknown.get(name, 0) + 1
    return out, unknown


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


class NIHChestXray14(MedicalDataset):
    """NIH ChestX-ray14: 14 findings, multi-label, PA/AP views, boxes for 8 findings on 880 images."""

    name = "nih"
    default_labels = LABELS

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                   views: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                   missing: str = "skip", **options: Any) -> Table:
        if options:
            raise DatasetError(f"nih: unknown options {sorted(options)}; valid: val_fraction, test_fraction, "
                               f"views, labels, missing")
        labels = resolve_labels(labels, LABELS, "nih")
        table = find_table(root, "Data_Entry_2017*")
        if table is None:
            raise DatasetError(f"nih dataset at {root}: no Data_Entry_2017*.csv(.gz) found; expected the NIH "
                               f"ChestX-ray14 layout (Data_Entry_2017.csv and images/*.png)")
        required = COLUMNS if views else COLUMNS[:3]
        df = read_csv(table, required=required, columns=COLUMNS,  # text columns stay text when all blank
                      dtype={"Image Index": str, "Finding Labels": str, "View Position": str})
        if "View Position" not in df.columns:
            df["View Position"] = ""
        report: dict[str, Any] = {"table": str(table), "rows_in_table": len(df)}
        names = df["Image Index"].dropna().astype(str).str.strip()
        dup = names[names.duplicated() & (names != "")].unique().tolist()
        if dup:  # one image, two label sets (or counted twice): which to trust is the user's call
            raise DatasetError(f"{table}: {len(dup)} image{'s' if len(dup) != 1 else ''} listed more than once, "
                               f"e.g. {dup[:5]}; expected one row per image")

        # split first, over the whole table, so that it does not depend on filters or on the files present
        patients = df["Patient ID"].astype(str).str.strip().to_numpy()
        train_list, test_list = root / "train_val_list.txt", root / "test_list.txt"
        if train_list.is_file() and test_list.is_file():
            trainval, test = _read_list(train_list), _read_list(test_list)
            names = df["Image Index"]
            split = np.where(names.isin(test), "test", np.where(names.isin(trainval), "train", "")).astype(object)
            tr = np.flatnonzero(split == "train")
            split[tr] = group_split(patients[tr], {"val": val_fraction}, seed)
            report["split_source"] = "official train_val_list.txt / test_list.txt (val carved patient-wise)"
            report["not_in_official_lists"] = int((split == "").sum())
        else:
            split = group_split(patients, {"val": val_fraction, "test": test_fraction}, seed)
            report["split_source"] = f"seeded patient-wise split (seed {seed})"
        df["split"] = split

        view_ok = match_views(df["View Position"], views)
        keep = view_ok & (df["split"] != "").to_numpy()
        if views:
            report["filtered_by_view"] = int((~view_ok).sum())
            if not view_ok.any():
                raise DatasetError(f"nih: no rows of {table.name} have views {list(views)}; views in the table: "
                                   f"{sorted(df['View Position'].dropna().astype(str).unique())}")
        df = df[keep].reset_index(drop=True)

        files = index_images(root)
        paths = [files.get(name) for name in df["Image Index"]]
        exists = np.array([p is not None for p in paths], dtype=bool)
        report.update(missing_files(exists, [str(root / "images" / str(n)) for n in df["Image Index"]], source="nih",
                                    table=table, policy=missing))
        df = df[exists].reset_index(drop=True)
        df["path"] = [p for p in paths if p is not None]

        cells = df["Finding Labels"]
        blank = (cells.isna() | (cells.astype(str).str.strip() == "")).to_numpy()
        targets, unknown = parse_findings(cells.where(~blank, "").tolist(), LABELS)
        if unknown:
            log.warning("nih: %s has findings outside the 14 labels, ignored: %s", table.name, unknown)
            report["unknown_findings"] = unknown
        targets = targets[:, [LABELS.index(lab) for lab in labels]]
        mask = np.ones_like(targets)
        if blank.any():  # no findings recorded (not "No Finding"): every label unknown, masked out
            mask[blank] = 0.0
            report["missing_findings"] = int(blank.sum())
            log.warning("nih: %d rows of %s have an empty Finding Labels cell; their labels are masked out (e.g. %s)",
                        int(blank.sum()), table.name, df["Image Index"][blank].iloc[0])
        records = pd.DataFrame({"path": df["path"], "image_id": df["Image Index"],
                                "patient_id": df["Patient ID"].astype(str).str.strip(),
                                "view": df["View Position"].fillna("").astype(str), "split": df["split"]})
        boxes = cls.load_boxes(root, records)
        if boxes:
            report["images_with_boxes"] = len(boxes)
            report["boxes"] = sum(len(b) for b in boxes.values())
        return Table(labels, "multilabel", records, targets, mask, boxes=boxes, report=report)

    @staticmethod
    def load_boxes(root: Path, records: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
        """Boxes of BBox_List_2017.csv for the images in ``records``, scaled to each stored image's size."""
        path = find_table(root, "BBox_List_2017*")
        if path is None:
            return {}
        raw = read_csv(path)
        if raw.shape[1] < 6:
            raise DatasetError(f"{path}: expected the columns Image Index, Finding Label, Bbox [x, y, w, h], "
                               f"found {list(raw.columns)}")
        raw = raw.iloc[:, :6]
        raw.columns = ["image_id", "label", "x", "y", "w", "h"]
        where = dict(zip(records["image_id"], records["path"]))
        raw = raw[raw["image_id"].isin(where)]
        out: dict[str, list[dict[str, Any]]] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for r in raw.itertuples(index=False):
            try:
                x, y, w, h = (float(r.x), float(r.y), float(r.w), float(r.h))
            except (TypeError, ValueError):
                log.warning("%s: box of %s has non-numeric coordinates, skipped", path.name, r.image_id)
                continue
            if r.image_id not in sizes:
                sizes[r.image_id] = im.image_size(where[r.image_id])
            sh, sw = sizes[r.image_id]
            sx, sy = sw / BOX_FRAME, sh / BOX_FRAME
            label = BOX_ALIASES.get(str(r.label).strip(), str(r.label).strip())
            out.setdefault(r.image_id, []).append({"label": label, "x": x * sx, "y": y * sy, "w": w * sx,
                                                   "h": h * sy})
        return out
