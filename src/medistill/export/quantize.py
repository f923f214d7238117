"""INT8 static quantization with onnxruntime (QDQ format), calibrated on training images, in the form whose
operators ONNX Runtime runs as integer kernels on x86 (VNNI) CPUs.

``onnxruntime.quantization.quantize_static`` does the work: ``quant_pre_process`` (shape inference and graph
optimisation) first, then MinMax calibration over a :class:`CalibrationDataReader` of training-split images, then
QuantizeLinear / DequantizeLinear pairs around every quantizable op. The scheme, measured on EEEA-Net-C2 and kdfmv
(``benchmarks/ondevice.py``; the issue 39 notes in ``benchmarks/README.md``):

- activations uint8 (asymmetric), weights int8 symmetric, per output channel by default: ONNX Runtime's x86 integer
  convolutions are u8 x s8 (VNNI's ``vpdpbusd``); with int8 activations half the convolutions fell back to fp32
  between Q/DQ pairs (4x slower than fp32 in all). Symmetric weights (zero point 0) let MLAS use its
  indirect-convolution and depthwise kernels; per-channel scales keep the depthwise convolutions of MobileNet-style
  students accurate and cost nothing in speed;
- QDQ rather than QOperator: ONNX Runtime fuses DQ -> op -> Q into the same QLinear* kernels (same speed), and QDQ is
  the format other runtimes (OpenVINO) read;
- Relu / Clip are folded into the QuantizeLinear range (the quantizer's default);
- BatchNormalization (what a pre-activation network such as DenseNet keeps unfolded) and Concat stay fp32
  (:data:`NOT_QUANTIZED`): ONNX Runtime has no integer BatchNormalization, so it ran in fp32 between Q/DQ anyway,
  and with either one quantized OpenVINO 2026.4 crashed (segmentation fault) compiling DenseNet121 for a fixed
  batch. Measured on DenseNet121 at 224 px in ONNX Runtime (1 thread, CPU time): 27.2 ms without them, 29.6 ms
  with;
- HardSigmoid (and HardSwish = x * HardSigmoid(x), which ``quant_pre_process`` splits into the two) has no integer
  kernel in ONNX Runtime: left alone, every one runs in fp32 between a DequantizeLinear and a QuantizeLinear, three
  passes over the tensor that cost about a third of EEEA-Net-C2's INT8 time. :func:`integer_hard_sigmoids` rewrites
  each DQ -> HardSigmoid -> Q as the integer Add it is (``QLinearAdd``; exact up to rounding, see there).

What this scheme cannot change: ONNX Runtime's (MLAS's) integer depthwise convolutions are no faster than its fp32
ones on one thread (slower at 56 px and above, and 2-3x slower when the channel count is not a multiple of 16, which
leaves the symmetric kernels), and they use one thread below about 36 x 36 outputs whatever the session's count:
QLinearConv splits its work by output pixel with at least 64K weight-MACs per task, counting one channel's kernel
for a depthwise convolution (``ComputeOutputStride`` in ``qlinearconv.cc``), so a 28 x 28 one is a single task. A
MobileNet-style student (EEEA-Net-C2) gains less from INT8 in ONNX Runtime than its 1x1 convolutions (2.6x faster)
suggest, and less with more threads; ``benchmark`` times OpenVINO's INT8 beside it and profiles both thread counts.

Accuracy (``benchmarks/int8_accuracy.py``, a 3-epoch EEEA-Net-C2 on brain tumour MRI, test macro AUC against fp32):
the whole graph in INT8 with MinMax calibration lost 0.023; keeping the head after the last global pooling in fp32
(:func:`pooled_head_nodes`: EEEA-Net-C2's 960 -> 1280 projection, its hard-swish and the classifier, 1.2M of its
290M MACs, 2 % of its INT8 latency; kdfmv's classifier) brought that to 0.005, and percentile calibration (the
99.999th percentile of each activation instead of its extreme, ``calibration_method="percentile"``, the default)
to 0.0035. Quantizing the pooled vector was most of the loss: a few large features set its 8-bit step. kdfmv lost
0.001 either way. Excluding any other stage helped less than 0.004.

In an explain graph the nodes that only compute the ``cams`` output stay fp32 too: they are cheap, and the maps keep
their parity. :func:`runtime_ops` lists the operators ONNX Runtime actually runs (its optimised graph), so that a
report can say which run as integer kernels and which in fp32 (:func:`op_kinds`).

:func:`compare` reports the INT8 model next to the fp32 one: file sizes, the validation metric of both and the
operators; ``export.deployment`` times it against fp32 and the other runtimes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import MedistillError
from ..inference import CAMS, INPUT, LOGITS, open_session
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


#: operators left in fp32 (see the module docstring)
NOT_QUANTIZED = frozenset({"BatchNormalization", "Concat"})


def op_types_to_quantize() -> list[str]:
    """The operators ``quantize_static`` quantizes by default (its QDQ and QLinear registries) but
    :data:`NOT_QUANTIZED`."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - NOT_QUANTIZED)


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


