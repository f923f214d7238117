"""Run directories: every run records its resolved config, seed, versions, commit, log and metrics.

The names of its files (in the table below) are defined once in :mod:`medistill.layout` (torch-free) and re-exported here.
Layout of a run directory::

    config.yaml            CONFIG_FILE     resolved config (what the run really used)
    run.json               RUN_FILE        kind, seed, command line, package versions, git commit, machine,
                                           start/end time, model record (labels, task, input), "resumed" times
    log.txt                LOG_FILE        the run's log (appended)
    history.csv            HISTORY_FILE    per-epoch metrics (training runs)
    metrics.json           METRICS_FILE    results (training, then evaluate writes/updates it)
    model.safetensors      BEST_WEIGHTS    best weights
    last.safetensors       LAST_WEIGHTS    last weights;  state.pt (STATE_FILE): everything resume needs
    teacher_logits.npy     TEACHER_LOGITS  offline distillation: the teachers' cached logits (+ ``.key`` beside it)
    predictions_<split>.npz  predictions_file(split)  evaluate's probabilities, logits, targets, mask, patients
    export/                EXPORT_DIR      ``medistill export``'s default output folder: model.onnx, model.int8.onnx,
                                           export.json (EXPORT_FILE), benchmark.json (BENCHMARK_FILE)
    explain/                               ``medistill explain``'s usual output folder: explain.json (EXPLAIN_FILE)
    run.lock               LOCK_FILE       locked (``flock``) while a process trains into the folder; holds its pid

Readers (:meth:`RunDir.config`, :meth:`RunDir.info`, :meth:`RunDir.metrics`) raise one MedistillError naming the
file and what was expected when a record is corrupt (not UTF-8, not JSON / YAML, not a mapping).

Importing this module does not import torch (``medistill --help``, ``compare`` and ``report`` read run folders):
the functions that build a model or a dataset import ``models`` and ``data`` when called.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .config import ConfigError, RunConfig, from_dict, to_dict
from .errors import MedistillError
from .layout import (BENCHMARK_FILE, BEST_WEIGHTS, CONFIG_FILE, EXPLAIN_FILE, EXPORT_DIR, EXPORT_FILE,  # noqa: F401
                     HISTORY_FILE, LAST_WEIGHTS, LOCK_FILE, LOG_FILE, METRICS_FILE, PREDICTIONS_PATTERN, RUN_FILE,
                     STATE_FILE, TEACHER_LOGITS, predictions_file)
from .utils.io import JsonFileError, atomic_write_json, atomic_write_text, read_json_object
from .utils.runtime import git_commit, machine_info, package_versions
from .utils.text import EscapingFormatter

log = logging.getLogger("medistill")


# --- the types of the records' fields -------------------------------------------------------------------------------
def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _integer(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _text(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _pair(v: Any) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v))


def _per_label(v: Any) -> bool:
    return isinstance(v, dict) and all(_number(x) for x in v.values())


def _object(v: Any) -> bool:
    return isinstance(v, dict)


def _matrix(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(r, list) and all(_number(x) for x in r) for r in v)


def _task(v: Any) -> bool:
    from .task import TASKS

    return isinstance(v, str) and v in TASKS


def _input(v: Any) -> bool:
    return (isinstance(v, dict) and all(_integer(v.get(k)) for k in ("size", "channels"))
            and all(isinstance(v.get(k, []), list) and all(_number(x) for x in v.get(k, [])) for k in ("mean", "std")))


_EXPECTED = {_number: "a number or null", _integer: "an integer or null", _text: "a string", _names: None,
             _pair: "[low, high] (two numbers or nulls) or null", _per_label: "a mapping of label to number or null",
             _object: "a JSON object", _matrix: "a list of rows of numbers", _task: None,
             _input: "a JSON object with integers size and channels and lists of numbers mean and std"}

#: metrics.json's fields that medistill reads, and their types
METRICS_FIELDS: dict[str, Callable[[Any], bool]] = {
    **{k: _number for k in ("macro_auc", "micro_auc", "macro_ap", "accuracy", "balanced_accuracy", "macro_f1", "ece",
                            "params", "macs", "size_bytes", "latency_ms", "latency_ms_median", "latency_ms_p90",
                            "latency_spread", "num_images", "num_valid", "num_valid_entries", "input_size",
                            "majority_rate", "chance")},
    **{k: _text for k in ("split", "weights", "model", "kind", "teacher", "majority_class", "threshold_source",
                          "auc_ci95_method", "accuracy_ci95_method", "latency_unreliable_reason")},
    **{k: _pair for k in ("auc_ci95", "accuracy_ci95")},
    **{k: _per_label for k in ("per_label_auc", "per_label_ap", "thresholds", "per_label_sensitivity",
                               "per_label_specificity", "per_label_f1", "per_label_positives", "per_label_negatives",
                               "per_class_recall", "per_class_auc", "per_class_support")},
    "labels": _names, "task": _task, "train": _object, "machine_load": _object, "confusion_matrix": _matrix,
}
#: run.json's fields that medistill reads, and their types
INFO_FIELDS: dict[str, Callable[[Any], bool]] = {
    **{k: _text for k in ("kind", "model", "task", "teacher", "distill_mode", "started", "finished", "git_commit",
                          "intensity")},
    **{k: _integer for k in ("seed", "num_classes", "best_epoch", "epochs_run", "world_size")},
    "labels": _names, "teachers": _names, "command": _names, "resumed": _names, "input": _input,
    "versions": _object, "machine": _object, "train_label_counts": _per_label, "input_channels": _object,
}


def _check(data: dict[str, Any], path: Path, fields: dict[str, Callable[[Any], bool]]) -> dict[str, Any]:
    for key, ok in fields.items():
        if key in data and not ok(data[key]):
            if ok is _names:
                what = "a list of paths" if key == "teachers" else "a list of label names (strings)" \
                    if key == "labels" else "a list of strings"
            elif ok is _task:
                from .task import TASKS

                what = f"one of {list(TASKS)}"
            else:
                what = _EXPECTED[ok]
            raise JsonFileError(f"{path}: {key}: expected {what}, got {json.dumps(data[key])[:60]}")
    return data


def check_metrics(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``data`` (a ``metrics.json``), after checking the type of each field medistill reads (:data:`METRICS_FIELDS`);
    JsonFileError naming the file and the field (``macro_auc: expected a number or null, got "abc"``)."""
    return _check(data, Path(path), METRICS_FIELDS)


