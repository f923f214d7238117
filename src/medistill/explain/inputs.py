"""The images an explanation runs on, and each side's model inputs.

Three sources:

- image files (:func:`load_images`): no truth; each side's inputs come from ``data.images.preprocess``, the
  decoding and preprocessing of training and of ``medistill predict``;
- a split of the run's own data (:func:`load_run_split`): rebuilt by :func:`medistill.runs.run_dataset` exactly
  as the run was trained and evaluated on (source, root, views, labels, uncertainty policy ...);
- a split of another dataset (:func:`load_split`): a :class:`~medistill.config.DataConfig` (no cache).

For a split, every side (student, teacher) gets its inputs from the same records, preprocessed as its own model
expects (its run record's input size, channels, mean and std): :meth:`Inputs.model_inputs`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config import DataConfig
from ..data import Preprocess, build_dataset
from ..data import images as im
from ..maps.errors import ExplainError
from ..models import InputConfig
from ..runs import RunDir, run_dataset

#: run record (``run.json``; at least its ``input``) -> the split's dataset, preprocessed for that model
DatasetFor = Callable[[dict[str, Any]], Any]


@dataclasses.dataclass
class Inputs:
    """The images to explain: raw pixels in [0, 1] ((H, W) or (H, W, 3)), names, and truth where known."""

    raw: list[np.ndarray]
    names: list[str]
    paths: list[str]
    truth: list[np.ndarray | None]  # bool (len(truth_labels), S, S) per image, or None
    truth_labels: list[str]
    source: dict[str, Any]
    dataset: DatasetFor | None = None  # a split: its dataset per model; None = image files
    rows: list[int] = dataclasses.field(default_factory=list)  # a split: the rows of ``dataset`` explained
    positives: list[list[str]] | None = None  # a split: each image's ground-truth positive labels (known, = 1)

    def __len__(self) -> int:
        return len(self.raw)

    def model_inputs(self, record: dict[str, Any]) -> torch.Tensor:
        """(N, C, S, S) normalised inputs of these images for the model of run record ``record``."""
        return model_inputs(record, raw=self.raw, dataset=self.dataset, rows=self.rows)

    def truth_for(self, i: int, label: str) -> np.ndarray | None:
        """Image ``i``'s truth mask (S, S) for ``label``, or None where unknown."""
        if self.truth[i] is None or label not in self.truth_labels:
            return None
        return self.truth[i][self.truth_labels.index(label)]


def model_inputs(record: dict[str, Any], *, raw: Sequence[np.ndarray] = (), dataset: DatasetFor | None = None,
                 rows: Sequence[int] = ()) -> torch.Tensor:
    """(N, C, S, S) normalised model inputs for the model of ``record``: ``rows`` of ``dataset(record)`` (a split,
    through the dataset's own preprocessing and cache) or else the ``raw`` images."""
    if dataset is not None:
        ds = dataset(record)
        return torch.stack([ds[int(i)]["image"] for i in rows])

    return prepare(raw, InputConfig.from_dict(record["input"]))


def prepare(raw: Sequence[np.ndarray], cfg: Any) -> torch.Tensor:
    """Raw images -> (N, C, S, S) normalised model inputs (``cfg``: an InputConfig), as training preprocesses them."""
    return torch.from_numpy(np.stack([im.preprocess(r, cfg.size, cfg.channels, cfg.mean, cfg.std) for r in raw]))


# ---------------------------------------------------------------------------------------------------------
# the three sources
# ---------------------------------------------------------------------------------------------------------

def load_images(paths: Sequence[str | Path]) -> Inputs:
    """Image files (PNG, JPEG, DICOM ...) without truth."""
    if not paths:
        raise ExplainError("images: got an empty list, expected at least one image file")
    raw = [im.read_image(p) for p in paths]
    return Inputs(raw, [Path(p).stem for p in paths], [str(p) for p in paths], [None] * len(raw), [],
                  {"images": [str(p) for p in paths]})


#: the data fields that decide which images and labels a split holds (input size, limit, cache and augmentation aside)
SELECTION_FIELDS = ("dataset", "split_seed", "val_fraction", "test_fraction", "views", "frontal_only", "uncertainty",
                    "blank", "labels")


def same_data(data: DataConfig, run_data: DataConfig) -> bool:
    """Whether ``data`` names the run's own data (``run_data``): the same source, root and selection of images and
    labels; then the run's data is explained, rebuilt by :func:`medistill.runs.run_dataset`."""
    if any(getattr(data, f) != getattr(run_data, f) for f in SELECTION_FIELDS):
        return False
    return (Path(data.root).resolve() if data.root else None) == (Path(run_data.root).resolve() if run_data.root
                                                                  else None)


