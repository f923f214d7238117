"""Issue 15, item 8: the image cache's location and the quickstart's time are each stated once, and what is stated
is what happens."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from medistill.cli import build_parser
from medistill.config import DataConfig, field_help
from medistill.data import Preprocess, build_dataset, image_cache_dir

README = Path(__file__).resolve().parents[1] / "README.md"


def _folder(root: Path) -> Path:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(root / c / f"{k}.png")
    return root


def test_build_dataset_caches_where_the_policy_says(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDISTILL_CACHE", str(tmp_path / "cache-home"))
    cfg = DataConfig(dataset="folder", root=str(_folder(tmp_path / "d")))
    assert image_cache_dir(cfg) == tmp_path / "cache-home" / "images"
    ds = build_dataset(cfg, "train", Preprocess(size=8))  # no cache_dir given: the policy's folder
    ds.load_input(0)
    assert list((tmp_path / "cache-home" / "images").glob("folder-train-*.u8"))
    off = build_dataset(DataConfig(dataset="folder", root=cfg.root, cache=False), "train", Preprocess(size=8))
    assert off._cache is None


def test_readme_and_help_state_the_cache_location_as_the_policy():
    text = README.read_text(encoding="utf-8")
    helps = field_help(DataConfig)["cache_dir"]
    for where in ("$MEDISTILL_CACHE/images", "~/.cache/medistill/images"):
        assert where in text and where in helps
    assert "(`$MEDISTILL_CACHE`, default `~/.cache/medistill`)" not in text  # the old, wrong description


def test_the_quickstart_time_is_given_once():
    text = README.read_text(encoding="utf-8")
    assert len(re.findall(r"\d+ min \d+ s for `medistill quickstart`", text)) == 1
    sub = build_parser()._subparsers._group_actions[0].choices["quickstart"]  # noqa: SLF001 - argparse internals
    others = sub.description + " ".join(a.help or "" for a in sub._actions)  # noqa: SLF001
    assert not re.search(r"\d+\s*minutes", others)


def test_every_library_constraints_txt_pins_is_recorded_with_each_run():
    """constraints.txt pins the libraries that decide the numbers; run.json, export reports and every benchmark's
    machine block record their versions through one list, which must name each of them."""
    from medistill.utils.runtime import PACKAGES, package_versions

    pinned = {m.group(1).lower() for line in (README.parent / "constraints.txt").read_text().splitlines()
              if (m := re.match(r"\s*([A-Za-z0-9_.-]+)\s*==", line))}
    assert {"torch", "scipy", "matplotlib"} <= pinned
    assert pinned <= set(PACKAGES)
    assert set(package_versions()) == {"python", *PACKAGES}
