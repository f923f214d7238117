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
