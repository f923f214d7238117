"""Cached consistent KD (FKD): the teacher's outputs on V replayed augmented views per image."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medistill import runs
from medistill.data import Preprocess, build_dataset
from medistill.models import input_config
from medistill.train import run_training
from medistill.train.mixing import Mixer
from medistill.train.views import ViewCache, ViewDataset, view_seed

from test_train import _cfg, teacher_run  # noqa: F401  (the module fixture)


def _views_run(phantom_root: Path, teacher: Path, out: Path, **over: object) -> Path:
    run_training(_cfg(phantom_root, out, **{"distill.teacher": str(teacher), "data.augment": "light",
                                            "distill.teacher_views": 2, "distill.teacher_precision": "fp32",
                                            **over}))
    return out


def _train_views(out: Path) -> ViewDataset:
    cfg = runs.RunDir(out).config()
    inp = runs.RunDir(out).info()["input"]
    ds = build_dataset(cfg.data, "train", Preprocess(inp["size"], 1, tuple(inp["mean"]), tuple(inp["std"]), "light"))
    return ViewDataset(ds, 2, seed=cfg.data.split_seed)


def test_views_are_replayed_exactly_and_cached_with_the_teachers_logits(teacher_run: Path, phantom_root: Path,
                                                                        tmp_path: Path):
    out = _views_run(phantom_root, teacher_run, tmp_path / "fkd")
    assert runs.RunDir(out).info()["distill_mode"] == "views"
    [cache_file] = list(out.glob("teacher_views-*.npy"))
    cached = np.load(cache_file)
    assert cached.shape == (96, 2, 6) and cached.dtype == np.float32
    meta = json.loads(cache_file.with_suffix(".json").read_text())
    assert meta["views_done"] == 2 and meta["seconds"] > 0  # its fill time: a set-up cost of KD
    ds = _train_views(out)
    ds.fix_view(1)
    a, b = ds[5]["image"], ds[5]["image"]
    torch.testing.assert_close(a, b)  # the same view twice
    ds.fix_view(0)
    assert not torch.equal(ds[5]["image"], a)  # another view of the same image
    teacher, _ = runs.load_model(teacher_run)
    with torch.no_grad():
        direct = teacher(a[None]).numpy()[0]
    np.testing.assert_allclose(cached[5, 1], direct, atol=1e-4)  # the logits of exactly that view
    row = next(csv.DictReader(open(out / "history.csv")))
    assert float(row["train_soft"]) > 0
    # a view is what the image's augmentation draws after torch.manual_seed(its seed), the stream caches made before
    # views seeded only the CPU generator were keyed on; and replaying it leaves the caller's RNG where it was
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    torch.manual_seed(view_seed(ds.seed, 5, 1))
    torch.testing.assert_close(ds.base[5]["image"], a)
    torch.random.set_rng_state(before)
    ds.fix_view(1)
    ds[5]
    assert torch.equal(torch.random.get_rng_state(), before)


def test_each_epoch_picks_one_view_per_image_reproducibly():
    ds = ViewDataset(list(range(50)), 4, seed=0)
    ds.set_epoch(0, 0)
    first = ds._choice.copy()
    ds.set_epoch(0, 1)
    assert not np.array_equal(first, ds._choice) and set(first) == {0, 1, 2, 3}
    ds.set_epoch(0, 0)
    np.testing.assert_array_equal(first, ds._choice)


class Tiny:
    """A dataset of ``n`` random 4x4 images with two labels."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.rand(1, 4, 4), "target": torch.zeros(2), "mask": torch.ones(2), "index": i, "meta": {}}


