"""The CPU runtimes an exported model runs in, at the precisions this CPU has: one interface for ONNX Runtime
(always installed) and OpenVINO (the optional extra ``medistill[openvino]``), so that ``export`` and ``benchmark``
time and score every (runtime, precision) pair the same way.

Precisions: ``fp32``; ``bf16`` where the runtime has bf16 kernels for this CPU (OpenVINO, on CPUs with AVX-512 BF16
or AMX; ONNX Runtime's CPU execution provider has none on x86, so it offers fp32 only); an INT8 file
(``export.quantize``) runs as it is, its non-quantized operators in fp32, and is called ``int8``.

OpenVINO reads the ONNX file itself (QDQ INT8 included: its low-precision transformations turn each Q/DQ pair into
integer kernels with the activations fused). Each :class:`Runner` is compiled for one batch size when ``batch`` is
given (a static shape, what latency is measured with) and for any batch otherwise.

Torch-free: OpenVINO is imported when a Runner needs it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedistillError
from . import INPUT, open_session

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
RUNTIMES = (ONNXRUNTIME, OPENVINO)
#: what each runtime is called in reports, and the prefix of its keys in results (``ort_fp32``, ``openvino_int8``)
RUNTIME_NAMES = {ONNXRUNTIME: "ONNX Runtime", OPENVINO: "OpenVINO"}
KEY_PREFIX = {ONNXRUNTIME: "ort", OPENVINO: "openvino"}
#: the precision a Runner is asked for: the hint for the operators a file computes in floating point
HINTS = ("fp32", "bf16")
EXTRA = "pip install 'medistill[openvino]'"


class RuntimeUnavailable(MedistillError):
    """A runtime or precision is not available here; the message says how to get it."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailable(f"the OpenVINO runtime is not installed ({EXTRA})") from None
    return openvino


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    return _openvino().Core()


def available_runtimes() -> list[str]:
    """The runtimes installed here, ONNX Runtime first."""
    try:
        _openvino()
    except RuntimeUnavailable:
        return [ONNXRUNTIME]
    return [ONNXRUNTIME, OPENVINO]


def float_precisions(runtime: str) -> list[str]:
    """The floating-point precisions ``runtime`` has kernels for on this CPU: ``fp32``, and ``bf16`` for OpenVINO
    when the CPU reports it (``OPTIMIZATION_CAPABILITIES``)."""
    if runtime == OPENVINO and "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return ["fp32", "bf16"]
    return ["fp32"]


def version(runtime: str) -> str:
    if runtime == OPENVINO:
        return str(_openvino().__version__).split("-")[0]
    import onnxruntime

    return str(onnxruntime.__version__)


class Runner:
    """``Runner(path, runtime, threads=, hint=, batch=)(x) -> {output name: array}`` for normalised inputs
    ``x`` (B, C, S, S) float32.

    ``hint``: ``fp32`` or ``bf16`` (only where :func:`float_precisions` lists it). ``batch``: compile for this batch
    size only (OpenVINO; ONNX Runtime needs no recompiling).
    """

    def __init__(self, path: str | Path, runtime: str = ONNXRUNTIME, *, threads: int | None = None,
                 hint: str = "fp32", batch: int | None = None):
        if runtime not in RUNTIMES:
            raise RuntimeUnavailable(f"runtime {runtime!r}: expected one of {list(RUNTIMES)}")
        if hint not in float_precisions(runtime):
            raise RuntimeUnavailable(f"{RUNTIME_NAMES[runtime]} has no {hint} kernels on this CPU "
                                     f"(it has {', '.join(float_precisions(runtime))})")
        self.path, self.runtime, self.hint, self.threads = Path(path), runtime, hint, threads
        if runtime == ONNXRUNTIME:
            self._session = open_session(path, threads=threads)
            self.outputs = [o.name for o in self._session.get_outputs()]
            return
        core = _core()
        model = core.read_model(str(path))
        if batch is not None:
            shape = model.inputs[0].get_partial_shape()
            shape[0] = int(batch)
            model.reshape({model.inputs[0]: shape})
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                  "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[hint]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.outputs = [o.get_any_name() for o in self._compiled.outputs]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        if self.runtime == ONNXRUNTIME:
            return dict(zip(self.outputs, self._session.run(None, {INPUT: x})))
        result = self._request.infer({0: x})
        return {name: np.array(result[out]) for name, out in zip(self.outputs, self._compiled.outputs)}

    def describe(self) -> str:
        threads = f", {self.threads} thread(s)" if self.threads else ""
        return f"{RUNTIME_NAMES[self.runtime]} {version(self.runtime)}, {self.hint} kernels{threads}"


__all__ = ["HINTS", "KEY_PREFIX", "ONNXRUNTIME", "OPENVINO", "RUNTIMES", "RUNTIME_NAMES", "Runner",
           "RuntimeUnavailable", "available_runtimes", "float_precisions", "version"]
