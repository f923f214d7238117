"""Export a trained run for devices: ONNX (+ INT8, + explain graph) with a parity report.

``export_run(run_dir, out, int8=, explain=)`` is what ``medistill export`` runs:

1. rebuild the run's best model, read validation images of the run's dataset (as training preprocessed them);
2. per-label thresholds: the run's ``metrics.json`` when evaluation stored them, else chosen on validation;
3. ``onnx.export_onnx`` -> ``model.onnx`` (its metadata also holds the intensity rule of the run's record and the
   input statistics of 64 training images, :func:`training_input_statistics`) (with the ``cams`` output when ``explain``), then parity: the same
   validation images through PyTorch and ONNX Runtime (``max_abs_diff`` of logits, the validation metric of both);
4. ``explain``: the in-graph maps against pytorch-grad-cam's GradCAM on the same layer (``cam_correlation_min``);
5. ``int8``: ``quantize.quantize_int8`` calibrated on training images -> ``model.int8.onnx`` (``per_channel="auto"``:
   weights per channel and per tensor both tried, the better validation metric kept), then sizes, the validation
   metric (``int8_metric_delta`` = INT8 - fp32), the operators ONNX Runtime runs as integer kernels and in fp32,
   and INT8 vs fp32 latency;
6. ``deployment.deployment``: every runtime and precision installed here (ONNX Runtime fp32 / INT8, OpenVINO fp32 /
   bf16 / INT8 with ``medistill[openvino]``) scored on the validation images and timed at batch 1 in turns; the
   fastest within ``METRIC_TOLERANCE`` of fp32 is the one ``export.json`` names (``deployment.chosen``: runtime,
   precision, file, and why);
7. everything into ``export.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.images import LEGACY_INTENSITY_RULE
from ..errors import MedistillError
from ..evaluate.metrics import choose_thresholds, compute_metrics
from ..inference import image_statistics, input_statistics
from ..runs import EXPORT_FILE, METRICS_FILE, RunDir, load_model, run_dataset
from ..task import Task, get_task
from ..utils.io import atomic_write_json, json_text, staged_write
from ..utils.runtime import package_versions
from .deployment import METRIC_TOLERANCE, deployment
from .quantize import compare, quantize_int8

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = EXPORT_FILE
#: parity target of the issue: fp32 ONNX logits within this of PyTorch's
FP32_TOLERANCE = 1e-4
#: lowest acceptable per-map correlation of the in-graph CAMs with pytorch-grad-cam
CAM_CORRELATION_TARGET = 0.99


def load_split_inputs(run: Any, split: str, *, limit: int | None = None, seed: int = 0,
                      record: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised inputs (N, C, S, S), targets (N, L) and mask (N, L) of ``split`` of the data ``run`` was trained
    on (``runs.run_dataset``: its dataset, options and model input; no augmentation); a seeded subset of
    ``limit`` images when set."""
    ds = run_dataset(run, split, record=record)
    idx = np.arange(len(ds))
    if limit is not None and len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    xs, ys, ms = [], [], []
    for i in idx:
        s = ds[int(i)]
        xs.append(s["image"].numpy())
        ys.append(s["target"].numpy())
        ms.append(s["mask"].numpy())
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32), np.stack(ms).astype(np.float32)


def validation_metric(task: str | Task, logits: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                      labels: list[str]) -> dict[str, Any]:
    """``{"name", "value"}``: the task's main metric (macro AUC or accuracy) by ``evaluate.metrics``."""
    t = get_task(task)
    m = compute_metrics(t, t.probabilities(logits), targets, mask, labels, n_bootstrap=0)
    value = m.get(t.main_metric)
    return {"name": t.main_metric, "value": None if value is None else float(value)}


