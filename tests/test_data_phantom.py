"""The phantom generator (version 2): each lesion is the only evidence for its label, sizes like real findings,
the stored files match the generator, and folders of another version are regenerated or refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medistill.data import phantom as P
from medistill.data.table import DatasetError

ALL = np.ones(len(P.LABELS), dtype=bool)


def stored(d: P.Drawing) -> np.ndarray:
    return P.to_uint8(d.image).astype(int)


@pytest.mark.parametrize("seed,index,size", [(0, 0, 64), (0, 7, 64), (3, 2, 96), (5, 11, 40)])
def test_switching_a_finding_off_changes_the_image_only_inside_its_mask(seed, index, size):
    with_all = P.draw(seed, index, size, ALL)
    for k, lab in enumerate(P.LABELS):
        off = ALL.copy()
        off[k] = False
        without = P.draw(seed, index, size, off)
        diff = np.abs(stored(with_all) - stored(without))
        mask = with_all.masks[k]
        assert mask.any(), lab
        assert diff[~mask].max(initial=0) == 0, f"{lab}: pixels outside its mask changed"
        assert not without.masks[k].any() and (without.masks[np.arange(len(P.LABELS)) != k]
                                               == with_all.masks[np.arange(len(P.LABELS)) != k]).all()


@pytest.mark.parametrize("index,size", [(4, 64), (9, 32), (2, 128)])
def test_a_finding_alone_is_painted_inside_its_mask_on_the_same_anatomy(index, size):
    none = P.draw(1, index, size, np.zeros(len(P.LABELS), dtype=bool))
    assert not none.masks.any()
    for k in range(len(P.LABELS)):
        only = np.zeros(len(P.LABELS), dtype=bool)
        only[k] = True
        d = P.draw(1, index, size, only)
        changed = stored(d) != stored(none)
        assert not (changed & ~d.masks[k]).any()
        # the mask is where the lesion is: most of it visibly changed (the normal heart inside the enlarged one
        # is already dense, so Cardiomegaly changes its outer part; lesions drawn together may hide each other)
        assert changed[d.masks[k]].mean() > (0.3 if k == 0 else 0.6), P.LABELS[k]
        assert (d.lungs == none.lungs).all()


def test_the_anatomy_does_not_depend_on_the_labels():
    """Images drawn with different labels share everything outside the union of their masks."""
    rng = np.random.default_rng(0)
    for index in range(4):
        a = P.draw(2, index, 48, rng.random(len(P.LABELS)) < 0.5)
        b = P.draw(2, index, 48, rng.random(len(P.LABELS)) < 0.5)
        outside = ~(a.masks.any(axis=0) | b.masks.any(axis=0))
        assert (stored(a)[outside] == stored(b)[outside]).all()


def _components(mask: np.ndarray) -> list[np.ndarray]:
    from scipy.ndimage import label

    lab, n = label(mask)
    return [lab == i for i in range(1, n + 1)]


def test_lesion_sizes_are_like_real_findings():
    size = 256
    mm = size / P.FIELD_MM  # px per mm
    for index in range(12):
        d = P.draw(0, index, size, ALL)
        lungs = d.lungs.any(axis=0)
        cols = np.flatnonzero(lungs.any(axis=0))
        thorax = cols.max() - cols.min() + 1
        # Cardiomegaly: a heart wider than half the thorax; the normal heart narrower than half of it
        heart_cols = np.flatnonzero(d.masks[0].any(axis=0))
        ctr = (heart_cols.max() - heart_cols.min() + 1) / thorax
        lo, hi = P.CTR_CARDIOMEGALY
        assert lo - 2 / thorax <= ctr <= hi + 2 / thorax and ctr > 0.5
        assert P.CTR_NORMAL[0] <= d.sizes["Cardiomegaly"]["ctr_normal"] <= P.CTR_NORMAL[1] < 0.5
        # Effusion: inside one lung, at its base, at most the stated share of its height
        side = [k for k in range(2) if (d.masks[1] & d.lungs[k]).any()]
        assert len(side) == 1 and not (d.masks[1] & ~d.lungs[side[0]]).any()
        lung_rows = np.flatnonzero(d.lungs[side[0]].any(axis=1))
        eff_rows = np.flatnonzero(d.masks[1].any(axis=1))
        assert eff_rows.max() >= lung_rows.max() - 1
        assert len(eff_rows) <= P.EFFUSION_HEIGHT[1] * len(lung_rows) + 2
        # Nodules: round, whole, inside a lung, 5-30 mm across (equivalent diameter, one pixel of tolerance)
        nodules = _components(d.masks[2])
        assert 1 <= len(nodules) <= 2 and not (d.masks[2] & ~lungs).any()
        for n in nodules:
            diameter = 2 * np.sqrt(n.sum() / np.pi)
            assert P.NODULE_MM[0] * mm - 1.5 <= diameter <= P.NODULE_MM[1] * mm + 1.5
        for dm in d.sizes["Nodule"]["diameters_mm"]:
            assert P.NODULE_MM[0] <= dm <= P.NODULE_MM[1]
        # Pneumothorax: a rim in one lung reaching its apex
        assert not (d.masks[3] & ~lungs).any()
        side = [k for k in range(2) if (d.masks[3] & d.lungs[k]).any()]
        assert len(side) == 1
        assert np.flatnonzero(d.masks[3].any(axis=1)).min() <= np.flatnonzero(d.lungs[side[0]].any(axis=1)).min() + 1
        assert P.PNEUMOTHORAX_RIM_MM[0] <= d.sizes["Pneumothorax"]["rim_mm"] <= P.PNEUMOTHORAX_RIM_MM[1]
        # Consolidation: in a lung, no larger than its ellipse
        d1, d2 = d.sizes["Consolidation"]["diameters_mm"]
        assert P.CONSOLIDATION_MM[0] <= d1 <= d2 <= P.CONSOLIDATION_MM[1]
        assert 0 < d.masks[4].sum() <= np.pi / 4 * d1 * d2 * mm ** 2 + np.pi * d2 * mm
        assert not (d.masks[4] & ~lungs).any()
        # Atelectasis: a thin band in a lung
        t, length = d.sizes["Atelectasis"]["thickness_mm"], d.sizes["Atelectasis"]["length_mm"]
        assert P.ATELECTASIS_THICKNESS_MM[0] <= t <= P.ATELECTASIS_THICKNESS_MM[1]
        assert P.ATELECTASIS_LENGTH_MM[0] <= length <= P.ATELECTASIS_LENGTH_MM[1]
        assert 0.5 * t * length * mm ** 2 <= d.masks[5].sum() <= (t * mm + 2) * (length * mm + 2)  # mostly in the lung
        assert not (d.masks[5] & ~lungs).any()


def test_small_lesions_stay_visible_at_small_sizes():
    for index in range(8):
        d = P.draw(0, index, 32, ALL)
        assert all(d.masks[k].any() for k in range(len(P.LABELS)))
        assert d.masks[2].sum() >= 9 and d.masks[5].sum() >= 2  # nodules at least 3 px across, bands 2 px


def test_generated_files_are_the_drawn_images_and_masks(tmp_path: Path):
    root = P.generate(tmp_path / "ph", num_images=12, size=32, seed=4)
    meta = json.loads((root / "phantom.json").read_text())
    assert meta["version"] == P.VERSION == 2 and meta["size"] == 32 and meta["labels"] == P.LABELS
    df = pd.read_csv(root / "labels.csv", dtype={"image_id": str})
    assert list(df.columns) == ["image_id", "patient_id", "view", "split", *P.LABELS]
    for i, row in df.iterrows():
        assert row["image_id"] == f"ph2_{i:05d}"
        present = P.sample_labels(4, i)
        assert row[P.LABELS].to_numpy(int).tolist() == present.astype(int).tolist()
        d = P.draw(4, i, 32, present)
        assert (np.asarray(Image.open(root / "images" / f"{row['image_id']}.png")) == P.to_uint8(d.image)).all()
        bits = np.asarray(Image.open(root / "masks" / f"{row['image_id']}.png"))
        assert all((((bits >> k) & 1) == d.masks[k]).all() for k in range(len(P.LABELS)))
    ds = P.Phantom(root, "train")
    truth = ds.truth(0)
    assert truth.shape == (len(P.LABELS), 32, 32) and truth.dtype == bool


def test_draw_refuses_a_wrong_number_of_flags():
    with pytest.raises(ValueError, match="expected 6 flags"):
        P.draw(0, 0, 32, [True, False])


def _old_phantom(root: Path, version: int = 1, extra: str | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / "ph_00000.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "ph_00000.png")
    (root / "labels.csv").write_text("image_id,patient_id,view,split," + ",".join(P.LABELS) + "\n"
                                     "ph_00000,p00000,PA,train,0,0,0,0,0,0\n")
    (root / "phantom.json").write_text(json.dumps({"generator": "medistill.phantom", "version": version, "seed": 3,
                                                   "size": 24, "num_images": 10, "labels": P.LABELS}))
    if extra:
        (root / extra).write_text("mine")
    return root


def test_ensure_regenerates_a_folder_of_another_version_with_its_recorded_parameters(tmp_path: Path, caplog):
    root = _old_phantom(tmp_path / "old")
    with caplog.at_level("WARNING", logger="medistill.data.phantom"):
        P.ensure(root, num_images=40, size=64, seed=0)
    meta = json.loads((root / "phantom.json").read_text())
    assert (meta["version"], meta["size"], meta["num_images"], meta["seed"]) == (2, 24, 10, 3)
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"ph2_{i:05d}.png" for i in range(10)]
    assert "version 1 is out of date" in caplog.text
    assert P.ensure(root) == root and json.loads((root / "phantom.json").read_text()) == meta  # reused now


def test_ensure_refuses_an_old_folder_holding_other_files(tmp_path: Path):
    root = _old_phantom(tmp_path / "old", extra="notes.txt")
    with pytest.raises(DatasetError, match=r"version 1 .*notes\.txt"):
        P.ensure(root)
    assert (root / "images" / "ph_00000.png").is_file() and (root / "notes.txt").is_file()  # untouched


def test_reading_a_folder_of_another_version_is_refused(tmp_path: Path):
    root = _old_phantom(tmp_path / "old")
    with pytest.raises(DatasetError, match=r"phantom\.json: a phantom of version 1; .* reads version 2"):
        P.Phantom.load_table(root)
