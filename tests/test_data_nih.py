"""NIH ChestX-ray14: the real 621-image sample (counts, boxes scaled to 256 px) and small tables in tmp_path
(official split lists, nested image folders, view filter, missing files, bad tables)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medistill.data import DatasetError
from medistill.data.nih import LABELS, NIHChestXray14

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")


def make_nih(root: Path, rows: list[tuple[str, str, int, str]], *, folder: str = "images", size: int = 32,
             skip: tuple[str, ...] = ()) -> Path:
    """A Data_Entry_2017.csv of ``rows`` (image, findings, patient, view) and 8-bit PNGs in ``root/folder``."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    lines = [f"{img},{find},0,{pid},50,M,{view},1024,1024,0.14,0.14\n" for img, find, pid, view in rows]
    (root / "Data_Entry_2017.csv").write_text(HEADER + "".join(lines))
    for img, *_ in rows:
        if img not in skip:
            Image.fromarray(np.full((size, size), 128, np.uint8)).save(root / folder / img)
    return root


def twelve_rows() -> list[tuple[str, str, int, str]]:
    finds = ["No Finding", "Infiltration", "Effusion|Mass", "Hernia", "No Finding", "Atelectasis|Cardiomegaly"]
    return [(f"{pid:08d}_{k:03d}.png", finds[(pid + k) % len(finds)], pid, "PA" if k == 0 else "AP")
            for pid in range(1, 7) for k in range(2)]


# --- the real sample -----------------------------------------------------------------------------------------

