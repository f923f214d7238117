"""``medistill data inspect``: the JSON figures on the real NIH sample and brain tumour folders, the text table,
--check-readable, DICOM folders, the phantom generated into an empty root, config files and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medistill.cli import main
from medistill.data.table import Table
from medistill.data.inspect import summarize_table


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["data", "inspect", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def make_folder(root: Path, n: int = 4) -> Path:
    for split in ("train", "test"):
        for c, value in (("benign", 60), ("malignant", 190)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                Image.fromarray(np.full((12, 12), value + k + (0 if split == "train" else 20), np.uint8)).save(
                    root / split / c / f"{k}.png")
    return root


@pytest.mark.data
def test_nih_sample_json(shared_data, capsys):
    rc, out, _ = run_cli(capsys, "--dataset", "nih", "--root", str(shared_data / "nih-chestxray14-sample"), "--json")
    s = json.loads(out)
    assert rc == 0
    assert s["num_images"] == 621 and s["positives"]["Infiltration"] == 123
    assert sum(v["num_images"] for v in s["splits"].values()) == 621
    assert sum(v["positives"]["Infiltration"] for v in s["splits"].values()) == 123
    assert s["patient_overlap"] == {"train/val": 0, "train/test": 0, "val/test": 0}
    assert s["views"] == {"PA": 518, "AP": 103}
    assert s["missing_images"] == 112120 - 621 and s["boxes"] == {"images": 12, "boxes": 12}


@pytest.mark.data
def test_brain_tumour_folder_json(shared_data, capsys):
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(shared_data / "brain-tumor-mri"), "--json")
    s = json.loads(out)
    assert s["num_images"] == 6592
    assert s["classes"] == ["glioma", "meningioma", "notumor", "pituitary"] and s["task"] == "multiclass"
    assert sum(s["positives"].values()) == 6592
    assert s["splits"]["test"]["num_images"] == 1280
    assert s["splits"]["train"]["num_images"] + s["splits"]["val"]["num_images"] == 5312
    assert s["duplicates"]["duplicates_across_splits"] == 0  # the README says they were removed
    # ... byte for byte; saved again with other bytes, 298 test images are training images (all of one class)
    nc = s["near_copies"]
    assert nc["test"] == {"images": 1280, "near_copies": 298} and nc["same_class"] == 1.0


def test_text_table_and_check_readable(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    (root / "train" / "benign" / "empty.png").write_bytes(b"")
    good = (root / "train" / "malignant" / "0.png").read_bytes()
    (root / "train" / "malignant" / "cut.png").write_bytes(good[:30])
    (root / "test" / "benign" / "copy.png").write_bytes(good)  # the same bytes as a training image
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(root), "--val-fraction", "0", "--check-readable")
    assert rc == 0
    lines = out.splitlines()
    assert "images: 19" in lines[1]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["benign"], ["malignant"])}
    assert rows == {"benign": ["5", "5", "10"], "malignant": ["5", "4", "9"]}  # train, test, total
    assert "unreadable images: 2 of 19 checked" in out and "empty.png: empty file" in out
    assert "duplicate images (identical bytes): 1 within, 1 across splits" in out
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(root), "--check-readable", "--json")
    s = json.loads(out)
    assert s["unreadable"]["count"] == 2 and s["unreadable"]["checked"] == 19
    assert sorted(Path(f["path"]).name for f in s["unreadable"]["files"]) == ["cut.png", "empty.png"]


def test_folder_of_dicom_files(tmp_path, capsys):
    from imaging import write_dicom  # tests/ is on sys.path (pytest's rootdir conftest)

    root = tmp_path / "dcm"
    for c, photometric in (("a", "MONOCHROME1"), ("b", "MONOCHROME2")):
        (root / c).mkdir(parents=True)
        for k in range(5):
            write_dicom(root / c / f"{k}.dcm", (np.arange(48).reshape(6, 8) * (k + 1) * 10).astype(np.uint16),
                        photometric=photometric)
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(root), "--check-readable", "--json")
    s = json.loads(out)
    assert rc == 0 and s["num_images"] == 10 and s["classes"] == ["a", "b"] and s["unreadable"]["count"] == 0
    from medistill.data.folder import ImageFolder

    ds = ImageFolder(root, "train", val_fraction=0.0, test_fraction=0.2)
    sample = ds[0]
    assert sample["image"].shape == (1, 128, 128) and ds.stored_size(0) == (6, 8)
    first = ds.read(0)
    assert first.shape == (6, 8)
    # MONOCHROME1 files (class a) are inverted: their first pixel (the smallest value) is white
    assert first[0, 0] == (1.0 if ds.meta(0)["path"].split("/")[-2] == "a" else 0.0)


def test_phantom_is_generated_into_an_empty_root(tmp_path, capsys, monkeypatch):
    import medistill.data.phantom as phantom

    real = phantom.ensure
    monkeypatch.setattr(phantom, "ensure", lambda root, **kw: real(root, num_images=40, size=32, seed=0))
    root = tmp_path / "ph"
    rc, out, _ = run_cli(capsys, "--dataset", "phantom", "--root", str(root), "--json")
    s = json.loads(out)
    assert rc == 0 and (root / "phantom.json").is_file() and len(list((root / "images").glob("*.png"))) == 40
    assert s["num_images"] == 40 and s["labels"][0] == "Cardiomegaly"
    assert s["positives"] == {k: int(v) for k, v in pd.read_csv(root / "labels.csv")[s["labels"]].sum().items()}
    rc, out2, _ = run_cli(capsys, "--dataset", "phantom", "--root", str(root), "--json")  # reused, not regenerated
    assert json.loads(out2)["num_images"] == 40


def test_config_file_with_a_data_section(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"out: runs/x\ndata:\n  dataset: folder\n  root: {root}\n  val_fraction: 0.25\n")
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "--json")
    s = json.loads(out)
    assert rc == 0 and s["num_images"] == 16 and s["splits"]["val"]["num_images"] == 2
    rc, out, _ = run_cli(capsys, "--config", str(cfg), "--val-fraction", "0", "--json")  # flags override
    assert json.loads(out)["splits"]["val"]["num_images"] == 0


def test_errors_are_one_clean_line(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "--dataset", "nih", "--root", str(tmp_path))
    assert rc == 2 and "no Data_Entry_2017" in err and "Traceback" not in err
    rc, out, err = run_cli(capsys, "--dataset", "nih", "--root", str(tmp_path / "absent"))
    assert rc == 2 and "does not exist" in err
    rc, out, err = run_cli(capsys, "--dataset", "mnist", "--root", str(tmp_path))
    assert rc == 2 and "dataset: got 'mnist'" in err
    rc, out, err = run_cli(capsys, "--dataset", "nih")
    assert rc == 2 and "needs --root" in err


def test_patient_overlap_is_reported():
    records = pd.DataFrame({"path": ["a", "b", "c"], "image_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"],
                            "view": ["PA", "PA", "AP"], "split": ["train", "test", "test"]})
    targets = np.array([[1, 0], [1, 1], [0, 0]], np.float32)
    mask = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
    s = summarize_table(Table(["A", "B"], "multilabel", records, targets, mask))
    assert s["patient_overlap"] == {"train/val": 0, "train/test": 1, "val/test": 0}
    assert s["positives"] == {"A": 2, "B": 0} and s["masked"] == {"A": 0, "B": 1}  # a masked 1 is not a positive
    assert s["splits"]["test"]["num_patients"] == 2 and s["views"] == {"PA": 2, "AP": 1}


# --- issue 15, item 3: patients named in file names ------------------------------------------------------------
def eye_folder(root: Path, patients: int = 40) -> Path:
    """Two eyes per patient (``<id>_left.png`` / ``<id>_right.png``) in the patient's class folder."""
    for p in range(patients):
        cls = "disease" if p % 2 else "healthy"
        (root / cls).mkdir(parents=True, exist_ok=True)
        for side in ("left", "right"):
            Image.fromarray(np.full((8, 8), 10 * (p % 20) + (side == "left"), np.uint8)).save(
                root / cls / f"{1000 + p}_{side}.png")
    return root


