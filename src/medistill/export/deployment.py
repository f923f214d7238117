"""Which runtime and precision an exported model should run with on this machine, and why.

Every (runtime, precision) pair this machine has is a candidate (:func:`candidates`): ONNX Runtime fp32 and INT8,
and with the optional OpenVINO runtime its fp32, bf16 (where the CPU has bf16 kernels) and INT8. Each one scores the
validation images (the run's main metric on its logits) and all are timed at batch 1 in turns
(``measure_interleaved``), so that they share the machine's load alike. :func:`choose` keeps the fastest whose
metric is within :data:`METRIC_TOLERANCE` of fp32 in ONNX Runtime (the reference, as exported); a reduced precision
whose metric cannot be computed (one class only in the validation images) is not chosen. ``export`` writes the
candidates, the choice and the reason into ``export.json`` (``deployment``).

The timings are as good as the machine was quiet: the record carries its load (``machine_load``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..inference import LOGITS
from ..inference.runtimes import (KEY_PREFIX, ONNXRUNTIME, RUNTIME_NAMES, Runner, available_runtimes,
                                  float_precisions, version)
from ..inference.timing import machine_load, measure_interleaved

log = logging.getLogger(__name__)

#: largest drop of the validation metric (macro AUC or accuracy) a reduced precision may cost (issue 39)
METRIC_TOLERANCE = 0.005


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to run the model: ``runtime`` (``onnxruntime`` / ``openvino``), ``precision`` (``fp32``, ``bf16``,
    ``int8``) and the file it runs (the INT8 file for ``int8``, the fp32 one otherwise)."""

    runtime: str
    precision: str
    file: Path

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX[self.runtime]}_{self.precision}"

    @property
    def hint(self) -> str:
        return "bf16" if self.precision == "bf16" else "fp32"

    def runner(self, threads: int | None = None, batch: int | None = None) -> Runner:
        return Runner(self.file, self.runtime, threads=threads, hint=self.hint, batch=batch)

    def label(self) -> str:
        return f"{RUNTIME_NAMES[self.runtime]} {self.precision}"


def candidates(fp32: str | Path, int8: str | Path | None = None,
               runtimes: Sequence[str] | None = None) -> list[Candidate]:
    """Every (runtime, precision) pair installed here for the fp32 file ``fp32`` and, when given, the INT8 file
    ``int8``; ONNX Runtime fp32 first (the reference)."""
    out = []
    for rt in runtimes or available_runtimes():
        for hint in float_precisions(rt):
            out.append(Candidate(rt, hint, Path(fp32)))
        if int8 is not None:
            out.append(Candidate(rt, "int8", Path(int8)))
    return out


def run_logits(candidate: Candidate, images: np.ndarray, *, threads: int | None = None,
               batch_size: int = 16) -> np.ndarray:
    """Logits (N, L) of normalised inputs ``images`` (N, C, S, S) through ``candidate``."""
    runner = candidate.runner(threads)
    return np.concatenate([runner(images[i:i + batch_size])[LOGITS] for i in range(0, len(images), batch_size)])


def time_candidates(cands: Sequence[Candidate], x: np.ndarray, *, threads: int | None = None, runs: int = 30,
                    warmup: int = 5, min_seconds: float = 0.0) -> dict[str, dict[str, float]]:
    """Latency of every candidate on ``x`` (B, C, S, S), timed in turns; ``{key: measure_interleaved summary}``."""
    runners = {c.key: c.runner(threads, batch=len(x)) for c in cands}
    return measure_interleaved({k: (lambda r=r: r(x)) for k, r in runners.items()}, warmup=warmup, runs=runs,
                               min_seconds=min_seconds, block=5, settle=2)