def run_split(run: str | Path, split: str, limit: int | None, student: dict[str, Any]) -> DatasetFor:
    """The run's own data, split ``split`` (``limit`` images, None = as the run had it), per model record.

    The student's record is checked against the data's labels (:func:`medistill.runs.run_dataset`); another
    model (the teacher) only borrows the records, preprocessed for its own input.
    """
    def dataset(record: dict[str, Any]) -> Any:
        checked = record if record is student else {"input": record["input"]}
        return run_dataset(run, split, limit=limit, record=checked)

    return _once_per_input(dataset)


def other_split(data: DataConfig, split: str) -> DatasetFor:
    """Split ``split`` of ``data`` (no cache, no augmentation) per model record; the root must exist."""
    if data.root is None:
        raise ExplainError(f"dataset {data.dataset!r}: no root folder given (--root DIR)")
    if not Path(data.root).exists():
        raise ExplainError(f"dataset root {data.root!r} does not exist")
    cfg = dataclasses.replace(data, cache=False, augment="none")

    def dataset(record: dict[str, Any]) -> Any:
        inp = InputConfig.from_dict(record["input"])
        return build_dataset(cfg, split, Preprocess(size=inp.size, channels=inp.channels, mean=inp.mean,
                                                    std=inp.std))

    return _once_per_input(dataset)


def _once_per_input(dataset: DatasetFor) -> DatasetFor:
    """``dataset`` built once per model input config (a teacher and a student of the same input share one)."""
    built: dict[str, Any] = {}

    def cached(record: dict[str, Any]) -> Any:
        key = json.dumps(record["input"], sort_keys=True, default=str)
        if key not in built:
            built[key] = dataset(record)
        return built[key]

    return cached


def load_run_split(run: str | Path, split: str, size: int, student: dict[str, Any], *, limit: int | None,
                   with_truth: bool = False) -> Inputs:
    """``limit`` images of split ``split`` of the run's own data (see :func:`load_split`); with ``with_truth``
    the images with truth are searched among the whole split as the run had it (its own ``data.limit``)."""
    data = RunDir(run).config().data
    inputs = split_inputs(run_split(run, split, None if with_truth else limit, student), student, size,
                          limit=limit, with_truth=with_truth, where=f"{data.dataset} data of run {run}")
    inputs.source = {"dataset": data.dataset, "root": None if data.root is None else str(data.root),
                     "split": inputs.source["split"], "limit": limit, "with_truth": with_truth}
    return inputs


def load_split(data: DataConfig, split: str, size: int, student: dict[str, Any], *,
               with_truth: bool = False) -> Inputs:
    """``data.limit`` images of one split (a seeded subset), with ground truth at ``size`` where it exists.

    ``with_truth``: only images that have ground truth (e.g. the NIH images with boxes), the first
    ``data.limit`` of them in split order.
    """
    dataset = other_split(dataclasses.replace(data, limit=None) if with_truth else data, split)
    inputs = split_inputs(dataset, student, size, limit=data.limit, with_truth=with_truth,
                          where=f"{data.dataset} data at {data.root}")
    inputs.source = {"dataset": data.dataset, "root": str(data.root), "split": inputs.source["split"],
                     "limit": data.limit, "with_truth": with_truth}
    return inputs


def split_inputs(dataset: DatasetFor, student: dict[str, Any], size: int, *, limit: int | None,
                 with_truth: bool, where: str) -> Inputs:
    """The rows of ``dataset`` to explain (all, or the first ``limit`` with truth), their pixels and truth."""
    ds = dataset(student)
    rows: list[int] = list(range(len(ds)))
    truths = {i: ds.truth(i, size) for i in rows} if with_truth else {}
    if with_truth:
        rows = [i for i in rows if truths[i] is not None][:limit]
        if not rows:
            raise ExplainError(f"{where}, {ds.split} split: no image has ground truth (boxes or masks); drop "
                               f"--with-truth or pick another split")
    raw, names, paths, truth, positives = [], [], [], [], []
    for i in rows:
        raw.append(ds.read(i))
        meta = ds.meta(i)
        names.append(meta["image_id"])
        paths.append(meta["path"])
        truth.append(truths[i] if with_truth else ds.truth(i, size))
        known = (ds.masks[i] > 0) & (ds.targets[i] >= 0.5)  # (L,): positive and not uncertain / missing
        positives.append([lab for lab, k in zip(ds.labels, known) if k])
    return Inputs(raw, names, paths, truth, list(ds.labels), {"split": ds.split}, dataset=dataset, rows=rows,
                  positives=positives)


def background(dataset: DatasetFor, student: dict[str, Any], count: int, seed: int) -> list[int]:
    """``count`` rows (seeded, sorted) of a training split ``dataset``: GradientShap's background images."""
    n = len(dataset(student))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
