"""The options of ``medistill study`` and its arms: the training recipes compared, fixed before anything runs.

Torch-free (the command line parses these without importing torch).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..config import ConfigError, DataConfig, check_choice, check_range, option


@dataclasses.dataclass(frozen=True)
class Arm:
    """A training recipe of the study: with KD (``kd``) or without, as config overrides on the common settings
    (light augmentation, AdamW, warm-up then cosine, the study's epochs / batch / lr / stopping rule)."""

    name: str
    kd: bool
    overrides: tuple[tuple[str, Any], ...]
    what: str  # one line for people

    def as_dict(self) -> dict[str, Any]:
        return {"kd": self.kd, "overrides": dict(self.overrides), "what": self.what}


#: every arm a study can run, in the order tables list them. The no-KD arms are the baselines a careful user would
#: try (plain, label smoothing, mixup on half the batches); the KD arms are cached consistent KD with alpha / T from
#: a small grid chosen on validation, and function matching on mixed views (Beyer et al. 2022).
ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("plain", False, (), "light augmentation"),
    Arm("smooth", False, (("train.label_smoothing", 0.1),), "light augmentation, label smoothing 0.1"),
    Arm("mixup", False, (("train.mixup", 0.2), ("train.mix_prob", 0.5)),
        "light augmentation, mixup Beta(0.2, 0.2) on half the batches"),
    Arm("kd", True, (), "cached consistent KD (FKD: the teacher's outputs on V cached augmented views per image), "
                        "alpha / T from the grid, chosen on validation with seed 0 of each size"),
    Arm("fm", True, (("train.mixup", 1.0), ("distill.alpha", 0.0), ("distill.temperature", 1.0)),
        "function matching: the teacher's outputs on V cached mixed views per image (mixup Beta(1, 1) on every "
        "view), alpha 0, T 1"),
)}

STOP_RULES = ("ema", "best")
METRICS = ("auto", "accuracy", "balanced_accuracy", "macro_auc")


