"""On-device benchmark: latency of the student as PyTorch, ONNX Runtime fp32 / INT8 and the explain graph, next to
the teacher in PyTorch and the machine's measured matrix-multiply peak.

Latency is the median (and 90th percentile) of single calls after warm-up, over at least ``runs`` calls and at
least ``min_seconds``. The runtimes are timed in turns (``measure_interleaved``: a block of calls each per round,
after a few untimed ones), so that on a shared machine they all see the same load; ``ratios_best`` repeats the
target ratios from each runtime's fastest call, the figure least disturbed by other jobs. The FLOP limit is the
model's FLOPs (2 x MACs from ``torch.utils.flop_counter``) divided by the measured float32 matmul peak (numpy's
BLAS and torch, the best of both): no implementation can beat it, so ``latency / flop limit`` says how far from the
hardware a runtime is.

The timing loop itself is ``medistill.inference.timing`` (shared with ``export.quantize``); torch is imported by
the functions that need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import MedistillError
from .export import load_split_inputs
from .export.quantize import quantize_int8
from .inference import CAMS, INPUT, LOGITS, Predictor, open_session
from .inference.timing import measure_interleaved, measure_latency, torch_threads
from .runs import RunDir, load_model
from .utils.runtime import eval_mode, machine_info, package_versions

log = logging.getLogger(__name__)

#: the issue's targets, batch 1 at 224 px on the benchmark machine
TARGET_FLOP_LIMIT_RATIO = 3.0  # ORT fp32 latency at most 3x the FLOP limit
TARGET_TEACHER_SPEEDUP = 30.0  # student (ORT fp32) at least 30x faster than the teacher in PyTorch
TARGET_EXPLAIN_OVERHEAD = 1.5  # explain graph at most 1.5x the plain graph

DEFAULT_TEACHER = "densenet161"


class BenchmarkError(MedistillError):
    """A benchmark target (run directory or model file) cannot be benchmarked; the message says why."""


def matmul_peak_gflops(threads: int | None = None, *, sizes: Sequence[int] = (1024, 2048),
                       seconds: float = 1.0) -> dict[str, Any]:
    """Measured float32 matrix-multiply throughput (GFLOP/s) with numpy's BLAS and with torch, ``threads`` threads.

    For each square size in ``sizes``: the best of repeated products over about ``seconds``. ``numpy`` / ``torch``
    are each library's best over the sizes, ``peak`` the larger of the two.
    """
    import torch
    from threadpoolctl import threadpool_limits

    def best(fn: Callable[[], Any], flops: float) -> float:  # the fastest of at least 3 calls over ``seconds``
        fastest_ms = measure_latency(fn, warmup=1, runs=3, min_seconds=seconds, max_seconds=max(60.0, seconds))["min_ms"]
        return flops / (fastest_ms / 1e3) / 1e9

    rng = np.random.default_rng(0)
    g_numpy = g_torch = 0.0
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        with threadpool_limits(limits=threads):
            g_numpy = max(g_numpy, best(lambda: a @ b, 2.0 * n ** 3))
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        with torch_threads(threads), torch.inference_mode():
            g_torch = max(g_torch, best(lambda: torch.mm(ta, tb), 2.0 * n ** 3))
    return {"numpy": g_numpy, "torch": g_torch, "peak": max(g_numpy, g_torch), "sizes": list(sizes)}


# ---------------------------------------------------------------------------------------------------------
# what to time
# ---------------------------------------------------------------------------------------------------------

def _load_target(target: Path) -> tuple[Any, dict[str, Any], Path | None]:
    """(PyTorch model, record, ONNX file or None) of a run directory or an exported ``.onnx`` file.

    For an ONNX file the PyTorch model is rebuilt from the architecture named in its metadata with random weights
    (latency does not depend on the weights).
    """
    from .models import InputConfig, create_model, set_input_config

    if target.is_dir():
        if not RunDir(target).exists() and (target / "model.onnx").is_file():
            target = target / "model.onnx"
        else:
            model, record = load_model(target)
            return model, record, None
    if not target.is_file():
        raise BenchmarkError(f"{target}: expected a run directory or an exported .onnx model")

    info = Predictor(target).info
    try:
        model = create_model(info.model, num_classes=len(info.labels), in_chans=info.channels, image_size=info.size,
                             drop_rate=0.0)
    except MedistillError as e:
        raise BenchmarkError(f"{target}: cannot rebuild {info.model!r} in PyTorch for the eager timing ({e})") from None
    set_input_config(model, InputConfig(info.size, info.channels, tuple(info.mean), tuple(info.std)))
    model.eval()
    record = {"model": info.model, "labels": info.labels, "task": info.task,
              "input": {"size": info.size, "channels": info.channels, "mean": info.mean, "std": info.std},
              "thresholds": info.thresholds}
    return model, record, target


def _logits_only(path: Path, out: Path) -> Path:
    """The ``logits``-only subgraph of an explain graph (``onnx.utils.extract_model``), metadata kept."""
    import onnx

    from .export.onnx import copy_metadata

    onnx.utils.extract_model(str(path), str(out), [INPUT], [LOGITS])
    sub = onnx.load(str(out))
    copy_metadata(onnx.load(str(path)), sub, {"medistill.maps": "0"})
    onnx.save_model(sub, str(out))
    return out


def _calibration(record: dict[str, Any], run: Path | None, n: int) -> tuple[np.ndarray, str]:
    """Training-split inputs of the run's dataset when it can be read, else seeded random inputs (timing only)."""
    inp = record["input"]
    if run is not None:
        try:
            x, _, _ = load_split_inputs(run, "train", limit=n, record=record)
            return x, "the run's training split"
        except Exception as e:  # noqa: BLE001 - the benchmark only needs ranges; say why and go on
            log.warning("benchmark: training images of %s unavailable (%s); calibrating INT8 on random inputs "
                        "(fine for timing, not for accuracy)", run, e)
    rng = np.random.default_rng(0)
    shape = (n, int(inp["channels"]), int(inp["size"]), int(inp["size"]))
    return rng.standard_normal(shape).astype(np.float32), "random inputs (timing only)"


