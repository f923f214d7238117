"""ONNX export with dynamic batch and medistill metadata, and the PyTorch-vs-ONNX Runtime parity check.

``torch.onnx.export`` (the dynamo exporter, opset 18) writes the graph; the labels, task, input size, channels,
mean / std, per-label thresholds, the intensity rule, the training images' input statistics, model name and
medistill version go into the model's ``metadata_props``
(:class:`medistill.inference.ModelInfo`), so the file alone is enough to predict. With ``explain=True`` the graph is
:class:`~medistill.export.cam_graph.CamGraph` and also outputs Grad-CAM maps of every label.

:func:`global_average_pools` then turns every spatial mean the exporter wrote as ``ReduceMean`` (timm's squeeze-excite
and pooling: ``x.mean((2, 3), keepdim=True)``) into the ``GlobalAveragePool`` it is: the same values, but ONNX Runtime
runs ``GlobalAveragePool`` in its blocked fp32 layout (EEEA-Net-C2: 13 layout reorders a call instead of 23) and has
an integer kernel for it (``QLinearGlobalAveragePool``), none for ``ReduceMean``, which would leave every
squeeze-excite block of an INT8 graph in fp32 between a DequantizeLinear and a QuantizeLinear.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn

from ..cam_policy import Grid
from ..data.images import INTENSITY_RULE
from ..inference import (CAMS, CHECKSUM_KEY, CHECKSUM_PLACEHOLDER, INPUT, LOGITS, ModelFileError, ModelInfo,
                         medistill_version, open_session, seal_model_file)
from ..models import ModelError, input_config
from ..utils.io import atomic_write, staged_write
from ..utils.runtime import eval_mode
from .cam_graph import CamGraph, cam_grid

log = logging.getLogger(__name__)

OPSET = 18


class _Logits(nn.Module):
    """The model as the exported graph sees it: input (B, C, S, S) -> logits (B, L)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the ONNX input's name
        return self.model(input)


class _Explain(nn.Module):
    def __init__(self, graph: nn.Module):
        super().__init__()
        self.explainer = graph

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: A002
        return self.explainer(input)


def model_info(model: nn.Module, *, labels: Sequence[str], task: str, thresholds: dict[str, float] | None = None,
               maps: bool = False, extra: dict[str, str] | None = None, intensity: str = INTENSITY_RULE,
               input_stats: dict[str, Any] | None = None, cam_grid: Grid | None = None) -> ModelInfo:
    """The metadata an exported ``model`` carries (input config from ``medistill.models.input_config``; the
    intensity rule its training images were decoded with; their input statistics when given; where the ``cams``
    output's cells sit on the input when given)."""
    cfg = input_config(model)
    n_out = getattr(model, "num_classes", len(labels))
    if n_out != len(labels):
        raise ModelError(f"{type(model).__name__} has {n_out} outputs but {len(labels)} labels were given")
    thr = {lab: float((thresholds or {}).get(lab, 0.5)) for lab in labels}
    return ModelInfo(labels=list(labels), task=task, size=cfg.size, channels=cfg.channels, mean=list(cfg.mean),
                     std=list(cfg.std), thresholds=thr, model=getattr(model, "medistill_name", type(model).__name__),
                     version=medistill_version(), maps=maps, extra=dict(extra or {}), intensity=intensity,
                     input_stats=input_stats, cam_grid=cam_grid)


def export_onnx(model: nn.Module, path: str | Path, *, labels: Sequence[str], task: str,
                thresholds: dict[str, float] | None = None, explain: bool = False, opset: int = OPSET,
                extra: dict[str, str] | None = None, intensity: str = INTENSITY_RULE,
                input_stats: dict[str, Any] | None = None, staged: bool = False) -> Path:
    """Write ``model`` as an ONNX file with a dynamic batch axis and medistill metadata; returns the path.

    Graph: input ``input`` (B, C, S, S) -> ``logits`` (B, L) [+ ``cams`` (B, L, h, w) when ``explain``, their cells'
    place on the input in the metadata: ``ModelInfo.cam_grid``, :func:`~medistill.export.cam_graph.cam_grid`]. The
    caller's model is not modified (its train/eval mode is restored). ``staged``: the file is written under a
    hidden name beside ``path`` (``utils.io.staged_write``), which is returned; the caller renames it to ``path``
    once its checks have passed.
    """
    info = model_info(model, labels=labels, task=task, thresholds=thresholds, maps=explain, extra=extra,
                      intensity=intensity, input_stats=input_stats, cam_grid=cam_grid(model) if explain else None)
    p = next(model.parameters())
    x = torch.zeros(2, info.channels, info.size, info.size, device=p.device, dtype=p.dtype)  # batch 2: not specialised
    batch = torch.export.Dim("batch", min=1, max=4096)
    with eval_mode(model):
        if explain:
            module: nn.Module = _Explain(CamGraph(model))
            outputs = [LOGITS, CAMS]
        else:
            module = _Logits(model)
            outputs = [LOGITS]
        module.eval()  # the caller's model too: eval_mode restores its mode afterwards
        # the exporter prints progress on stdout in some versions; library code stays quiet
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(module, (x,), dynamo=True, verbose=False, input_names=[INPUT],
                                        output_names=outputs, opset_version=opset, dynamic_shapes=({0: batch},),
                                        external_data=False)
    proto = program.model_proto
    for key, value in {**info.to_props(), CHECKSUM_KEY: CHECKSUM_PLACEHOLDER}.items():  # the checksum: last
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    global_average_pools(proto)
    proto.producer_name = "medistill"
    proto.producer_version = info.version
    proto.doc_string = (f"medistill export of {info.model}: input {INPUT} (B, {info.channels}, {info.size}, "
                        f"{info.size}) normalised, outputs {', '.join(outputs)}")
    onnx.checker.check_model(proto)
    path = Path(path)
    written = (staged_write if staged else atomic_write)(path, lambda tmp: save_sealed(proto, tmp))
    log.info("exported %s (%s) to %s, %.2f MB", info.model, ", ".join(outputs), written, written.stat().st_size / 1e6)
    return written


