"""``medistill export``: ONNX parity, metadata, INT8 and the report (a tiny CNN trained a few steps on the phantom)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medistill.config import DataConfig, ModelConfig, RunConfig
from medistill.data.phantom import LABELS
from medistill.errors import MedistillError
from medistill.runs import RunDir, load_model, save_model

SIZE = 64


@pytest.fixture(scope="module")
def tiny_run(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny_cnn run directory (1 channel, 64 px) trained 30 steps on the phantom's training split."""
    from medistill.export import load_split_inputs
    from medistill.models import create_model

    path = tmp_path_factory.mktemp("run") / "tiny"
    cfg = RunConfig(out=str(path), data=DataConfig(dataset="phantom", root=str(phantom_root), image_size=SIZE,
                                                    cache=False), model=ModelConfig(name="tiny_cnn"))
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=len(LABELS), in_chans=1, image_size=SIZE)
    run = RunDir.create(path, cfg, kind="train")
    save_model(run, model, labels=LABELS, task="multilabel")  # the record the run's data is rebuilt from
    x, y, _ = load_split_inputs(run, "train", limit=128)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for step in range(30):
        i = np.random.default_rng(step).choice(len(x), 32)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(torch.from_numpy(x[i])),
                                                                    torch.from_numpy(y[i]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(run, model.eval(), labels=LABELS, task="multilabel")
    return path


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medistill.cli import main

    out = tmp_path_factory.mktemp("export")
    rc = main(["export", str(tiny_run), "--format", "onnx", "--int8", "--explain", "--out", str(out),
               "--calibration-images", "32", "--cam-images", "4"])
    assert rc == 0
    return out


def test_output_contract(exported: Path):
    assert (exported / "model.onnx").is_file() and (exported / "model.int8.onnx").is_file()
    rep = json.loads((exported / "export.json").read_text())
    assert rep["max_abs_diff"] <= 1e-4
    assert rep["cam_correlation_min"] >= 0.99
    assert isinstance(rep["int8_metric_delta"], float)
    assert rep["metric_name"] == "macro_auc"
    assert rep["metric_pytorch"] == pytest.approx(rep["metric_onnx"], abs=1e-6)
    q = rep["int8"]
    assert q["int8_bytes"] < q["fp32_bytes"]
    assert q["int8_metric_delta"] == pytest.approx(q["int8_metric"] - q["fp32_metric"])
    assert isinstance(q["int8_slower"], bool) and q["fp32_latency_ms"] > 0 and q["int8_latency_ms"] > 0
    assert q["calibration_split"] == "train" and isinstance(q["per_channel"], bool)
    assert set(q["weight_scales_tried"]) == {"per_channel", "per_tensor"}
    assert set(rep["thresholds"]) == set(LABELS)
    assert q["int8_ops"]["integer"]["QLinearConv"] == 5 and "Conv" not in q["int8_ops"]["float"]
    assert q["calibration_method"] == "percentile"


def test_export_records_the_runtime_and_precision_it_chose_and_why(exported: Path):
    """Every runtime and precision installed here is a candidate, scored and timed; the choice names its file,
    and a reduced precision is chosen only within the metric tolerance of fp32."""
    from medistill.inference.runtimes import available_runtimes

    dep = json.loads((exported / "export.json").read_text())["deployment"]
    rows = {c["key"]: c for c in dep["candidates"]}
    assert list(rows)[:2] == ["ort_fp32", "ort_int8"]
    if "openvino" in available_runtimes():
        assert {"openvino_fp32", "openvino_int8"} <= set(rows)
    for c in rows.values():
        assert c["latency_ms"] > 0 and c["metric_name"] == "macro_auc" and c["runtime_version"]
        assert c["file"] == ("model.int8.onnx" if c["precision"] == "int8" else "model.onnx")
    assert rows["ort_fp32"]["metric_delta"] == 0.0
    assert rows["ort_int8"]["metric_delta"] == pytest.approx(json.loads((exported / "export.json").read_text())[
        "int8_metric_delta"])
    chosen = dep["chosen"]
    assert chosen["key"] in rows and chosen["file"] == rows[chosen["key"]]["file"]
    assert chosen["why"].startswith(f"{ {'onnxruntime': 'ONNX Runtime', 'openvino': 'OpenVINO'}[chosen['runtime']]}")
    assert rows[chosen["key"]]["metric_delta"] >= -dep["tolerance"]
    fastest_ok = min((c for k, c in rows.items() if k not in chosen["rejected"]), key=lambda c: c["latency_ms"])
    assert fastest_ok["key"] == chosen["key"]
    assert dep["machine_load"]["before"]["cpus"] >= 1


def test_metadata_travels_with_both_models(exported: Path):
    import hashlib

    from medistill.inference import Predictor, verify_model_file

    rep = json.loads((exported / "export.json").read_text())
    for name in ("model.onnx", "model.int8.onnx"):
        assert verify_model_file(exported / name)  # each file holds its own checksum (issue 37, item 3)
        assert rep["files"][name]["sha256"] == hashlib.sha256((exported / name).read_bytes()).hexdigest()
        info = Predictor(exported / name).info
        assert info.labels == LABELS and info.task == "multilabel"
        assert (info.size, info.channels) == (SIZE, 1)
        assert info.mean == rep["input"]["mean"] and info.std == rep["input"]["std"]
        assert info.thresholds == pytest.approx(rep["thresholds"])
        assert info.model == "tiny_cnn" and info.version and info.maps
        # issue 15: the intensity rule of the run's record (this hand-made record has none: the legacy rule) and
        # the training images' input statistics travel in the metadata
        assert info.intensity == rep["intensity"] == "voi-window-else-minmax"
        assert info.input_stats == rep["input_stats"] and info.input_stats["colour_share"] == 0.0
        assert 0 < info.input_stats["mean"]["mean"] < 1 and info.input_stats["images"] == 64
    assert "int8" in Predictor(exported / "model.int8.onnx").info.extra["quantization"]


def test_dynamic_batch_matches_pytorch(exported: Path, tiny_run: Path):
    from medistill.export.onnx import ort_outputs

    model, _ = load_model(tiny_run)
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 1, SIZE, SIZE)).astype(np.float32)
        logits, cams = ort_outputs(exported / "model.onnx", x, maps=True)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert logits.shape == (batch, len(LABELS)) and cams.shape[:2] == (batch, len(LABELS))
        assert np.abs(logits - ref).max() <= 1e-4