def test_group_by_keeps_a_patient_in_one_split(tmp_path, capsys):
    root = eye_folder(tmp_path / "eyes")
    from medistill.data.folder import ImageFolder

    ungrouped = ImageFolder.load_table(root, seed=0)
    split_of = ungrouped.records.assign(pid=ungrouped.records["image_id"].str.extract(r"(\d+)_")[0])
    assert (split_of.groupby("pid")["split"].nunique() > 1).any()  # the leak: eyes of one person in two splits

    table = ImageFolder.load_table(root, seed=0, group_by=r"^(\d+)_")
    assert table.records["patient_id"].nunique() == 40
    assert (table.records.groupby("patient_id")["split"].nunique() == 1).all()
    rc, out, err = run_cli(capsys, "--dataset", "folder", "--root", str(root), "--group-by", r"^(\d+)_", "--json")
    s = json.loads(out)
    assert rc == 0 and s["num_patients"] == 40 and s["num_images"] == 80
    assert not any(s["patient_overlap"].values()) and "grouping_hint" not in s


def test_inspect_warns_when_names_look_grouped_but_no_grouping_is_given(tmp_path, capsys, caplog):
    root = eye_folder(tmp_path / "eyes")
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(root), "--json")
    s = json.loads(out)
    assert s["num_patients"] == 80  # each image counted as a patient
    assert s["grouping_hint"]["images_in_groups"] == 80 and s["grouping_hint"]["groups"] == 40
    assert "--group-by" in caplog.text
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(root))
    assert "look grouped" in out and "--group-by" in out


