"""INT8 static quantization with onnxruntime (QDQ format), calibrated on training images.

``onnxruntime.quantization.quantize_static`` does the work: ``quant_pre_process`` (shape inference and graph
optimisation) first, then MinMax calibration over a :class:`CalibrationDataReader` of training-split images, then
QuantizeLinear / DequantizeLinear pairs around every quantizable op, weights per output channel by default (the
depthwise convolutions of MobileNet-style students lose much more accuracy with one scale per tensor). In an explain
graph the nodes that only compute the ``cams`` output stay fp32: they are cheap, and the maps keep their parity.

:func:`compare` reports the INT8 model next to the fp32 one: file sizes, the validation metric of both, and
latency on this CPU (INT8 can be slower than fp32, for example for depthwise-heavy models on CPUs without VNNI).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import MedistillError
from ..inference import CAMS, INPUT, LOGITS
from ..inference.timing import ort_latency
from ..utils.io import atomic_write, staged_write

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")


class QuantizationError(MedistillError):
    """INT8 quantization could not run on this model or these calibration images."""


def _ort_quant() -> Any:
    try:
        import onnxruntime.quantization as q
    except ImportError:  # pragma: no cover - onnxruntime is a core dependency
        raise QuantizationError("INT8 quantization needs onnxruntime (pip install onnxruntime)") from None
    return q


def calibration_reader(images: np.ndarray | Sequence[np.ndarray], *, batch_size: int = 8,
                       input_name: str = INPUT) -> Any:
    """A ``CalibrationDataReader`` feeding normalised inputs (N, C, S, S) ``batch_size`` at a time."""
    q = _ort_quant()

    class ArrayReader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.images = images
            self._it: Iterator[dict[str, np.ndarray]] | None = None

        def _batches(self) -> Iterator[dict[str, np.ndarray]]:
            for i in range(0, len(self.images), batch_size):
                yield {input_name: np.ascontiguousarray(np.stack(self.images[i:i + batch_size]), np.float32)}

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._it is None:
                self._it = self._batches()
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = None

    return ArrayReader()


def cam_only_nodes(model: Any) -> list[str]:
    """Names of the nodes of ONNX ``model`` needed for the ``cams`` output but not for ``logits``."""
    producer = {out: node for node in model.graph.node for out in node.output}

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            stack.extend(node.input)
        return seen

    outputs = {o.name for o in model.graph.output}
    if CAMS not in outputs:
        return []
    return sorted(ancestors(CAMS) - ancestors(LOGITS))


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *, per_channel: bool = True,
                  method: str = "minmax", batch_size: int = 8, staged: bool = False) -> Path:
    """Write an INT8 QDQ copy of ``fp32_path`` calibrated on ``calibration`` (N, C, S, S) normalised inputs; returns
    its path (``staged``: a hidden name beside ``out_path``, as :func:`.onnx.export_onnx`).

    The fp32 model's medistill metadata is carried over, with ``medistill.quantization`` describing the scheme.
    """
    import onnx

    from .onnx import copy_metadata, save_sealed

    q = _ort_quant()
    if method not in METHODS:
        raise QuantizationError(f"calibration method {method!r}: expected one of {list(METHODS)}")
    if len(calibration) == 0:
        raise QuantizationError("no calibration images: INT8 static quantization needs a few training images")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    calib_method = {"minmax": q.CalibrationMethod.MinMax, "percentile": q.CalibrationMethod.Percentile,
                    "entropy": q.CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="medistill-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        pre_model = onnx.load(str(pre))
        exclude = cam_only_nodes(pre_model)
        raw = Path(tmp) / "int8.onnx"
        q.quantize_static(str(pre), str(raw), calibration_reader(calibration, batch_size=batch_size),
                          quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          nodes_to_exclude=exclude or None, calibrate_method=calib_method)
        model = onnx.load(str(raw))
        scheme = (f"int8 static QDQ (activations uint8, weights int8 {'per channel' if per_channel else 'per tensor'}),"
                  f" {method} calibration on {len(calibration)} training images"
                  + (f"; {len(exclude)} cams-only nodes kept fp32" if exclude else ""))
        copy_metadata(onnx.load(str(fp32_path), load_external_data=False), model, {"medistill.quantization": scheme})
        model.producer_name = "medistill"
        written = (staged_write if staged else atomic_write)(out_path, lambda p: save_sealed(model, p))
    log.info("INT8 model written to %s (%s)", written, scheme)
    return written


def compare(fp32_path: str | Path, int8_path: str | Path, images: np.ndarray, *,
            metric: Callable[[np.ndarray], dict[str, Any]] | None = None, threads: int | None = None,
            latency_runs: int = 30, warmup: int = 5) -> dict[str, Any]:
    """INT8 next to fp32: sizes, ``metric(logits)`` of both on ``images`` (N, C, S, S), and batch-1 latency.

    ``metric`` maps logits (N, L) to ``{"name": str, "value": float, ...}`` (for example the validation macro AUC).
    ``int8_slower`` says whether INT8 ran slower than fp32 on this CPU, ``int8_speedup`` = fp32 / INT8 latency.
    """
    from .onnx import ort_outputs

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    l32, _ = ort_outputs(fp32_path, images, threads=threads)
    l8, _ = ort_outputs(int8_path, images, threads=threads)
    report: dict[str, Any] = {
        "fp32_bytes": fp32_path.stat().st_size, "int8_bytes": int8_path.stat().st_size,
        "size_ratio": int8_path.stat().st_size / fp32_path.stat().st_size,
        "logit_max_abs_diff": float(np.abs(l32 - l8).max()), "images": int(len(images)),
    }
    if metric is not None:
        m32, m8 = metric(l32), metric(l8)
        report.update(metric_name=m32["name"], fp32_metric=m32["value"], int8_metric=m8["value"],
                      int8_metric_delta=(m8["value"] - m32["value"]) if m8["value"] is not None
                      and m32["value"] is not None else None)
    x = np.ascontiguousarray(images[:1], np.float32)
    t32 = ort_latency(fp32_path, x, threads=threads, runs=latency_runs, warmup=warmup)
    t8 = ort_latency(int8_path, x, threads=threads, runs=latency_runs, warmup=warmup)
    report.update(fp32_latency_ms=t32["median_ms"], int8_latency_ms=t8["median_ms"],
                  int8_speedup=t32["median_ms"] / t8["median_ms"], int8_slower=t8["median_ms"] > t32["median_ms"],
                  latency_threads=threads)
    if report["int8_slower"]:
        log.warning("INT8 is slower than fp32 on this CPU: %.2f ms vs %.2f ms (%.2fx)", t8["median_ms"],
                    t32["median_ms"], t8["median_ms"] / t32["median_ms"])
    return report
