"""medistill: distil large medical image classifiers into small, explainable on-device models.

The Python API mirrors the command line; names are imported lazily, so ``import medistill`` (and the torch-free
``medistill predict`` / ``medistill serve``) never import torch by accident::

    import medistill
    model = medistill.create_model("eeea_net_c2", num_classes=14)
    run = medistill.run_training(medistill.build_config(medistill.RunConfig, overrides={"model.name": "kdfmv"}))
    metrics = medistill.evaluate_run(run.path, "test")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "medistill.models",
    "load_weights": "medistill.models",
    "save_weights": "medistill.models",
    "count_params": "medistill.models",
    "count_macs": "medistill.models",
    "RunConfig": "medistill.config",
    "DataConfig": "medistill.config",
    "ModelConfig": "medistill.config",
    "TrainConfig": "medistill.config",
    "DistillConfig": "medistill.config",
    "build_config": ("medistill.config", "build"),
    "build_dataset": "medistill.data",
    "Preprocess": "medistill.data",
    "run_training": "medistill.train",
    "evaluate_run": "medistill.evaluate.runner",
    "compare_runs": "medistill.evaluate.compare",
    "kd_gain": "medistill.evaluate.compare",
    "load_model": "medistill.runs",
    "RunDir": "medistill.runs",
    "MedistillError": "medistill.errors",
    "StudyConfig": "medistill.study",
    "run_study": "medistill.study.runner",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'medistill' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
