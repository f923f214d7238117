"""``medistill predict`` runs where torch cannot be imported: a device needs onnxruntime, numpy and Pillow only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FAKE_TORCH = 'raise ImportError("torch is blocked in this test: medistill predict must not import it")\n'


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from medistill.export.onnx import export_onnx
    from medistill.models import create_model

    torch.manual_seed(0)
    m = create_model("tiny_cnn", num_classes=2, in_chans=1, image_size=32)
    return export_onnx(m, tmp_path_factory.mktemp("m") / "model.onnx", labels=["a", "b"], task="multilabel",
                       explain=True)


def _run_without_torch(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "torch.py").write_text(FAKE_TORCH)  # shadows the installed torch: first on sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    # a failed `import torch` leaves no "torch" in sys.modules, even where a library catches the ImportError
    code = ("import sys; from medistill.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_blocker_blocks(tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text(FAKE_TORCH)
    r = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, "PYTHONPATH": str(blocker)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_predict_without_torch(model: Path, tmp_path: Path):
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(img)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "maps"
    r = _run_without_torch(["predict", str(model), str(img), str(bad), "--json", "--explain", "--out", str(out)],
                           tmp_path)
    assert "torch is blocked" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr  # 1: one input failed; the other was predicted
    rows = json.loads(r.stdout)
    assert set(rows[0]["probabilities"]) == {"a", "b"} and "error" in rows[1]
    assert list(out.glob("*.png"))
