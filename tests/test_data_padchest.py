"""PadChest: the safe Labels parser, and slices of the real 160K label table (first 200 rows and rows 40,100 to
40,299, where malformed and empty rows occur) with 16-bit placeholder PNGs at root/<ImageDir>/<ImageID>."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medistill.data import DatasetError
from medistill.data.padchest import LABEL_MAP, PadChest, parse_labels

TABLE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


# --- the parser -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell, expected", [
    ("['normal']", ["normal"]),
    ("['pleural effusion', ' cardiomegaly']", ["pleural effusion", "cardiomegaly"]),
    ("['', 'COPD signs', '']", ["COPD signs"]),
    ("[]", []),
    ("['']", []),
    ('["Crohn\'s", \'a\\\'b\']', ["Crohn's", "a'b"]),
    ("nan", None),
    ("", None),
    (float("nan"), None),
    ("['a', 'b'", None),
    ("normal", None),
    ("['a'] + ['b']", None),
    ("__import__('os').system('echo pwned')", None),
    ("[__import__('os')]", None),
])
def test_parse_labels(cell, expected):
    assert parse_labels(cell) == expected


# --- the real table -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_rows(shared_data) -> pd.DataFrame:
    src = shared_data / "label-tables" / TABLE
    head = pd.read_csv(src, nrows=200, dtype=str, keep_default_na=False)
    mid = pd.read_csv(src, skiprows=range(1, 40101), nrows=200, dtype=str, keep_default_na=False)
    return pd.concat([head, mid], ignore_index=True)


def _png16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)).save(buf, "PNG")
    return buf.getvalue()


def make_padchest(root: Path, df: pd.DataFrame, *, flat: bool = False, skip: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / TABLE, index=False)
    data = _png16()
    for d, name in list(zip(df["ImageDir"], df["ImageID"]))[skip:]:
        q = root / name if flat else root / d / name
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory, real_rows) -> Path:
    return make_padchest(tmp_path_factory.mktemp("padchest"), real_rows)



@pytest.mark.data
def test_malformed_empty_and_excluded_rows_are_counted(root, real_rows):
    t = PadChest.table(root)
    labels = real_rows["Labels"].str.strip()
    assert (labels == "nan").sum() == 1 and labels.isin(["[]", "['']"]).sum() == 2  # the real slice
    assert (labels == "['exclude']").sum() == 1
    assert t.report["rows_in_table"] == 400
    assert t.report["malformed_labels"] == 1 and t.report["empty_labels"] == 2 and t.report["excluded"] == 1
    assert t.report["malformed_examples"][0]["Labels"] == "nan"
    assert len(t.records) == 396 and t.report["missing_images"] == 0
    assert t.labels == list(LABEL_MAP)
    kept = PadChest.table(root, drop_excluded=False)
    assert len(kept.records) == 397


@pytest.mark.data
def test_findings_map_to_the_default_labels(root, real_rows):
    t = PadChest.table(root)
    by_id = dict(zip(t.records["image_id"], t.targets))
    # the first row is ['normal']: all negative
    assert real_rows["Labels"].iloc[0] == "['normal']"
    assert by_id[real_rows["ImageID"].iloc[0]].sum() == 0
    # every row: a label is positive exactly when one of its PadChest strings is listed
    for image_id, cell in zip(real_rows["ImageID"], real_rows["Labels"]):
        if image_id not in by_id:
            continue
        findings = set(parse_labels(cell))
        expected = [float(bool(findings & set(strings))) for strings in LABEL_MAP.values()]
        np.testing.assert_array_equal(by_id[image_id], expected)
    pos = dict(zip(t.labels, t.targets.sum(0).astype(int)))
    assert pos["Cardiomegaly"] == 31 and pos["Effusion"] == 23 and pos["Atelectasis"] == 36
    assert t.records.groupby("patient_id")["split"].nunique().max() == 1


@pytest.mark.data
def test_projection_filter(root, real_rows):
    t = PadChest.table(root, views=("PA",))
    assert set(t.records["view"]) == {"PA"}
    assert len(t.records) == 396 - t.report["filtered_by_view"]
    ap = PadChest.table(root, views=("AP",))  # AP also matches AP_horizontal (supine AP)
    assert set(ap.records["view"]) == {"AP", "AP_horizontal"}
    assert ap.records["view"].value_counts().to_dict() == {"AP_horizontal": 29, "AP": 2}
    with pytest.raises(DatasetError, match=r"no rows of .* have projections \['XX'\]; projections in the table"):
        PadChest.load_table(root, views=("XX",))


@pytest.mark.data
def test_configurable_label_set(root):
    t = PadChest.table(root, labels=("COPD signs", "effusion", "Tubes=NSG tube|endotracheal tube"))
    assert t.labels == ["COPD signs", "Effusion", "Tubes"]
    assert t.report["label_map"]["Tubes"] == ["NSG tube", "endotracheal tube"]
    assert t.targets[:, 0].sum() > 0 and t.targets[:, 2].sum() > 0
    with pytest.raises(DatasetError, match=r"unknown label 'Pneumonitis'; valid labels: the defaults Atelectasis"):
        PadChest.load_table(root, labels=("Pneumonitis",))
    with pytest.raises(DatasetError, match=r"label 'X=no such finding': unknown finding 'no such finding'"):
        PadChest.load_table(root, labels=("X=no such finding",))


@pytest.mark.data
def test_flat_layout_missing_images_and_16bit_decoding(tmp_path, real_rows):
    root = make_padchest(tmp_path, real_rows.iloc[:50], flat=True, skip=5)
    t = PadChest.table(root)
    assert t.report["missing_images"] == 5 and len(t.records) == 45
    ds = PadChest(root, "train")
    img = ds.read(0)
    assert img.dtype == np.float32 and img.max() == pytest.approx(63000 / 65535)  # 16-bit depth kept
    assert ds[0]["image"].shape == (1, 128, 128)


@pytest.mark.data
def test_csv_without_expected_columns(tmp_path, real_rows):
    root = make_padchest(tmp_path, real_rows.iloc[:5].drop(columns=["Labels"]))
    with pytest.raises(DatasetError, match=rf"{TABLE}: missing columns \['Labels'\]"):
        PadChest.load_table(root)
