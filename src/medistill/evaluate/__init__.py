"""Evaluation: classification metrics (:mod:`.metrics`) and on-device cost (:mod:`.efficiency`).

Running a saved model over a split and writing ``metrics.json`` is :mod:`.runner` (``medistill evaluate``).
Submodules are imported on use, so ``import medistill.evaluate`` stays light.
"""

from __future__ import annotations

from typing import Any

_METRICS = ("MetricAccumulator", "MetricError", "MetricWarning", "choose_thresholds", "compute_metrics",
            "expected_calibration_error", "multiclass_metrics", "multilabel_metrics")
_EFFICIENCY = ("cpu_latency_ms", "efficiency_report", "file_size")

__all__ = list(_METRICS + _EFFICIENCY)


def __getattr__(name: str) -> Any:
    if name in _METRICS:
        from . import metrics

        return getattr(metrics, name)
    if name in _EFFICIENCY:
        from . import efficiency

        return getattr(efficiency, name)
    raise AttributeError(f"module 'medistill.evaluate' has no attribute {name!r}")