@dataclasses.dataclass
class StudyConfig:
    """Everything ``medistill study`` needs; saved with the plan (``plan.json``) before the first run starts."""

    out: str = option("runs/study", "the study's folder: plan.json, every run (runs/), study.json, study.md, "
                                     "frontier.png and report.html")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    near_copies: float | None = option(
        0.98, "folder datasets: leave out validation / test images whose nearest training image correlates at this "
              "value (data inspect's near copies: a score on them measures memory); None = keep every image")
    suggested_grouping: bool = option(
        True, "folder datasets whose file names look grouped (1234_left / 1234_right): apply the --group-by data "
              "inspect suggests, so one patient's images stay in one split")
    teacher: list[str] = option(factory=list, help="teacher run directories (several: an ensemble, soft targets "
                                                   "averaged); [] = fine-tune teacher_models first")
    teacher_models: list[str] = option(
        factory=lambda: ["efficientnet_lite0"],
        help="without --teacher: the models fine-tuned from their ImageNet weights (--recipe finetune) as the "
             "teacher; several make an ensemble (efficientnet_lite0, tf_efficientnet_lite1, tf_efficientnet_lite2)")
    teacher_image_size: int | None = option(None, "the fine-tuned teachers' input size; None = each model's own")
    teacher_epochs: int = option(10, "the fine-tuned teachers' epochs")
    model: str = option("kdfmv", "the student family: kdfmv (--widths scale its layers: kdfmv_w0.5 ...) or any model "
                                 "at width 1")
    widths: list[float] = option(factory=lambda: [1.0], help="width multipliers of the students (kdfmv)")
    image_sizes: list[int] = option(factory=lambda: [64], help="students' input sizes (px); every width at every "
                                                               "size is one student size")
    arms: list[str] = option(factory=lambda: list(ARMS), help=f"the arms trained at every size: {', '.join(ARMS)}")
    seeds: int = option(3, "seeds per size and arm")
    epochs: int = option(20, "epochs of every student run")
    batch_size: int = option(32, "student batch size")
    lr: float = option(0.002, "students' peak learning rate (AdamW, 1 warm-up epoch, cosine)")
    teacher_views: int = option(8, "KD arms: augmented views per image the teacher's outputs are cached on, once, "
                                   "shared by every KD run")
    kd_grid: list[str] = option(factory=lambda: ["0.5:4", "0.2:2"],
                                help="alpha:T points of the kd arm, tried on seed 0 of each size; the best on "
                                     "validation is used for its other seeds")
    stop: str = option("ema", "one stopping rule for every run: ema (the weights' moving average after the last "
                              "epoch; no choice made on validation) or best (the best validation epoch)")
    ema_decay: float = option(0.998, "stop ema: the moving average's decay per step")
    metric: str = option("auto", "the score arms are chosen and compared on: auto (the task's main metric: accuracy "
                                 "single-label, macro AUC multi-label), accuracy, balanced_accuracy, macro_auc")
    within: float = option(0.01, "'within a point of the teacher' is this far below it at most, in the metric's "
                                 "units (0.01 = 1 point)")
    jobs: int = option(1, "runs trained at once, in separate processes")
    threads: int | None = option(None, "torch threads per run; None = the CPU's cores divided by jobs")
    bootstrap: int = option(1000, "resamples of the KD-gain interval")
    latency: bool = option(True, "time every student size and the teacher in ONNX Runtime (fp32, batch 1)")
    latency_threads: int = option(1, "ONNX Runtime threads of the latency timing")
    summarise: bool = option(False, "train nothing: write the final study.json / study.md / frontier.png / "
                                    "report.html from the runs scored so far (a study stopped early), every size at "
                                    "the seeds all of its arms have; the plan must be the one in plan.json")

    def validate(self) -> None:
        self.data.validate()
        if self.near_copies is not None:
            check_range("near_copies", self.near_copies, 0.5, 0.9999)
        for name in self.arms:
            check_choice("arms", name, list(ARMS))
        if len(set(self.arms)) != len(self.arms) or not self.arms:
            raise ConfigError(f"arms: got {self.arms}, expected distinct names among {list(ARMS)}")
        if not self.widths or not self.image_sizes:
            raise ConfigError("widths / image_sizes: give at least one of each")
        for w in self.widths:
            check_range("widths", w, 0.0, 8.0, lo_open=True)
        if any(w != 1 for w in self.widths) and self.model not in ("kdfmv", "tiny_cnn"):
            raise ConfigError(f"widths: only kdfmv and tiny_cnn take a width multiplier; {self.model!r} takes 1")
        for s in self.image_sizes:
            check_range("image_sizes", s, 8, 2048)
        check_range("seeds", self.seeds, 1, 100)
        check_range("epochs", self.epochs, 1, 100000)
        check_range("teacher_epochs", self.teacher_epochs, 1, 100000)
        check_range("batch_size", self.batch_size, 1, 65536)
        check_range("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_range("teacher_views", self.teacher_views, 1, 1000)
        check_range("teacher_image_size", self.teacher_image_size, 8, 2048)
        check_choice("stop", self.stop, STOP_RULES)
        check_range("ema_decay", self.ema_decay, 0.0, 0.99999, lo_open=True)
        check_choice("metric", self.metric, METRICS)
        check_range("within", self.within, 0.0, 1.0)
        check_range("jobs", self.jobs, 1, 256)
        check_range("threads", self.threads, 1, 1024)
        check_range("bootstrap", self.bootstrap, 0, 1_000_000)
        check_range("latency_threads", self.latency_threads, 1, 1024)
        if not self.teacher and not self.teacher_models and any(ARMS[a].kd for a in self.arms):
            raise ConfigError("teacher: the KD arms need a teacher: give --teacher RUN_DIR or --teacher-models")
        self.grid()

    def grid(self) -> list[tuple[float, float]]:
        """The kd arm's (alpha, T) points; ConfigError naming a malformed one."""
        points = []
        for p in self.kd_grid:
            try:
                alpha, t = (float(v) for v in str(p).split(":"))
            except ValueError:
                raise ConfigError(f"kd_grid: {p!r} is not alpha:T (e.g. 0.5:4)") from None
            check_range("kd_grid alpha", alpha, 0.0, 1.0)
            check_range("kd_grid T", t, 0.0, 100.0, lo_open=True)
            points.append((alpha, t))
        if not points:
            raise ConfigError("kd_grid: give at least one alpha:T point")
        return points

    def run_threads(self) -> int:
        """Torch threads of each run: ``threads``, else the cores shared out among the jobs."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.jobs)
