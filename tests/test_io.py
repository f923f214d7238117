"""Atomic files (``medistill.utils.io``): their permissions follow the umask, and a full disk is one clear error
naming the file and the free space, with nothing half-written left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medistill.utils.io import atomic_write_json, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_take_the_umask_like_any_other_tool(tmp_path: Path, umask: int):
    """``mkstemp`` creates 0600 whatever the umask: a service account could not read an exported model. Files are
    created 0666 & ~umask, as ``open(..., "w")`` creates them."""
    from medistill.models import create_model, save_weights

    old = os.umask(umask)
    try:
        files = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_json(tmp_path / "metrics.json", {"a": 1}),
                 save_weights(create_model("tiny_cnn", num_classes=2, in_chans=1, image_size=32),
                              tmp_path / "model.safetensors")]
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what any other tool gets under this umask
    finally:
        os.umask(old)
    assert {p.name: _mode(p) for p in files} == {p.name: _mode(plain) for p in files}
    assert _mode(plain) == 0o666 & ~umask


def test_an_exported_onnx_model_takes_the_umask(tmp_path: Path):
    """``model.onnx`` under umask 027: readable by the group a service account serving it belongs to (0640)."""
    from medistill.export.onnx import export_onnx
    from medistill.models import create_model

    model = create_model("tiny_cnn", num_classes=2, in_chans=1, image_size=32).eval()
    old = os.umask(0o027)
    try:
        path = export_onnx(model, tmp_path / "model.onnx", labels=["a", "b"], task="multilabel")
    finally:
        os.umask(old)
    assert _mode(path) == 0o640
