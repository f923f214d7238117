"""MedMNIST v2 (Yang et al., "MedMNIST v2", Scientific Data 2023) ``.npz`` files: every 2D set and size.

A file holds ``{train,val,test}_images`` (uint8 ``(N, H, W)`` or ``(N, H, W, 3)``) and ``{split}_labels``
shaped ``(N,)``, ``(N, 1)`` (one class index) or ``(N, L)`` (multi-label 0/1, ChestMNIST's 14 findings).
``root`` is the ``.npz`` itself or a folder holding exactly one. Images are never written out as files: the
dataset reads them from the arrays (each split's image array is decompressed once per process, on first use).

Class names come from the ``medmnist`` package's ``INFO`` when it is installed, else from :data:`LABEL_NAMES`, our
copy of the same table (MedMNIST v2's 2D sets; ChestMNIST gets the NIH ChestX-ray14 names: it is that dataset, same
label order); only a file of another name gets ``class_0``, ``class_1`` ...
Downloading through ``medmnist`` is never needed: point ``root`` at a file you have.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import nih
from .dataset import MedicalDataset
from .sources import resolve_labels
from .table import SPLITS, DatasetError, Table, group_split

log = logging.getLogger(__name__)

#: Decompressed image arrays, per (npz path, split): filled on first read, per process.
_ARRAYS: dict[tuple[str, str], np.ndarray] = {}


def find_npz(root: Path) -> Path:
    """``root`` if it is a ``.npz`` file, else the one ``.npz`` in the folder ``root``."""
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise DatasetError(f"medmnist root {root}: expected a .npz file (e.g. breastmnist.npz) or a folder "
                               f"holding one")
        return root
    hits = sorted(root.glob("*.npz"))
    if len(hits) != 1:
        raise DatasetError(f"medmnist root {root}: expected exactly one .npz file in the folder, found "
                           f"{[p.name for p in hits] or 'none'}; pass the file itself as the root")
    return hits[0]


def _open(npz: Path) -> Any:
    try:
        return np.load(npz, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{npz}: cannot be read as a MedMNIST .npz file ({e})") from None


_ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen"]
#: the label names of MedMNIST v2's 2D sets, in class-index order, as the ``medmnist`` package's ``INFO`` has them
#: (used when that package is not installed; ChestMNIST: the NIH names, see :func:`class_names`)
LABEL_NAMES: dict[str, list[str]] = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],  # diabetic retinopathy grades
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast",
                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"],
    "tissuemnist": ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                    "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes", "Podocytes",
                    "Proximal Tubule Segments", "Thick Ascending Limb"],
    "organamnist": _ORGANS, "organcmnist": _ORGANS, "organsmnist": _ORGANS,
}


def class_names(flag: str, num: int, multilabel: bool) -> list[str]:
    """Names of the labels of the MedMNIST set ``flag`` (e.g. ``"breastmnist"``) whose labels hold ``num`` classes
    (or more: a file whose highest class is absent still gets every class); ``class_<k>`` for an unknown set."""
    try:
        from medmnist import INFO  # optional: the package's own table

        names = [str(v) for _, v in sorted(INFO[flag]["label"].items(), key=lambda kv: int(kv[0]))]
        if len(names) >= num:
            return names
    except (ImportError, KeyError, ValueError):
        pass
    if flag == "chestmnist" and multilabel and num == len(nih.LABELS):
        return list(nih.LABELS)
    if not multilabel and len(LABEL_NAMES.get(flag, [])) >= num:
        return list(LABEL_NAMES[flag])
    return [f"class_{k}" for k in range(num)]


def image_array(npz: Path, split: str) -> np.ndarray:
    """The ``{split}_images`` array of ``npz``, decompressed once per process."""
    key = (str(npz), split)
    if key not in _ARRAYS:
        with _open(npz) as z:
            arr = z[f"{split}_images"]
        if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)):
            raise DatasetError(f"{npz}: {split}_images has shape {arr.shape}, expected (N, H, W) or (N, H, W, 3) "
                               f"(3D MedMNIST volumes are not supported)")
        _ARRAYS[key] = arr
    return _ARRAYS[key]


class MedMNIST(MedicalDataset):
    """A MedMNIST 2D set: multi-label (ChestMNIST) or single-label, read from the ``.npz`` arrays."""

    name = "medmnist"

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                   labels: Sequence[str] | None = None, **options: Any) -> Table:
        if options:
            raise DatasetError(f"medmnist: unknown options {sorted(options)}; valid: val_fraction, test_fraction, "
                               f"labels")
        npz = find_npz(root)
        flag = npz.stem.split("_")[0].lower()  # chestmnist_224.npz -> chestmnist
        with _open(npz) as z:
            keys = set(z.files)
            if "train_labels" not in keys or "train_images" not in keys:
                raise DatasetError(f"{npz}: missing arrays {sorted({'train_images', 'train_labels'} - keys)}; "
                                   f"expected train/val/test _images and _labels, found {sorted(keys)}")
            ys = {s: z[f"{s}_labels"] for s in SPLITS if f"{s}_labels" in keys}
        for s in ys:
            if f"{s}_images" not in keys:
                raise DatasetError(f"{npz}: has {s}_labels but no {s}_images")
        widths = {s: (1 if y.ndim == 1 else y.shape[1]) for s, y in ys.items()}
        if any(y.ndim > 2 for y in ys.values()) or len(set(widths.values())) != 1:
            raise DatasetError(f"{npz}: labels shaped {[y.shape for y in ys.values()]}, expected (N,), (N, 1) or "
                               f"(N, L) with the same L in every split")
        width = next(iter(widths.values()))
        multilabel = width > 1
        rows, y_parts = [], []
        for s, y in ys.items():
            y = y.reshape(len(y), -1)
            rows += [{"split": s, "array_index": i} for i in range(len(y))]
            y_parts.append(y)
        y = np.concatenate(y_parts)
        if multilabel:
            if not np.isin(y, (0, 1)).all():
                raise DatasetError(f"{npz}: multi-label labels must be 0 or 1, found {np.unique(y)[:10].tolist()}")
            all_names = class_names(flag, width, True)
            targets = y.astype(np.float32)
            task = "multilabel"
        else:
            y = y[:, 0].astype(np.int64)
            if (y < 0).any():
                raise DatasetError(f"{npz}: negative class index {int(y.min())} in the labels")
            all_names = class_names(flag, int(y.max()) + 1, False)
            if y.max() >= len(all_names):
                raise DatasetError(f"{npz}: class index {int(y.max())} but {flag} has {len(all_names)} classes")
            targets = np.eye(len(all_names), dtype=np.float32)[y]
            task = "multiclass"
        if labels:
            if not multilabel:
                raise DatasetError(f"medmnist: labels={list(labels)} selects labels of a multi-label set, but "
                                   f"{npz.name} is single-label with classes {all_names}")
            chosen = resolve_labels(labels, all_names, f"medmnist ({npz.name})")
            targets = targets[:, [all_names.index(c) for c in chosen]]
            all_names = chosen

        df = pd.DataFrame(rows)
        df["image_id"] = [f"{s}_{i:06d}" for s, i in zip(df["split"], df["array_index"])]
        df["path"] = [f"{npz}#{s}/{i}" for s, i in zip(df["split"], df["array_index"])]
        df["patient_id"] = df["image_id"]  # MedMNIST carries no patient ids
        df["view"] = ""
        report: dict[str, Any] = {"file": str(npz), "flag": flag, "split_source": "official"}
        missing = [s for s in ("val", "test") if s not in ys]
        if missing:  # carve what the file lacks out of train, stratified by class
            fr = {s: (val_fraction if s == "val" else test_fraction) for s in missing}
            tr = np.flatnonzero(df["split"].to_numpy() == "train")
            strata = None if multilabel else targets[tr].argmax(1)
            df.loc[df.index[tr], "split"] = group_split(df["image_id"].iloc[tr], fr, seed, strata=strata)
            report["split_source"] = f"official, with {missing} carved from train (seed {seed})"
        return Table(all_names, task, df[["path", "image_id", "patient_id", "view", "split", "array_index"]],
                     targets, np.ones_like(targets), report=report)

    # --- images come from the arrays, not from files ------------------------------------------------------
    def _where(self, i: int) -> tuple[Path, str, int]:
        path = str(self.data.records.at[i, "path"])
        npz, rest = path.rsplit("#", 1)
        split = rest.split("/", 1)[0]
        return Path(npz), split, int(self.data.records.at[i, "array_index"])

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as float32 [0, 1], (H, W) or (H, W, 3), from the ``.npz`` array."""
        npz, split, k = self._where(i)
        img = image_array(npz, split)[k]
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if np.issubdtype(img.dtype, np.integer):
            return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
        return img.astype(np.float32).clip(0, 1)  # float arrays are taken as already in [0, 1]

    def stored_size(self, i: int) -> tuple[int, int]:
        npz, split, _ = self._where(i)
        shape = image_array(npz, split).shape
        return int(shape[1]), int(shape[2])
