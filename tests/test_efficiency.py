"""Efficiency: file size, CPU latency (restoring the caller's state) and the combined report evaluate_run writes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medistill.errors import MedistillError
from medistill.evaluate.efficiency import cpu_latency_ms, efficiency_report, file_size
from medistill.models import count_macs, count_params, create_model, save_weights


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return create_model("tiny_cnn", num_classes=3, in_chans=1, image_size=32)


def test_file_size(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"x" * 1234)
    assert file_size(p) == 1234
    with pytest.raises(MedistillError, match="does not exist"):
        file_size(tmp_path / "missing.safetensors")


def test_cpu_latency_restores_threads_and_mode(tiny):
    tiny.train()
    before = torch.get_num_threads()
    lat = cpu_latency_ms(tiny, 32, 1, batch=2, warmup=1, runs=5, threads=2)
    assert {"median", "p90", "min"} <= set(lat) and 0 < lat["min"] <= lat["median"] <= lat["p90"]
    assert lat["spread"] == pytest.approx(lat["p90"] / lat["min"] - 1) and lat["runs"] >= 5
    assert set(lat["machine_load"]) == {"before", "after"} and isinstance(lat["reliable"], bool)
    assert torch.get_num_threads() == before
    assert tiny.training  # the caller's mode is back
    tiny.eval()
    cpu_latency_ms(tiny, warmup=0, runs=1)  # size and channels from the model's input config
    assert not tiny.training


def test_latency_needs_a_size_for_foreign_models():
    with pytest.raises(MedistillError, match="pass size and channels"):
        cpu_latency_ms(nn.Conv2d(1, 2, 3), runs=1)
    with pytest.raises(MedistillError, match="runs=0"):
        cpu_latency_ms(nn.Conv2d(1, 2, 3), 8, 1, runs=0)
    assert cpu_latency_ms(nn.Conv2d(1, 2, 3), 8, 1, warmup=0, runs=2)["median"] > 0


def test_efficiency_report(tiny, tmp_path):
    """The efficiency fields of metrics.json: evaluate_run writes what efficiency_report returns."""
    path = save_weights(tiny, tmp_path / "best.safetensors")
    rep = efficiency_report(tiny, path, runs=3, warmup=1)
    assert rep["params"] == count_params(tiny)
    assert rep["macs"] == count_macs(tiny, 32, 1) > 0
    assert rep["size_bytes"] == path.stat().st_size
    assert 0 < rep["latency_ms"] <= rep["latency_ms_median"] <= rep["latency_ms_p90"]
    assert rep["latency_spread"] == pytest.approx(rep["latency_ms_p90"] / rep["latency_ms"] - 1)
    assert isinstance(rep["latency_reliable"], bool) and set(rep["machine_load"]) == {"before", "after"}
    assert (rep["latency_unreliable_reason"] is None) == rep["latency_reliable"]
    rep = efficiency_report(tiny, path, latency=False)
    assert set(rep) == {"params", "macs", "size_bytes"}  # no latency keys at all, as evaluate --no-latency writes


def test_latency_on_a_busy_machine_is_marked_unreliable(tiny, monkeypatch):
    """Issue 15, item 7: the machine's load is recorded and a busy machine makes the figure unreliable."""
    import medistill.inference.timing as timing

    busy = {"load_1min": 7.8, "cpus": 2, "load_per_cpu": 3.9, "busy": True}
    monkeypatch.setattr(timing, "machine_load", lambda: busy)
    lat = cpu_latency_ms(tiny, 32, 1, warmup=0, runs=3, min_seconds=0)
    assert lat["reliable"] is False and "busy (load 3.90 per CPU" in lat["reason"]
    assert lat["machine_load"]["before"] == busy
    calm = {"load_1min": 0.1, "cpus": 2, "load_per_cpu": 0.05, "busy": False}
    assert timing.reliability({"spread": 0.1}, calm, calm) == {"reliable": True, "reason": None,
                                                               "machine_load": {"before": calm, "after": calm}}
    assert "spread widely" in timing.reliability({"spread": 2.0}, calm, calm)["reason"]