def test_int8_is_qdq_and_keeps_the_maps_in_float(exported: Path):
    import onnx

    from medistill.export.quantize import cam_only_nodes

    model = onnx.load(str(exported / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    by_name = {n.name: n for n in model.graph.node}
    cam_ops = {by_name[name].op_type for name in cam_only_nodes(model)}
    assert cam_ops and not cam_ops & {"QuantizeLinear", "DequantizeLinear"}


def test_export_leaves_the_model_as_it_was(tmp_path: Path):
    from medistill.export.onnx import export_onnx
    from medistill.models import create_model

    model = create_model("tiny_cnn", num_classes=2, in_chans=1, image_size=32)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", labels=["a", "b"], task="multilabel")
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(MedistillError, match="2 outputs but 3 labels"):
        export_onnx(model, tmp_path / "m.onnx", labels=["a", "b", "c"], task="multilabel")


def test_thresholds_come_from_metrics_json_when_evaluated(tmp_path: Path):
    from medistill.export import thresholds_for

    run = RunDir(tmp_path)
    stored = {"a": 0.3, "b": 0.7}
    run.write_metrics({"thresholds": stored})
    dummy = np.zeros((4, 2), np.float32)
    thr, source = thresholds_for(run, "multilabel", ["a", "b"], dummy, dummy, dummy + 1)
    assert thr == stored and "metrics.json" in source
    run.write_metrics({"thresholds": {"a": 0.3}})  # incomplete: chosen on validation instead
    logits = np.array([[-2, 2], [2, -2], [-1, 1], [1, -1]], np.float32)
    targets = np.array([[0, 1], [1, 0], [0, 1], [1, 0]], np.float32)
    thr, source = thresholds_for(run, "multilabel", ["a", "b"], logits, targets, np.ones_like(targets))
    assert "validation" in source and set(thr) == {"a", "b"}


def test_only_onnx_is_a_format(tmp_path: Path):
    from medistill.export import export_run

    with pytest.raises(MedistillError, match="'onnx'"):
        export_run(tmp_path, tmp_path / "out", fmt="tflite")


def _mean_graph(axes: list[int], keepdims: int, rank: int = 4):
    from onnx import TensorProto, helper

    shape = [1, 3, 5, 5][:rank]
    out_shape = [d if (i not in [a % rank for a in axes]) else 1 for i, d in enumerate(shape)] if keepdims else \
        [d for i, d in enumerate(shape) if i not in [a % rank for a in axes]]
    axes_t = helper.make_tensor("axes", TensorProto.INT64, [len(axes)], axes)
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims, name="mean")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [axes_t])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("axes, keepdims, rank, pooled", [([2, 3], 1, 4, True), ([-1, -2], 1, 4, True),
                                                          ([2, 3], 0, 4, False), ([1], 1, 4, False),
                                                          ([1, 2], 1, 3, False)])
