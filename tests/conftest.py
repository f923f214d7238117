"""Shared fixtures: the real data in ../shared/data and a small phantom dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDISTILL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real datasets); tests needing it skip with this reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set MEDISTILL_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom chest X-ray dataset (400 images, 64 px), generated once per test session."""
    from medistill.data.phantom import generate

    return generate(tmp_path_factory.mktemp("phantom"), num_images=400, size=64, seed=0)


def make_class_folder(root: Path, counts: dict[str, tuple[int, int]], size: int = 24, seed: int = 0) -> Path:
    """An image folder ``root/{train,test}/<class>/*.png`` with ``counts[class] = (train, test)`` images: noise plus a
    bright square whose place tells the class (learnable in an epoch or two)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, (cls, per_split) in enumerate(counts.items()):
        for split, n in zip(("train", "test"), per_split):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                img = rng.normal(90, 25, (size, size))
                y, x = divmod(c, 2)
                h = size // 2
                img[y * h + 2:y * h + h - 2, x * h + 2:x * h + h - 2] += 110
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{cls}{split}{k:03d}.png")
    return root


@pytest.fixture(scope="session")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small imbalanced 3-class image folder (train 60 / 36 / 24, test 20 / 12 / 8 images, 24 px): single-label
    runs in seconds, with a majority class that always answering scores 50 % on."""
    return make_class_folder(tmp_path_factory.mktemp("classes"),
                             {"common": (60, 20), "middle": (36, 12), "rare": (24, 8)})


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share 2 cores; one torch thread per test keeps them predictable (and deterministic)."""
    try:
        import torch
    except ImportError:  # torch-free tests
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CHROMIUM = os.environ.get("MEDISTILL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MEDISTILL_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Debian's headless chromium driven by selenium (skips, saying what to install, when either is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.skip(f"headless browser test needs Debian's chromium and chromedriver; missing: {', '.join(missing)} "
                    f"(apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # no background networking: this machine refuses outside connections, and chromium would retry them
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, to test a benchmark's bookkeeping without running it (``benchmarks/``
    is on ``sys.path`` while it loads, for its ``_bench`` helpers)."""
    import importlib.util
    import sys

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(bench_dir))
