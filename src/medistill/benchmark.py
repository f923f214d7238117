"""On-device benchmark: latency of the student and of the teacher in every runtime and precision installed here
(ONNX Runtime fp32 and INT8; with ``medistill[openvino]`` OpenVINO fp32, bf16 where the CPU has it, and INT8), the
explain graph, and PyTorch eager, next to the machine's measured matmul peak.

Every speed ratio compares one runtime and precision with itself: the student against the teacher in ONNX Runtime
fp32, in ONNX Runtime INT8, in OpenVINO bf16 ... and in PyTorch eager (``ratios.teacher_vs_student``, keyed by
runtime and precision); INT8 and bf16 against fp32 of the same runtime (``ratios.int8_speedup``,
``ratios.bf16_speedup``); the explain graph against the plain one (``ratios.explain_vs_plain``). The teacher is
exported to ONNX and quantized exactly as the student is (``export.onnx``, ``export.quantize``) and runs at its own
input size.

Latency is the median (and 90th percentile) of single calls after warm-up, over at least ``runs`` calls and at
least ``min_seconds``. Everything is timed in turns (``measure_interleaved``: a block of calls each per round, after
a few untimed ones), so that on a shared machine all see the same load; ``ratios_best`` repeats the ratios from
each one's fastest call, the figure least disturbed by other jobs. The FLOP limit is the model's FLOPs (2 x MACs
from ``torch.utils.flop_counter``) divided by the measured float32 matmul peak (numpy's BLAS and torch, the best of
both): no fp32 implementation can beat it, so ``latency / flop limit`` says how far from the hardware a runtime is.

Why a target is missed: ``int8_ops`` lists the operators ONNX Runtime runs for the INT8 graphs (integer kernels,
fp32 fallbacks), and ``profile_ms`` where its calls spend their time by operator (convolutions split into
depthwise, 1x1 and others), for fp32, INT8 and the explain graph, at the benchmark's threads and at one thread
(``ort_int8@2``, ``ort_int8@1``): an operator whose time does not drop with more threads ran in one task.

The timing loop itself is ``medistill.inference.timing`` (shared with ``export``); torch is imported by the
functions that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import MedistillError
from .export import load_split_inputs
from .export.deployment import Candidate
from .export.quantize import op_kinds, quantize_int8, runtime_ops
from .inference import CAMS, INPUT, LOGITS, Predictor, open_session
from .inference.runtimes import (KEY_PREFIX, ONNXRUNTIME, RUNTIME_NAMES, RUNTIMES, available_runtimes,
                                 float_precisions, version)
from .inference.timing import machine_load, measure_interleaved, measure_latency, ort_profile, torch_threads
from .runs import RunDir, load_model
from .utils.runtime import eval_mode, machine_info, package_versions

log = logging.getLogger(__name__)

#: the issue's targets (issue 39), batch 1 at 224 px on the benchmark machine
TARGET_FLOP_LIMIT_RATIO = 1.3  # fp32 latency at most 1.3x the FLOP limit
TARGET_INT8_SPEEDUP = 1.5  # INT8 at least 1.5x faster than fp32 in the same runtime
TARGET_EXPLAIN_OVERHEAD = 1.15  # explain graph at most 1.15x the plain graph
TARGET_TEACHER_SPEEDUP = 30.0  # student at least 30x faster than the teacher, in the same runtime and precision
#: the runtime and precision the teacher target is judged in (the one every export has)
TEACHER_TARGET_KEY = "ort_fp32"

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

@dataclasses.dataclass
class Side:
    """The student or the teacher: its PyTorch model, input (size, channels), ONNX files by variant (``fp32``,
    ``int8``, ``explain``) and where its INT8 calibration images came from."""

    name: str
    model: Any
    size: int
    channels: int
    files: dict[str, Path]
    calibration: str | None = None


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


def _calibration(inp: dict[str, Any], run: Path | None, n: int) -> tuple[np.ndarray, str]:
    """Training-split inputs of the run's dataset when it can be read, else seeded random inputs (timing only)."""
    if run is not None:
        try:
            x, _, _ = load_split_inputs(run, "train", limit=n)
            return x, "the run's training split"
        except Exception as e:  # noqa: BLE001 - the benchmark only needs ranges; say why and go on
            log.warning("benchmark: training images of %s unavailable (%s); calibrating INT8 on random inputs "
                        "(fine for timing, not for accuracy)", run, e)
    rng = np.random.default_rng(0)
    shape = (n, int(inp["channels"]), int(inp["size"]), int(inp["size"]))
    return rng.standard_normal(shape).astype(np.float32), "random inputs (timing only)"


