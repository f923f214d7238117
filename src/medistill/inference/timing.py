"""Latency measurement: one timing loop for every runtime (ONNX Runtime, eager PyTorch, anything callable).

``measure_interleaved`` times several callables in turns so that all of them see the same load of a shared
machine; ``measure_latency`` is the same loop with one callable; ``ort_latency`` wraps it for an ONNX file;
``ort_profile`` says which operators an ONNX Runtime call spends its time in. Used by
``export.quantize`` (INT8 vs fp32), ``benchmark``, ``study`` and ``evaluate.efficiency`` (a PyTorch forward).

Every summary carries the minimum (the figure least disturbed by other processes: ratios between models are built
from it), the median and p90, and the ``spread`` (p90 / min - 1). :func:`machine_load` records how busy the machine
was; :func:`reliability` calls a measurement unreliable when the machine was busy (load above
:data:`BUSY_LOAD_PER_CPU`) or the calls spread widely (above :data:`WIDE_SPREAD`): on a shared machine the same
model measured 105 ms and 15.7 ms in two runs.

Torch-free at import: :func:`torch_threads` imports torch when called.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import INPUT, open_session

log = logging.getLogger(__name__)


#: 1-minute load average per CPU above which the machine counts as busy (its timings as unreliable)
BUSY_LOAD_PER_CPU = 0.75
#: p90 / min - 1 above which the calls spread too widely for a ratio to be trusted
WIDE_SPREAD = 0.5


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """median / p90 / mean / min in milliseconds, the spread (p90 / min - 1) and the number of runs of per-call
    times in seconds."""
    ms = np.asarray(seconds) * 1e3
    lo, p90 = float(ms.min()), float(np.percentile(ms, 90))
    return {"median_ms": float(np.median(ms)), "p90_ms": p90, "mean_ms": float(ms.mean()), "min_ms": lo,
            "spread": float(p90 / lo - 1) if lo > 0 else 0.0, "runs": int(len(ms))}


def machine_load() -> dict[str, Any]:
    """How busy the machine is: ``{load_1min, cpus, load_per_cpu, busy}`` (``os.getloadavg``; None where the OS has
    no load average, and then ``busy`` is None: unknown)."""
    cpus = os.cpu_count() or 1
    try:
        load = float(os.getloadavg()[0])
    except (AttributeError, OSError):  # Windows
        return {"load_1min": None, "cpus": cpus, "load_per_cpu": None, "busy": None}
    return {"load_1min": round(load, 2), "cpus": cpus, "load_per_cpu": round(load / cpus, 3),
            "busy": load / cpus > BUSY_LOAD_PER_CPU}


def reliability(summary: dict[str, Any], load_before: dict[str, Any], load_after: dict[str, Any]) -> dict[str, Any]:
    """``{reliable, reason, machine_load}`` of a measurement: unreliable when the machine was busy before or after
    it, or when its calls spread more than :data:`WIDE_SPREAD`."""
    reasons = []
    busy = [x for x in (load_before, load_after) if x.get("busy")]
    if busy:
        worst = max(x["load_per_cpu"] for x in busy)
        reasons.append(f"the machine was busy (load {worst:.2f} per CPU, over {BUSY_LOAD_PER_CPU})")
    if summary.get("spread", 0.0) > WIDE_SPREAD:
        reasons.append(f"the calls spread widely (p90 {summary['spread']:.0%} over the minimum)")
    return {"reliable": not reasons, "reason": "; ".join(reasons) or None,
            "machine_load": {"before": load_before, "after": load_after}}


def measure_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 10, runs: int = 50,
                        min_seconds: float = 1.0, max_seconds: float = 600.0, block: int = 25, settle: int = 5,
                        runs_for: dict[str, int] | None = None, block_for: dict[str, int] | None = None,
                        ) -> dict[str, dict[str, float]]:
    """Time several callables in turns, ``block`` timed calls each per round, so that all of them see the same
    share of a busy machine (a shared CPU's load moves over minutes; timing one runtime after the other would
    compare different loads). Each block starts with ``settle`` untimed calls: the thread pool of the runtime
    timed just before keeps spinning for a while and slows the next one down (measured: 2x on short blocks).
    A key stops after ``runs`` calls (``runs_for[key]`` when given; such slow keys get no settling calls and are
    not held to ``min_seconds``); the others go on until ``min_seconds`` have passed. Stops at ``max_seconds``.
    Returns :func:`summarize_ms` per key."""
    runs_for, block_for = dict(runs_for or {}), dict(block_for or {})
    want = {k: runs_for.get(k, runs) for k in fns}
    for k, fn in fns.items():
        for _ in range(max(warmup if k not in runs_for else min(warmup, 2), 0)):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()

    def done(k: str) -> bool:
        enough = len(times[k]) >= want[k]
        return enough and (k in runs_for or time.perf_counter() - start >= min_seconds)

    while not all(done(k) for k in fns):
        for k, fn in fns.items():
            if done(k):
                continue
            for _ in range(0 if k in runs_for else settle):
                fn()
            for _ in range(block_for.get(k, block)):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        if time.perf_counter() - start >= max_seconds:
            if len(fns) > 1:
                log.warning("timing: stopped after %.0f s with %s calls", max_seconds,
                            {k: len(v) for k, v in times.items()})
            break
    return {k: summarize_ms(ts) for k, ts in times.items()}


def measure_latency(fn: Callable[[], Any], *, warmup: int = 10, runs: int = 50, min_seconds: float = 1.0,
                    max_seconds: float = 60.0) -> dict[str, float]:
    """Call ``fn`` ``warmup`` times, then time single calls: at least ``runs`` calls and ``min_seconds`` in all,
    stopping at ``max_seconds`` (:func:`measure_interleaved` with one callable, one call per round)."""
    return measure_interleaved({"fn": fn}, warmup=warmup, runs=runs, min_seconds=min_seconds,
                               max_seconds=max_seconds, block=1, settle=0)["fn"]


def ort_latency(path: str | Path, x: np.ndarray, *, threads: int | None = None, output_names: Sequence[str] | None = None,
                **kwargs: Any) -> dict[str, float]:
    """``measure_latency`` of one ONNX Runtime call on input ``x`` (B, C, S, S) with ``threads`` intra-op threads."""
    sess = open_session(path, threads=threads)
    feed = {INPUT: np.ascontiguousarray(x, np.float32)}
    names = list(output_names) if output_names else None
    return measure_latency(lambda: sess.run(names, feed), **kwargs)


def ort_profile(path: str | Path, x: np.ndarray, *, threads: int | None = None, runs: int = 50,
                warmup: int = 5) -> dict[str, float]:
    """Where ONNX Runtime spends a call on input ``x``: milliseconds per call by operator, from its profiler over
    ``runs`` calls, largest first. Convolutions are split by kind (``:depthwise``, ``:1x1``, ``:kxk``, read from the
    graph ONNX Runtime optimised), which is what decides whether an INT8 kernel beats fp32. The profiler's own cost
    inflates every figure alike: use the shares, not the sum, as latency."""
    import json
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="medistill-profile-") as tmp:
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        kind: dict[str, str] = {}
        for node in onnx.load(opts.optimized_model_filepath).graph.node:
            if "Conv" in node.op_type:
                attrs = {a.name: a for a in node.attribute}
                group = attrs["group"].i if "group" in attrs else 1
                kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else []
                kind[node.name] = node.op_type + (":depthwise" if group > 1 else ":1x1" if kernel == [1, 1]
                                                  else ":kxk")
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.optimized_model_filepath = ""
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        feed = {INPUT: np.ascontiguousarray(x, np.float32)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            node = e["name"][:-len("_kernel_time")]
            per_run.setdefault(kind.get(node, e.get("args", {}).get("op_name", "?")), []).append(e["dur"])
    total_runs = warmup + runs
    out = {k: sum(v[-(len(v) * runs // total_runs):]) / runs / 1e3 for k, v in per_run.items()}  # the timed runs
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (unchanged when ``n`` is None), then restored."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
