"""What ``medistill data inspect`` reports: a dataset's summary as plain data, and as a text table.

``summarize(cfg)`` parses the source's table (all splits; ``limit`` is not applied) and returns a JSON-ready
dict. Its top level always has ``num_images`` (int, all splits) and ``positives`` (label -> images with that
label over all splits; for single-label sets, images per class), plus::

    dataset, root, task, labels, num_labels, num_patients, classes (single-label sets)
    splits           split -> {num_images, num_patients, positives, masked}
    masked           label -> images whose label is masked out (uncertain or missing, per the policy)
    uncertain        label -> raw uncertain (-1) values (CheXpert)
    patient_overlap  "train/val" ... -> patients found in both splits (0 for a sound split; image folders: the
                     groups of --group-by or --group-similar, else each image is its own patient)
    grouping_hint    image folders without --group-by whose file names look grouped (1234_left / 1234_right):
                     {images_in_groups, groups, examples, suggestion}
    views            view -> images
    missing_images   rows of the table whose image file is absent (skipped)
    duplicates       byte-identical images within / across splits (image folders)
    near_copies      image folders: validation / test images with a near copy in training (thumbnail correlation
                     >= threshold): {threshold, val / test: {images, near_copies}, same_class, examples}
    unreadable       with check_readable: {checked, count, files: [{path, reason}]}
    report           everything else the source counted (malformed rows, filters, split source ...)
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable

import numpy as np

from ..config import DataConfig
from ..task import get_task
from . import dataset_class, resolve_root, source_of, source_options
from .folder import grouping_hint
from .images import ImageReadError, is_colour
from .similar import near_copies
from .table import SPLITS, Table

log = logging.getLogger(__name__)

#: report keys lifted to the top level of the summary (the rest stays under "report")
_LIFTED = ("missing_images", "uncertain", "classes")
_DUPLICATES = ("duplicate_images", "duplicates_across_splits", "duplicate_examples")


def _per_label(labels: list[str], values: np.ndarray) -> dict[str, int]:
    return {lab: int(v) for lab, v in zip(labels, values)}


def summarize_table(table: Table) -> dict[str, Any]:
    """Counts of one parsed table (see the module docstring); no image is opened."""
    rec = table.records
    split = rec["split"].to_numpy()
    pos = table.targets > 0.5
    masked = table.mask == 0
    out: dict[str, Any] = {
        "task": table.task, "labels": list(table.labels), "num_labels": len(table.labels),
        "num_images": int(len(rec)), "num_patients": int(rec["patient_id"].nunique()),
        "positives": _per_label(table.labels, (pos & ~masked).sum(0)),
        "masked": _per_label(table.labels, masked.sum(0)),
    }
    if not get_task(table.task).multilabel:
        out["classes"] = list(table.labels)
    splits: dict[str, Any] = {}
    patients: dict[str, set[str]] = {}
    for s in SPLITS:
        rows = split == s
        patients[s] = set(rec.loc[rows, "patient_id"].astype(str))
        splits[s] = {"num_images": int(rows.sum()), "num_patients": len(patients[s]),
                     "positives": _per_label(table.labels, (pos[rows] & ~masked[rows]).sum(0)),
                     "masked": _per_label(table.labels, masked[rows].sum(0))}
    out["splits"] = splits
    out["patient_overlap"] = {f"{a}/{b}": len(patients[a] & patients[b]) for a, b in itertools.combinations(SPLITS, 2)}
    overlap = sum(out["patient_overlap"].values())
    if overlap:
        log.warning("%d patients appear in more than one split: %s", overlap, out["patient_overlap"])
    views = rec["view"].fillna("").astype(str)
    if (views != "").any():
        out["views"] = {str(k): int(v) for k, v in views.value_counts().items()}
    report = dict(table.report)
    out["missing_images"] = int(report.pop("missing_images", 0))
    for key in _LIFTED[1:]:
        if key in report:
            out[key] = report.pop(key)
    if any(k in report for k in _DUPLICATES):
        out["duplicates"] = {k: report.pop(k) for k in _DUPLICATES if k in report}
    if table.boxes:
        out["boxes"] = {"images": len(table.boxes), "boxes": sum(len(b) for b in table.boxes.values())}
        report.pop("images_with_boxes", None)
        report.pop("boxes", None)
    out["report"] = report
    return out


def detect_channels(dataset: Any, *, sample: int = 32, seed: int = 0) -> tuple[int, str]:
    """The input channels ``dataset``'s images call for: 3 when at least half of a seeded sample of ``sample`` images
    are colour (their channels differ, :func:`medistill.data.images.is_colour`), else 1; and a sentence saying why
    (a stray colour image among X-rays does not make the model colour)."""
    n = len(dataset)
    idx = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    colour = 0
    for i in idx:
        try:
            colour += is_colour(dataset.read(int(i)))
        except ImageReadError as e:  # counted as not colour; reading the split will report it
            log.debug("channel detection: %s unreadable (%s)", e.path, e.reason)
    if len(idx) and 2 * colour >= len(idx):
        return 3, f"{colour} of {len(idx)} sampled training images are colour"
    return 1, f"{colour or 'none'} of {len(idx)} sampled training images {'is' if colour <= 1 else 'are'} colour"


def check_readable(cfg: DataConfig, root: Any, *, progress: Callable[[int, int], None] | None = None,
                   max_listed: int = 50) -> dict[str, Any]:
    """Decode every image of every split; ``{checked, count, files: [{path, reason}] (first max_listed)}``."""
    cls = dataset_class(cfg.dataset)
    opts = source_options(cfg)
    table = cls.table(root, seed=cfg.split_seed, **opts)
    total, done = len(table.records), 0
    bad: list[dict[str, str]] = []
    for s in SPLITS:
        if not len(table.split_rows(s)):
            continue
        ds = cls(root, s, seed=cfg.split_seed, **opts)
        for i in range(len(ds)):
            try:
                ds.read(i)
            except ImageReadError as e:
                bad.append({"path": e.path, "reason": e.reason})
            done += 1
            if progress is not None:
                progress(done, total)
    if bad:
        log.warning("%d of %d images cannot be read, e.g. %s: %s", len(bad), total, bad[0]["path"], bad[0]["reason"])
    return {"checked": done, "count": len(bad), "files": bad[:max_listed]}


def near_copy_summary(table: Table, threshold: float, *, max_examples: int = 3) -> dict[str, Any]:
    """How many validation / test images of ``table`` have a near copy in its training split
    (:func:`.similar.near_copies`), the share of those whose copy has the same labels, and the closest pairs."""
    rec = table.records
    split = rec["split"].to_numpy()
    copy, corr, row = near_copies(list(rec["path"]), list(split), threshold)
    out: dict[str, Any] = {"threshold": threshold}
    for s in ("val", "test"):
        out[s] = {"images": int((split == s).sum()), "near_copies": int((copy & (split == s)).sum())}
    hits = np.flatnonzero(copy)
    out["same_class"] = (float(np.mean([np.array_equal(table.targets[i], table.targets[row[i]]) for i in hits]))
                         if hits.size else None)
    out["examples"] = [{"image": str(rec["image_id"].iat[i]), "train_image": str(rec["image_id"].iat[row[i]]),
                        "correlation": round(float(corr[i]), 4)} for i in hits[np.argsort(-corr[hits])][:max_examples]]
    n = out["val"]["near_copies"] + out["test"]["near_copies"]
    if n:
        log.warning("%d validation / test images have a near copy in training (thumbnail correlation >= %g; e.g. %s "
                    "and %s): scores on them measure memory, not new patients", n, threshold,
                    out["examples"][0]["image"], out["examples"][0]["train_image"])
    return out


def summarize(cfg: DataConfig, *, readable: bool = False, near_copies: float = 0.0,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Summary of the dataset ``cfg`` describes (the phantom is generated first when its root is empty);
    ``near_copies`` > 0: image folders also count validation / test images with a near copy in training."""
    root = resolve_root(cfg)
    cls = dataset_class(cfg.dataset)
    source = source_of(cfg.dataset)
    table = cls.table(root, seed=cfg.split_seed, **source_options(cfg))
    out = {"dataset": cfg.dataset, "root": str(root), **summarize_table(table)}
    if source.takes("group_by") and not cfg.group_by and cfg.group_similar is None:  # a source naming no patients
        hint = grouping_hint(list(table.records["image_id"]))
        if hint:
            out["grouping_hint"] = hint
            log.warning("%d file names look grouped (e.g. %s) but no --group-by was given: each image counts as its "
                        "own patient, so one patient's images can fall into different splits; name the patient with "
                        "--group-by REGEX (its first capture group), e.g. --group-by '%s'", hint["images_in_groups"],
                        " / ".join(hint["examples"][0]), hint["suggestion"])
    if near_copies and source.takes("drop_near_copies"):
        out["near_copies"] = near_copy_summary(table, near_copies)
    if readable:
        out["unreadable"] = check_readable(cfg, root, progress=progress)
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a human-readable text table."""
    lines = [f"{s['dataset']} dataset at {s['root']}: {s['task']}, {s['num_labels']} labels",
             f"images: {s['num_images']}   patients: {s['num_patients']}   missing files: {s['missing_images']}"]
    if "views" in s:
        lines.append("views: " + ", ".join(f"{k} {v}" for k, v in s["views"].items()))
    splits = [x for x in SPLITS if s["splits"][x]["num_images"]]
    width = max([len(lab) for lab in s["labels"]] + [16])
    kind = "label (positives)" if get_task(s["task"]).multilabel else "class"
    head = f"{kind:<{width}}" + "".join(f"{x:>9}" for x in splits) + f"{'total':>9}"
    show_masked = any(s["masked"].values())
    if show_masked:
        head += f"{'masked':>9}"
    if "uncertain" in s:
        head += f"{'uncertain':>10}"
    lines += ["", head, "-" * len(head)]
    for lab in s["labels"]:
        row = f"{lab:<{width}}" + "".join(f"{s['splits'][x]['positives'][lab]:>9}" for x in splits)
        row += f"{s['positives'][lab]:>9}"
        if show_masked:
            row += f"{s['masked'][lab]:>9}"
        if "uncertain" in s:
            row += f"{s['uncertain'].get(lab, 0):>10}"
        lines.append(row)
    lines.append("-" * len(head))
    lines.append(f"{'images':<{width}}" + "".join(f"{s['splits'][x]['num_images']:>9}" for x in splits)
                 + f"{s['num_images']:>9}")
    lines.append(f"{'patients':<{width}}" + "".join(f"{s['splits'][x]['num_patients']:>9}" for x in splits)
                 + f"{s['num_patients']:>9}")
    lines.append("")
    overlap = {k: v for k, v in s["patient_overlap"].items() if v}
    lines.append("patient overlap between splits: " + (", ".join(f"{k} {v}" for k, v in overlap.items())
                                                      if overlap else "none"))
    if overlap and source_of(s["dataset"]).takes("resplit"):
        lines.append("warning: patients (groups) in more than one split: the split folders are not split by "
                     "patient; draw the splits by patient with --resplit")
    if "grouping_hint" in s:
        g = s["grouping_hint"]
        lines.append(f"warning: {g['images_in_groups']} file names look grouped ({g['groups']} groups, e.g. "
                     f"{' / '.join(g['examples'][0])}) but no --group-by was given: the overlap above counts each "
                     f"image as a patient; try --group-by '{g['suggestion']}'")
    if "duplicates" in s:
        d = s["duplicates"]
        lines.append(f"duplicate images (identical bytes): {d.get('duplicate_images', 0)} within, "
                     f"{d.get('duplicates_across_splits', 0)} across splits")
    if "near_copies" in s:
        nc = s["near_copies"]
        parts = [f"{x} {nc[x]['near_copies']} of {nc[x]['images']}" for x in ("val", "test") if nc[x]["images"]]
        lines.append(f"near copies of training images (thumbnail correlation >= {nc['threshold']:g}): "
                     + (", ".join(parts) or "no validation or test images"))
        if nc["examples"]:
            e = nc["examples"][0]
            lines.append(f"warning: scores on these measure memory, not new patients (closest: {e['image']} and "
                         f"{e['train_image']}, {e['correlation']:.3f}); leave them out with --drop-near-copies "
                         f"{nc['threshold']:g}, and draw validation by scan with --group-similar")
    if "boxes" in s:
        lines.append(f"boxes: {s['boxes']['boxes']} on {s['boxes']['images']} images")
    if "unreadable" in s:
        u = s["unreadable"]
        lines.append(f"unreadable images: {u['count']} of {u['checked']} checked")
        lines += [f"  {f['path']}: {f['reason']}" for f in u["files"][:10]]
    for key, value in s["report"].items():
        if key in ("label_map", "missing_examples", "malformed_examples", "duplicate_examples") or value in ({}, []):
            continue
        lines.append(f"{key}: {value}")
    return "\n".join(lines)
