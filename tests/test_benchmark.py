"""``medistill benchmark``: the figures and their shape (tiny models, few runs; real timings live in benchmarks/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medistill.benchmark import _ratios
from medistill.inference.timing import measure_interleaved, measure_latency


def test_measure_latency_counts_and_orders():
    calls = []
    res = measure_latency(lambda: calls.append(1), warmup=3, runs=7, min_seconds=0.0)
    assert res["runs"] == 7 and len(calls) == 10
    assert 0 <= res["min_ms"] <= res["median_ms"] <= res["p90_ms"]


def test_measure_interleaved_takes_turns():
    order: list[str] = []
    res = measure_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b"),
                               "slow": lambda: order.append("slow")},
                              warmup=1, runs=4, min_seconds=0.0, block=2, settle=1, runs_for={"slow": 2},
                              block_for={"slow": 1})
    assert {k: v["runs"] for k, v in res.items()} == {"a": 4, "b": 4, "slow": 2}
    rounds = order[3:]  # after one warm-up call each
    # turns: per round, 1 settling + 2 timed calls of each fast key, then 1 call of the slow key (no settling)
    assert rounds[:7] == ["a", "a", "a", "b", "b", "b", "slow"]
    assert len(rounds) == 2 * 7


def test_ratios_and_targets_compare_one_runtime_with_itself():
    lat = {"ort_fp32": {"median_ms": 4.0}, "ort_explain": {"median_ms": 4.4}, "ort_int8": {"median_ms": 2.5},
           "openvino_fp32": {"median_ms": 5.0}, "openvino_bf16": {"median_ms": 2.5},
           "openvino_int8": {"median_ms": 4.0}, "torch_fp32": {"median_ms": 20.0},
           "teacher_torch_fp32": {"median_ms": 400.0}, "teacher_ort_fp32": {"median_ms": 100.0},
           "teacher_ort_int8": {"median_ms": 50.0}, "teacher_openvino_bf16": {"median_ms": 60.0}}
    ratios, targets = _ratios({"latency_ms": {"batch_1": lat}, "flop_limit_ms": 4.0, "batches": [1]})
    assert ratios["fp32_vs_flop_limit"] == pytest.approx({"torch": 5.0, "ort": 1.0, "openvino": 1.25})
    assert ratios["int8_speedup"] == pytest.approx({"ort": 1.6, "openvino": 1.25})
    assert ratios["bf16_speedup"] == pytest.approx({"openvino": 2.0})
    assert ratios["explain_vs_plain"] == pytest.approx({"ort": 1.1})
    # the teacher against the student in the same runtime and precision, never PyTorch against ONNX Runtime
    assert ratios["teacher_vs_student"] == pytest.approx({"torch_fp32": 20.0, "ort_fp32": 25.0, "ort_int8": 20.0,
                                                          "openvino_bf16": 24.0})
    assert targets == {"ort_fp32_within_1_3x_flop_limit": True, "openvino_fp32_within_1_3x_flop_limit": True,
                       "ort_int8_at_least_1_5x_fp32": True, "openvino_int8_at_least_1_5x_fp32": False,
                       "ort_explain_within_1_15x": True, "teacher_at_least_30x_slower": False}


@pytest.fixture(scope="module")
def explain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from medistill.export.onnx import export_onnx
    from medistill.models import create_model

    torch.manual_seed(0)
    m = create_model("tiny_cnn", num_classes=3, in_chans=1, image_size=32)
    return export_onnx(m, tmp_path_factory.mktemp("b") / "model.onnx", labels=["a", "b", "c"], task="multilabel",
                       explain=True)


def test_benchmark_an_onnx_file(explain_model: Path):
    """Student and teacher in every runtime and precision installed, the teacher exported and quantized as the
    student is, and every ratio within one runtime."""
    from medistill.benchmark import benchmark
    from medistill.inference.runtimes import available_runtimes, float_precisions

    res = benchmark(explain_model, threads=1, batches=(1, 2), teacher="tiny_cnn", runs=3, warmup=1,
                    min_seconds=0.0, calibration_images=4, teacher_calibration_images=4, peak_seconds=0.05,
                    peak_sizes=(256,))
    student = {"torch_fp32", "ort_fp32", "ort_int8", "ort_explain"}
    if "openvino" in available_runtimes():
        student |= {"openvino_fp32", "openvino_int8", "openvino_explain"}
        student |= {"openvino_bf16"} if "bf16" in float_precisions("openvino") else set()
    teacher = {f"teacher_{k}" for k in student if not k.endswith("explain")}
    assert set(res["latency_ms"]["batch_1"]) == student | teacher
    assert set(res["latency_ms"]["batch_2"]) == student  # the teacher at the smallest batch only
    for lat in res["latency_ms"].values():
        assert all(v["median_ms"] > 0 and v["p90_ms"] >= v["median_ms"] for v in lat.values())
    assert res["params"] > 0 and res["macs"] > 0 and res["flops"] == 2 * res["macs"]
    assert res["matmul_peak_gflops"]["peak"] > 0 and res["flop_limit_ms"] > 0
    assert set(res["file_bytes"]) == {"fp32", "int8", "explain"}
    assert set(res["teacher"]["file_bytes"]) == {"fp32", "int8"}  # the teacher exported to ONNX and INT8
    assert any("logits-only subgraph" in n for n in res["notes"])
    assert any("random inputs" in n for n in res["notes"])  # no training data for a bare .onnx
    assert set(res["ratios"]["teacher_vs_student"]) == {k[len("teacher_"):] for k in teacher}
    assert res["ratios"]["teacher_vs_student"]["ort_fp32"] == pytest.approx(
        res["latency_ms"]["batch_1"]["teacher_ort_fp32"]["median_ms"]
        / res["latency_ms"]["batch_1"]["ort_fp32"]["median_ms"])
    assert "ONNX Runtime fp32" in res["target_notes"]["teacher_at_least_30x_slower"]
    assert res["int8_ops"]["student"]["integer"]["QLinearConv"] == 5
    assert res["int8_ops"]["teacher"]["integer"]["QLinearConv"] == 5
    assert set(res["profile_ms"]) == {"ort_fp32@1", "ort_int8@1", "ort_explain@1"}  # threads=1: one profile each
    assert any(k.startswith("QLinearConv") for k in res["profile_ms"]["ort_int8@1"])
    assert res["timed_with"]["ort_int8"].startswith("ONNX Runtime")
    assert res["machine"]["cpu_count"] >= 1
    assert ("cpu_flags" in res["machine"]) == Path("/proc/cpuinfo").is_file()  # VNNI / bf16: what kernels could run


def test_benchmark_cli_prints_json_in_milliseconds(explain_model: Path, capsys, tmp_path: Path):
    from medistill.cli import main

    out = tmp_path / "bench.json"
    rc = main(["benchmark", str(explain_model), "--json", "--threads", "1", "--batch", "1", "--teacher", "none",
               "--runs", "3", "--warmup", "1", "--min-seconds", "0", "--no-int8", "--runtimes", "onnxruntime",
               "--no-profile", "--out", str(out)])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and json.loads(out.read_text())["latency_ms"] == res["latency_ms"]
    assert set(res["latency_ms"]["batch_1"]) == {"torch_fp32", "ort_fp32", "ort_explain"}
    assert "teacher" not in res and res["threads"] == 1 and "int8_ops" not in res


def test_benchmark_a_run_directory(tmp_path: Path):
    import torch

    from medistill.benchmark import benchmark
    from medistill.config import RunConfig
    from medistill.models import create_model
    from medistill.runs import RunDir, save_model

    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=2, in_chans=1, image_size=32)
    save_model(RunDir.create(tmp_path / "run", RunConfig(), kind="train"), model, labels=["a", "b"],
               task="multilabel")
    res = benchmark(tmp_path / "run", threads=1, teacher=None, runs=2, warmup=1, min_seconds=0.0, int8=False,
                    explain=False, peak_seconds=0.05, peak_sizes=(256,), runtimes=["onnxruntime"], profile=False)
    assert set(res["latency_ms"]["batch_1"]) == {"torch_fp32", "ort_fp32"} and res["model"] == "tiny_cnn"


def test_bad_batches_are_refused():
    from medistill.cli.benchmark import _batches
    from medistill.errors import MedistillError

    assert _batches("1,8") == [1, 8]
    for bad in ("", "0", "a,1"):
        with pytest.raises(MedistillError, match="--batch"):
            _batches(bad)