def check_info(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``data`` (a ``run.json``), after checking the type of each field medistill reads (:data:`INFO_FIELDS`)."""
    return _check(data, Path(path), INFO_FIELDS)


class RunLockedError(MedistillError):
    """Another process holds the run folder's lock (it is training into the same folder)."""


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
               extra: dict[str, Any] | None = None, resumed: bool = False) -> "RunDir":
        """Write the run's config and a fresh ``run.json``; with ``resumed=True`` (a run really continued from its
        ``state.pt``) the existing record is kept and the time of this resume is appended to its ``resumed`` list."""
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.save_config(config)
        info = {"kind": kind, "seed": seed, "command": sys.argv, "versions": package_versions(),
                "git_commit": git_commit(), "machine": machine_info(), "started": now(), **(extra or {})}
        if resumed:  # keep the original record, note the resume
            old = run.info()
            resumes = old.get("resumed") if isinstance(old.get("resumed"), list) else []
            info = {**(old or info), "versions": info["versions"], "git_commit": info["git_commit"],
                    "resumed": [*resumes, now()]}
        atomic_write_json(run.file(RUN_FILE), info)
        return run

    def save_config(self, config: Any) -> None:
        atomic_write_text(self.file(CONFIG_FILE), yaml.safe_dump(to_dict(config), sort_keys=False))

    def update_info(self, **fields: Any) -> None:
        info = self.info()
        info.update(fields)
        atomic_write_json(self.file(RUN_FILE), info)

    # --- reading --------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.file(CONFIG_FILE).is_file()

    def config(self) -> RunConfig:
        """The run's resolved config; ConfigError naming ``config.yaml`` when it is not a UTF-8 YAML mapping of
        valid keys, FileNotFoundError when the folder is not a run directory."""
        path = self.file(CONFIG_FILE)
        if not self.exists():
            raise FileNotFoundError(f"{self.path}: not a medistill run directory (no {CONFIG_FILE})")
        expected = "expected the run's resolved config (a UTF-8 YAML mapping, as medistill train writes)"
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); {expected}") from None
        except yaml.YAMLError as e:
            first = " ".join(str(e).split())[:200]
            raise ConfigError(f"{path}: not valid YAML ({first}); {expected}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: holds a YAML {type(data).__name__}; {expected}")
        try:
            return from_dict(RunConfig, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def info(self) -> dict[str, Any]:
        """``run.json`` as a dict ({} when there is none); JsonFileError naming it when it is corrupt, or naming the
        field when one holds a value of the wrong type (:func:`check_info`)."""
        path = self.file(RUN_FILE)
        return check_info(read_json_object(path, "the run record (a UTF-8 JSON object, as medistill train writes)"),
                          path) if path.exists() else {}

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict ({} when there is none); JsonFileError naming it when it is corrupt, or naming
        the field when one holds a value of the wrong type (:func:`check_metrics`)."""
        path = self.file(METRICS_FILE)
        return check_metrics(read_json_object(path, "the run's metrics (a UTF-8 JSON object, as medistill evaluate "
                                                    "writes)"), path) if path.exists() else {}

    def write_metrics(self, metrics: dict[str, Any], *, merge: bool = True) -> Path:
        """Atomically write ``metrics.json`` (merged with what is there unless ``merge=False``). A corrupt old file
        is replaced by ``metrics`` alone, with a warning: a result just computed is never lost to it."""
        old: dict[str, Any] = {}
        if merge:
            try:
                old = self.metrics()
            except JsonFileError as e:
                log.warning("%s; replacing it with the new result (its old content is lost)", e)
        return atomic_write_json(self.file(METRICS_FILE), {**old, **metrics})

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder's lock (``run.lock``) for the block: a second process that tries to take it gets a
        RunLockedError naming the folder and the holder's pid.

        The lock is the OS's (``flock`` on POSIX, ``msvcrt.locking`` on Windows): it is released when the block
        ends and by the OS when its holder dies, so the lock of a crashed run is simply taken over (its stale pid
        is overwritten). The file itself stays (removing it would let two processes lock two different files).
        """
        path = self.file(LOCK_FILE)

        def refuse(fd: int) -> None:
            raise RunLockedError(f"{self.path}: in use by another medistill process (pid {_holder_pid(fd)}, lock "
                                 f"{path}); wait for it to finish or choose another --out")

        with _file_lock(path, refuse) as fd:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            log.debug("locked %s", path)
            yield

    def holder(self) -> str | None:
        """The pid of the process holding the run's lock (another run writing into this folder now), else None.
        Only looks: the lock file is neither created nor written."""
        try:
            fd = os.open(self.file(LOCK_FILE), os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            return None if _try_lock(fd) else _holder_pid(fd)  # a lock taken here is released by the close
        finally:
            os.close(fd)

    @contextmanager
    def logging_to_file(self, level: int = logging.INFO) -> Iterator[None]:
        """Send the ``medistill`` logger's records to ``log.txt`` for the duration of the block."""
        handler = _RunLogHandler(self.file(LOG_FILE), encoding="utf-8")
        handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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


class _RunLogHandler(logging.FileHandler):
    """``log.txt``'s handler: a record that cannot be written (a full disk) is said once, in one line, instead of
    logging's traceback for every record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            err = sys.exc_info()[1]
            print(f"medistill: warning: cannot append to {self.baseFilename} ({err}); its log stops here",
                  file=sys.stderr)


@contextmanager
def waiting_lock(path: str | Path, *, poll: float = 1.0, on_wait: Callable[[], None] | None = None
                 ) -> Iterator[None]:
    """Hold an exclusive OS lock on the file ``path`` for the block, waiting (polling every ``poll`` s; ``on_wait``
    called once) while another process holds it: for a cache several runs share, so that the second run reads
    what the first computed instead of computing it again beside it. Released when the block ends or its holder
    dies, as :meth:`RunDir.lock`."""
    waits = 0

    def wait(_fd: int) -> None:
        nonlocal waits
        if not waits and on_wait is not None:
            on_wait()
        waits += 1
        time.sleep(poll)

    with _file_lock(Path(path), wait):
        yield


@contextmanager
def _file_lock(path: Path, on_busy: Callable[[int], None]) -> Iterator[int]:
    """An exclusive OS lock on the file ``path`` (created, with its folder, when missing) for the block, yielding
    its descriptor; ``on_busy(fd)`` runs each time another process holds it, and either raises or waits before the
    next try. Closing the descriptor at the end releases the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while not _try_lock(fd):
            on_busy(fd)
        yield fd
    finally:
        os.close(fd)


def _holder_pid(fd: int) -> str:
    """The pid a lock holder wrote into the open lock file ``fd`` ("unknown" when it cannot be read)."""
    try:
        return os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking OS lock on the open file ``fd``; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
    from .models import InputConfig, ModelError, create_model, load_weights, set_input_config

    if which not in ("best", "last"):
        raise ValueError(f"which weights of a run: 'best' or 'last', not {which!r}")
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
    set_input_config(model, inp)
    model.eval().to(device)
    return model, info


def run_dataset(run: RunDir | str | Path, split: str, *, limit: int | None = None, augment: str = "none",
                record: dict[str, Any] | None = None, data: Any = None) -> Any:
    """Exactly the data ``run`` was trained and evaluated on (its saved ``data`` config: source, root, views,
    labels, uncertainty policy ...), or the :class:`~medistill.config.DataConfig` ``data`` when given (a teacher
    scored on a study's splits), split ``split``, preprocessed as the run's model expects (its stored input
    size, channels, mean and std); ``limit`` caps the images (a seeded subset, as training's ``--limit`` does).
    Raises ModelError when the run's labels differ from the dataset's."""
    from .data import Preprocess, build_dataset, image_cache_dir
    from .models import InputConfig, ModelError

    run = run if isinstance(run, RunDir) else RunDir(run)
    cfg = run.config()
    if data is not None:
        cfg.data = copy.deepcopy(data)
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
