"""On-device cost of a model: parameters, MACs, weight-file size and CPU latency.

Parameters and MACs come from :func:`medistill.models.count_params` / :func:`~medistill.models.count_macs`
(``torch.utils.flop_counter``); this module adds the file size and a CPU latency measurement, and the report
combining them that ``evaluate_run`` writes. Nothing here changes the caller's model: its mode, device and torch's thread count are as before.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import MedistillError
from ..inference import timing
from ..models import ModelError, count_macs, count_params, input_config

log = logging.getLogger(__name__)

__all__ = ["count_macs", "count_params", "cpu_latency_ms", "efficiency_report", "file_size"]


def file_size(path: str | Path) -> int:
    """Size of the file at ``path`` in bytes."""
    p = Path(path)
    if not p.is_file():
        raise MedistillError(f"weights file {str(p)!r} does not exist (or is not a file)")
    return int(os.stat(p).st_size)


def _input_shape(model: nn.Module, size: int | None, channels: int | None) -> tuple[int, int]:
    try:
        cfg = input_config(model)
    except ModelError:
        cfg = None
    size = size or (cfg.size if cfg else None)
    channels = channels or (cfg.channels if cfg else None)
    if not size or not channels:
        raise MedistillError(f"{type(model).__name__}: pass size and channels (the model has no medistill input "
                             f"config to take them from)")
    return int(size), int(channels)


def cpu_latency_ms(model: nn.Module, size: int | None = None, channels: int | None = None, batch: int = 1,
                   warmup: int = 5, runs: int = 30, threads: int | None = None,
                   min_seconds: float = 0.5) -> dict[str, Any]:
    """Wall-clock CPU latency of one forward pass on a zero ``(batch, channels, size, size)`` input, by the one
    timing loop (:func:`medistill.inference.timing.measure_latency`).

    Runs ``warmup`` untimed then at least ``runs`` timed passes (and ``min_seconds`` in all) under
    ``torch.inference_mode`` in eval mode, with ``threads`` torch threads (None = the current setting). Returns
    milliseconds ``{"min", "median", "p90", "spread"}`` (the minimum is the figure least disturbed by other
    processes on a shared machine: ratios are built from it; spread = p90 / min - 1), ``runs``, and
    :func:`medistill.inference.timing.reliability`'s ``reliable``, ``reason`` and ``machine_load``. A model on
    another device is measured on a CPU copy; the caller's thread count and model mode are restored.
    """
    size, channels = _input_shape(model, size, channels)
    if batch < 1 or runs < 1 or warmup < 0:
        raise MedistillError(f"cpu_latency_ms: got batch={batch}, runs={runs}, warmup={warmup}, expected "
                             f"batch >= 1, runs >= 1, warmup >= 0")
    if threads is not None and threads < 1:
        raise MedistillError(f"threads: got {threads!r}, expected an integer >= 1 or None")
    params = list(model.parameters()) + list(model.buffers())
    on_cpu = all(p.device.type == "cpu" for p in params)
    net = model if on_cpu else copy.deepcopy(model).cpu()
    dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
    x = torch.zeros(batch, channels, size, size, dtype=dtype)
    old_threads = torch.get_num_threads()
    was_training = model.training
    load_before = timing.machine_load()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        net.eval()
        with torch.inference_mode():
            t = timing.measure_latency(lambda: net(x), warmup=warmup, runs=runs, min_seconds=min_seconds)
    finally:
        torch.set_num_threads(old_threads)
        model.train(was_training)
    out: dict[str, Any] = {"min": t["min_ms"], "median": t["median_ms"], "p90": t["p90_ms"], "spread": t["spread"],
                           "runs": t["runs"], **timing.reliability(t, load_before, timing.machine_load())}
    log.info("CPU latency of %s at batch %d, %d px, %d threads: min %.2f ms, median %.2f ms, p90 %.2f ms%s",
             type(model).__name__, batch, size, threads or old_threads, out["min"], out["median"], out["p90"],
             "" if out["reliable"] else f" (unreliable: {out['reason']})")
    return out


def efficiency_report(model: nn.Module, weights_path: str | Path, *, size: int | None = None,
                      channels: int | None = None, latency: bool = True, **latency_kw: Any) -> dict[str, Any]:
    """The model's cost at batch 1 as ``evaluate_run`` writes it into ``metrics.json``: ``params``, ``macs`` and
    ``size_bytes`` (of the file ``weights_path``); with ``latency``, :func:`cpu_latency_ms`'s minimum as
    ``latency_ms`` (ratios between models are built from it), ``latency_ms_median``, ``latency_ms_p90``,
    ``latency_spread``, ``latency_reliable``, ``latency_unreliable_reason`` and ``machine_load``.

    ``size`` / ``channels``: the input (default: the model's input config); ``latency_kw`` goes to
    :func:`cpu_latency_ms` (``runs``, ``warmup``, ``threads``, ``min_seconds``).
    """
    size, channels = _input_shape(model, size, channels)
    report: dict[str, Any] = {"params": count_params(model), "macs": count_macs(model, size, channels),
                              "size_bytes": file_size(weights_path)}
    if latency:
        lat = cpu_latency_ms(model, size, channels, batch=1, **latency_kw)
        report.update(latency_ms=lat["min"], latency_ms_median=lat["median"], latency_ms_p90=lat["p90"],
                      latency_spread=lat["spread"], latency_reliable=lat["reliable"],
                      latency_unreliable_reason=lat["reason"], machine_load=lat["machine_load"])
    return report
