"""The dataset registry: every source medistill reads, by name, with the DataConfig options it takes.

One declaration answers every question that depends on the source, so no other module tests dataset names:
which names exist (``--dataset``'s help, the errors and the README's table list them), which class reads a
source (:func:`medistill.data.dataset_class` imports it lazily), which DataConfig options reach its
``load_table`` (:func:`medistill.data.source_options`; :meth:`medistill.config.DataConfig.validate` refuses a
grouping for a source that names its patients), and whether medistill draws it itself (the phantom: generated on
first use, no ``--root`` needed).

    source = SOURCES["folder"]
    source.takes("group_by")     # True
    SOURCES["phantom"].generated  # True

Why this module, outside ``data`` and torch-free: ``config`` checks a DataConfig against this table before any
work starts, and ``config`` is a lower layer than ``data`` (DEVELOPERS.md): it may not import ``medistill.data``,
whose package imports ``config`` itself and the dataset machinery. So the declaration is plain data at a layer
both may import, and each entry names its class by module and attribute, which only ``data`` imports.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the DataConfig fields a source with no split of its own takes to draw one
SPLIT_FRACTIONS = ("val_fraction", "test_fraction")


@dataclass(frozen=True)
class Source:
    """One dataset source: its name, the class that reads it and what it accepts."""

    name: str  # the value of --dataset / data.dataset
    module: str  # the module under medistill.data that reads it
    class_name: str  # the MedicalDataset subclass in that module
    options: tuple[str, ...]  # the DataConfig fields its load_table takes (source_options passes these only)
    default_root: str | None = None  # where it lives when no --root is given; None: --root is required
    generated: bool = False  # medistill draws it into its root on first use (the class's ensure_generated)

    def takes(self, option: str) -> bool:
        """Whether this source's ``load_table`` takes the DataConfig field ``option``."""
        return option in self.options


#: every source, in the order help texts and errors list them
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("phantom", "phantom", "Phantom", ("labels",), default_root="data/phantom", generated=True),
    Source("nih", "nih", "NIHChestXray14", (*SPLIT_FRACTIONS, "views", "labels")),
    Source("chexpert", "chexpert", "CheXpert",
           (*SPLIT_FRACTIONS, "views", "uncertainty", "blank", "frontal_only", "labels")),
    Source("padchest", "padchest", "PadChest", (*SPLIT_FRACTIONS, "views", "labels")),
    Source("medmnist", "medmnist", "MedMNIST", (*SPLIT_FRACTIONS, "labels")),
    Source("folder", "folder", "ImageFolder",
           (*SPLIT_FRACTIONS, "labels", "group_by", "group_similar", "resplit", "drop_near_copies")),
)}

#: the source names (``--dataset``'s values)
DATASETS: tuple[str, ...] = tuple(SOURCES)


def taking(option: str) -> str:
    """The sources that take ``option``, for messages: ``"folder"``, ``"nih / chexpert / padchest"``."""
    return " / ".join(s.name for s in SOURCES.values() if s.takes(option))