def _teacher(spec: str, record: dict[str, Any]) -> tuple[Any, dict[str, Any], Path | None]:
    """(model, record, run directory or None) of the teacher: a run directory's model at its own input, or a timm
    model with random weights at the student's input and labels (``record``)."""
    from .models import create_model

    if Path(spec).exists():
        model, t_record = load_model(spec)
        return model.eval(), t_record, Path(spec)
    inp = record["input"]
    model = create_model(spec, num_classes=len(record["labels"]), in_chans=int(inp["channels"]),
                         image_size=int(inp["size"]), drop_rate=0.0)
    return model.eval(), {**record, "model": spec}, None


def _prepare(name: str, model: Any, record: dict[str, Any], tmpd: Path, *, onnx_file: Path | None,
             run: Path | None, int8: bool, explain: bool, calibration_images: int,
             notes: list[str]) -> Side:
    """Export (or reuse) the fp32, explain and INT8 graphs of one side."""
    from .export.onnx import export_onnx

    inp, labels = record["input"], list(record["labels"])
    files: dict[str, Path] = {}
    side = Side(name, model, int(inp["size"]), int(inp["channels"]), files)
    if onnx_file is None:
        files["fp32"] = export_onnx(model, tmpd / f"{name}.onnx", labels=labels, task=record["task"])
        if explain:
            files["explain"] = export_onnx(model, tmpd / f"{name}.explain.onnx", labels=labels, task=record["task"],
                                           explain=True)
    else:
        has_maps = CAMS in [o.name for o in open_session(onnx_file).get_outputs()]
        if has_maps:
            files["explain"] = onnx_file
            files["fp32"] = _logits_only(onnx_file, tmpd / f"{name}.plain.onnx")
            notes.append(f"{name}: fp32 is the logits-only subgraph of the explain graph (onnx.utils.extract_model)")
        else:
            files["fp32"] = onnx_file
            if explain:
                files["explain"] = export_onnx(model, tmpd / f"{name}.explain.onnx", labels=labels,
                                               task=record["task"], explain=True)
                notes.append(f"{name}: the explain graph is exported from the same architecture with random weights")
    if int8:
        sibling = onnx_file.with_name(onnx_file.name.replace(".onnx", ".int8.onnx")) if onnx_file else None
        if sibling is not None and sibling.is_file():
            files["int8"] = sibling
            if CAMS in [o.name for o in open_session(sibling).get_outputs()]:
                files["int8"] = _logits_only(sibling, tmpd / f"{name}.int8.plain.onnx")
            side.calibration = f"{sibling.name} as exported"
        else:
            calib, source = _calibration(inp, run, calibration_images)
            files["int8"] = quantize_int8(files["fp32"], tmpd / f"{name}.int8.onnx", calib)
            side.calibration = f"{len(calib)} images: {source}"
            notes.append(f"{name}: INT8 calibrated on {side.calibration}")
    return side


def _runtime_keys(runtimes: Sequence[str], int8: bool) -> list[tuple[str, str, str]]:
    """(key, runtime, precision) of every runtime and precision to time: fp32, bf16 where there are kernels, INT8."""
    out = []
    for rt in runtimes:
        for hint in float_precisions(rt):
            out.append((f"{KEY_PREFIX[rt]}_{hint}", rt, hint))
        if int8:
            out.append((f"{KEY_PREFIX[rt]}_int8", rt, "int8"))
    return out


