"""The main job in one call: teacher -> KD student + no-KD student -> evaluate -> explain -> export -> benchmark
-> report, on the built-in phantom chest X-rays by default (no download), or on a real dataset.

Each step calls the library function behind a medistill command on ordinary run directories, so everything the
quickstart makes can be inspected, re-run or continued by hand with that command; each later step logs into
``<out>/<step>.log`` (medistill's log records and the step's result)::

    <out>/teacher          run_training        (medistill train: the teacher)
    <out>/student          run_training        (medistill distill: the student, KD from the teacher)
    <out>/student_nokd     run_training        (medistill train: the same student without KD)
    <out>/student/explain  explain_run         (medistill explain: student vs teacher, with explanation metrics)
    <out>/student/export   export_run          (medistill export: ONNX fp32, INT8, explain graph)
                           + benchmark          (medistill benchmark -> benchmark.json)
    <out>/report.html      build_report        (medistill report)

Importing this module does not import torch (``medistill --help`` imports it for its options); each step imports
the modules it runs when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

from . import runs
from .config import (ConfigError, DataConfig, DistillConfig, ModelConfig, RunConfig, TrainConfig, check_range,
                     option, validate)
from .datasets import SOURCES
from .errors import MedistillError
from .explain.options import ExplainOptions
from .task import HEADLINE_METRICS
from .utils.io import atomic_write_json, to_jsonable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class QuickstartConfig:
    out: str = option("runs/quickstart", "folder of the three runs, the explanations, the export and the report")
    dataset: str = option("phantom", f"{', '.join(n for n, s in SOURCES.items() if s.generated)} (built in) or, "
                                     f"with --root, {', '.join(n for n, s in SOURCES.items() if not s.generated)}")
    root: str | None = option(None, "dataset folder; phantom default: data/phantom (generated on first use)")
    image_size: int = option(96, "student input size (px)")
    teacher_image_size: int | None = option(
        128, "teacher input size; the default scenario distils a teacher that saw the phantom at its full 128 px "
             "into a student that sees 96 px (the reason to distil); None = the student's")
    teacher: str = option("efficientnet_lite0", "teacher architecture (the papers use densenet121/161: far slower "
                                                "on a CPU, and no DenseNet ImageNet weights install offline)")
    teacher_pretrained: bool = option(True, "start the teacher from its ImageNet weights (offline: "
                                            "efficientnet_lite0, tf_efficientnet_lite1/2): a teacher that knows more "
                                            "than the student is what distillation is for")
    teacher_lr: float = option(0.001, "the teacher's peak learning rate (fine-tuning wants a lower one than "
                                      "training from scratch)")
    student: str = option(
        "kdfmv", "student: kdfmv (paper B, fast on CPU) or eeea_net_c2 (paper A; slower to train here)")
    teacher_epochs: int = option(5, "teacher training epochs")
    student_epochs: int = option(5, "epochs of each student (with and without KD)")
    batch_size: int = option(64, "training batch size")
    lr: float = option(0.002, "peak learning rate (AdamW, cosine)")
    limit: int | None = option(1000, "cap on images per split (keeps the default run short: its time is in the README); None = all")
    alpha: float = option(0.5, "KD: weight of the hard loss")
    temperature: float | None = option(None, "KD temperature; None = the task's default (1 on the multi-label "
                                            "phantom: benchmarks/quickstart_kd_grid.py)")
    augment: str = option("light", "training augmentation of every run (none, light, strong)")
    teacher_views: int = option(2, "KD student: the teacher's outputs on this many augmented views per image, cached "
                                   "once (consistent KD at the cost of plain training); 0 = the teacher runs online")
    in_chans: int | str = option("auto", "input channels: auto (follow the data: 3 for colour images), 1 or 3")
    explain_images: int = option(8, "test images explained (student vs teacher)")
    explain_method: str = option("gradcam", "explanation method of the gallery")
    int8: bool = option(True, "also export an INT8 model")
    seed: int = option(0, "seed of every run")

    def validate(self) -> None:
        """The quickstart's own fields here; every field it passes on to a run is checked by that run's config
        (one range per field: ``RunConfig``'s sections), naming the quickstart's flag."""
        check_range("explain_images", self.explain_images, 1, 1000)
        for name, cfg in run_configs(self).items():
            try:
                validate(cfg)
            except ConfigError as e:
                raise ConfigError(f"{e} (in the {name.replace('_', ' ')} run the quickstart trains)") from None
        from .models.weights import PRETRAINED_PACKAGES

        if self.teacher_pretrained and self.teacher not in PRETRAINED_PACKAGES:
            raise ConfigError(f"teacher_pretrained: {self.teacher!r} has no offline ImageNet weights; use "
                              f"--teacher-pretrained false or one of {sorted(PRETRAINED_PACKAGES)}")


def run_configs(q: QuickstartConfig) -> dict[str, RunConfig]:
    """The three training configs the quickstart runs."""
    out = Path(q.out)
    data = DataConfig(dataset=q.dataset, root=q.root, image_size=q.image_size, limit=q.limit, augment=q.augment)
    train = dict(batch_size=q.batch_size, lr=q.lr, seed=q.seed, scheduler="cosine", weight_decay=1e-4)
    teacher_data = dataclasses.replace(data, image_size=q.teacher_image_size or q.image_size)
    return {
        "teacher": RunConfig(out=str(out / "teacher"), data=teacher_data,
                             model=ModelConfig(name=q.teacher, in_chans=q.in_chans, drop_rate=0.1,
                                               pretrained=q.teacher_pretrained),
                             train=TrainConfig(epochs=q.teacher_epochs, **{**train, "lr": q.teacher_lr})),
        "student": RunConfig(out=str(out / "student"), data=data,
                             model=ModelConfig(name=q.student, in_chans=q.in_chans, drop_rate=0.1),
                             train=TrainConfig(epochs=q.student_epochs, **train),
                             distill=DistillConfig(teacher=str(out / "teacher"), alpha=q.alpha,
                                                   temperature=q.temperature, teacher_views=q.teacher_views)),
        "student_nokd": RunConfig(out=str(out / "student_nokd"), data=data,
                                  model=ModelConfig(name=q.student, in_chans=q.in_chans, drop_rate=0.1),
                                  train=TrainConfig(epochs=q.student_epochs, **train)),
    }


def run_quickstart(q: QuickstartConfig, *, step: Callable[[str], None] | None = None,
                   callbacks_for: Callable[[str], object] | None = None) -> dict[str, object]:
    """Run every step (skipping runs that already finished, resuming interrupted ones); returns a summary."""
    from .data import resolve_root
    from .evaluate.runner import evaluate_run
    from .train import run_training

    say = step or (lambda s: log.info(s))
    t_start = time.perf_counter()
    out = Path(q.out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = run_configs(q)
    root = resolve_root(cfgs["teacher"].data)  # generates the phantom on first use
    summary: dict[str, object] = {"out": str(out), "dataset": q.dataset, "root": str(root), "seconds": {}}
    timings: dict[str, float] = summary["seconds"]  # type: ignore[assignment]
    fresh: set[str] = set()  # runs trained (or resumed) by this call: their later steps must be redone
    for name in ("teacher", "student", "student_nokd"):
        cfg = cfgs[name]
        cfg.data.root = str(root)
        run = runs.RunDir(cfg.out)
        t0 = time.perf_counter()
        if run.info().get("finished"):
            say(f"{name}: already trained ({cfg.out})")
        else:
            resume = run.file(runs.STATE_FILE).is_file()
            say(f"{name}: {'resuming' if resume else 'training'} {cfg.model.name} "
                f"({'KD from the teacher' if cfg.distill.teacher else 'no KD'}) -> {cfg.out}")
            cb = callbacks_for(name) if callbacks_for else None
            run_training(cfg, resume=resume, **({"callbacks": cb} if cb is not None else {}))
            fresh.add(name)
        timings[f"train_{name}"] = time.perf_counter() - t0
    for name in ("teacher", "student", "student_nokd"):
        t0 = time.perf_counter()
        m = runs.RunDir(cfgs[name].out).metrics()
        if m.get("split") == "test" and name not in fresh:
            say(f"{name}: already evaluated")
        else:
            say(f"{name}: evaluating on the test split")
            m = evaluate_run(cfgs[name].out, "test")
        summary[name] = {k: m.get(k) for k in ("task", *HEADLINE_METRICS, "majority_class", "chance", "params", "macs",
                                                "latency_ms")}
        timings[f"evaluate_{name}"] = time.perf_counter() - t0
    summary["kd_gain"], summary["kd_story"] = _kd_story(q, cfgs)
    say(summary["kd_story"])

    student, teacher = Path(cfgs["student"].out), cfgs["teacher"].out
    steps: list[tuple[str, str, Callable[[], object], Path | None]] = [
        ("explain", f"{q.explain_images} test images, {q.explain_method}, student vs teacher -> {student / 'explain'}",
         lambda: _explain(q, root, student, teacher), student / "explain" / runs.EXPLAIN_FILE),
        ("export", f"ONNX{' + INT8' if q.int8 else ''} + explain graph -> {student / runs.EXPORT_DIR}",
         lambda: _export(q, student), student / runs.EXPORT_DIR / runs.EXPORT_FILE),
        ("benchmark", f"latency of {student / 'export' / 'model.onnx'} vs the teacher",
         lambda: _benchmark(student, teacher), student / runs.EXPORT_DIR / runs.BENCHMARK_FILE),
        ("report", f"{out / 'report.html'}",
         lambda: _report(cfgs, out), None),
    ]
    retrained = bool(fresh & {"teacher", "student"})
    for name, what, work, done in steps:
        t0 = time.perf_counter()
        if done is not None and done.is_file() and not retrained:
            say(f"{name}: already done ({done})")
            continue
        log_path = out / f"{name}.log"
        say(f"{name}: {what}  (log: {log_path})")
        with _step_log(log_path) as write:
            try:
                result = work()
            except MedistillError as e:
                raise MedistillError(f"quickstart step {name!r} failed: {e} (log: {log_path})") from None
            write(f"{name} result:\n" + json.dumps(to_jsonable(result), indent=2))
        timings[name] = time.perf_counter() - t0
    summary["report"] = str(out / "report.html")
    summary["total_seconds"] = time.perf_counter() - t_start
    atomic_write_json(out / "quickstart.json", summary)
    return summary


def _kd_story(q: QuickstartConfig, cfgs: dict[str, RunConfig]) -> tuple[dict[str, object] | None, str]:
    """What happened to distillation, in words: the scenario, KD minus no-KD with its paired bootstrap CI and the
    verdict, whatever it is."""
    from .evaluate.compare import compare_runs, describe_gain, kd_gain

    t_size = cfgs["teacher"].data.image_size
    scenario = (f"Scenario: the teacher ({q.teacher}) saw {t_size} px images, the student ({q.student}) sees "
                f"{q.image_size} px" if t_size != q.image_size else
                f"Scenario: teacher ({q.teacher}) and student ({q.student}) both see {q.image_size} px")
    gain = kd_gain(compare_runs([cfgs[n].out for n in ("teacher", "student", "student_nokd")]))
    return gain, scenario + ". " + (describe_gain(gain) if gain else "KD gain: n/a")


@contextlib.contextmanager
def _step_log(path: Path) -> Iterator[Callable[[str], None]]:
    """medistill's log records (INFO and up) of the block into ``path``; yields a function adding a line."""
    logger = logging.getLogger("medistill")
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = logger.level
    logger.setLevel(min(old_level or logging.WARNING, logging.INFO))
    logger.addHandler(handler)
    try:
        yield lambda text: handler.stream.write(text + "\n")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


def _explain(q: QuickstartConfig, root: Path, student: Path, teacher: str) -> dict[str, object]:
    from .explain.runner import explain_run

    data = DataConfig(dataset=q.dataset, root=str(root), limit=q.explain_images)
    summary = explain_run(student, student / "explain", data=data, split="test", teacher=teacher,
                          options=ExplainOptions(method=q.explain_method))
    return {k: v for k, v in summary.items() if k not in ("images", "per_label", "labels")}


def _export(q: QuickstartConfig, student: Path) -> dict[str, object]:
    from .export import export_run

    return export_run(student, student / runs.EXPORT_DIR, fmt="onnx", int8=q.int8, explain=True)


def _benchmark(student: Path, teacher: str) -> dict[str, object]:
    from .benchmark import benchmark
    from .export import MODEL_FILE

    result = benchmark(student / runs.EXPORT_DIR / MODEL_FILE, teacher=teacher)
    atomic_write_json(student / runs.EXPORT_DIR / runs.BENCHMARK_FILE, result)
    return result


def _report(cfgs: dict[str, RunConfig], out: Path) -> dict[str, object]:
    from .report import build_report

    path = build_report([cfgs["teacher"].out, cfgs["student"].out, cfgs["student_nokd"].out], out / "report.html")
    return {"report": str(path), "bytes": path.stat().st_size}