def thresholds_for(run: Any, task: str | Task, labels: list[str], logits: np.ndarray, targets: np.ndarray,
                   mask: np.ndarray) -> tuple[dict[str, float], str]:
    """Per-label thresholds and where they came from: ``metrics.json`` of the run, else chosen on validation."""
    t = get_task(task)
    stored = run.metrics().get("thresholds") or {}
    if isinstance(stored, dict) and all(lab in stored and stored[lab] is not None for lab in labels):
        return {lab: float(stored[lab]) for lab in labels}, f"{run.file(METRICS_FILE)}"
    if not t.uses_thresholds:
        return {lab: 0.5 for lab in labels}, f"not used ({t.description}: the most probable label is the prediction)"
    chosen = choose_thresholds(t.probabilities(logits), targets, mask, task=t)
    return ({lab: float(v) for lab, v in zip(labels, np.asarray(chosen).ravel())},
            f"chosen on validation ({len(logits)} images)")


def training_input_statistics(run: Any, record: dict[str, Any], *, images: int = 64, seed: int = 0) -> dict[str, Any]:
    """The input statistics of up to ``images`` training images of ``run`` (a seeded subset), as
    :func:`medistill.inference.input_statistics` gives them: stored in the ONNX metadata so that ``serve`` can say
    when an input is unlike the training data."""
    ds = run_dataset(run, "train", record=record)
    idx = np.arange(len(ds))
    if len(idx) > images:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=images, replace=False))
    size = int(record["input"]["size"])
    return input_statistics([image_statistics(ds.read(int(i)), size) for i in idx])