def test_a_partial_cache_continues_and_a_stale_one_is_not_used(tmp_path: Path):
    calls = []

    def teacher(x: torch.Tensor) -> dict:
        calls.append(len(x))
        return {"logits": x.mean(dim=(1, 2, 3))[:, None].repeat(1, 2) + len(calls), "maps": x[:, :, :2, :2]}

    cache = ViewCache(tmp_path / "v.npy")
    full = cache.load_or_compute("k1", ViewDataset(Tiny(6), 3, 0), 4, teacher, torch.device("cpu"))
    assert full["logits"].shape == (6, 3, 2) and full["maps"].shape == (6, 3, 1, 2, 2) and len(calls) == 6
    assert (tmp_path / "v-maps.npy").is_file()
    meta = json.loads((tmp_path / "v.json").read_text())
    meta["views_done"] = 2  # killed while caching view 3
    (tmp_path / "v.json").write_text(json.dumps(meta))
    again = cache.load_or_compute("k1", ViewDataset(Tiny(6), 3, 0), 4, teacher, torch.device("cpu"))
    assert len(calls) == 8  # only view 3 recomputed
    torch.testing.assert_close(again["logits"][:, :2], full["logits"][:, :2])
    cache.load_or_compute("k2", ViewDataset(Tiny(6), 3, 0), 4, teacher, torch.device("cpu"))
    assert len(calls) == 14  # another key: everything recomputed


def test_mixed_views_are_cached_with_the_teachers_logits_on_the_mixed_image(teacher_run: Path, phantom_root: Path,
                                                                            tmp_path: Path):
    """Function matching at plain-training cost: with mixup each cached view is a mix of two images' views, and
    the cache holds the teacher's logits on exactly that mixed image."""
    out = _views_run(phantom_root, teacher_run, tmp_path / "fm", **{"train.mixup": 1.0})
    assert runs.RunDir(out).info()["distill_mode"] == "views"
    [cache_file] = list(out.glob("teacher_views-*.npy"))
    cached = np.load(cache_file)
    plain = _train_views(out)
    mixed = ViewDataset(plain.base, 2, seed=plain.seed, mixer=Mixer(mixup=1.0))
    mixed.fix_view(1)
    item = mixed[5]
    assert 0.0 < item["lam"] < 1.0 and item["view"] == 1
    torch.testing.assert_close(mixed[5]["image"], item["image"])  # replayed exactly
    plain.fix_view(1)
    own = plain[5]
    assert not torch.equal(item["image"], own["image"])
    # the partner: the one image whose view 1 completes the mix
    partner = [j for j in range(len(plain)) if j != 5 and torch.allclose(
        item["image"], item["lam"] * own["image"] + (1 - item["lam"]) * plain[j]["image"], atol=1e-5)]
    assert len(partner) == 1
    torch.testing.assert_close(item["target"], item["lam"] * own["target"]
                               + (1 - item["lam"]) * plain[partner[0]]["target"])
    teacher, _ = runs.load_model(teacher_run)
    with torch.no_grad():
        direct = teacher(item["image"][None]).numpy()[0]
    np.testing.assert_allclose(cached[5, 1], direct, atol=1e-4)
    # the mixing is part of the key: the plain views' cache is another file
    _views_run(phantom_root, teacher_run, tmp_path / "plain", **{"distill.teacher_views_dir": str(out)})
    assert len(list(out.glob("teacher_views-*.npy"))) == 2


def test_mix_pair_mixes_one_pair_from_its_own_rng():
    a = {"image": torch.zeros(1, 10, 10), "target": torch.tensor([1.0, 0.0]), "mask": torch.tensor([1.0, 1.0])}
    b = {"image": torch.ones(1, 10, 10), "target": torch.tensor([0.0, 1.0]), "mask": torch.tensor([1.0, 0.0])}
    state = np.random.get_state()
    m = Mixer(mixup=1.0).mix_pair(a, b, np.random.default_rng(3))
    torch.testing.assert_close(m["image"], torch.full((1, 10, 10), 1 - m["lam"]))
    torch.testing.assert_close(m["target"], torch.tensor([m["lam"], 1 - m["lam"]]))
    torch.testing.assert_close(m["mask"], torch.tensor([1.0, 0.0]))  # kept only where both are valid
    c = Mixer(cutmix=1.0).mix_pair(a, b, np.random.default_rng(4))
    assert c["image"].sum() > 0 and c["image"].mean().item() == pytest.approx(1 - c["lam"])  # lam = share left
    assert Mixer(cutmix=1.0).mix_pair(a, b, np.random.default_rng(4))["lam"] == c["lam"]
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global RNG untouched