def test_group_by_reports_patients_across_given_split_folders(tmp_path, capsys):
    for split, side in (("train", "left"), ("test", "right")):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / split / cls / f"7{cls == 'b'}_{side}.png")
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path), "--group-by", r"^(\w+?)_",
                         "--val-fraction", "0", "--json")
    assert json.loads(out)["patient_overlap"]["train/test"] == 2


def test_group_by_errors_name_the_pattern(tmp_path, capsys):
    from medistill.config import ConfigError
    from medistill.data import DatasetError
    from medistill.data.folder import ImageFolder

    root = eye_folder(tmp_path / "eyes", patients=4)
    with pytest.raises(DatasetError, match=r"group_by '\^\(x\)' does not match 8 of 8 file names"):
        ImageFolder.load_table(root, group_by="^(x)")
    rc, _, err = run_cli(capsys, "--dataset", "folder", "--root", str(root), "--group-by", r"\d+")
    assert rc == 2 and "no capture group" in err
    rc, _, err = run_cli(capsys, "--dataset", "nih", "--root", str(root), "--group-by", r"(\d+)")
    assert rc == 2 and "only folder datasets" in err
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        from medistill.config import DataConfig, build

        build(DataConfig, overrides={"dataset": "folder", "group_by": "(("})


# --- near-identical images (slices of one scan) with no patient in their names ---------------------------------
def scan_folder(root: Path, scans: int = 8, slices: int = 6) -> dict[str, int]:
    """``scans`` smooth random volumes, ``slices`` images each, turning slowly from one field to another (adjacent
    slices correlate at cos(0.1) = 0.995, the ends at 0.88), saved under shuffled names in their scan's class
    folder; returns file name -> scan."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    names = rng.permutation(scans * slices)
    scan_of = {}
    for s in range(scans):
        a, b = (gaussian_filter(rng.normal(size=(64, 64)), 4) for _ in range(2))
        cls = root / ("mild" if s % 2 else "none")
        cls.mkdir(parents=True, exist_ok=True)
        for k in range(slices):
            img = a * np.cos(0.1 * k) + b * np.sin(0.1 * k)
            name = f"img{names[s * slices + k]}.png"
            Image.fromarray(np.clip(128 + 400 * img, 0, 255).astype(np.uint8)).save(cls / name)
            scan_of[name] = s
    return scan_of


def test_group_similar_finds_each_scan_and_keeps_it_in_one_split(tmp_path, capsys):
    from medistill.data.folder import ImageFolder
    from medistill.data.similar import similar_groups

    scan_of = scan_folder(tmp_path / "mri")
    paths = sorted((tmp_path / "mri").rglob("*.png"))
    groups = similar_groups(paths, 0.98)
    truth = np.array([scan_of[p.name] for p in paths])
    assert len(set(groups)) == 8
    assert all(len(set(truth[groups == g])) == 1 for g in set(groups))  # one scan per group, one group per scan

    ungrouped = ImageFolder.load_table(tmp_path / "mri", seed=0, val_fraction=0.25, test_fraction=0.25)
    scans = ungrouped.records["path"].map(lambda p: scan_of[Path(p).name])
    assert (ungrouped.records.groupby(scans)["split"].nunique() > 1).any()  # the leak: one scan in two splits
    table = ImageFolder.load_table(tmp_path / "mri", seed=0, val_fraction=0.25, test_fraction=0.25,
                                   group_similar=0.98)
    scans = table.records["path"].map(lambda p: scan_of[Path(p).name])
    assert (table.records.groupby(scans)["split"].nunique() == 1).all()
    assert set(table.records["split"]) == {"train", "val", "test"}
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path / "mri"), "--group-similar", "0.98",
                         "--val-fraction", "0.25", "--test-fraction", "0.25", "--json")
    s = json.loads(out)
    assert rc == 0 and s["num_patients"] == 8 and not any(s["patient_overlap"].values())
    assert s["report"]["grouped_by"] == "similar >= 0.98"


def test_resplit_draws_every_split_by_patient_when_the_split_folders_share_them(tmp_path, capsys):
    """Split folders holding other slices of the same scans (the Kaggle Alzheimer layout): data inspect shows the
    overlap and suggests --resplit, which ignores the folders and draws train / val / test by scan."""
    import shutil

    from medistill.config import ConfigError, DataConfig, build
    from medistill.data.folder import ImageFolder

    scan_of = scan_folder(tmp_path / "flat", scans=10)
    for path in sorted((tmp_path / "flat").rglob("*.png")):  # a third of each scan's slices in test/
        split = "test" if int(path.stem[3:]) % 3 == 0 else "train"
        (tmp_path / "mri" / split / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "mri" / split / path.parent.name / path.name)
    root = str(tmp_path / "mri")
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", root, "--group-similar", "0.98")
    assert rc == 0 and "the split folders are not split by patient" in out and "--resplit" in out
    table = ImageFolder.load_table(tmp_path / "mri", seed=0, val_fraction=0.2, test_fraction=0.2,
                                   group_similar=0.98, resplit=True)
    scans = table.records["path"].map(lambda p: scan_of[Path(p).name])
    assert (table.records.groupby(scans)["split"].nunique() == 1).all()
    assert set(table.records["split"]) == {"train", "val", "test"} and "resplit" in table.report
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", root, "--group-similar", "0.98", "--resplit",
                         "--val-fraction", "0.2", "--test-fraction", "0.2", "--json")
    assert rc == 0 and not any(json.loads(out)["patient_overlap"].values())
    with pytest.raises(ConfigError, match="resplit: only folder datasets"):
        build(DataConfig, overrides={"dataset": "nih", "resplit": "true"})


@pytest.mark.data
def test_group_similar_finds_the_alzheimer_subjects_that_train_and_test_share(shared_data):
    """The Kaggle Alzheimer set's ModerateDemented class: 52 training and 12 test slices of two subjects (32 each);
    its file names say nothing of that."""
    from medistill.data.similar import similar_groups

    root = shared_data / "alzheimer-mri"
    train = sorted((root / "train" / "ModerateDemented").glob("*.jpg"))
    test = sorted((root / "test" / "ModerateDemented").glob("*.jpg"))
    assert (len(train), len(test)) == (52, 12)
    groups = similar_groups(train + test, 0.98)
    assert sorted(np.bincount(groups)) == [32, 32]
    assert set(groups[:52]) == set(groups[52:]) == {0, 1}  # each subject has slices in both folders


def test_group_similar_errors_name_the_option(tmp_path, capsys):
    from medistill.config import ConfigError, DataConfig, build

    with pytest.raises(ConfigError, match="not both"):
        build(DataConfig, overrides={"dataset": "folder", "group_by": "(x)", "group_similar": "0.98"})
    with pytest.raises(ConfigError, match=r"group_similar: got 1\.5"):
        build(DataConfig, overrides={"dataset": "folder", "group_similar": "1.5"})
    rc, _, err = run_cli(capsys, "--dataset", "nih", "--root", str(tmp_path), "--group-similar", "0.98")
    assert rc == 2 and "only folder datasets" in err


def copies_folder(root: Path) -> dict[str, str]:
    """train/ with 8 independent smooth images in two classes; test/ with 3 of them saved again as noisy JPEGs
    (other bytes, same picture) and 3 new images; returns test file name -> the training file it copies."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)

    def field() -> np.ndarray:
        return np.clip(128 + 400 * gaussian_filter(rng.normal(size=(64, 64)), 4), 0, 255)

    train = {}
    for k in range(8):
        cls = root / "train" / ("mild" if k % 2 else "none")
        cls.mkdir(parents=True, exist_ok=True)
        train[k] = (cls.name, field())
        Image.fromarray(train[k][1].astype(np.uint8)).save(cls / f"tr{k}.png")
    copies = {}
    for j, k in enumerate((0, 3, 6)):
        cls = root / "test" / train[k][0]
        cls.mkdir(parents=True, exist_ok=True)
        noisy = np.clip(train[k][1] + rng.normal(0, 3, (64, 64)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(cls / f"te{j}.jpg", quality=85)
        copies[f"te{j}.jpg"] = f"tr{k}.png"
    for j in range(3, 6):
        Image.fromarray(field().astype(np.uint8)).save(root / "test" / ("mild" if j % 2 else "none") / f"te{j}.png")
    return copies


def test_near_copies_of_training_images_are_counted_and_can_be_dropped(tmp_path, capsys):
    from medistill.data.folder import ImageFolder
    from medistill.data.similar import near_copies

    copies = copies_folder(tmp_path / "mri")
    paths = sorted((tmp_path / "mri").rglob("*.*"))
    splits = [p.parts[-3] for p in paths]
    copy, corr, row = near_copies(paths, splits, 0.98)
    assert sorted(p.name for p, c in zip(paths, copy) if c) == sorted(copies)
    assert all(paths[row[i]].name == copies[paths[i].name] and corr[i] >= 0.98 for i in np.flatnonzero(copy))
    assert np.nanmax(np.where(copy, np.nan, corr)) < 0.9  # the new test images are nobody's copy

    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path / "mri"), "--val-fraction", "0",
                         "--json")
    nc = json.loads(out)["near_copies"]
    assert rc == 0 and nc["test"] == {"images": 6, "near_copies": 3} and nc["same_class"] == 1.0
    assert {(e["image"].split("/")[-1], e["train_image"].split("/")[-1]) for e in nc["examples"]} == set(copies.items())
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path / "mri"), "--val-fraction", "0")
    assert "near copies of training images (thumbnail correlation >= 0.98): test 3 of 6" in out
    assert "--drop-near-copies 0.98" in out

    table = ImageFolder.load_table(tmp_path / "mri", val_fraction=0.0, drop_near_copies=0.98)
    kept = table.records[table.records["split"] == "test"]["image_id"].map(lambda s: Path(s).name)
    assert sorted(kept) == ["te3.png", "te4.png", "te5.png"]
    assert table.report["near_copies_dropped"] == {"threshold": 0.98, "val": 0, "test": 3}
    assert len(table.targets) == len(table.records) == 11
    rc, out, _ = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path / "mri"), "--val-fraction", "0",
                         "--drop-near-copies", "0.98", "--json")
    assert json.loads(out)["near_copies"]["test"] == {"images": 3, "near_copies": 0}