def save_sealed(proto: Any, path: Path) -> None:
    """Save the ONNX ``proto`` to ``path`` with the file's SHA-256 in its ``medistill.sha256`` entry
    (:func:`medistill.inference.seal_model_file`): predict and serve refuse a file changed or damaged since."""
    onnx.save_model(proto, str(path))
    seal_model_file(path)


def _ints(model: onnx.ModelProto, name: str) -> list[int] | None:
    """The integer values of initializer or Constant ``name`` of ``model``; None when it is neither."""
    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in onnx.numpy_helper.to_array(init).ravel()]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return None if value is None else [int(v) for v in onnx.numpy_helper.to_array(value.t).ravel()]
    return None


def global_average_pools(model: onnx.ModelProto) -> int:
    """Replace in place every ``ReduceMean`` over the two spatial axes of a 4-D tensor, dimensions kept, by
    ``GlobalAveragePool`` (the same values, see the module docstring); returns how many were replaced.

    The axes come from the ``axes`` input (opset 18) or attribute; the rank from ONNX shape inference, so that a mean
    over other axes, of another rank or without ``keepdims`` stays what it is.
    """
    ranks = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    nodes = list(model.graph.node)
    replaced, dropped = 0, set()
    for i, node in enumerate(nodes):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: a for a in node.attribute}
        keep = attrs["keepdims"].i if "keepdims" in attrs else 1
        if len(node.input) > 1 and node.input[1]:
            axes = _ints(model, node.input[1])
        else:
            axes = list(attrs["axes"].ints) if "axes" in attrs else None
        if keep != 1 or axes is None or ranks.get(node.input[0]) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        nodes[i] = onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        if len(node.input) > 1:
            dropped.add(node.input[1])
        replaced += 1
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        keep_init = [t for t in model.graph.initializer if t.name not in dropped or t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep_init)
        for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in dropped - used]:
            model.graph.node.remove(node)
    return replaced


def copy_metadata(src: Any, dst: Any, extra: dict[str, str] | None = None) -> None:
    """Copy ``medistill.*`` metadata_props from ONNX ModelProto ``src`` to ``dst`` (replacing), plus ``extra``."""
    props = {e.key: e.value for e in src.metadata_props}
    props.update(extra or {})
    keep = [(e.key, e.value) for e in dst.metadata_props if e.key not in props]
    del dst.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = dst.metadata_props.add()
        entry.key, entry.value = key, value


def ort_outputs(path: str | Path, images: np.ndarray, *, batch_size: int = 16, maps: bool = False,
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """ONNX Runtime logits (N, L) [and maps (N, L, h, w)] of normalised inputs (N, C, S, S)."""
    sess = open_session(path, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    if maps and CAMS not in names:
        raise ModelFileError(f"{path}: no {CAMS!r} output")
    want = [LOGITS, CAMS] if maps else [LOGITS]
    logits, cams = [], []
    for i in range(0, len(images), batch_size):
        out = sess.run(want, {INPUT: np.ascontiguousarray(images[i:i + batch_size], np.float32)})
        logits.append(out[0])
        if maps:
            cams.append(out[1])
    return np.concatenate(logits), (np.concatenate(cams) if maps else None)


@torch.no_grad()
def torch_logits(model: nn.Module, images: np.ndarray, *, batch_size: int = 16) -> np.ndarray:
    """PyTorch logits (N, L) of normalised inputs (N, C, S, S), in eval mode (restored afterwards)."""
    p = next(model.parameters())
    out = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(p.device, p.dtype))
                       .float().cpu().numpy())
    return np.concatenate(out)


def parity(model: nn.Module, path: str | Path, images: np.ndarray, *, batch_size: int = 16) -> dict[str, Any]:
    """The same inputs (N, C, S, S) through PyTorch and ONNX Runtime: max / mean absolute logit difference.

    Returns ``{"max_abs_diff", "mean_abs_diff", "images", "torch_logits", "onnx_logits"}`` (logits as arrays).
    """
    ref = torch_logits(model, images, batch_size=batch_size)
    got, _ = ort_outputs(path, images, batch_size=batch_size)
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "images": int(len(images)),
            "torch_logits": ref, "onnx_logits": got}
