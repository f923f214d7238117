"""The runtimes an exported model runs in (``inference.runtimes``) and the choice ``export`` makes between them
(``export.deployment.choose``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medistill.export.deployment import METRIC_TOLERANCE, candidates, choose
from medistill.inference.runtimes import (ONNXRUNTIME, OPENVINO, Runner, RuntimeUnavailable, available_runtimes,
                                          float_precisions)


def row(key: str, ms: float, delta: float | None, precision: str | None = None) -> dict:
    runtime, prec = key.split("_")
    return {"key": key, "runtime": {"ort": ONNXRUNTIME, "openvino": OPENVINO}[runtime],
            "precision": precision or prec, "file": "model.int8.onnx" if prec == "int8" else "model.onnx",
            "latency_ms": ms, "metric_name": "macro_auc", "metric": None if delta is None else 0.9 + delta,
            "metric_delta": delta}


def test_choose_keeps_the_fastest_within_the_tolerance():
    rows = [row("ort_fp32", 4.5, 0.0), row("ort_int8", 3.0, -0.003), row("openvino_int8", 2.0, -0.02),
            row("openvino_bf16", 2.5, -0.001)]
    chosen = choose(rows)
    assert chosen["key"] == "openvino_bf16" and chosen["file"] == "model.onnx"
    assert "within 0.005 of fp32" in chosen["why"] and "1.80x ONNX Runtime fp32" in chosen["why"]
    assert set(chosen["rejected"]) == {"openvino_int8"} and "-0.0200" in chosen["rejected"]["openvino_int8"]


def test_choose_never_takes_an_unchecked_reduced_precision():
    """A metric that cannot be computed (one class in validation) rules INT8 out but not fp32."""
    rows = [row("ort_fp32", 4.5, None), row("ort_int8", 1.0, None), row("openvino_fp32", 4.0, None)]
    chosen = choose(rows)
    assert chosen["key"] == "openvino_fp32" and "could not be computed" in chosen["rejected"]["ort_int8"]
    assert choose([row("ort_fp32", 4.5, 0.0), row("ort_int8", 9.0, 0.0)])["key"] == "ort_fp32"
    failed = {**row("openvino_int8", 1.0, None), "error": "RuntimeError: unsupported", "latency_ms": None}
    assert "did not run" in choose([row("ort_fp32", 4.5, 0.0), failed])["rejected"]["openvino_int8"]
    assert METRIC_TOLERANCE == 0.005


def test_candidates_list_every_installed_runtime_and_precision(tmp_path: Path):
    keys = [c.key for c in candidates(tmp_path / "m.onnx", tmp_path / "m.int8.onnx")]
    assert keys[:2] == ["ort_fp32", "ort_int8"]
    if OPENVINO in available_runtimes():
        assert {"openvino_fp32", "openvino_int8"} <= set(keys)
        assert ("openvino_bf16" in keys) == ("bf16" in float_precisions(OPENVINO))
    assert [c.key for c in candidates(tmp_path / "m.onnx", None, [ONNXRUNTIME])] == ["ort_fp32"]


def test_onnx_runtime_has_no_bf16_here(tmp_path: Path):
    assert float_precisions(ONNXRUNTIME) == ["fp32"]
    with pytest.raises(RuntimeUnavailable, match="no bf16 kernels"):
        Runner(tmp_path / "m.onnx", ONNXRUNTIME, hint="bf16")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from medistill.export.onnx import export_onnx
    from medistill.models import create_model

    torch.manual_seed(0)
    m = create_model("tiny_cnn", num_classes=3, in_chans=1, image_size=32)
    return export_onnx(m, tmp_path_factory.mktemp("rt") / "model.onnx", labels=list("abc"), task="multilabel",
                       explain=True)


def test_openvino_runs_the_same_graph(tiny_onnx: Path):
    """OpenVINO (when installed) gives ONNX Runtime's logits and maps, at a fixed batch and at any batch."""
    pytest.importorskip("openvino", reason="OpenVINO is optional (pip install 'medistill[openvino]')")
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    ref = Runner(tiny_onnx, ONNXRUNTIME, threads=1)(x)
    for batch in (None, 3):
        got = Runner(tiny_onnx, OPENVINO, threads=1, batch=batch)(x)
        assert set(got) == {"logits", "cams"}
        np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4)
        np.testing.assert_allclose(got["cams"], ref["cams"], atol=1e-3)
    if "bf16" in float_precisions(OPENVINO):
        got = Runner(tiny_onnx, OPENVINO, threads=1, hint="bf16")(x)
        assert np.corrcoef(got["logits"].ravel(), ref["logits"].ravel())[0, 1] > 0.99


def test_openvino_missing_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert available_runtimes() == [ONNXRUNTIME]
    from medistill.inference import runtimes

    with pytest.raises(RuntimeUnavailable, match=r"medistill\[openvino\]"):
        runtimes._openvino()