def _callables(side: Side, keys: list[tuple[str, str, str]], batch: int, threads: int, *, explain: bool,
               prefix: str = "") -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """``{key: call}`` for one side at ``batch``: PyTorch eager, every (runtime, precision), the explain graph in
    every runtime; and the runtime / precision each ran with (or why it could not)."""
    import torch

    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, side.channels, side.size, side.size)).astype(np.float32)
    t = torch.from_numpy(x)
    fns: dict[str, Callable[[], Any]] = {f"{prefix}torch_fp32": lambda: side.model(t)}
    described: dict[str, str] = {f"{prefix}torch_fp32": f"PyTorch {torch.__version__} eager, fp32"}
    variants = [(k, rt, prec, side.files["int8" if prec == "int8" else "fp32"]) for k, rt, prec in keys]
    if explain and "explain" in side.files:
        variants += [(f"{KEY_PREFIX[rt]}_explain", rt, "fp32", side.files["explain"])
                     for rt in dict.fromkeys(rt for _, rt, _ in keys)]
    for key, rt, prec, path in variants:
        try:
            runner = Candidate(rt, prec, path).runner(threads, batch=batch)
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run this graph is reported, not fatal
            log.warning("benchmark: %s %s of %s did not run (%s)", RUNTIME_NAMES[rt], prec, side.name, e)
            described[prefix + key] = f"did not run: {type(e).__name__}: {str(e).strip()[:200]}"
            continue
        fns[prefix + key] = lambda r=runner: r(x)
        described[prefix + key] = runner.describe()
    return fns, described