@pytest.mark.data
def test_real_sample_counts_boxes_and_patient_wise_split(shared_data):
    root = shared_data / "nih-chestxray14-sample"
    t = NIHChestXray14.table(root)
    assert t.labels == LABELS and t.task == "multilabel"
    assert len(t.records) == 621
    pos = dict(zip(t.labels, t.targets.sum(0).astype(int)))
    assert pos["Infiltration"] == 123
    assert pos == {"Atelectasis": 92, "Cardiomegaly": 56, "Effusion": 82, "Infiltration": 123, "Mass": 72,
                   "Nodule": 89, "Pneumonia": 32, "Pneumothorax": 44, "Consolidation": 81, "Edema": 18,
                   "Emphysema": 41, "Fibrosis": 56, "Pleural_Thickening": 68, "Hernia": 20}
    assert t.report["rows_in_table"] == 112120 and t.report["missing_images"] == 112120 - 621
    assert t.records["view"].value_counts().to_dict() == {"PA": 518, "AP": 103}
    by_split = {s: set(t.records.loc[t.records["split"] == s, "patient_id"]) for s in ("train", "val", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    assert len(t.boxes) == 12 and t.report["images_with_boxes"] == 12

    # every box is the official 1024-frame box times 256/1024
    raw = pd.read_csv(root / "BBox_List_2017.csv.gz").iloc[:, :6]
    raw.columns = ["image", "label", "x", "y", "w", "h"]
    raw = raw[raw["image"].isin(t.boxes)]
    assert len(raw) == sum(len(b) for b in t.boxes.values())
    for r in raw.itertuples():
        (box,) = [b for b in t.boxes[r.image] if np.isclose(b["x"], r.x / 4)]
        assert box["label"] == ("Infiltration" if r.label == "Infiltrate" else r.label)
        np.testing.assert_allclose([box["y"], box["w"], box["h"]], [r.y / 4, r.w / 4, r.h / 4])

    # dataset.truth: the box region of its label, in the stored 256 px frame and resized
    split = t.records.loc[t.records["image_id"] == raw["image"].iloc[0], "split"].iloc[0]
    ds = NIHChestXray14(root, split)
    i = int(np.flatnonzero(ds.data.records["image_id"] == raw["image"].iloc[0])[0])
    b = ds.boxes[raw["image"].iloc[0]][0]
    truth = ds.truth(i)
    k = LABELS.index(b["label"])
    assert truth.shape == (14, 256, 256)
    assert truth[k].sum() == pytest.approx(b["w"] * b["h"], rel=0.25)
    assert truth[k, int(b["y"] + b["h"] / 2), int(b["x"] + b["w"] / 2)]
    assert ds.truth(i, 64).shape == (14, 64, 64)


@pytest.mark.data
def test_real_sample_view_filter(shared_data):
    t = NIHChestXray14.table(shared_data / "nih-chestxray14-sample", views=("ap",))
    assert len(t.records) == 103 and set(t.records["view"]) == {"AP"}


# --- small tables in tmp_path ------------------------------------------------------------------------------

def test_no_finding_is_all_negative_and_findings_map_to_columns(tmp_path):
    rows = twelve_rows()
    t = NIHChestXray14.table(make_nih(tmp_path, rows))
    assert len(t.records) == 12
    by_id = dict(zip(t.records["image_id"], t.targets))
    for img, finds, *_ in rows:
        expected = np.zeros(14, np.float32)
        for f in finds.split("|"):
            if f != "No Finding":
                expected[LABELS.index(f)] = 1
        np.testing.assert_array_equal(by_id[img], expected)
    assert t.mask.min() == 1


def test_official_lists_and_nested_image_folders(tmp_path):
    rows = twelve_rows()
    make_nih(tmp_path, rows, folder="images_001/images")
    test_pids = {5, 6}
    (tmp_path / "test_list.txt").write_text("".join(f"{r[0]}\n" for r in rows if r[2] in test_pids))
    (tmp_path / "train_val_list.txt").write_text("".join(f"{r[0]}\n" for r in rows if r[2] not in test_pids))
    t = NIHChestXray14.table(tmp_path, val_fraction=0.25)
    assert len(t.records) == 12 and "official" in t.report["split_source"]
    split_of = dict(zip(t.records["image_id"], t.records["split"]))
    assert {split_of[r[0]] for r in rows if r[2] in test_pids} == {"test"}
    assert sorted(t.records["split"].value_counts().to_dict().items()) == [("test", 4), ("train", 6), ("val", 2)]
    for pid, grp in t.records.groupby("patient_id"):
        assert grp["split"].nunique() == 1  # val carved patient-wise
    assert all("images_001/images" in p for p in t.records["path"])


def test_seeded_split_is_patient_wise_and_reproducible(tmp_path):
    rows = [(f"{pid:08d}_{k:03d}.png", "No Finding", pid, "PA") for pid in range(1, 41) for k in range(3)]
    make_nih(tmp_path, rows, size=8)
    a = NIHChestXray14.load_table(tmp_path, seed=1)
    b = NIHChestXray14.load_table(tmp_path, seed=1)
    c = NIHChestXray14.load_table(tmp_path, seed=2)
    assert (a.records["split"] == b.records["split"]).all() and not (a.records["split"] == c.records["split"]).all()
    assert a.records.groupby("patient_id")["split"].nunique().max() == 1
    assert a.records["split"].value_counts().to_dict() == {"train": 84, "test": 24, "val": 12}  # 28/8/4 patients


def test_missing_images_are_skipped_and_counted_or_an_error(tmp_path):
    rows = twelve_rows()
    make_nih(tmp_path, rows, skip=(rows[0][0], rows[5][0]))
    t = NIHChestXray14.table(tmp_path)
    assert len(t.records) == 10 and t.report["missing_images"] == 2
    assert t.report["missing_examples"][0].endswith(rows[0][0])
    with pytest.raises(DatasetError, match=f"2 of the 12 images listed in .*Data_Entry_2017.csv do not exist.*"
                                           f"{rows[0][0]}"):
        NIHChestXray14.load_table(tmp_path, missing="error")


def test_missing_image_at_read_time(tmp_path):
    make_nih(tmp_path, twelve_rows())
    ds = NIHChestXray14(tmp_path, "train", val_fraction=0.0, test_fraction=0.0)
    ds.path(0).unlink()
    from medistill.data import ImageReadError

    with pytest.raises(ImageReadError, match="file not found"):
        ds[0]
    ds.skip_unreadable = True
    sample = ds[0]  # replaced by a blank image with an all-zero mask, and remembered
    assert float(sample["mask"].sum()) == 0 and ds.unreadable == [str(ds.path(0))]


def test_boxes_scale_to_the_stored_size(tmp_path):
    rows = twelve_rows()
    make_nih(tmp_path, rows, size=512)
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        f"{rows[1][0]},Infiltrate,100,200,300,400\n{rows[1][0]},Mass,0,0,1024,1024\n"
        "99999999_000.png,Mass,1,2,3,4\n")  # an image not in the dataset: ignored
    t = NIHChestXray14.table(tmp_path)
    assert t.boxes == {rows[1][0]: [{"label": "Infiltration", "x": 50.0, "y": 100.0, "w": 150.0, "h": 200.0},
                                    {"label": "Mass", "x": 0.0, "y": 0.0, "w": 512.0, "h": 512.0}]}


def test_gzipped_table_is_read(tmp_path):
    make_nih(tmp_path, twelve_rows())
    text = (tmp_path / "Data_Entry_2017.csv").read_bytes()
    (tmp_path / "Data_Entry_2017.csv").unlink()
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").write_bytes(gzip.compress(text))
    assert len(NIHChestXray14.load_table(tmp_path).records) == 12


def test_csv_without_expected_columns(tmp_path):
    make_nih(tmp_path, twelve_rows())
    df = pd.read_csv(tmp_path / "Data_Entry_2017.csv").drop(columns=["Patient ID"])
    df.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.raises(DatasetError, match=r"Data_Entry_2017.csv: missing columns \['Patient ID'\]"):
        NIHChestXray14.load_table(tmp_path)


def test_no_table_at_all(tmp_path):
    with pytest.raises(DatasetError, match="no Data_Entry_2017"):
        NIHChestXray14.load_table(tmp_path)


def test_unknown_label_names_it_and_lists_valid(tmp_path):
    make_nih(tmp_path, twelve_rows())
    with pytest.raises(DatasetError, match=r"unknown label 'Pneumonitis'; valid labels: Atelectasis, .*Hernia"):
        NIHChestXray14.load_table(tmp_path, labels=("Effusion", "Pneumonitis"))
    t = NIHChestXray14.load_table(tmp_path, labels=("hernia", "pleural thickening"))  # case / space tolerant
    assert t.labels == ["Hernia", "Pleural_Thickening"] and t.targets.shape == (12, 2)
    assert t.targets[:, 0].sum() == 2


def test_unknown_view_and_empty_split(tmp_path):
    make_nih(tmp_path, twelve_rows())
    with pytest.raises(DatasetError, match=r"no rows of Data_Entry_2017.csv have views \['LL'\].*'AP', 'PA'"):
        NIHChestXray14.load_table(tmp_path, views=("LL",))
    with pytest.raises(DatasetError, match="the 'test' split is empty"):
        NIHChestXray14(tmp_path, "test", test_fraction=0.0)