def test_caching_reports_progress_per_batch(tmp_path: Path):
    seen: list[tuple] = []
    ViewCache(tmp_path / "v.npy").load_or_compute("k", ViewDataset(Tiny(5), 2, 0), 2,
                                                  lambda x: {"logits": x.mean(dim=(1, 2, 3))[:, None]},
                                                  torch.device("cpu"), on_batch=lambda *a: seen.append(a))
    assert seen == [(1, 2, 2, 5), (1, 2, 4, 5), (1, 2, 5, 5), (2, 2, 2, 5), (2, 2, 4, 5), (2, 2, 5, 5)]


def test_a_cache_another_process_is_filling_is_waited_for_then_read(tmp_path: Path):
    """Two runs sharing a views folder: the second waits on the cache's lock while the first fills it, then reads
    the first one's outputs instead of running its own teacher (the lock is the OS's, so a thread shows it)."""
    from medistill.runs import waiting_lock

    def teacher(calls: list[int]):
        def run(x: torch.Tensor) -> dict:
            calls.append(len(x))
            return {"logits": x.mean(dim=(1, 2, 3))[:, None].repeat(1, 2)}
        return run

    first, second, out = [], [], []
    cache = ViewCache(tmp_path / "v.npy")
    waiter = threading.Thread(target=lambda: out.append(ViewCache(tmp_path / "v.npy").load_or_compute(
        "k", ViewDataset(Tiny(6), 2, 0), 4, teacher(second), torch.device("cpu"))))
    with waiting_lock(tmp_path / "v.lock"):  # the first run, filling the cache
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not second  # waiting, not computing
        filled = cache._load_or_compute("k", ViewDataset(Tiny(6), 2, 0), 4, teacher(first), torch.device("cpu"),
                                        None, None)
    waiter.join(timeout=30)
    assert not waiter.is_alive() and not second and first  # read, not recomputed
    torch.testing.assert_close(out[0]["logits"], filled["logits"])


def test_a_teacher_retrained_in_place_gets_a_new_cache(teacher_run: Path, phantom_root: Path, tmp_path: Path, caplog):
    """The cache key holds a digest of the teacher's weights, not only its path: outputs cached from a teacher's
    old weights are never replayed after it is retrained (or resumed) in place."""
    import shutil

    from medistill.train.teacher import load_teacher

    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    views = tmp_path / "views"
    _views_run(phantom_root, teacher, tmp_path / "a", **{"distill.teacher_views_dir": str(views)})
    _views_run(phantom_root, teacher, tmp_path / "b", **{"distill.teacher_views_dir": str(views)})
    assert len(list(views.glob("teacher_views-*.npy"))) == 1  # same weights: one cache, reused
    model, record = runs.load_model(teacher)
    labels = record["labels"]
    before = load_teacher(str(teacher), labels=labels, channels=1).fingerprint()
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    runs.save_model(runs.RunDir(teacher), model, labels=labels, task=record["task"])
    assert load_teacher(str(teacher), labels=labels, channels=1).fingerprint() != before
    _views_run(phantom_root, teacher, tmp_path / "c", **{"distill.teacher_views_dir": str(views)})
    assert len(list(views.glob("teacher_views-*.npy"))) == 2  # new weights: a new cache, the old one untouched
    # a teacher another process is still training is distilled from with a warning
    with runs.RunDir(teacher).lock(), caplog.at_level("WARNING"):
        info = json.loads((teacher / "run.json").read_text())
        (teacher / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "finished"}))
        load_teacher(str(teacher), labels=labels, channels=1)
    assert "still being trained" in caplog.text


