"""INT8 quantization: the scheme keeps the operators integer that ``export.quantize`` says it does (counted in the
graph ONNX Runtime runs), and the HardSigmoid rewrite is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from medistill.export.onnx import export_onnx
from medistill.export.quantize import (integer_hard_sigmoids, name_nodes, op_kinds, quantize_int8, runtime_ops)
from medistill.models import create_model


def _int8_of(name: str, tmp_path: Path, *, channels: int, size: int = 32, explain: bool = False) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_chans=channels, image_size=size, drop_rate=0.0).eval()
    fp32 = export_onnx(model, tmp_path / f"{name}.onnx", labels=list("abcd"), task="multilabel", explain=explain)
    calib = np.random.default_rng(0).standard_normal((8, channels, size, size)).astype(np.float32)
    return fp32, quantize_int8(fp32, tmp_path / f"{name}.int8.onnx", calib)


def test_kdfmv_runs_integer_kernels_but_the_pooled_head(tmp_path: Path):
    """kdfmv (conv + ReLU + max-pool, global pooling, linear): every operator ONNX Runtime runs is an integer
    kernel, apart from the classifier after the global pooling (fp32 on purpose), the one QuantizeLinear /
    DequantizeLinear at the edges and layout operators."""
    fp32, int8 = _int8_of("kdfmv", tmp_path, channels=1)
    kinds = op_kinds(runtime_ops(int8))
    assert kinds["float"] == {"Gemm": 1}
    assert kinds["integer"] == {"QLinearConv": 5, "NhwcMaxPool": 4, "QLinearGlobalAveragePool": 1}
    assert kinds["boundary"] == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    assert op_kinds(runtime_ops(fp32))["float"]["Conv"] == 5  # the same counting sees fp32 as fp32
    scheme = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}["medistill.quantization"]
    assert "percentile calibration" in scheme and "pooled head (2 nodes) kept fp32" in scheme


@pytest.mark.slow
def test_eeea_hard_swish_and_squeeze_excite_stay_integer(tmp_path: Path):
    """EEEA-Net-C2: all 81 convolutions (depthwise included), the hard-swish / hard-sigmoid activations, the
    squeeze-excite pooling and products, the residual adds run as integer kernels; nothing falls back to fp32."""
    fp32, int8 = _int8_of("eeea_net_c2", tmp_path, channels=3)
    kinds = op_kinds(runtime_ops(int8))
    # fp32: only the pooled head, on purpose (the 960 -> 1280 projection with its hard-swish fused, the classifier)
    assert kinds["float"] == {"Conv": 1, "Gemm": 1}, f"fp32 fallbacks: {kinds['float']}"
    assert kinds["integer"]["QLinearConv"] == 80
    # 26 hard-swish (x * hard-sigmoid(x)) + 11 squeeze-excite gates: each hard-sigmoid an integer Add
    assert kinds["integer"]["QLinearMul"] == 37 and kinds["integer"]["QLinearAdd"] == 37 + 14  # + residual adds
    assert kinds["integer"]["QLinearGlobalAveragePool"] == 12 and "QGemm" not in kinds["integer"]
    assert "HardSigmoid" in op_kinds(runtime_ops(fp32))["float"] or "Conv" in op_kinds(runtime_ops(fp32))["float"]
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    l32 = ort.InferenceSession(str(fp32)).run(["logits"], {"input": x})[0]
    l8 = ort.InferenceSession(str(int8)).run(["logits"], {"input": x})[0]
    assert np.corrcoef(l32.ravel(), l8.ravel())[0, 1] > 0.95


def test_explain_graph_keeps_only_the_maps_in_fp32(tmp_path: Path):
    """In an INT8 explain graph the fp32 operators are the cams-only ones (MatMul of the Grad-CAM weights and the
    map normalisation), never a convolution."""
    _, int8 = _int8_of("tiny_cnn", tmp_path, channels=1, explain=True)
    kinds = op_kinds(runtime_ops(int8))
    assert kinds["integer"]["QLinearConv"] == 5
    assert not {"Conv", "FusedConv", "MaxPool"} & set(kinds["float"])
    assert {"MatMul", "ReduceMax", "ReduceMin"} <= set(kinds["float"])
    scheme = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}["medistill.quantization"]
    assert "cams-only nodes kept fp32" in scheme and "pooled head" in scheme


def test_pooled_head_is_what_follows_the_last_global_pool(tmp_path: Path):
    from medistill.export.quantize import pooled_head_nodes

    torch.manual_seed(0)
    model = create_model("eeea_net_c2", num_classes=4, in_chans=3, image_size=32, drop_rate=0.0).eval()
    graph = onnx.load(str(export_onnx(model, tmp_path / "e.onnx", labels=list("abcd"), task="multilabel")))
    by_name = {n.name: n.op_type for n in graph.graph.node}
    assert [by_name[n] for n in pooled_head_nodes(graph)] == ["Conv", "HardSwish", "Reshape", "Gemm"]
    graph.graph.node.remove([n for n in graph.graph.node if n.op_type == "GlobalAveragePool"][-1])
    # the last pool is now the last squeeze-excite block's: the rest of that block follows it
    assert {"Mul", "HardSigmoid"} <= {by_name[n] for n in pooled_head_nodes(graph)}


def _qdq_hard_sigmoid(x_scale: float, x_zero: int, y_scale: float, y_zero: int, alpha: float = 1 / 6,
                      beta: float = 0.5) -> onnx.ModelProto:
    """input -> Q -> DQ -> HardSigmoid -> Q -> DQ -> output, uint8."""
    inits = [numpy_helper.from_array(np.array(v, t), n) for n, v, t in
             [("xs", x_scale, np.float32), ("xz", x_zero, np.uint8), ("ys", y_scale, np.float32),
              ("yz", y_zero, np.uint8)]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             helper.make_node("HardSigmoid", ["xf"], ["h"], alpha=alpha, beta=beta),
             helper.make_node("QuantizeLinear", ["h", "ys", "yz"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    name_nodes(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("y_scale", [1 / 255, 0.8 / 255])
def test_integer_hard_sigmoid_is_exact(y_scale: float):
    """The rewrite gives the same quantized values as HardSigmoid between Q/DQ (to the kernel's rounding), over the
    whole input range,
    including the clip at 0 and 1 (and at 0.8 for a calibrated range below 1), and ONNX Runtime runs it as
    QLinearAdd."""
    x = np.linspace(-8, 8, 256, dtype=np.float32).reshape(1, 4, 8, 8)
    model = _qdq_hard_sigmoid(16 / 255, 128, y_scale, 0)
    before = _run(model, x)
    assert integer_hard_sigmoids(model) == 1
    assert "HardSigmoid" not in [n.op_type for n in model.graph.node]
    after = _run(model, x)
    # QLinearAdd rounds in its own arithmetic: a value on a rounding boundary may move by one step (measured: 8 %)
    np.testing.assert_allclose(after, before, atol=y_scale + 1e-7)
    assert np.mean(np.isclose(after, before, atol=1e-7)) > 0.9
    assert after.min() == 0.0 and after.max() == pytest.approx(255 * y_scale)


def test_integer_hard_sigmoid_leaves_what_it_cannot_reproduce():
    """An output QuantizeLinear that does not saturate at 0 (zero point inside the range) or whose range exceeds
    1 would lose HardSigmoid's clip: left as it is."""
    for y_scale, y_zero in [(1 / 255, 10), (2 / 255, 0)]:
        model = _qdq_hard_sigmoid(16 / 255, 128, y_scale, y_zero)
        assert integer_hard_sigmoids(model) == 0
        assert "HardSigmoid" in [n.op_type for n in model.graph.node]
