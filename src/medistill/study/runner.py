"""Run a study (``medistill study``): the plan's runs, several at once when asked, resumable at any point.

Each run is an ordinary run folder trained by :func:`medistill.train.run_training` and scored with the study's
stopping rule's weights (``ema``: the last, averaged weights; ``best``: the best validation epoch) on the validation
and test splits (``predictions_val.npz`` / ``predictions_test.npz``). A run already scored is skipped, a half-trained
one resumed; the kd arm's later seeds start once its grid (seed 0 at each alpha / T point) is scored. After each run
``study.json`` / ``study.md`` are rewritten, so a study stopped half-way still shows what it has.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .. import runs
from ..config import RunConfig, from_dict, to_dict
from ..errors import MedistillError
from ..evaluate.runner import evaluate_run
from ..train import run_training
from .options import StudyConfig
from .output import write_outputs
from .plan import Plan, PlannedRun, StudyError, prepare_data, teacher_runs
from .results import Results, teacher_scores

log = logging.getLogger(__name__)


def weights_of(cfg: StudyConfig) -> str:
    """The weights every run is scored with under the study's stopping rule."""
    return "last" if cfg.stop == "ema" else "best"


def is_scored(run_dir: Path, weights: str) -> bool:
    """Whether ``run_dir`` finished and was scored on validation and test with ``weights``."""
    run = runs.RunDir(run_dir)
    try:
        info, metrics = run.info(), run.metrics()
    except MedistillError:
        return False
    return (bool(info.get("finished")) and metrics.get("split") == "test" and metrics.get("weights") == weights
            and all(run.file(runs.predictions_file(s)).is_file() for s in ("val", "test")))


def train_and_score(config: dict[str, Any], weights: str) -> dict[str, Any]:
    """Train (or resume) the run ``config`` describes unless it finished, then score ``weights`` on validation and
    test; returns ``{"seconds": wall time of this call}``. Top-level, so that worker processes can run it."""
    t0 = time.perf_counter()
    cfg = from_dict(RunConfig, config)
    if not runs.RunDir(cfg.out).info().get("finished"):
        run_training(cfg, resume=True)
    for split in ("val", "test"):  # test last: metrics.json holds the test split's figures
        evaluate_run(cfg.out, split, latency=False, n_bootstrap=0, weights=weights)
    return {"seconds": time.perf_counter() - t0}


class _Inline(cf.Executor):
    """Runs each job in this process when it is submitted (``--jobs 1``): no worker start-up, plain tracebacks."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            if isinstance(e, KeyboardInterrupt):
                raise
            f.set_exception(e)
        return f


def run_study(cfg: StudyConfig, *, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the study ``cfg`` describes (see the package docstring); returns ``study.json``'s content."""
    say = say or log.info
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with runs.RunDir(out).lock():  # one process per study folder
        t_start = time.perf_counter()
        data, hygiene = prepare_data(cfg, say)
        teachers = teacher_runs(cfg, data, say)
        plan = Plan.make(cfg, data, hygiene, teachers)
        plan.fix()
        say(f"plan: {len(plan.sizes)} sizes x {len(cfg.arms)} arms x {cfg.seeds} seeds "
            f"({', '.join(s.title for s in plan.sizes)}); rule fixed in {out / 'plan.json'}")
        teacher = teacher_scores(plan, weights="best")
        results = Results(plan, teacher)
        _execute(plan, results, say, train=not cfg.summarise)
        if cfg.summarise:
            say(f"summarising {len(results)} of {plan.planned_runs()} planned runs (none trained: --summarise)")
        final = results.summary(n_bootstrap=cfg.bootstrap)
        if cfg.latency:
            say("timing every student size and the teacher in ONNX Runtime (fp32, batch 1)")
            final["latency"] = results.time_latency()
            final = results.summary(n_bootstrap=cfg.bootstrap, latency=final["latency"])
        final["seconds"] = time.perf_counter() - t_start
        write_outputs(plan, final, report=True)
        for sentence in final["sentences"]:
            say(sentence)
        return final


def _execute(plan: Plan, results: Results, say: Callable[[str], None], *, train: bool = True) -> None:
    """Train and score every run of ``plan`` not scored yet, ``cfg.jobs`` at a time (``train`` False: only collect
    the runs already scored, for ``--summarise``)."""
    cfg = plan.cfg
    weights = weights_of(cfg)
    queue: deque[PlannedRun] = deque(plan.first_runs())
    queued = set(queue)
    total = plan.planned_runs()
    done, trained_seconds, trained = 0, 0.0, 0
    t0 = time.perf_counter()

    def follow_ups(r: PlannedRun) -> None:
        """Once a size's grid is scored, its kd arm's other seeds at the chosen point."""
        if r.arm != "kd" or r.seed != 0:
            return
        point = results.chosen_point(r.size)
        if point is None:
            return
        for later in plan.runs_of(r.size, "kd", point)[1:]:
            if later not in queued:
                insert_by_seed(queue, later)
                queued.add(later)

    executor: cf.Executor
    if train and cfg.jobs > 1:
        executor = cf.ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=multiprocessing.get_context("spawn"))
    else:
        executor = _Inline()
    running: dict[cf.Future, PlannedRun] = {}
    try:
        while queue or running:
            while queue and len(running) < cfg.jobs:
                r = queue.popleft()
                if is_scored(plan.run_dir(r), weights):
                    done += 1
                    results.add(r)
                    follow_ups(r)
                    continue
                if not train:
                    continue
                say(f"[{done + len(running) + 1}/{total}] training {r.label}")
                running[executor.submit(train_and_score, to_dict(plan.config(r)), weights)] = r
            if not running:
                continue
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for f in finished:
                r = running.pop(f)
                try:
                    took = f.result()["seconds"]
                except Exception as e:
                    raise StudyError(f"{r.label} failed ({type(e).__name__}: {e}); its log: "
                                     f"{plan.run_dir(r) / runs.LOG_FILE}; re-run the same command to continue") from e
                done += 1
                trained += 1
                trained_seconds += took
                results.add(r)
                follow_ups(r)
                left = total - done
                eta = trained_seconds / trained * left / cfg.jobs
                score = results.scores(r)
                say(f"[{done}/{total}] {r.label}: validation {score['val']:.4f}, test {score['test']:.4f} "
                    f"({took:.0f} s); {time.perf_counter() - t0:.0f} s so far, about {_hms(eta)} left")
                write_outputs(plan, results.summary(n_bootstrap=0), report=False)  # partial results, cheap
    finally:
        executor.shutdown(wait=not running, cancel_futures=True)


def insert_by_seed(queue: deque[PlannedRun], run: PlannedRun) -> None:
    """Queue ``run`` before the first queued run of a later seed, so that a study stopped early has every arm at the
    same seeds (the kd arm's later seeds, known only once its grid is scored, are not all left to the end)."""
    at = next((i for i, q in enumerate(queue) if q.seed > run.seed), len(queue))
    queue.insert(at, run)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"

