"""CheXpert on a slice of the real train.csv (first 300 rows) with placeholder JPEGs at the paths it names:
uncertainty policies on named rows, blank handling, frontal filter, competition labels, path layouts, splits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medistill.data import DatasetError
from medistill.data.chexpert import COMPETITION, LABELS, CheXpert

pytestmark = pytest.mark.data

# row 1 of the real table: Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion are -1 (uncertain),
# Lung Opacity and Fracture 1, the rest blank
ROW = "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg"


@pytest.fixture(scope="module")
def real_rows(shared_data) -> pd.DataFrame:
    return pd.read_csv(shared_data / "label-tables" / "chexpert_train.csv.gz", nrows=300)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_chexpert(parent: Path, df: pd.DataFrame, *, valid: pd.DataFrame | None = None,
                  folder: str = "CheXpert-v1.0-small", skip: int = 0) -> Path:
    """``parent/folder/train.csv`` (+ valid.csv) and a placeholder JPEG at every listed path (bar ``skip``)."""
    root = parent / folder
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "train.csv", index=False)
    frames = [df]
    if valid is not None:
        valid.to_csv(root / "valid.csv", index=False)
        frames.append(valid)
    data = _jpeg()
    paths = pd.concat(frames)["Path"].tolist()
    for p in paths[skip:]:
        q = root / Path(p).relative_to(Path(p).parts[0])
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory, real_rows) -> Path:
    return make_chexpert(tmp_path_factory.mktemp("chexpert"), real_rows)


def row_of(t, path: str = ROW) -> tuple[dict[str, float], dict[str, float]]:
    i = int(np.flatnonzero(t.records["image_id"] == path)[0])
    return dict(zip(t.labels, t.targets[i])), dict(zip(t.labels, t.mask[i]))


def test_named_row_under_each_policy(root, real_rows):
    raw = real_rows.set_index("Path").loc[ROW]
    assert raw["Cardiomegaly"] == -1 and raw["Edema"] == -1 and raw["Atelectasis"] == -1
    assert raw["Lung Opacity"] == 1 and np.isnan(raw["Pneumothorax"])

    tgt, m = row_of(CheXpert.table(root, uncertainty="ignore"))
    assert (tgt["Cardiomegaly"], m["Cardiomegaly"]) == (0, 0)  # U-Ignore: masked out
    assert (tgt["Lung Opacity"], m["Lung Opacity"]) == (1, 1)
    assert (tgt["Pneumothorax"], m["Pneumothorax"]) == (0, 1)  # blank = negative
    tgt, m = row_of(CheXpert.table(root, uncertainty="ones"))
    assert (tgt["Cardiomegaly"], m["Cardiomegaly"]) == (1, 1)  # U-Ones
    tgt, m = row_of(CheXpert.table(root, uncertainty="zeros"))
    assert (tgt["Cardiomegaly"], m["Cardiomegaly"]) == (0, 1)  # U-Zeros
    tgt, m = row_of(CheXpert.table(root, uncertainty="mixed"))
    assert [tgt[k] for k in ("Atelectasis", "Edema", "Cardiomegaly", "Consolidation", "Pleural Effusion")] == \
        [1, 1, 0, 0, 0]
    assert min(m.values()) == 1
    tgt, m = row_of(CheXpert.table(root, blank="ignore"))
    assert m["Pneumothorax"] == 0 and m["Lung Opacity"] == 1


def test_policy_effects_over_the_slice(root, real_rows):
    ign, ones, zeros = (CheXpert.table(root, uncertainty=u) for u in ("ignore", "ones", "zeros"))
    assert len(ign.records) == 300 and ign.report["missing_images"] == 0
    unc = (real_rows[LABELS] == -1).sum().to_numpy()
    pos = (real_rows[LABELS] == 1).sum().to_numpy()
    assert unc[LABELS.index("Atelectasis")] == 37 and pos[LABELS.index("Atelectasis")] == 43  # real figures
    np.testing.assert_array_equal(ign.targets.sum(0), pos)
    np.testing.assert_array_equal((ign.mask == 0).sum(0), unc)
    np.testing.assert_array_equal(ones.targets.sum(0), pos + unc)
    np.testing.assert_array_equal(zeros.targets.sum(0), pos)
    assert zeros.mask.min() == 1 and ones.mask.min() == 1
    assert ign.report["uncertain"]["Atelectasis"] == 37


def test_frontal_only_and_views(root, real_rows):
    t = CheXpert.table(root, frontal_only=True)
    n_frontal = int((real_rows["Frontal/Lateral"] == "Frontal").sum())
    assert n_frontal == 236 and len(t.records) == 236 and t.report["filtered_lateral"] == 64
    assert set(t.records["view"]) <= {"AP", "PA"}
    pa = CheXpert.table(root, views=("PA",))
    assert len(pa.records) == int((real_rows["AP/PA"] == "PA").sum()) == 65


def test_competition_labels_and_unknown_label(root):
    t = CheXpert.table(root, labels=("competition",))
    assert t.labels == COMPETITION and t.targets.shape == (300, 5)
    with pytest.raises(DatasetError, match=r"unknown label 'Pneumonitis'.*valid labels: No Finding, .*Support Devices"):
        CheXpert.load_table(root, labels=("Edema", "Pneumonitis"))


def test_patient_wise_splits_with_valid_as_test(tmp_path, real_rows):
    valid = real_rows.iloc[:20].copy()
    valid["Path"] = [p.replace("/train/", "/valid/").replace("patient0", "patient6") for p in valid["Path"]]
    root = make_chexpert(tmp_path, real_rows, valid=valid)
    t = CheXpert.table(root, val_fraction=0.2)
    counts = t.records["split"].value_counts().to_dict()
    assert counts["test"] == 20 and counts["train"] + counts["val"] == 300 and counts["val"] > 0
    assert t.records.groupby("patient_id")["split"].nunique().max() == 1
    assert t.records["patient_id"].iloc[0] == "patient00001"


@pytest.mark.parametrize("layout", ["dataset folder", "its parent", "renamed folder"])
def test_path_layouts(tmp_path, real_rows, layout):
    rows = real_rows.iloc[:30]
    if layout == "renamed folder":
        root = make_chexpert(tmp_path, rows, folder="my-chexpert")
    else:
        root = make_chexpert(tmp_path, rows)
        root = root if layout == "dataset folder" else tmp_path
    t = CheXpert.load_table(root)
    assert len(t.records) == 30 and t.report["missing_images"] == 0
    assert Path(t.records["path"].iloc[0]).is_file()


def test_missing_images_counted(tmp_path, real_rows):
    root = make_chexpert(tmp_path, real_rows.iloc[:30], skip=4)
    t = CheXpert.load_table(root)
    assert len(t.records) == 26 and t.report["missing_images"] == 4


def test_csv_without_expected_columns(tmp_path, real_rows):
    root = make_chexpert(tmp_path, real_rows.iloc[:10].drop(columns=["Edema", "Frontal/Lateral"]))
    with pytest.raises(DatasetError, match=r"train.csv: missing columns \['Edema'\]"):
        CheXpert.load_table(root)
    with pytest.raises(DatasetError, match=r"train.csv: missing columns \['Frontal/Lateral'\]"):
        CheXpert.load_table(root, labels=("Cardiomegaly",), frontal_only=True)


def test_invalid_cells_are_masked_not_crashing(tmp_path, real_rows):
    rows = real_rows.iloc[:10].copy()
    rows["Edema"] = rows["Edema"].astype(object)
    rows.loc[0, "Edema"] = "maybe"
    t = CheXpert.load_table(make_chexpert(tmp_path, rows))
    assert t.report["invalid_labels"] == {"Edema": 1}
    assert t.mask[0, LABELS.index("Edema")] == 0


def test_dataset_sample(root):
    ds = CheXpert(root, "train", uncertainty="ones", labels=("competition",))
    s = ds[0]
    assert s["image"].shape == (1, 128, 128) and s["target"].shape == (5,) and s["mask"].shape == (5,)
    assert s["meta"]["patient_id"].startswith("patient") and s["meta"]["view"] in ("AP", "PA", "Lateral")


def test_policies_from_the_command_line(root, real_rows, capsys):
    import json

    from medistill.cli import main

    rc = main(["data", "inspect", "--dataset", "chexpert", "--root", str(root), "--uncertainty", "ones",
               "--blank", "ignore", "--labels", "competition", "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0 and s["labels"] == COMPETITION and s["num_images"] == 300
    for lab in COMPETITION:
        col = real_rows[lab]
        assert s["masked"][lab] == int(col.isna().sum())  # blank ignored; -1 counted as positive (U-Ones)
        assert s["positives"][lab] == int(col.isin([1, -1]).sum())
        assert s["uncertain"][lab] == int((col == -1).sum())
