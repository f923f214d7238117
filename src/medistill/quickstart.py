"""The main job in one call: teacher -> KD student + no-KD student -> evaluate -> explain -> export -> benchmark
-> report, on the built-in phantom chest X-rays by default (no download), or on a real dataset.

Each step is an ordinary medistill command on ordinary run directories, so everything the quickstart makes can
be inspected, re-run or continued by hand::

    <out>/teacher          medistill train  (teacher)
    <out>/student          medistill distill (student, KD from the teacher)
    <out>/student_nokd     medistill train  (the same student without KD)
    <out>/student/explain  medistill explain (student vs teacher, with explanation metrics)
    <out>/student/export   medistill export  (ONNX fp32, INT8, explain graph) + benchmark.json
    <out>/report.html      medistill report
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

from . import runs
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, DistillConfig, check_choice, check_range

log = logging.getLogger(__name__)


@dataclasses.dataclass
class QuickstartConfig:
    out: str = "runs/quickstart"  # folder of the three runs, the explanations, the export and the report
    dataset: str = "phantom"  # phantom (built in) or any dataset of `medistill data` with --root
    root: str | None = None  # dataset folder; phantom default: data/phantom (generated on first use)
    image_size: int = 96  # student input size (px)
    teacher_image_size: int | None = None  # teacher input size; None = the student's
    teacher: str = "resnet10t"  # teacher architecture (the papers use densenet121/161: far slower on a CPU)
    student: str = "kdfmv"  # student: kdfmv (paper B, fast on CPU) or eeea_net_c2 (paper A; slower to train here)
    teacher_epochs: int = 5  # teacher training epochs
    student_epochs: int = 5  # epochs of each student (with and without KD)
    batch_size: int = 64  # training batch size
    lr: float = 0.002  # peak learning rate (AdamW, cosine)
    limit: int | None = 1000  # cap on images per split (keeps the default run near 5 minutes); None = all
    alpha: float = 0.5  # KD: weight of the hard loss
    temperature: float = 4.0  # KD temperature
    in_chans: int = 1  # input channels (3 for colour data)
    explain_images: int = 8  # test images explained (student vs teacher)
    explain_method: str = "gradcam"  # explanation method of the gallery
    int8: bool = True  # also export an INT8 model
    seed: int = 0  # seed of every run

    def validate(self) -> None:
        check_range("image_size", self.image_size, 16, 1024)
        check_range("teacher_epochs", self.teacher_epochs, 1)
        check_range("student_epochs", self.student_epochs, 1)
        check_range("explain_images", self.explain_images, 1, 1000)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_choice("in_chans", self.in_chans, (1, 3))


def run_configs(q: QuickstartConfig) -> dict[str, RunConfig]:
    """The three training configs the quickstart runs."""
    out = Path(q.out)
    data = DataConfig(dataset=q.dataset, root=q.root, image_size=q.image_size, limit=q.limit, augment="none")
    train = dict(batch_size=q.batch_size, lr=q.lr, seed=q.seed, scheduler="cosine", weight_decay=1e-4)
    teacher_data = dataclasses.replace(data, image_size=q.teacher_image_size or q.image_size)
    return {
        "teacher": RunConfig(out=str(out / "teacher"), data=teacher_data,
                             model=ModelConfig(name=q.teacher, in_chans=q.in_chans, drop_rate=0.1),
                             train=TrainConfig(epochs=q.teacher_epochs, **train)),
        "student": RunConfig(out=str(out / "student"), data=data,
                             model=ModelConfig(name=q.student, in_chans=q.in_chans, drop_rate=0.1),
                             train=TrainConfig(epochs=q.student_epochs, **train),
                             distill=DistillConfig(teacher=str(out / "teacher"), alpha=q.alpha,
                                                   temperature=q.temperature)),
        "student_nokd": RunConfig(out=str(out / "student_nokd"), data=data,
                                  model=ModelConfig(name=q.student, in_chans=q.in_chans, drop_rate=0.1),
                                  train=TrainConfig(epochs=q.student_epochs, **train)),
    }


def run_quickstart(q: QuickstartConfig, *, step: Callable[[str], None] | None = None,
                   callbacks_for: Callable[[str], object] | None = None) -> dict[str, object]:
    """Run every step (skipping runs that already finished, resuming interrupted ones); returns a summary."""
    from .cli import main as cli_main
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
        summary[name] = {k: m.get(k) for k in ("macro_auc", "accuracy", "macro_f1", "params", "macs", "latency_ms")}
        timings[f"evaluate_{name}"] = time.perf_counter() - t0

    student = Path(cfgs["student"].out)
    steps: list[tuple[str, list[str], Path | None]] = [
        ("explain", ["explain", str(student), "--dataset", q.dataset, "--root", str(root), "--split", "test",
                     "--limit", str(q.explain_images), "--method", q.explain_method,
                     "--teacher", cfgs["teacher"].out, "--out", str(student / "explain")],
         student / "explain" / "explain.json"),
        ("export", ["export", str(student), "--format", "onnx", "--explain", "--out", str(student / "export")]
         + (["--int8"] if q.int8 else []), student / "export" / "export.json"),
        ("benchmark", ["benchmark", str(student / "export" / "model.onnx"), "--teacher", cfgs["teacher"].out,
                       "--out", str(student / "export" / "benchmark.json")], student / "export" / "benchmark.json"),
        ("report", ["report", cfgs["teacher"].out, str(student), cfgs["student_nokd"].out,
                    "--out", str(out / "report.html")], None),
    ]
    retrained = bool(fresh & {"teacher", "student"})
    for name, argv, done in steps:
        t0 = time.perf_counter()
        if done is not None and done.is_file() and not retrained:
            say(f"{name}: already done ({done})")
            continue
        say(f"{name}: medistill {' '.join(argv)}  (output: {out / (name + '.log')})")
        with open(out / f"{name}.log", "w", encoding="utf-8") as log_file, contextlib.redirect_stdout(log_file):
            code = cli_main(argv)
        if code != 0:
            from .errors import MedistillError

            raise MedistillError(f"quickstart step {name!r} failed (exit {code}): medistill {' '.join(argv)}")
        timings[name] = time.perf_counter() - t0
    summary["report"] = str(out / "report.html")
    summary["total_seconds"] = time.perf_counter() - t_start
    from .utils.io import atomic_write_json

    atomic_write_json(out / "quickstart.json", summary)
    return summary