def name_nodes(model: Any) -> int:
    """Give every nameless node of ONNX ``model`` a unique name (in place; returns how many): ``nodes_to_exclude``
    and :func:`cam_only_nodes` go by name, and ``quant_pre_process`` leaves the nodes it inlines (HardSwish's
    HardSigmoid and Mul) without one."""
    taken = {n.name for n in model.graph.node}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def integer_hard_sigmoids(model: Any) -> int:
    """Rewrite in place every ``DequantizeLinear -> HardSigmoid -> QuantizeLinear`` of a QDQ ``model`` as
    ``DequantizeLinear -> Add -> QuantizeLinear``, which ONNX Runtime fuses into an integer ``QLinearAdd``; returns
    how many were rewritten.

    HardSigmoid is ``clip(alpha x + beta, 0, 1)``. With ``x = s (q - z)`` per tensor, ``alpha x`` is the same integer
    tensor dequantized with scale ``alpha s`` (metadata only), and ``beta`` a one-element quantized constant. The
    clip needs no operator when the QuantizeLinear after it saturates at 0 and at most at 1: its zero point is the
    lowest integer (calibration always includes 0 in the range, and a HardSigmoid output is never below it) and its
    scale times the integer range is at most 1; then ``Q(clip(v, 0, 1)) == Q(v)`` for every ``v``. Exact in real
    arithmetic; the integer kernel rounds in its own way, so a value on a rounding boundary may move by one
    quantization step (8 % of a sweep in ``tests/test_quantize.py``). A HardSigmoid that does not meet these conditions
    (per-channel input scale, a wider output range) is left as it is.
    """
    from onnx import helper, numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(init[name]) if name in init else None

    done = 0
    for node in list(model.graph.node):
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            continue
        dq, after = producer.get(node.input[0]), consumers.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        scale = const(dq.input[1])
        zero = const(dq.input[2]) if len(dq.input) > 2 else np.zeros((), np.uint8)
        q_scale = const(q.input[1])
        q_zero = const(q.input[2]) if len(q.input) > 2 else np.zeros((), np.uint8)
        if scale is None or zero is None or q_scale is None or q_zero is None or scale.size != 1 \
                or q_scale.size != 1 or q_zero.dtype not in (np.uint8, np.int8):
            continue
        lo, hi = np.iinfo(q_zero.dtype).min, np.iinfo(q_zero.dtype).max
        if int(q_zero.ravel()[0]) != lo or float(q_scale.ravel()[0]) * (hi - lo) > 1.0 + 1e-6:
            continue  # the QuantizeLinear does not saturate at 0 and <= 1: the clip would be lost
        attrs = {a.name: a.f for a in node.attribute}
        alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        tag = f"{node.name or node.output[0]}_int"
        # beta = beta_scale * (beta_q - beta_zero) exactly, in the integer type of x
        info = np.iinfo(zero.dtype)
        beta_q, beta_zero = (info.max, 0) if beta >= 0 else (info.min, 0)
        beta_scale = abs(beta) / abs(beta_q) if beta != 0 else 1.0
        if zero.dtype == np.uint8 and beta < 0:
            beta_q, beta_zero, beta_scale = 0, info.max, -beta / info.max
        model.graph.initializer.extend([
            numpy_helper.from_array(np.asarray(scale * np.float32(alpha), np.float32).reshape(scale.shape),
                                    f"{tag}_x_scale"),
            numpy_helper.from_array(np.array(beta_q, zero.dtype), f"{tag}_beta"),
            numpy_helper.from_array(np.array(beta_scale, np.float32), f"{tag}_beta_scale"),
            numpy_helper.from_array(np.array(beta_zero, zero.dtype), f"{tag}_beta_zero"),
        ])
        new = [helper.make_node("DequantizeLinear", [dq.input[0], f"{tag}_x_scale"] + list(dq.input[2:3]),
                                [f"{tag}_x"], name=f"{tag}_dq_x"),
               helper.make_node("DequantizeLinear", [f"{tag}_beta", f"{tag}_beta_scale", f"{tag}_beta_zero"],
                                [f"{tag}_b"], name=f"{tag}_dq_beta"),
               helper.make_node("Add", [f"{tag}_x", f"{tag}_b"], list(node.output), name=f"{tag}_add")]
        at = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for k, n in enumerate(new):
            model.graph.node.insert(at + k, n)
        consumers[dq.output[0]] = [c for c in consumers.get(dq.output[0], []) if c is not node]
        if not consumers[dq.output[0]] and dq.output[0] not in {o.name for o in model.graph.output}:
            model.graph.node.remove(dq)  # the old DequantizeLinear fed only the HardSigmoid
        done += 1
    return done


