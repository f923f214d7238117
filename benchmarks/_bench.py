"""Helpers shared by the benchmark scripts: machine record, resumable train-and-evaluate, CLI equivalents, stats.

A run is skipped when its run directory already holds ``run.json`` with ``finished`` and a ``metrics.json``
evaluated on the requested split; a run with ``state.pt`` but not finished is resumed (``--resume``), so a
benchmark killed half-way continues where it stopped when re-run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from medistill import runs
from medistill.config import RunConfig, leaf_fields, to_dict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """CPU model, cores, load and library versions, so a reader knows what the numbers were measured on."""
    import torch

    from medistill.utils.runtime import machine_info, package_versions

    info = machine_info()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": info.get("cpu_model") or info.get("processor") or "", "cores": info["cpu_count"],
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "libraries": package_versions(), "python": platform.python_version(), "gpu": info.get("gpu"),
            "load_average_1_5_15": load, "shared": shared_note(load, torch.get_num_threads())}


def other_jobs(load_1min: float, own_threads: int) -> bool:
    """The one rule every benchmark uses: a 1-minute load average above this process's own threads plus one
    means other jobs were running (pass ``own_threads=0`` for a load read before the benchmark did any work)."""
    return load_1min > own_threads + 1


def shared_note(load: tuple[float, ...] | None, threads: int) -> str:
    """Whether other jobs shared the machine when a result was written (see :func:`other_jobs`)."""
    if load is None:
        return "load average unknown"
    if other_jobs(load[0], threads):
        return (f"shared: 1-minute load average {load[0]:.1f} with this process using {threads} threads, so other "
                "jobs ran too; wall-clock times are inflated and noisy")
    return f"not shared when written: 1-minute load average {load[0]:.1f}, about this process's own {threads} threads"


def niced(command: str) -> str:
    """``command`` behind the ``nice -n N`` this process runs under (none at the default 0), for the command a
    results file records: what was run, not what the docs suggest."""
    n = os.nice(0)
    return f"nice -n {n} {command}" if n else command


def machine_line(m: dict[str, Any] | None) -> str:
    """One markdown line naming the CPU of a :func:`machine` record and whether other jobs shared it."""
    return f"Machine: {(m or {}).get('cpu', '')}, {(m or {}).get('shared', '')}"


def cli_command(cfg: RunConfig, *, distill: bool) -> str:
    """The ``medistill train|distill`` command line equivalent to ``cfg`` (only fields that differ from defaults)."""
    default = to_dict(RunConfig())
    mine = to_dict(cfg)
    parts = ["medistill", "distill" if distill else "train"]
    for dotted in leaf_fields(RunConfig):
        a, b = mine, default
        for k in dotted.split("."):
            a, b = a[k], b[k]
        if a != b:
            v = ",".join(map(str, a)) if isinstance(a, list) else a
            parts.append(f"--set {dotted}={v}")
    return " ".join(parts)


def is_done(out: str | Path, split: str = "test") -> bool:
    run = runs.RunDir(out)
    return bool(run.info().get("finished")) and run.metrics().get("split") == split and "task" in run.metrics()


def train_and_evaluate(cfg: RunConfig, *, split: str = "test", n_bootstrap: int = 200) -> dict[str, Any]:
    """Train (or distil) ``cfg`` unless already done, evaluate on ``split``; returns metrics + timing + command."""
    from medistill.evaluate.runner import evaluate_run
    from medistill.train.loop import run_training

    out = Path(cfg.out)
    distill = bool(cfg.distill.teacher or cfg.distill.teachers)
    record = {"out": str(out), "command": cli_command(cfg, distill=distill)}
    if is_done(out, split):
        m = runs.RunDir(out).metrics()
        return {**record, **m, "skipped": True}
    run = runs.RunDir(out)
    t0 = time.perf_counter()
    if not run.info().get("finished"):
        resume = run.file(runs.STATE_FILE).is_file()
        if not resume and out.exists():
            # a run that crashed before its first epoch: start again, clearing it under its lock, so that a run
            # another process is training (locked, no checkpoint yet) raises RunLockedError instead of being
            # deleted under it; run.lock itself stays (removing it would let two processes lock two files)
            with run.lock():
                for p in out.iterdir():
                    if p.name != runs.LOCK_FILE:
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
        run_training(cfg, resume=resume)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = evaluate_run(out, split, n_bootstrap=n_bootstrap)
    eval_s = time.perf_counter() - t0
    hist = history(out)
    m = {**m, "train_wall_s": train_s, "eval_wall_s": eval_s,
         "epoch_seconds": [r.get("seconds") for r in hist]}
    runs.RunDir(out).write_metrics({"benchmark": {"train_wall_s": train_s, "eval_wall_s": eval_s}})
    return {**record, **m, "skipped": False}


def history(out: str | Path) -> list[dict[str, float]]:
    import csv

    p = Path(out) / "history.csv"
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def mean_std(values: list[float | None]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


def fmt_ms(d: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    if d["mean"] is None:
        return "n/a"
    if d["n"] == 1:
        return f"{d['mean'] * scale:.{digits}f} (1 seed)"
    return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"


def si(v: float | None) -> str:
    from medistill.evaluate.compare import si as _si

    return _si(v)


def write_json(path: Path, obj: Any) -> None:
    """Atomically, through a temporary file of this writer's own: two processes of one benchmark (``--phase kd``
    beside ``--phase nokd``) write the same results file."""
    from medistill.utils.io import atomic_write_text, to_jsonable

    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def latency_best_ms(run_dir: str | Path, runs_: int = 50, warmup: int = 10, threads: int = 2) -> dict[str, float]:
    """Batch-1 CPU forward time of a run's best model: median and minimum over ``runs_`` passes.

    On a shared, loaded machine the median is inflated by other processes; the minimum is the less
    load-sensitive estimate of what the model costs. Both are reported.
    """
    from medistill.evaluate.efficiency import cpu_latency_ms

    model, record = runs.load_model(run_dir)
    lat = cpu_latency_ms(model, record["input"]["size"], record["input"]["channels"], warmup=warmup, runs=runs_,
                         threads=threads)
    return {"median_ms": lat["median"], "min_ms": lat["min"], "runs": runs_, "threads": threads}