def test_spatial_means_become_global_average_pools(axes, keepdims, rank, pooled):
    """Only a mean over both spatial axes of a 4-D tensor, dimensions kept, is a GlobalAveragePool; the values stay."""
    import onnxruntime as ort

    from medistill.export.onnx import global_average_pools

    model = _mean_graph(axes, keepdims, rank)
    x = np.random.default_rng(0).standard_normal([1, 3, 5, 5][:rank]).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert global_average_pools(model) == int(pooled)
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool" if pooled else "ReduceMean"]
    assert (len(model.graph.initializer) == 0) == pooled  # the axes go with the ReduceMean
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)


def test_exported_graph_pools_with_global_average_pool(exported: Path):
    """The exporter's spatial means (tiny_cnn's pooling, the explain graph's head) arrive as GlobalAveragePool."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(exported / "model.onnx")).graph.node]
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops


KILLED_EXPORT = """
import importlib, os, signal, sys
from medistill.cli import main

def killed(*args, **kwargs):  # SIGKILL at this step of the export
    os.kill(os.getpid(), signal.SIGKILL)

module, name = sys.argv.pop(1).rsplit(".", 1)
setattr(importlib.import_module(module), name, killed)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", ["medistill.export.onnx.parity", "medistill.export.quantize_int8"])
def test_an_export_killed_before_its_checks_leaves_no_model_file(tiny_run: Path, tmp_path: Path, step: str):
    """``kill -9`` after the ONNX graph is written but before its parity check (or before its INT8 copy): no
    ``model.onnx`` appears (before, one was left without ``export.json`` and predict used it without a word); a
    complete earlier export in the same folder stays as it was, its model and report together."""
    import os
    import subprocess
    import sys

    from medistill.cli import main

    out = tmp_path / "export"
    assert main(["export", str(tiny_run), "--out", str(out), "--val-limit", "16"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"model.onnx", "export.json"}
    fresh = tmp_path / "fresh"
    for folder in (out, fresh):
        r = subprocess.run([sys.executable, "-c", KILLED_EXPORT, step, "export", str(tiny_run), "--out", str(folder),
                            "--val-limit", "16", "--int8", "--calibration-images", "8"], capture_output=True,
                           text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
        assert r.returncode == -9, r.stderr[-2000:]
    assert [p.name for p in fresh.iterdir() if not p.name.startswith(".")] == []
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before


def test_an_interrupted_export_leaves_no_file_at_all(tiny_run: Path, tmp_path: Path, monkeypatch):
    """Interrupted (Ctrl+C) during the parity check: nothing is left in the folder, not even a hidden file."""
    from medistill.export import export_run
    from medistill.export import onnx as onnx_export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "parity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(tiny_run, tmp_path / "export", val_limit=16)
    assert list((tmp_path / "export").iterdir()) == []
