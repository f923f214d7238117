"""Run directories: every run records its resolved config, seed, versions, commit, log and metrics.

Layout of a run directory::

    config.yaml       resolved config (what the run really used)
    run.json          kind, seed, command line, package versions, git commit, machine, start/end time
    log.txt           the run's log
    history.csv       per-epoch metrics (training runs)
    metrics.json      results (evaluate writes/updates it)
    model.safetensors best weights;  last.safetensors + state.pt: last weights and resume state
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .config import ConfigError, RunConfig, from_dict, to_dict
from .utils.io import atomic_write_json, atomic_write_text, read_json
from .utils.runtime import git_commit, machine_info, package_versions

log = logging.getLogger("medistill")

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.txt"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
STATE_FILE = "state.pt"
HISTORY_FILE = "history.csv"
TEACHER_LOGITS = "teacher_logits.npy"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """A run directory on disk (see module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # --- creation -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: Any, *, kind: str, seed: int | None = None,
               extra: dict[str, Any] | None = None) -> "RunDir":
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.save_config(config)
        info = {"kind": kind, "seed": seed, "command": sys.argv, "versions": package_versions(),
                "git_commit": git_commit(), "machine": machine_info(), "started": now(), **(extra or {})}
        if run.file(RUN_FILE).exists():  # resumed run: keep the original record, note the resume
            old = read_json(run.file(RUN_FILE))
            old.setdefault("resumed", []).append(now())
            info = {**old, "versions": info["versions"], "git_commit": info["git_commit"]}
        atomic_write_json(run.file(RUN_FILE), info)
        return run

    def save_config(self, config: Any) -> None:
        atomic_write_text(self.file(CONFIG_FILE), yaml.safe_dump(to_dict(config), sort_keys=False))

    def update_info(self, **fields: Any) -> None:
        info = read_json(self.file(RUN_FILE)) if self.file(RUN_FILE).exists() else {}
        info.update(fields)
        atomic_write_json(self.file(RUN_FILE), info)

    # --- reading --------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.file(CONFIG_FILE).is_file()

    def config(self) -> RunConfig:
        if not self.exists():
            raise FileNotFoundError(f"{self.path}: not a medistill run directory (no {CONFIG_FILE})")
        data = yaml.safe_load(self.file(CONFIG_FILE).read_text(encoding="utf-8")) or {}
        try:
            return from_dict(RunConfig, data)
        except ConfigError as e:
            raise ConfigError(f"{self.file(CONFIG_FILE)}: {e}") from None

    def info(self) -> dict[str, Any]:
        return read_json(self.file(RUN_FILE)) if self.file(RUN_FILE).exists() else {}

    def metrics(self) -> dict[str, Any]:
        return read_json(self.file(METRICS_FILE)) if self.file(METRICS_FILE).exists() else {}

    def write_metrics(self, metrics: dict[str, Any], *, merge: bool = True) -> Path:
        """Atomically write ``metrics.json`` (merged with what is there unless ``merge=False``)."""
        data = {**self.metrics(), **metrics} if merge else metrics
        return atomic_write_json(self.file(METRICS_FILE), data)

    @contextmanager
    def logging_to_file(self, level: int = logging.INFO) -> Iterator[None]:
        """Send the ``medistill`` logger's records to ``log.txt`` for the duration of the block."""
        handler = logging.FileHandler(self.file(LOG_FILE), encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)
        logger = logging.getLogger("medistill")
        old_level = logger.level
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            handler.close()


# ---------------------------------------------------------------------------------------------------------
# models inside run directories
# ---------------------------------------------------------------------------------------------------------

def model_record(model: Any, *, labels: list[str], task: str) -> dict[str, Any]:
    """What ``run.json`` stores so the model can be rebuilt: name, label names, task, input config."""
    from .models import input_config

    return {"model": getattr(model, "medistill_name", type(model).__name__), "labels": list(labels), "task": task,
            "num_classes": len(labels), "input": input_config(model).to_dict()}


def save_model(run: RunDir, model: Any, *, labels: list[str], task: str, which: str = "best") -> Path:
    """Write the model's weights (safetensors) and its record into ``run``; ``which`` = best or last."""
    from .models import save_weights

    record = model_record(model, labels=labels, task=task)
    run.update_info(**record)
    name = BEST_WEIGHTS if which == "best" else LAST_WEIGHTS
    return save_weights(model, run.file(name), metadata={"medistill": "1", "model": record["model"]})


def load_model(path: str | Path, which: str = "best", device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild the model of a run directory (or of a bare ``.safetensors`` file next to a ``run.json``).

    Returns ``(model in eval mode, record)`` where record has ``model``, ``labels``, ``task``, ``input``.
    """
    from .models import InputConfig, ModelError, create_model, load_weights

    path = Path(path)
    run = RunDir(path if path.is_dir() else path.parent)
    info = run.info()
    if not info.get("model") or not info.get("labels"):
        raise ModelError(f"{run.path}: no model record in {RUN_FILE}; is it a medistill training run directory?")
    weights = path if path.is_file() else run.file(BEST_WEIGHTS if which == "best" else LAST_WEIGHTS)
    if not weights.is_file():
        raise ModelError(f"{run.path}: no weights file {weights.name} (has the run finished an epoch?)")
    inp = InputConfig.from_dict(info["input"])
    drop = 0.0
    model = create_model(info["model"], num_classes=len(info["labels"]), in_chans=inp.channels,
                         image_size=inp.size, drop_rate=drop)
    load_weights(model, weights, strict=True)
    model.medistill_input = inp
    model.eval().to(device)
    return model, info


def run_dataset(run: RunDir | str | Path, split: str, *, limit: int | None = None, augment: str = "none",
                record: dict[str, Any] | None = None) -> Any:
    """Exactly the data ``run`` was trained and evaluated on (its saved ``data`` config: source, root, views,
    labels, uncertainty policy ...), split ``split``, preprocessed as the run's model expects (its stored input
    size, channels, mean and std); ``limit`` caps the images (a seeded subset, as training's ``--limit`` does).
    Raises ModelError when the run's labels differ from the dataset's."""
    from .data import Preprocess, build_dataset, image_cache_dir
    from .models import InputConfig, ModelError

    run = run if isinstance(run, RunDir) else RunDir(run)
    cfg = run.config()
    record = record or run.info()
    if limit is not None:
        cfg.data.limit = limit
    if "input" not in record:
        raise ModelError(f"{run.file(RUN_FILE)}: no model input record; is it a medistill training run directory?")
    inp = InputConfig.from_dict(record["input"])
    ds = build_dataset(cfg.data, split, Preprocess(inp.size, inp.channels, inp.mean, inp.std, augment),
                       cache_dir=image_cache_dir(cfg.data))
    if record.get("labels") is not None and list(ds.labels) != list(record["labels"]):
        raise ModelError(f"{run.path}: the model's labels {record['labels']} differ from the dataset's {ds.labels}")
    return ds
