"""MedMNIST .npz: the real BreastMNIST (official 546/78/156 split, labels shaped (N,)), and small files in
tmp_path for (N, 1) and multi-label (N, 14) labels, RGB images, missing splits and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medistill.data import DatasetError
from medistill.data.medmnist import MedMNIST
from medistill.data.nih import LABELS as NIH_LABELS


def write_npz(path: Path, *, n: dict[str, int], size: int = 28, rgb: bool = False, labels: str = "(N,1)",
              classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for s, k in n.items():
        shape = (k, size, size, 3) if rgb else (k, size, size)
        arrays[f"{s}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if labels == "multi":
            arrays[f"{s}_labels"] = (rng.random((k, 14)) < 0.3).astype(np.uint8)
        else:
            y = np.arange(k) % classes
            arrays[f"{s}_labels"] = y[:, None].astype(np.uint8) if labels == "(N,1)" else y.astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.data
def test_real_breastmnist(shared_data):
    root = shared_data / "medmnist"  # a folder holding one .npz
    t = MedMNIST.table(root)
    assert t.task == "multiclass" and len(t.labels) == 2
    assert t.records["split"].value_counts().to_dict() == {"train": 546, "test": 156, "val": 78}
    z = np.load(root / "breastmnist.npz")
    assert t.targets.sum(0).tolist() == [float((np.concatenate([z[f"{s}_labels"] for s in ("train", "val", "test")])
                                                == c).sum()) for c in (0, 1)] == [210.0, 570.0]
    ds = MedMNIST(root / "breastmnist.npz", "val")
    assert len(ds) == 78 and ds.stored_size(5) == (28, 28)
    np.testing.assert_allclose(ds.read(5), z["val_images"][5] / 255.0, atol=1e-6)
    s = ds[5]
    assert s["image"].shape == (1, 128, 128)
    assert s["target"].tolist() == np.eye(2)[int(z["val_labels"][5])].tolist()
    assert ds.truth(5) is None


def test_multilabel_chestmnist_gets_the_nih_names(tmp_path):
    path = write_npz(tmp_path / "chestmnist_64.npz", n={"train": 20, "val": 5, "test": 6}, size=64, labels="multi")
    t = MedMNIST.load_table(path)
    assert t.task == "multilabel" and t.labels == NIH_LABELS and t.targets.shape == (31, 14)
    z = np.load(path)
    np.testing.assert_array_equal(t.targets[:20], z["train_labels"])
    sub = MedMNIST.load_table(path, labels=("Hernia", "effusion"))
    assert sub.labels == ["Hernia", "Effusion"]
    np.testing.assert_array_equal(sub.targets[:20, 0], z["train_labels"][:, 13])
    ds = MedMNIST(path, "test", labels=("Hernia", "effusion"))
    assert ds.stored_size(0) == (64, 64) and ds[0]["target"].shape == (2,)


def test_rgb_images_and_n1_labels(tmp_path):
    path = write_npz(tmp_path / "pathmnist.npz", n={"train": 9, "val": 3, "test": 3}, rgb=True, classes=9)
    ds = MedMNIST(path, "train")
    assert len(ds.labels) == 9  # class_0 .. class_8, or the names of medmnist's INFO when it is installed
    img = ds.read(4)
    assert img.shape == (28, 28, 3)
    np.testing.assert_allclose(img, np.load(path)["train_images"][4] / 255.0, atol=1e-6)
    assert ds[4]["target"].argmax().item() == 4
    assert MedMNIST(path, "train", preprocess=None)[0]["image"].shape[0] == 1  # colour -> gray by default


def test_missing_val_split_is_carved_stratified(tmp_path):
    path = write_npz(tmp_path / "x.npz", n={"train": 60, "test": 10}, labels="(N,)")
    t = MedMNIST.load_table(path, val_fraction=0.2)
    counts = t.records["split"].value_counts().to_dict()
    assert counts == {"train": 48, "val": 12, "test": 10}
    val = t.split_rows("val")
    assert t.targets[val].sum(0).tolist() == [4.0, 4.0, 4.0]  # stratified by class


def test_bad_files(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"bad.npz: missing arrays \['train_images', 'train_labels'\]"):
        MedMNIST.load_table(tmp_path / "bad.npz")
    write_npz(tmp_path / "other.npz", n={"train": 3})
    with pytest.raises(DatasetError, match=r"expected exactly one .npz file .*\['bad.npz', 'other.npz'\]"):
        MedMNIST.load_table(tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="broken.npz: cannot be read as a MedMNIST .npz"):
        MedMNIST.load_table(tmp_path / "broken.npz")
    with pytest.raises(DatasetError, match=r"single-label with classes"):
        MedMNIST.load_table(tmp_path / "other.npz", labels=("class_1",))


@pytest.mark.data
def test_real_label_names_without_the_medmnist_package(tmp_path, shared_data):
    """Issue 15, item 9: BreastMNIST's classes are named as MedMNIST names them, not class_0 / class_1."""
    t = MedMNIST.load_table(shared_data / "medmnist" / "breastmnist.npz")
    assert t.labels == ["malignant", "normal, benign"]
    path = write_npz(tmp_path / "pathmnist.npz", n={"train": 9, "val": 3, "test": 3}, rgb=True, classes=9)
    assert MedMNIST.load_table(path).labels[:2] == ["adipose", "background"]
    part = write_npz(tmp_path / "octmnist.npz", n={"train": 3}, classes=3)  # class 3 ("normal") absent here
    assert MedMNIST.load_table(part).labels == ["choroidal neovascularization", "diabetic macular edema", "drusen",
                                                "normal"]
