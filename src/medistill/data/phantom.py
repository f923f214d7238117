"""Phantom chest radiographs: a seeded generator of synthetic multi-label X-rays with per-finding masks.

The built-in default dataset: it needs no download, so the quickstart and the tests run anywhere, and every
finding has a ground-truth mask (where the evidence is), so explanations can be scored against truth.

Anatomy: a torso, two lungs with rib shadows and vessel texture, a spine and a heart. Findings, each drawn
only inside its mask and independently present:

==============  ================================================================
Cardiomegaly    the heart silhouette enlarged (mask: the enlarged heart)
Effusion        dense fluid at one lung base with a meniscus (mask: the fluid)
Nodule          one or two small round dense spots in a lung (mask: the spots)
Pneumothorax    a dark band without lung markings along one lung's outer edge, with a pleural line
Consolidation   a patchy, dense, textured region in a lung (mask: the region)
Atelectasis     a thin, dense, slanted band in a lung (mask: the band)
==============  ================================================================

Layout written to ``root``::

    phantom.json    generator parameters (seed, size, number of images, labels, version)
    labels.csv      image_id, patient_id, view, split, one 0/1 column per finding
    images/*.png    8-bit grayscale radiographs
    masks/*.png     uint8 bit masks: bit k set where finding k's evidence is
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..utils.io import atomic_write_text
from .dataset import MedicalDataset, resize_masks
from .sources import read_csv, resolve_labels
from .table import DatasetError, Table

log = logging.getLogger(__name__)

LABELS = ["Cardiomegaly", "Effusion", "Nodule", "Pneumothorax", "Consolidation", "Atelectasis"]
PREVALENCE = [0.2, 0.2, 0.2, 0.15, 0.2, 0.2]
VERSION = 1
DEFAULT_IMAGES = 3000
DEFAULT_SIZE = 128
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] (bilinear upsampling of a coarse random grid)."""
    coarse = rng.random((max(size // scale, 2), max(size // scale, 2))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))


def render(rng: np.random.Generator, size: int, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One radiograph (float (S, S) in [0, 1]) and its finding masks (bool (L, S, S))."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    jitter = lambda a: rng.uniform(-a, a)  # noqa: E731
    cy, cx = s * (0.52 + jitter(0.03)), s * (0.5 + jitter(0.03))
    img = np.full((size, size), 0.06, np.float32)
    torso = _ellipse(yy, xx, cy, cx, s * 0.46, s * 0.40)
    img[torso] = 0.55
    lung_ry, lung_rx = s * (0.27 + jitter(0.02)), s * (0.13 + jitter(0.01))
    lungs = []
    for side in (-1, 1):
        ly, lx = cy - s * 0.04, cx + side * s * 0.17
        lung = _ellipse(yy, xx, ly, lx, lung_ry, lung_rx, angle=side * 0.08)
        lungs.append((lung, ly, lx, side))
    lung_any = lungs[0][0] | lungs[1][0]
    img[lung_any] = 0.22
    # rib shadows: bright arcs across the lungs, and vessel texture
    ribs = 0.5 + 0.5 * np.sin((yy + 0.004 * (xx - cx) ** 2) * (2 * np.pi / (s * 0.085)) + rng.uniform(0, 6.28))
    vessels = _smooth_noise(rng, size, 6)
    img = np.where(lung_any, img + 0.07 * (ribs > 0.75) + 0.06 * vessels, img)
    img[np.abs(xx - cx) < s * 0.035] += 0.25 * torso[np.abs(xx - cx) < s * 0.035]  # spine
    masks = np.zeros((len(LABELS), size, size), dtype=bool)

    # heart, enlarged when Cardiomegaly
    hr = s * (0.20 if present[0] else 0.13) * (1 + jitter(0.06))
    heart = _ellipse(yy, xx, cy + s * 0.12, cx + s * 0.05, hr * 0.85, hr, angle=-0.3)
    img[heart] = np.maximum(img[heart], 0.62)
    if present[0]:
        masks[0] = heart
    lung_free = [(lung & ~heart, ly, lx, side) for lung, ly, lx, side in lungs]

    def pick_lung() -> tuple[np.ndarray, float, float, int]:
        return lung_free[int(rng.integers(0, 2))]

    if present[1]:  # effusion: fluid filling a lung base, flat-ish top with a meniscus
        lung, ly, lx, side = pick_lung()
        level = ly + lung_ry * rng.uniform(0.25, 0.55)
        meniscus = level - s * 0.04 * ((xx - lx) / lung_rx) ** 2 * side * np.sign(xx - lx + 1e-6)
        fluid = lung & (yy > meniscus)
        img[fluid] = 0.58 + 0.03 * rng.random()
        masks[1] = fluid
    if present[2]:  # nodules: one or two small dense discs
        lung, ly, lx, side = pick_lung()
        cand = np.argwhere(lung)
        for _ in range(int(rng.integers(1, 3))):
            py, px = cand[rng.integers(0, len(cand))]
            r = s * rng.uniform(0.025, 0.04)
            disc = _ellipse(yy, xx, py, px, r, r)
            img[disc] = np.maximum(img[disc], 0.6 + 0.1 * rng.random())
            masks[2] |= disc
    if present[3]:  # pneumothorax: dark, featureless band at the lateral edge, pleural line inside it
        lung, ly, lx, side = lungs[int(rng.integers(0, 2))]
        edge = lx + side * lung_rx * rng.uniform(0.25, 0.45)
        band = lung & ((xx - edge) * side > 0) & (yy < ly + lung_ry * 0.3)
        img[band] = 0.08
        line = lung & (np.abs(xx - edge) < 1.0) & (yy < ly + lung_ry * 0.3)
        img[line] = 0.45
        masks[3] = band | line
    if present[4]:  # consolidation: patchy dense region with air bronchogram texture
        lung, ly, lx, side = pick_lung()
        cand = np.argwhere(lung)
        py, px = cand[rng.integers(0, len(cand))]
        blob = _ellipse(yy, xx, py, px, s * rng.uniform(0.07, 0.11), s * rng.uniform(0.05, 0.08),
                        angle=rng.uniform(0, 3.14)) & lung
        patch = _smooth_noise(rng, size, 3)
        img[blob] = 0.42 + 0.22 * patch[blob]
        masks[4] = blob
    if present[5]:  # atelectasis: a thin, dense, slanted plate-like band
        lung, ly, lx, side = pick_lung()
        ang = rng.uniform(-0.5, 0.5)
        py = ly + lung_ry * rng.uniform(-0.2, 0.5)
        dist = np.abs((yy - py) * np.cos(ang) - (xx - lx) * np.sin(ang))
        band = lung & (dist < s * 0.018) & (np.abs(xx - lx) < lung_rx * 0.8)
        img[band] = 0.6
        masks[5] = band

    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    img = img + rng.normal(0, 0.025, img.shape).astype(np.float32)
    blur = Image.fromarray(np.clip(img, 0, 1).astype(np.float32), mode="F")
    img = np.asarray(blur.resize((size // 2, size // 2), Image.BILINEAR).resize((size, size), Image.BILINEAR)) * 0.3 + np.clip(img, 0, 1) * 0.7
    return np.clip(img, 0, 1).astype(np.float32), masks


def generate(root: str | Path, *, num_images: int = DEFAULT_IMAGES, size: int = DEFAULT_SIZE, seed: int = 0) -> Path:
    """Write a phantom dataset into ``root`` (must be empty or absent). Returns ``root``."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"phantom root {root} is not empty and holds no phantom.json: refusing to write into it")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # patients with 1-3 images each; splits are patient-wise
    patients, pid = [], 0
    while len(patients) < num_images:
        patients.extend([pid] * int(rng.integers(1, 4)))
        pid += 1
    patients = patients[:num_images]
    uniq = np.unique(patients)
    perm = rng.permutation(len(uniq))
    n_tr, n_va = int(SPLIT_FRACTIONS["train"] * len(uniq)), int(SPLIT_FRACTIONS["val"] * len(uniq))
    split_of = {}
    for rank, k in enumerate(perm):
        split_of[int(uniq[k])] = "train" if rank < n_tr else "val" if rank < n_tr + n_va else "test"
    rows = []
    prev = np.asarray(PREVALENCE)
    for i in range(num_images):
        r = np.random.default_rng([seed, i])
        present = r.random(len(LABELS)) < prev
        img, masks = render(r, size, present)
        image_id = f"ph_{i:05d}"
        Image.fromarray((img * 255).round().astype(np.uint8)).save(root / "images" / f"{image_id}.png")
        bits = np.zeros((size, size), np.uint8)
        for k in range(len(LABELS)):
            bits |= (masks[k].astype(np.uint8) << k)
        Image.fromarray(bits).save(root / "masks" / f"{image_id}.png")
        rows.append({"image_id": image_id, "patient_id": f"p{patients[i]:05d}",
                     "view": "PA" if r.random() < 0.8 else "AP", "split": split_of[patients[i]],
                     **{lab: int(p) for lab, p in zip(LABELS, present)}})
    df = pd.DataFrame(rows)
    atomic_write_text(root / "labels.csv", df.to_csv(index=False))
    meta = {"generator": "medistill.phantom", "version": VERSION, "seed": seed, "size": size,
            "num_images": num_images, "labels": LABELS}
    atomic_write_text(root / "phantom.json", json.dumps(meta, indent=2))  # written last: marks completion
    log.info("generated %d phantom images (%d px) in %s", num_images, size, root)
    return root


def ensure(root: str | Path, *, num_images: int = DEFAULT_IMAGES, size: int = DEFAULT_SIZE, seed: int = 0) -> Path:
    """Generate the phantom into ``root`` when it is empty or absent; reuse it when ``phantom.json`` is there."""
    root = Path(root)
    if (root / "phantom.json").is_file():
        return root
    return generate(root, num_images=num_images, size=size, seed=seed)


class Phantom(MedicalDataset):
    """The phantom chest X-ray dataset (multi-label, per-finding ground-truth masks)."""

    name = "phantom"
    default_labels = LABELS

    @classmethod
    def load_table(cls, root: Path, seed: int = 0, labels: Sequence[str] | None = None, **options: Any) -> Table:
        if options:
            raise DatasetError(f"phantom: unsupported options {sorted(options)}; valid: labels")
        meta_path = root / "phantom.json"
        if not meta_path.is_file():
            raise DatasetError(f"{root}: no phantom.json; generate the phantom with medistill.data.phantom.ensure "
                               f"or `medistill data inspect --dataset phantom --root {root}` on an empty folder")
        df = read_csv(root / "labels.csv", dtype={"image_id": str, "patient_id": str})
        all_labels = json.loads(meta_path.read_text())["labels"]
        labels = resolve_labels(labels, all_labels, "phantom")
        missing = [c for c in ["image_id", "patient_id", "view", "split", *labels] if c not in df.columns]
        if missing:
            raise DatasetError(f"{root / 'labels.csv'}: missing columns {missing}")
        records = pd.DataFrame({"path": [str(root / "images" / f"{i}.png") for i in df["image_id"]],
                                "image_id": df["image_id"], "patient_id": df["patient_id"],
                                "view": df["view"], "split": df["split"]})
        values = df[labels].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        valid = np.isin(values, (0.0, 1.0))  # a blank or other value is unknown: masked out, never a NaN target
        report: dict[str, Any] = {}
        if not valid.all():
            report["invalid_labels"] = {lab: int((~valid[:, k]).sum()) for k, lab in enumerate(labels)
                                        if not valid[:, k].all()}
            log.warning("%s: label cells other than 0 or 1 were masked out: %s", root / "labels.csv",
                        report["invalid_labels"])
        targets = np.where(valid, values, 0.0).astype(np.float32)
        return Table(list(labels), "multilabel", records, targets, valid.astype(np.float32), report=report)

    def truth(self, i: int, size: int | None = None) -> np.ndarray | None:
        root = Path(self.data.records.at[i, "path"]).parent.parent
        bits = np.asarray(Image.open(root / "masks" / f"{self.meta(i)['image_id']}.png"))
        all_labels = json.loads((root / "phantom.json").read_text())["labels"]
        masks = np.stack([(bits >> all_labels.index(lab)) & 1 for lab in self.labels]).astype(bool)
        return resize_masks(masks, size) if size else masks