def benchmark(target: str | Path, *, threads: int | None = None, batches: Sequence[int] = (1,),
              teacher: str | None = DEFAULT_TEACHER, runs: int = 50, warmup: int = 10, min_seconds: float = 1.0,
              int8: bool = True, explain: bool = True, runtimes: Sequence[str] | None = None,
              calibration_images: int = 32, teacher_calibration_images: int = 8, profile: bool = True,
              peak_seconds: float = 1.0, peak_sizes: Sequence[int] = (1024, 2048),
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark a run directory or an exported ``model.onnx`` (see module docstring); returns a JSON-able dict.

    For a run directory the ONNX fp32, explain and INT8 graphs are exported into a temporary folder. For an ONNX
    file, its own graph is timed; a ``cams`` output is split off with ``onnx.utils.extract_model`` for the plain
    timing; ``model.int8.onnx`` beside it is used when present, else INT8 is quantized here.
    ``teacher``: a timm model name (random weights, the student's input), a run directory (its own input), or None;
    timed at the smallest batch only. ``runtimes``: the runtimes to time (default: every one installed).
    """
    import torch

    from .models import count_macs, count_params

    say = progress or (lambda msg: log.info(msg))
    threads = int(threads or os.cpu_count() or 1)
    runtimes = [rt for rt in (runtimes or available_runtimes())]
    unknown = [rt for rt in runtimes if rt not in RUNTIMES]
    if unknown:
        raise BenchmarkError(f"runtimes {unknown}: expected some of {list(RUNTIMES)}")
    runtimes = [rt for rt in runtimes if rt in available_runtimes()] or [ONNXRUNTIME]
    target = Path(target)
    model, record, onnx_file = _load_target(target)
    inp = record["input"]
    labels = list(record["labels"])
    notes: list[str] = []
    if "bf16" not in float_precisions(ONNXRUNTIME):
        notes.append("ONNX Runtime's CPU execution provider has no bf16 kernels on this CPU: bf16 is timed where a "
                     "runtime has them" + ("" if any("bf16" in float_precisions(rt) for rt in runtimes)
                                           else " (none installed here has)"))
    keys = _runtime_keys(runtimes, int8)
    batches = [int(b) for b in batches]
    load_before = machine_load()
    with tempfile.TemporaryDirectory(prefix="medistill-bench-") as tmp:
        tmpd = Path(tmp)
        say("preparing the student's graphs")
        student = _prepare("student", model, record, tmpd, onnx_file=onnx_file,
                           run=target if onnx_file is None else None, int8=int8, explain=explain,
                           calibration_images=calibration_images, notes=notes)
        tside = None
        if teacher is not None and str(teacher).lower() != "none":
            say(f"exporting the teacher ({teacher}) to ONNX" + (" and INT8" if int8 else ""))
            t_model, t_record, t_run = _teacher(str(teacher), record)
            if t_run is None and onnx_file is None:  # a timm teacher at the student's input: the student's images
                t_run = target
            tside = _prepare("teacher", t_model, t_record, tmpd, onnx_file=None, run=t_run, int8=int8,
                             explain=False, calibration_images=teacher_calibration_images, notes=notes)
            tside.name = str(t_record.get("model"))
        say("measuring the matmul peak")
        peak = matmul_peak_gflops(threads, sizes=peak_sizes, seconds=peak_seconds)
        macs = count_macs(model, student.size, student.channels)
        result: dict[str, Any] = {
            "model": record["model"], "source": str(target), "input": inp, "labels": len(labels),
            "threads": threads, "batches": batches, "params": count_params(model), "macs": macs,
            "flops": 2 * macs, "file_bytes": {k: Path(v).stat().st_size for k, v in student.files.items()},
            "matmul_peak_gflops": peak, "flop_limit_ms": 2 * macs / (peak["peak"] * 1e9) * 1e3,
            "runtimes": {rt: {"name": RUNTIME_NAMES[rt], "version": version(rt),
                              "precisions": float_precisions(rt) + (["int8"] if int8 else [])} for rt in runtimes},
            "load_average_before": list(os.getloadavg()), "machine_load_before": load_before,
            "machine": machine_info(), "versions": package_versions(), "notes": notes, "latency_ms": {},
        }
        if tside is not None:
            result["teacher"] = {"model": tside.name, "params": count_params(tside.model),
                                 "macs": count_macs(tside.model, tside.size, tside.channels),
                                 "input": {"size": tside.size, "channels": tside.channels},
                                 "file_bytes": {k: Path(v).stat().st_size for k, v in tside.files.items()}}
        if int8:
            result["int8_ops"] = {"student": op_kinds(runtime_ops(student.files["int8"], threads=threads))}
            if tside is not None:
                result["int8_ops"]["teacher"] = op_kinds(runtime_ops(tside.files["int8"], threads=threads))
        described: dict[str, str] = {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch_threads(threads))
            stack.enter_context(eval_mode(model))
            if tside is not None:
                stack.enter_context(eval_mode(tside.model))
            stack.enter_context(torch.inference_mode())
            for b in batches:
                fns, desc = _callables(student, keys, b, threads, explain=explain)
                described.update(desc)
                slow: dict[str, int] = {}
                if tside is not None and b == min(batches):
                    t_fns, t_desc = _callables(tside, keys, b, threads, explain=False, prefix="teacher_")
                    fns.update(t_fns)
                    described.update(t_desc)
                    slow = {k: max(5, runs // 5) for k in t_fns}
                say(f"batch {b}: {', '.join(fns)}, in turns")
                result["latency_ms"][f"batch_{b}"] = measure_interleaved(
                    fns, warmup=warmup, runs=runs, min_seconds=min_seconds, runs_for=slow,
                    block_for={k: 1 for k in slow})
        result["timed_with"] = described
        if profile:
            say("profiling ONNX Runtime: where the time goes, by operator")
            x1 = np.random.default_rng(0).standard_normal((1, student.channels, student.size, student.size)
                                                          ).astype(np.float32)
            # at 1 thread too: an operator whose time does not halve with 2 threads runs in one task (MLAS's
            # integer depthwise convolutions below about 36 x 36 outputs)
            result["profile_ms"] = {f"ort_{k}@{n}": ort_profile(v, x1, threads=n, runs=max(20, runs // 2))
                                    for n in sorted({threads, 1}, reverse=True) for k, v in student.files.items()}
        result["load_average_after"] = list(os.getloadavg())
        result["machine_load_after"] = machine_load()
    result["ratios"], result["targets"] = _ratios(result)
    result["ratios_best"] = _ratios(result, "min_ms")[0]  # fastest call of each: the least disturbed by other load
    result["target_notes"] = target_notes(result)
    return result


def _ratios(result: dict[str, Any], stat: str = "median_ms") -> tuple[dict[str, Any], dict[str, bool]]:
    """The figures the targets are about (batch 1, or the smallest batch timed), from the ``stat`` of each latency,
    every ratio within one runtime and precision."""
    lat = result["latency_ms"].get("batch_1") or next(iter(result["latency_ms"].values()), {})
    med = {k: v[stat] for k, v in lat.items()}
    ratios: dict[str, Any] = {"batch": 1 if "batch_1" in result["latency_ms"] else result["batches"][0]}
    targets: dict[str, bool] = {}
    prefixes = [p for p in ("torch", *KEY_PREFIX.values()) if f"{p}_fp32" in med]
    flop = {p: med[f"{p}_fp32"] / result["flop_limit_ms"] for p in prefixes}
    int8 = {p: med[f"{p}_fp32"] / med[f"{p}_int8"] for p in prefixes if f"{p}_int8" in med}
    bf16 = {p: med[f"{p}_fp32"] / med[f"{p}_bf16"] for p in prefixes if f"{p}_bf16" in med}
    expl = {p: med[f"{p}_explain"] / med[f"{p}_fp32"] for p in prefixes if f"{p}_explain" in med}
    teacher = {k[len("teacher_"):]: v / med[k[len("teacher_"):]] for k, v in med.items()
               if k.startswith("teacher_") and k[len("teacher_"):] in med}
    for name, values in (("fp32_vs_flop_limit", flop), ("int8_speedup", int8), ("bf16_speedup", bf16),
                         ("explain_vs_plain", expl), ("teacher_vs_student", teacher)):
        if values:
            ratios[name] = values
    for p, v in flop.items():
        if p != "torch":  # eager PyTorch is the reference, not a deployment runtime
            targets[f"{p}_fp32_within_1_3x_flop_limit"] = v <= TARGET_FLOP_LIMIT_RATIO
    for p, v in int8.items():
        targets[f"{p}_int8_at_least_1_5x_fp32"] = v >= TARGET_INT8_SPEEDUP
    for p, v in expl.items():
        targets[f"{p}_explain_within_1_15x"] = v <= TARGET_EXPLAIN_OVERHEAD
    if TEACHER_TARGET_KEY in teacher:
        targets["teacher_at_least_30x_slower"] = teacher[TEACHER_TARGET_KEY] >= TARGET_TEACHER_SPEEDUP
    return ratios, targets


def runtime_label(key: str) -> str:
    """``ort_int8`` -> ``ONNX Runtime INT8``; ``torch_fp32`` -> ``PyTorch eager fp32``."""
    prefix, _, rest = key.partition("_")
    runtime = {**{v: RUNTIME_NAMES[k] for k, v in KEY_PREFIX.items()}, "torch": "PyTorch eager"}.get(prefix, prefix)
    return f"{runtime} {rest.replace('int8', 'INT8')}"


def speed_sentence(result: dict[str, Any]) -> str:
    """How much faster the student runs than its teacher, once per runtime and precision both were timed in ("" when
    no teacher was timed): the ratios people quote, each one runtime against itself."""
    ratios = (result.get("ratios") or {}).get("teacher_vs_student") or {}
    if not ratios:
        return ""
    teacher = (result.get("teacher") or {}).get("model", "the teacher")
    parts = [f"{v:.1f}x in {runtime_label(k)}" for k, v in sorted(ratios.items(), key=lambda kv: -kv[1])]
    return (f"The student runs faster than its teacher ({teacher}) by {', '.join(parts)} (batch "
            f"{result['ratios'].get('batch', 1)}; each ratio within one runtime and precision).")


def target_notes(result: dict[str, Any]) -> dict[str, str]:
    """One sentence per target: what was compared with what, in which runtime."""
    notes = {}
    for key in result.get("targets", {}):
        if key == "teacher_at_least_30x_slower":
            t = result.get("teacher", {})
            notes[key] = (f"student and teacher ({t.get('model')}) both in {runtime_label(TEACHER_TARGET_KEY)}, "
                          f"batch 1; their MACs differ {t.get('macs', 0) / max(result['macs'], 1):.1f}x")
        elif key.endswith("flop_limit"):
            notes[key] = f"{runtime_label(key.split('_within')[0])} against {result['flop_limit_ms']:.2f} ms"
        elif "int8_at_least" in key:
            p = key.split("_int8")[0]
            notes[key] = f"{runtime_label(p + '_int8')} against {runtime_label(p + '_fp32')}"
        elif "explain" in key:
            p = key.split("_explain")[0]
            notes[key] = (f"{runtime_label(p + '_explain')} (logits + maps) against {runtime_label(p + '_fp32')} "
                          f"(logits)")
    return notes


__all__ = ["BenchmarkError", "DEFAULT_TEACHER", "TARGET_EXPLAIN_OVERHEAD", "TARGET_FLOP_LIMIT_RATIO",
           "TARGET_INT8_SPEEDUP", "TARGET_TEACHER_SPEEDUP", "benchmark", "matmul_peak_gflops", "runtime_label",
           "speed_sentence", "target_notes"]