def _file_entry(path: Path, final: Path) -> dict[str, Any]:
    """The report's entry of the file ``final``, whose content is (still) in ``path``."""
    return {"path": str(final), "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def cam_parity(model: Any, onnx_path: Path, images: np.ndarray) -> dict[str, Any]:
    """Correlation of the graph's ``cams`` with pytorch-grad-cam's GradCAM (same layer) for every map of ``images``."""
    import torch

    from .cam_graph import gradcam_reference, map_correlations, upsample_maps
    from .onnx import ort_outputs

    _, cams = ort_outputs(onnx_path, images, maps=True)
    ref = gradcam_reference(model, torch.from_numpy(images)).numpy()  # (N, L, H, W)
    corr = map_correlations(upsample_maps(cams, ref.shape[-2:]), ref)  # (N, L)
    return {"cam_correlation_min": float(corr.min()), "cam_correlation_mean": float(corr.mean()),
            "cam_maps": int(corr.size), "cam_images": int(len(images)), "cam_shape": list(cams.shape[1:])}


def export_run(run_dir: str | Path, out: str | Path, *, fmt: str = "onnx", int8: bool = False, explain: bool = False,
               val_limit: int | None = 512, calibration_images: int = 128, cam_images: int = 8,
               per_channel: bool | str = "auto", calibration_method: str = "percentile", threads: int | None = None,
               metric_tolerance: float = METRIC_TOLERANCE, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export run ``run_dir`` into folder ``out`` (see module docstring); returns the ``export.json`` report."""

    if fmt != "onnx":
        raise MedistillError(f"--format {fmt!r}: expected 'onnx' (the only export format)")
    say = progress or (lambda msg: log.info(msg))
    out = Path(out)
    run = RunDir(run_dir)
    model, record = load_model(run_dir)
    cfg = run.config()
    labels, task, inp = list(record["labels"]), record["task"], record["input"]

    say(f"reading validation images of {cfg.data.dataset}")
    x_val, y_val, m_val = load_split_inputs(run, "val", limit=val_limit, record=record)
    from .onnx import torch_logits

    ref_logits = torch_logits(model, x_val)
    thresholds, thr_source = thresholds_for(run, task, labels, ref_logits, y_val, m_val)

    say("measuring the training images' input statistics")
    stats = training_input_statistics(run, record)
    # a run recorded before the intensity rule existed decoded DICOMs by their min-max: its model keeps that rule
    intensity = record.get("intensity", LEGACY_INTENSITY_RULE)
    say("exporting to ONNX" + (" with the explain graph" if explain else ""))
    staged: dict[str, Path] = {}  # final name -> the hidden file holding it until every check has passed
    try:
        report = _export_checked(model, run, run_dir, out, staged, cfg=cfg, record=record, labels=labels, task=task,
                                 inp=inp, thresholds=thresholds, thr_source=thr_source, intensity=intensity,
                                 stats=stats, x_val=x_val, y_val=y_val, m_val=m_val, int8=int8, explain=explain,
                                 calibration_images=calibration_images, cam_images=cam_images,
                                 per_channel=per_channel, calibration_method=calibration_method, threads=threads,
                                 metric_tolerance=metric_tolerance, say=say)
    except BaseException:
        for path in staged.values():
            path.unlink(missing_ok=True)
        raise
    # every check passed and the report is written: the files take their names, the models first, the report last
    for name in (MODEL_FILE, INT8_FILE, REPORT_FILE):
        if name in staged:
            os.replace(staged[name], out / name)
    if INT8_FILE not in staged and (out / INT8_FILE).exists():  # an older export's: not this model's INT8 copy
        (out / INT8_FILE).unlink()
        log.info("removed %s of an earlier export (this export has no INT8 copy)", out / INT8_FILE)
    log.info("export report written to %s", out / REPORT_FILE)
    return report


def _export_checked(model: Any, run: Any, run_dir: str | Path, out: Path, staged: dict[str, Path], *, cfg: Any,
                    record: dict[str, Any], labels: list[str], task: str, inp: dict[str, Any],
                    thresholds: dict[str, float], thr_source: str, intensity: str, stats: dict[str, Any],
                    x_val: np.ndarray, y_val: np.ndarray, m_val: np.ndarray, int8: bool, explain: bool,
                    calibration_images: int, cam_images: int, per_channel: bool | str, calibration_method: str,
                    threads: int | None, metric_tolerance: float, say: Callable[[str], None]) -> dict[str, Any]:
    """The files of an export under hidden names (``staged``: final name -> hidden file, filled as each is
    written), checked, and the report; :func:`export_run` gives them their names."""
    from .onnx import export_onnx, ort_outputs, parity  # here: the killed-export test patches them in .onnx

    model_path = staged[MODEL_FILE] = export_onnx(
        model, out / MODEL_FILE, labels=labels, task=task, thresholds=thresholds, explain=explain,
        extra={"run": str(Path(run_dir).resolve().name), "thresholds_source": thr_source}, intensity=intensity,
        input_stats=stats, staged=True)
    say("checking parity with PyTorch")
    par = parity(model, model_path, x_val)
    metric_torch = validation_metric(task, par["torch_logits"], y_val, m_val, labels)
    metric_onnx = validation_metric(task, par["onnx_logits"], y_val, m_val, labels)
    report: dict[str, Any] = {
        "run": str(Path(run_dir)), "model": record["model"], "task": task, "labels": labels, "input": inp,
        "format": "onnx", "explain": explain, "thresholds": thresholds, "thresholds_source": thr_source,
        "intensity": intensity, "input_stats": stats,
        "validation": {"dataset": cfg.data.dataset, "split": "val", "images": int(len(x_val))},
        "max_abs_diff": par["max_abs_diff"], "mean_abs_diff": par["mean_abs_diff"],
        "fp32_within_tolerance": par["max_abs_diff"] <= FP32_TOLERANCE, "fp32_tolerance": FP32_TOLERANCE,
        "metric_name": metric_torch["name"], "metric_pytorch": metric_torch["value"],
        "metric_onnx": metric_onnx["value"], "files": {MODEL_FILE: _file_entry(model_path, out / MODEL_FILE)},
    }
    if par["max_abs_diff"] > FP32_TOLERANCE:
        log.warning("ONNX logits differ from PyTorch by up to %.3g (> %.0e)", par["max_abs_diff"], FP32_TOLERANCE)
    if explain:
        say("checking the in-graph maps against pytorch-grad-cam")
        cp = cam_parity(model, model_path, x_val[:cam_images])
        report.update(cp, cam_correlation_target=CAM_CORRELATION_TARGET,
                      cam_within_target=cp["cam_correlation_min"] >= CAM_CORRELATION_TARGET)
    if int8:
        say(f"quantizing to INT8 ({calibration_images} training images)")
        x_cal, _, _ = load_split_inputs(run, "train", limit=calibration_images, seed=1, record=record)
        schemes = [True, False] if per_channel == "auto" else [bool(per_channel)]
        tried: dict[str, Any] = {}
        for pc in schemes:  # "auto": per channel and per tensor, keep the better validation metric
            scheme = "per_channel" if pc else "per_tensor"
            path = staged[f"{INT8_FILE} {scheme}"] = quantize_int8(model_path, out / INT8_FILE, x_cal, per_channel=pc,
                                                                   method=calibration_method, staged=True)
            if len(schemes) > 1:  # each scheme's file under its own hidden name
                path = staged[f"{INT8_FILE} {scheme}"] = path.replace(
                    path.with_name(f".{INT8_FILE}.{scheme}.{os.getpid()}.staged.tmp"))
                lg, _ = ort_outputs(path, x_val)
                tried[scheme] = {"path": path, "metric": validation_metric(task, lg, y_val, m_val, labels)["value"]}
        if tried:
            def score(k: str) -> float:
                v = tried[k]["metric"]
                return -np.inf if v is None else v

            chosen_pc = max(["per_channel", "per_tensor"], key=score) == "per_channel"  # ties keep per channel
        else:
            chosen_pc = schemes[0]
        int8_path = staged[INT8_FILE] = staged.pop(f"{INT8_FILE} {'per_channel' if chosen_pc else 'per_tensor'}")
        for k in [k for k in staged if k.startswith(f"{INT8_FILE} ")]:  # the scheme not chosen
            staged.pop(k).unlink(missing_ok=True)
        say("comparing INT8 with fp32")
        cmp = compare(model_path, int8_path, x_val,
                      metric=lambda lg: validation_metric(task, lg, y_val, m_val, labels), threads=threads)
        report["int8"] = {**cmp, "per_channel": chosen_pc, "calibration_images": int(len(x_cal)),
                          "calibration_split": "train", "calibration_method": calibration_method}
        if tried:
            report["int8"]["weight_scales_tried"] = {k: v["metric"] for k, v in tried.items()}
        report["int8_metric_delta"] = cmp.get("int8_metric_delta")
        report["files"][INT8_FILE] = _file_entry(int8_path, out / INT8_FILE)
        if explain:
            cp8 = cam_parity(model, int8_path, x_val[:cam_images])
            report["int8"]["cam_correlation_min"] = cp8["cam_correlation_min"]
            report["int8"]["cam_correlation_mean"] = cp8["cam_correlation_mean"]
    say("choosing the runtime and precision: every one installed here, scored and timed in turns")
    dep = deployment(model_path, int8_path if int8 else None, x_val,
                     lambda lg: validation_metric(task, lg, y_val, m_val, labels), threads=threads,
                     tolerance=metric_tolerance)
    final = {model_path.name: MODEL_FILE, **({int8_path.name: INT8_FILE} if int8 else {})}  # hidden -> final names
    for row in [*dep["candidates"], dep["chosen"]]:
        row["file"] = final.get(row["file"], row["file"])
    report["deployment"] = dep
    if int8:  # INT8 against fp32 in ONNX Runtime, from the same timing loop as every other candidate
        times = {c["key"]: c.get("latency_ms") for c in dep["candidates"]}
        t32, t8 = times["ort_fp32"], times["ort_int8"]
        report["int8"].update(fp32_latency_ms=t32, int8_latency_ms=t8, int8_speedup=t32 / t8, int8_slower=t8 > t32,
                              latency_threads=threads, latency_runtime="onnxruntime")
        if t8 > t32:
            log.warning("INT8 is slower than fp32 in ONNX Runtime on this CPU: %.2f ms vs %.2f ms", t8, t32)
    report["versions"] = package_versions()
    staged[REPORT_FILE] = staged_write(out / REPORT_FILE, lambda p: p.write_text(json_text(report), encoding="utf-8"))
    return report


__all__ = ["CAM_CORRELATION_TARGET", "FP32_TOLERANCE", "INT8_FILE", "METRIC_TOLERANCE", "MODEL_FILE", "REPORT_FILE",
           "export_run",
           "load_split_inputs", "validation_metric"]