#: ONNX Runtime's integer kernels (what an INT8 graph should run), its layout and Q/DQ boundary operators; any other
#: operator in an INT8 graph computes in fp32 (a fallback, or a node kept fp32 on purpose such as the cams-only ones)
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
                         "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
                         "QLinearWhere", "QLinearReduceMean", "QGemm", "MatMulInteger", "ConvInteger",
                         "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "NhwcMaxPool", "QAttention"})
BOUNDARY_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "ReorderInput",
                        "ReorderOutput", "Shape", "Expand", "Cast"})


def runtime_ops(path: str | Path, *, threads: int | None = 1) -> dict[str, int]:
    """How many nodes of each operator ONNX Runtime runs for ``path``: its optimised graph (all optimisations, as
    :func:`medistill.inference.open_session` opens it) written to a temporary file and counted."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="medistill-ops-") as tmp:
        out = Path(tmp) / "optimised.onnx"
        open_session(path, threads=threads, optimized_model_path=out)
        counts: dict[str, int] = {}
        for node in onnx.load(str(out)).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def op_kinds(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    """``runtime_ops`` counts split into ``integer`` kernels, ``float`` compute (fp32), Q/DQ ``boundary`` and
    ``layout`` operators."""
    kinds: dict[str, dict[str, int]] = {"integer": {}, "float": {}, "boundary": {}, "layout": {}}
    for op, n in counts.items():
        kind = ("integer" if op in INTEGER_OPS else "boundary" if op in BOUNDARY_OPS
                else "layout" if op in LAYOUT_OPS else "float")
        kinds[kind][op] = n
    return kinds


def pooled_head_nodes(model: Any) -> list[str]:
    """Names of the nodes of ONNX ``model`` after its last GlobalAveragePool (everything computed from it): the head
    that works on one pooled vector per image, which :func:`quantize_int8` keeps fp32 (module docstring)."""
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    if not pools:
        return []
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    seen: dict[str, None] = {}
    stack = list(pools[-1].output)
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name not in seen:
                seen[node.name] = None
                stack.extend(node.output)
    return list(seen)


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
                  method: str = "percentile", batch_size: int = 8, staged: bool = False) -> Path:
    """Write an INT8 QDQ copy of ``fp32_path`` calibrated on ``calibration`` (N, C, S, S) normalised inputs, in the
    scheme of the module docstring; returns its path (``staged``: a hidden name beside ``out_path``, as
    :func:`.onnx.export_onnx`).

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
        name_nodes(pre_model)
        onnx.save_model(pre_model, str(pre))
        cams_only = cam_only_nodes(pre_model)
        head = [n for n in pooled_head_nodes(pre_model) if n not in cams_only]
        exclude = cams_only + head
        raw = Path(tmp) / "int8.onnx"
        # the histogram calibrators print their progress on stdout; library code stays quiet (``export --json``)
        with contextlib.redirect_stdout(io.StringIO()):
            q.quantize_static(str(pre), str(raw), calibration_reader(calibration, batch_size=batch_size),
                              quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              op_types_to_quantize=op_types_to_quantize(),
                              nodes_to_exclude=exclude or None, calibrate_method=calib_method,
                              extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        model = onnx.load(str(raw))
        hard_sigmoids = integer_hard_sigmoids(model)
        scheme = (f"int8 static QDQ (activations uint8 asymmetric, weights int8 symmetric "
                  f"{'per channel' if per_channel else 'per tensor'}), {method} calibration on {len(calibration)} "
                  f"training images" + (f"; {hard_sigmoids} HardSigmoid as integer Add" if hard_sigmoids else "")
                  + (f"; the pooled head ({len(head)} nodes) kept fp32" if head else "")
                  + (f"; {len(cams_only)} cams-only nodes kept fp32" if cams_only else ""))
        copy_metadata(onnx.load(str(fp32_path), load_external_data=False), model, {"medistill.quantization": scheme})
        model.producer_name = "medistill"
        onnx.checker.check_model(model)
        written = (staged_write if staged else atomic_write)(out_path, lambda p: save_sealed(model, p))
    log.info("INT8 model written to %s (%s)", written, scheme)
    return written


def compare(fp32_path: str | Path, int8_path: str | Path, images: np.ndarray, *,
            metric: Callable[[np.ndarray], dict[str, Any]] | None = None, threads: int | None = None) -> dict[str, Any]:
    """INT8 next to fp32 in ONNX Runtime: sizes, ``metric(logits)`` of both on ``images`` (N, C, S, S), and the
    operators the INT8 graph runs (``int8_ops``: :func:`op_kinds` of :func:`runtime_ops`). Latency is timed with
    every other runtime by ``export.deployment``.

    ``metric`` maps logits (N, L) to ``{"name": str, "value": float, ...}`` (for example the validation macro AUC).
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
    report["int8_ops"] = op_kinds(runtime_ops(int8_path, threads=threads))
    return report