def choose(results: Sequence[dict[str, Any]], *, tolerance: float = METRIC_TOLERANCE) -> dict[str, Any]:
    """The fastest of ``results`` (dicts with ``key``, ``runtime``, ``precision``, ``latency_ms``, ``metric``,
    ``metric_delta``) whose metric is at most ``tolerance`` below the reference's (the first row that ran); an fp32
    candidate whose metric cannot be computed is accepted, a reduced precision is not. Returns
    ``{runtime, precision, key, why, rejected}``."""
    ok, rejected = [], {}
    for r in results:
        if r.get("error") or r.get("latency_ms") is None:
            rejected[r["key"]] = f"did not run: {r.get('error') or 'not timed'}"
        elif r.get("metric_delta") is not None and r["metric_delta"] < -tolerance:
            rejected[r["key"]] = f"{r['metric_name']} {r['metric_delta']:+.4f} against fp32, beyond -{tolerance:g}"
        elif r.get("metric_delta") is None and r["precision"] != "fp32":
            rejected[r["key"]] = "its validation metric could not be computed, so its accuracy is unchecked"
        else:
            ok.append(r)
    ref = next(r for r in results if r.get("latency_ms") is not None)  # ONNX Runtime fp32: the file as exported
    best = min(ok, key=lambda r: r["latency_ms"])
    faster = ref["latency_ms"] / best["latency_ms"]
    why = (f"{RUNTIME_NAMES[best['runtime']]} {best['precision']}: the fastest of {len(results)} candidates at batch "
           f"1 ({best['latency_ms']:.2f} ms median, {faster:.2f}x {RUNTIME_NAMES[ref['runtime']]} "
           f"{ref['precision']})")
    if best["metric_delta"] is not None and best is not ref:
        why += (f" whose {best['metric_name']} is within {tolerance:g} of fp32 "
                f"({best['metric']:.4f} vs {ref['metric']:.4f})")
    return {"runtime": best["runtime"], "precision": best["precision"], "key": best["key"],
            "file": best["file"], "why": why, "rejected": rejected}


def deployment(fp32: str | Path, int8: str | Path | None, images: np.ndarray,
               metric: Callable[[np.ndarray], dict[str, Any]], *, threads: int | None = None,
               runtimes: Sequence[str] | None = None, runs: int = 30, warmup: int = 5,
               tolerance: float = METRIC_TOLERANCE) -> dict[str, Any]:
    """Score (``metric(logits)`` on ``images``) and time (batch 1, the first image) every candidate, then
    :func:`choose`. Returns ``{"candidates": [...], "chosen": {...}, "tolerance", "threads", "machine_load"}``."""
    cands = candidates(fp32, int8, runtimes)
    rows: list[dict[str, Any]] = []
    usable: list[Candidate] = []
    ref_metric = None
    for c in cands:
        row: dict[str, Any] = {"key": c.key, "runtime": c.runtime, "precision": c.precision, "file": c.file.name}
        try:
            row["runtime_version"] = version(c.runtime)
            m = metric(run_logits(c, images, threads=threads))
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run this graph is reported, not fatal
            log.warning("deployment: %s did not run (%s)", c.label(), e)
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            rows.append(row)
            continue
        if ref_metric is None:
            ref_metric = m["value"]
        row.update(metric_name=m["name"], metric=m["value"],
                   metric_delta=None if m["value"] is None or ref_metric is None else m["value"] - ref_metric)
        rows.append(row)
        usable.append(c)
    before = machine_load()
    times = time_candidates(usable, np.ascontiguousarray(images[:1], np.float32), threads=threads, runs=runs,
                            warmup=warmup)
    after = machine_load()
    for row in rows:
        if row["key"] in times:
            t = times[row["key"]]
            row.update(latency_ms=t["median_ms"], latency_min_ms=t["min_ms"], latency_p90_ms=t["p90_ms"])
    chosen = choose(rows, tolerance=tolerance)
    log.info("deployment: %s", chosen["why"])
    return {"candidates": rows, "chosen": chosen, "tolerance": tolerance, "threads": threads, "batch": 1,
            "machine_load": {"before": before, "after": after}}


__all__ = ["METRIC_TOLERANCE", "Candidate", "candidates", "choose", "deployment", "run_logits", "time_candidates"]