def _teacher(spec: str | None, inp: dict[str, Any], num_classes: int) -> tuple[Any, str] | None:
    from .models import create_model

    if spec is None or spec.lower() == "none":
        return None
    if Path(spec).exists():
        model, record = load_model(spec)
        return model, str(record.get("model"))
    model = create_model(spec, num_classes=num_classes, in_chans=int(inp["channels"]), image_size=int(inp["size"]),
                         drop_rate=0.0)
    return model.eval(), spec


def benchmark(target: str | Path, *, threads: int | None = None, batches: Sequence[int] = (1,),
              teacher: str | None = DEFAULT_TEACHER, runs: int = 50, warmup: int = 10, min_seconds: float = 1.0,
              int8: bool = True, explain: bool = True, calibration_images: int = 32, peak_seconds: float = 1.0,
              peak_sizes: Sequence[int] = (1024, 2048),
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark a run directory or an exported ``model.onnx`` (see module docstring); returns a JSON-able dict.

    For a run directory the ONNX fp32, explain and INT8 graphs are exported into a temporary folder. For an ONNX
    file, its own graph is timed; a ``cams`` output is split off with ``onnx.utils.extract_model`` for the plain
    timing; ``model.int8.onnx`` beside it is used when present, else INT8 is quantized here.
    ``teacher``: a timm model name (random weights), a run directory, or None.
    """
    import torch

    from .export.onnx import export_onnx
    from .models import count_macs, count_params

    say = progress or (lambda msg: log.info(msg))
    threads = int(threads or os.cpu_count() or 1)
    target = Path(target)
    model, record, onnx_file = _load_target(target)
    inp = record["input"]
    labels = list(record["labels"])
    size, channels = int(inp["size"]), int(inp["channels"])
    notes: list[str] = []
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="medistill-bench-") as tmp:
        tmpd = Path(tmp)
        say("preparing graphs")
        if onnx_file is None:
            files["ort_fp32"] = export_onnx(model, tmpd / "model.onnx", labels=labels, task=record["task"])
            if explain:
                files["ort_explain"] = export_onnx(model, tmpd / "model.explain.onnx", labels=labels,
                                                   task=record["task"], explain=True)
        else:
            has_maps = CAMS in [o.name for o in open_session(onnx_file).get_outputs()]
            if has_maps:
                files["ort_explain"] = onnx_file
                files["ort_fp32"] = _logits_only(onnx_file, tmpd / "model.plain.onnx")
                notes.append("ort_fp32 is the logits-only subgraph of the explain graph (onnx.utils.extract_model)")
            else:
                files["ort_fp32"] = onnx_file
                if explain:
                    files["ort_explain"] = export_onnx(model, tmpd / "model.explain.onnx", labels=labels,
                                                       task=record["task"], explain=True)
                    notes.append("ort_explain exported from the same architecture with random weights")
        if int8:
            sibling = onnx_file.with_name(onnx_file.name.replace(".onnx", ".int8.onnx")) if onnx_file else None
            if sibling is not None and sibling.is_file():
                int8_src = sibling
                if CAMS in [o.name for o in open_session(sibling).get_outputs()]:
                    int8_src = _logits_only(sibling, tmpd / "model.int8.plain.onnx")
                files["ort_int8"] = int8_src
            else:
                calib, source = _calibration(record, target if onnx_file is None else None, calibration_images)
                files["ort_int8"] = quantize_int8(files["ort_fp32"], tmpd / "model.int8.onnx", calib)
                notes.append(f"INT8 calibrated on {len(calib)} images: {source}")
        say("measuring the matmul peak")
        peak = matmul_peak_gflops(threads, sizes=peak_sizes, seconds=peak_seconds)
        macs = count_macs(model, size, channels)
        result: dict[str, Any] = {
            "model": record["model"], "source": str(target), "input": inp, "labels": len(labels),
            "threads": threads, "batches": list(batches), "params": count_params(model), "macs": macs,
            "flops": 2 * macs, "file_bytes": {k: Path(v).stat().st_size for k, v in files.items()},
            "matmul_peak_gflops": peak, "flop_limit_ms": 2 * macs / (peak["peak"] * 1e9) * 1e3,
            "load_average_before": list(os.getloadavg()), "machine": machine_info(),
            "versions": package_versions(), "notes": notes, "latency_ms": {},
        }
        tm = _teacher(teacher, inp, len(labels))
        if tm is not None:
            result["teacher"] = {"model": tm[1], "params": count_params(tm[0]), "macs": count_macs(tm[0], size, channels)}
        sessions = {k: open_session(v, threads=threads) for k, v in files.items()}
        rng = np.random.default_rng(0)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch_threads(threads))
            stack.enter_context(eval_mode(model))
            if tm is not None:
                stack.enter_context(eval_mode(tm[0]))
            stack.enter_context(torch.inference_mode())
            for b in batches:
                x = rng.standard_normal((int(b), channels, size, size)).astype(np.float32)
                t = torch.from_numpy(x)
                fns: dict[str, Callable[[], Any]] = {"torch_fp32": lambda: model(t)}
                for key, sess in sessions.items():
                    fns[key] = lambda sess=sess: sess.run(None, {INPUT: x})  # every output: logits (+ cams)
                slow: dict[str, int] = {}
                if tm is not None:
                    fns["teacher_torch_fp32"] = lambda: tm[0](t)
                    slow["teacher_torch_fp32"] = max(5, runs // 5)
                say(f"batch {b}: {', '.join(fns)}, interleaved")
                result["latency_ms"][f"batch_{b}"] = measure_interleaved(
                    fns, warmup=warmup, runs=runs, min_seconds=min_seconds, runs_for=slow,
                    block_for={k: 1 for k in slow})
        result["load_average_after"] = list(os.getloadavg())
    result["ratios"], result["targets"] = _ratios(result)
    result["ratios_best"] = _ratios(result, "min_ms")[0]  # fastest call of each: the least disturbed by other load
    return result


def _ratios(result: dict[str, Any], stat: str = "median_ms") -> tuple[dict[str, Any], dict[str, Any]]:
    """The figures the targets are about (batch 1, or the smallest batch timed), from the ``stat`` of each latency."""
    lat = result["latency_ms"].get("batch_1") or next(iter(result["latency_ms"].values()), {})
    med = {k: v[stat] for k, v in lat.items()}
    ratios: dict[str, Any] = {"batch": 1 if "batch_1" in result["latency_ms"] else result["batches"][0]}
    targets: dict[str, Any] = {}
    if "ort_fp32" in med:
        ratios["ort_fp32_vs_flop_limit"] = med["ort_fp32"] / result["flop_limit_ms"]
        targets["ort_fp32_within_3x_flop_limit"] = ratios["ort_fp32_vs_flop_limit"] <= TARGET_FLOP_LIMIT_RATIO
        if "teacher_torch_fp32" in med:
            ratios["teacher_vs_ort_fp32"] = med["teacher_torch_fp32"] / med["ort_fp32"]
            targets["teacher_at_least_30x_slower"] = ratios["teacher_vs_ort_fp32"] >= TARGET_TEACHER_SPEEDUP
        if "ort_explain" in med:
            ratios["explain_vs_plain"] = med["ort_explain"] / med["ort_fp32"]
            targets["explain_within_1_5x"] = ratios["explain_vs_plain"] <= TARGET_EXPLAIN_OVERHEAD
        if "ort_int8" in med:
            ratios["int8_speedup"] = med["ort_fp32"] / med["ort_int8"]
            ratios["int8_slower"] = med["ort_int8"] > med["ort_fp32"]
        if "torch_fp32" in med:
            ratios["ort_fp32_speedup_vs_torch"] = med["torch_fp32"] / med["ort_fp32"]
    return ratios, targets