def test_several_teachers_at_another_temperature_get_another_cache(teacher_run: Path, phantom_root: Path,
                                                                    tmp_path: Path):
    """Several teachers' logits are combined at T before they are cached, so T is part of the key: a run at another
    T sharing the views folder must not replay soft targets made for the first T. One teacher's raw logits do not
    depend on T, so runs at several T share its cache."""
    views = tmp_path / "views"
    two = {"distill.teacher": "null", "distill.teachers": f"{teacher_run},{teacher_run}",
           "distill.teacher_views_dir": str(views)}
    _views_run(phantom_root, teacher_run, tmp_path / "t1", **two, **{"distill.temperature": 1.0})
    _views_run(phantom_root, teacher_run, tmp_path / "t4", **two, **{"distill.temperature": 4.0})
    assert len(list(views.glob("teacher_views-*.npy"))) == 2
    single = tmp_path / "single"
    for t in (1.0, 4.0):
        _views_run(phantom_root, teacher_run, tmp_path / f"one{t:g}",
                   **{"distill.teacher_views_dir": str(single), "distill.temperature": t})
    assert len(list(single.glob("teacher_views-*.npy"))) == 1


# --- a corrupt cache is said in one line and rebuilt (issue 37, item 6) ------------------------------------------
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _reshape(path: Path) -> None:
    a = np.load(path)
    np.save(path, a[:, :2])  # a view short: shape (6, 2, ...) for 3 views


def _wrong_rows(path: Path) -> None:
    a = np.load(path)
    np.save(path, np.concatenate([a, a[:1]]))  # 7 images' rows for 6


def _meta(tmp_path: Path, **changes: object) -> None:
    meta = json.loads((tmp_path / "v.json").read_text())
    meta.update(changes)
    (tmp_path / "v.json").write_text(json.dumps(meta))


CORRUPTIONS = {
    "truncated logits": (lambda d: _truncate(d / "v.npy"), "v.npy", "cannot be read"),
    "truncated maps": (lambda d: _truncate(d / "v-maps.npy"), "v-maps.npy", "cannot be read"),
    "a view short": (lambda d: _reshape(d / "v.npy"), "v.npy", "shape (6, 2, 2), expected (6, 3, 2)"),
    "too many rows": (lambda d: _wrong_rows(d / "v-maps.npy"), "v-maps.npy", "shape (7, 3, 1, 2, 2), expected (6, 3, "
                                                                            "1, 2, 2)"),
    "views_done not a number": (lambda d: _meta(d, views_done="x"), "v.json", "views_done: expected 0 to 3, got 'x'"),
    "views_done too many": (lambda d: _meta(d, views_done=9), "v.json", "views_done: expected 0 to 3, got 9"),
    "names not a list": (lambda d: _meta(d, names="logits"), "v.json", "names: expected a list of output names"),
    "not JSON": (lambda d: (d / "v.json").write_text("{views_done"), "v.json", "not a JSON object"),
    "text in the npy": (lambda d: (d / "v.npy").write_text("hello"), "v.npy", "cannot be read"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupt_cache_is_said_in_one_line_and_rebuilt(tmp_path: Path, caplog, case: str):
    """A truncated ``.npy``, an array of the wrong shape or a ``.json`` with ``views_done: "x"`` crashed distill
    (ValueError / IndexError tracebacks) and was never rebuilt: now one warning line names the file and what is
    wrong, and the cache is computed again, equal to a fresh one."""
    calls = []

    def teacher(x: torch.Tensor) -> dict:
        calls.append(len(x))
        return {"logits": x.mean(dim=(1, 2, 3))[:, None].repeat(1, 2), "maps": x[:, :, :2, :2]}

    torch.manual_seed(0)
    fresh = ViewCache(tmp_path / "v.npy").load_or_compute("k", ViewDataset(Tiny(6), 3, 0), 4, teacher,
                                                          torch.device("cpu"))
    corrupt, name, why = CORRUPTIONS[case]
    corrupt(tmp_path)
    calls.clear()
    with caplog.at_level("WARNING", logger="medistill"):
        again = ViewCache(tmp_path / "v.npy").load_or_compute("k", ViewDataset(Tiny(6), 3, 0), 4, teacher,
                                                              torch.device("cpu"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"{tmp_path / name}: ") and why in warnings[0] and "rebuilding" in warnings[0]
    assert len(calls) == 6  # every view of every image computed again (3 views x 2 batches)
    assert set(again) == set(fresh) and all(again[k].shape == fresh[k].shape for k in fresh)
    meta = json.loads((tmp_path / "v.json").read_text())
    assert meta["views_done"] == 3 and np.load(tmp_path / "v.npy").shape == (6, 3, 2)