def test_near_copy_options_name_what_is_wrong(tmp_path, capsys):
    from medistill.config import ConfigError, DataConfig, build

    with pytest.raises(ConfigError, match="drop_near_copies: only folder datasets"):
        build(DataConfig, overrides={"dataset": "nih", "drop_near_copies": "0.98"})
    with pytest.raises(ConfigError, match=r"drop_near_copies: got 1\.2"):
        build(DataConfig, overrides={"dataset": "folder", "drop_near_copies": "1.2"})
    rc, _, err = run_cli(capsys, "--dataset", "folder", "--root", str(tmp_path), "--near-copies", "0.2")
    assert rc == 2 and "near_copies: got 0.2" in err


@pytest.mark.data
def test_the_brain_tumour_test_folder_holds_copies_of_training_images(shared_data):
    """Kaggle's brain tumour MRI set: Testing/notumor/Te-no_0349.jpg is Training/notumor/Tr-no_0445.jpg saved
    again (other bytes); a test image of another patient is not."""
    from medistill.data.similar import near_copies

    root = shared_data / "brain-tumor-mri"
    paths = [root / "Training/notumor/Tr-no_0445.jpg", root / "Training/glioma/Tr-gl_0010.jpg",
             root / "Testing/notumor/Te-no_0349.jpg", root / "Testing/glioma/Te-gl_0010.jpg"]
    assert paths[2].read_bytes() != paths[0].read_bytes()
    copy, corr, row = near_copies(paths, ["train", "train", "test", "test"], 0.98)
    assert copy.tolist() == [False, False, True, False] and corr[2] > 0.9999 and row[2] == 0
    assert corr[3] < 0.8


def test_flat_and_unreadable_images_are_nobodys_copy(tmp_path):
    """Blank frames and broken files make all-zero thumbnails, which lie at one point: they must not join one
    group, nor count as copies of each other."""
    from medistill.data.similar import near_copies, similar_groups

    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths = [tmp_path / n for n in ("a.png", "b.png", "broken.png")]
    assert sorted(similar_groups(paths, 0.98)) == [0, 1, 2]
    copy, corr, row = near_copies(paths, ["train", "test", "test"], 0.98)
    assert not copy.any() and np.isnan(corr).all() and (row == -1).all()
    copy, corr, row = near_copies(paths[:1], ["test"], 0.98)  # no training image: nothing to be a copy of
    assert not copy.any() and np.isnan(corr).all() and (row == -1).all()


def test_an_empty_class_folder_is_said_not_dropped_without_a_word(tmp_path, caplog):
    """``train/rare/`` with no images: the class used to vanish from the labels unseen; now a warning names the
    folder and says the class is left out, and the table's report lists it. An empty class folder in one split
    only (the class has images elsewhere) is named too."""
    from conftest import make_class_folder
    from medistill.data.folder import ImageFolder

    root = make_class_folder(tmp_path / "f", {"common": (6, 3), "middle": (6, 3)})
    (root / "train" / "rare").mkdir()
    (root / "test" / "rare").mkdir()
    (root / "test" / "middle" / "empty-too").mkdir()  # (a sub-folder of a class is not a class)
    for f in (root / "test" / "middle").glob("*.png"):
        f.unlink()
    with caplog.at_level("WARNING", logger="medistill"):
        table = ImageFolder.load_table(root, seed=0, check_duplicates=False)
    assert table.labels == ["common", "middle"]
    said = [r.getMessage() for r in caplog.records if "no images" in r.getMessage()]
    assert len(said) == 2, said
    assert f"{root / 'train' / 'rare'}" in said[0] + said[1] and "class 'rare' is left out" in " ".join(said)
    assert f"{root / 'test' / 'middle'}" in " ".join(said) and "'middle' has no test images" in " ".join(said)
    assert table.report["empty_class_folders"] == ["test/middle", "test/rare", "train/rare"]
