"""A study's plan, fixed before anything runs: the data after hygiene, the teacher, the student sizes, and every
run (size x arm x seed) as an ordinary run configuration.

- :func:`prepare_data`: ``data inspect`` first; the grouping it suggests and the near copies it finds are applied
  (each said in a sentence, each with a flag to turn it off); patients in more than one split stop the study.
- :func:`teacher_runs`: the given teacher runs (checked to have been trained on the same splits), or teachers
  fine-tuned here (``--recipe finetune``).
- :class:`Plan`: the sizes and the runs; ``plan.json`` records the rule by which arms are chosen and compared, and a
  later call with other settings is refused (the measure is not changed after seeing a result).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from timm.models import get_pretrained_cfg

from .. import runs
from ..config import DataConfig, RunConfig, build, differences, flat_dict, to_dict
from ..data import DatasetError, source_of
from ..data.inspect import summarize
from ..datasets import taking
from ..errors import MedistillError
from ..models.kdfmv import width_name
from ..train import run_training
from ..utils.io import atomic_write_json, read_json_object
from .options import ARMS, StudyConfig

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
#: data fields that decide which images fall into which split: a teacher trained with other values may have
#: trained on the study's validation or test images
SPLIT_FIELDS = ("dataset", "split_seed", "val_fraction", "test_fraction", "group_by", "group_similar", "resplit",
                "views", "frontal_only", "labels")
#: study settings that change neither a run nor a rule (how fast it goes, how figures are timed)
NOT_PLAN = ("out", "jobs", "threads", "bootstrap", "latency", "latency_threads", "summarise", "data.num_workers",
            "data.cache", "data.cache_dir")


class StudyError(MedistillError):
    """A study that cannot go on as asked; the message says what and how to fix it."""


def prepare_data(cfg: StudyConfig, say: Callable[[str], None]) -> tuple[DataConfig, list[str]]:
    """The study's data config after ``data inspect``'s advice, and one sentence per decision taken."""
    data = copy.deepcopy(cfg.data)
    notes: list[str] = []
    source = source_of(data.dataset)  # the registry says which sources take a grouping and drop near copies
    summary = summarize(data)
    hint = summary.get("grouping_hint")
    if hint and source.takes("group_by"):
        example = " / ".join(hint["examples"][0])
        if cfg.suggested_grouping:
            data.group_by = hint["suggestion"]
            notes.append(f"{hint['images_in_groups']} file names look grouped (e.g. {example}): data inspect's "
                         f"--group-by '{hint['suggestion']}' is applied, so each patient's images stay in one split "
                         f"(--no-suggested-grouping turns this off)")
            try:
                summary = summarize(data)
            except DatasetError as e:
                raise StudyError(f"{hint['images_in_groups']} file names look grouped (e.g. {example}), but the "
                                 f"grouping data inspect suggests does not fit every file ({e}); give --group-by "
                                 f"REGEX yourself, or --no-suggested-grouping") from None
        else:
            notes.append(f"{hint['images_in_groups']} file names look grouped (e.g. {example}) but the suggested "
                         f"--group-by was not applied (--no-suggested-grouping): a patient may be in two splits")
    if data.group_similar is not None:
        notes.append(f"patients are the groups of near-identical images (thumbnail correlation >= "
                     f"{data.group_similar:g}: the slices of one scan, {summary['num_patients']} groups); each stays "
                     f"in one split")
    elif data.group_by and not (hint and cfg.suggested_grouping):
        notes.append(f"patients named by --group-by '{data.group_by}' ({summary['num_patients']} patients); each stays "
                     f"in one split")
    if data.resplit:
        notes.append("the split folders are ignored: train / val / test are drawn by patient (--resplit)")
    overlap = {k: v for k, v in summary["patient_overlap"].items() if v}
    if overlap:
        raise StudyError(f"{sum(overlap.values())} patients (or groups) are in more than one split "
                         f"({', '.join(f'{k}: {v}' for k, v in overlap.items())}): a score on them is not a score on "
                         f"new patients; draw the splits by patient ({taking('resplit')} datasets: --resplit)")
    copies = source.takes("drop_near_copies")  # image folders: near copies are looked for and can be left out
    if copies and data.drop_near_copies is None and cfg.near_copies is not None:
        summary = summarize(data, near_copies=cfg.near_copies)
        nc = summary["near_copies"]
        n = nc["val"]["near_copies"] + nc["test"]["near_copies"]
        if n:
            data.drop_near_copies = cfg.near_copies
            notes.append(f"{nc['val']['near_copies']} of {nc['val']['images']} validation and "
                         f"{nc['test']['near_copies']} of {nc['test']['images']} test images have a near copy in "
                         f"training (thumbnail correlation >= {cfg.near_copies:g}) and are left out "
                         f"(--near-copies null keeps them)")
        else:
            notes.append(f"no validation or test image has a near copy in training (thumbnail correlation >= "
                         f"{cfg.near_copies:g})")
    elif copies and data.drop_near_copies is not None:
        notes.append(f"validation / test images with a near copy in training (>= {data.drop_near_copies:g}) are left "
                     f"out (--drop-near-copies)")
    elif copies:
        notes.append("near copies of training images are kept in validation and test (--near-copies null): scores "
                     "on them measure memory")
    else:
        notes.append(f"{data.dataset}: the source's table names the patients and the splits keep each in one; near "
                     f"copies are looked for in image folders only")
    for note in notes:
        say(f"data: {note}")
    return data, notes


def teacher_runs(cfg: StudyConfig, data: DataConfig, say: Callable[[str], None]) -> list[Path]:
    """The teacher run directories: ``cfg.teacher`` (each checked to share the study's splits), or the
    ``teacher_models`` fine-tuned into ``OUT/teachers/<model>`` (trained once; a re-run reuses them)."""
    if cfg.teacher:
        paths = [Path(p) for p in cfg.teacher]
        for p in paths:
            run = runs.RunDir(p)
            if not run.info().get("finished"):
                raise StudyError(f"teacher {p}: not a finished medistill training run (no 'finished' in its "
                                 f"{runs.RUN_FILE})")
            check_same_splits(p, run.config().data, data)
        return paths

    out = []
    for name in cfg.teacher_models:
        tcfg = teacher_config(cfg, data, name)
        run = runs.RunDir(tcfg.out)
        if run.info().get("finished"):
            say(f"teacher {name}: already trained ({tcfg.out})")
        else:
            say(f"teacher {name}: fine-tuning from its ImageNet weights at {tcfg.data.image_size} px for "
                f"{tcfg.train.epochs} epochs (--recipe finetune) -> {tcfg.out}")
            run_training(tcfg, resume=True)
        out.append(Path(tcfg.out))
    return out


def teacher_config(cfg: StudyConfig, data: DataConfig, name: str) -> RunConfig:
    """The fine-tuning config of teacher ``name`` on the study's data (all cores, seed 0)."""
    size = cfg.teacher_image_size
    if size is None:
        pre = get_pretrained_cfg(name)
        size = int(pre.input_size[-1]) if pre is not None else 224
    over = {**_data_overrides(data), "recipe": "finetune", "out": str(Path(cfg.out) / "teachers" / name),
            "model.name": name, "model.pretrained": True, "data.image_size": size,
            "train.epochs": cfg.teacher_epochs, "train.threads": os.cpu_count() or 1, "train.seed": 0}
    return build(RunConfig, overrides=over)


def check_same_splits(teacher: Path, teacher_data: DataConfig, data: DataConfig) -> None:
    """Refuse a teacher trained on other splits than the study's: its training images may be among the study's
    validation or test images, and KD would pass their labels on."""
    a = {k: v for k, v in to_dict(teacher_data).items() if k in SPLIT_FIELDS}
    b = {k: v for k, v in to_dict(data).items() if k in SPLIT_FIELDS}
    diff = differences(a, b)
    if teacher_data.root and data.root and Path(teacher_data.root).resolve() != Path(data.root).resolve():
        diff.append("root")
    if diff:
        raise StudyError(f"teacher {teacher} was trained on other splits than the study's (its data differs in "
                         f"{', '.join(sorted(diff))}): its training images may be among the study's validation or "
                         f"test images; train it with the study's data flags, or leave out --teacher to let the study "
                         f"fine-tune one")


def _data_overrides(data: DataConfig) -> dict[str, Any]:
    return {f"data.{k}": v for k, v in flat_dict(data).items()}


@dataclass(frozen=True)
class Size:
    """One student size: a model (width variant) at an input size."""

    model: str  # kdfmv_w0.5
    width: float
    image_size: int

    @property
    def key(self) -> str:
        return f"{self.model}_{self.image_size}px"

    @property
    def title(self) -> str:
        return f"{self.model} @ {self.image_size} px"


@dataclass(frozen=True)
class PlannedRun:
    """One run of the study: a size, an arm, a seed and (kd arm) its alpha / T point."""

    size: Size
    arm: str
    seed: int
    point: tuple[float, float] | None = None  # (alpha, T) of the kd arm

    @property
    def name(self) -> str:
        point = f"_a{self.point[0]:g}_T{self.point[1]:g}" if self.point else ""
        return f"{self.arm}{point}_s{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.size.title}, {self.name}"


@dataclass
class Plan:
    """Every run of a study and how its results are judged (see the module docstring)."""

    cfg: StudyConfig
    data: DataConfig
    hygiene: list[str]
    teachers: list[Path]
    sizes: list[Size] = dataclasses.field(default_factory=list)

    @classmethod
    def make(cls, cfg: StudyConfig, data: DataConfig, hygiene: list[str], teachers: list[Path]) -> "Plan":
        sizes = [Size(width_name(cfg.model, w), w, s) for w in cfg.widths for s in cfg.image_sizes]
        return cls(cfg, data, hygiene, teachers, sizes)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def run_dir(self, r: PlannedRun) -> Path:
        return self.out / "runs" / r.size.key / r.name

    def views_dir(self) -> Path:
        return self.out / "teacher_views"

    def runs_of(self, size: Size, arm: str, point: tuple[float, float] | None = None) -> list[PlannedRun]:
        """The seeds of ``arm`` at ``size``; the kd arm's at ``point`` (its chosen grid point)."""
        return [PlannedRun(size, arm, s, point if arm == "kd" else None) for s in range(self.cfg.seeds)]

    def grid_runs(self, size: Size) -> list[PlannedRun]:
        """The kd arm's grid: seed 0 at each alpha / T point (the chosen one is that arm's seed 0)."""
        return [PlannedRun(size, "kd", 0, p) for p in self.cfg.grid()] if "kd" in self.cfg.arms else []

    def first_runs(self) -> list[PlannedRun]:
        """Every run that depends on no other run's result, seed by seed (seed 0 of every size and arm first, so
        partial results cover every size early), KD arms first within a size (their teacher caches are filled
        early, in parallel with --jobs 2); the kd arm's other seeds wait for its grid."""
        out: list[PlannedRun] = []
        order = sorted(self.cfg.arms, key=lambda a: not ARMS[a].kd)
        for seed in range(self.cfg.seeds):
            for size in self.sizes:
                for arm in order:
                    if arm == "kd":
                        out += self.grid_runs(size) if seed == 0 else []
                    else:
                        out.append(PlannedRun(size, arm, seed))
        return out

    def planned_runs(self) -> int:
        """How many runs the study trains: every arm at every size and seed, and the kd arm's extra grid points."""
        kd = "kd" in self.cfg.arms
        per_size = len(self.cfg.arms) * self.cfg.seeds + (len(self.cfg.grid()) - 1 if kd else 0)
        return per_size * len(self.sizes)

    def config(self, r: PlannedRun) -> RunConfig:
        """The run configuration of ``r``: the study's data at the size's input, the common schedule, the arm's
        overrides, and for KD arms the teacher(s) and the shared view cache."""
        c = self.cfg
        over: dict[str, Any] = {
            **_data_overrides(self.data), "out": str(self.run_dir(r)), "data.image_size": r.size.image_size,
            "model.name": r.size.model, "train.epochs": c.epochs, "train.batch_size": c.batch_size,
            "train.lr": c.lr, "train.optimizer": "adamw", "train.warmup_epochs": 1, "train.scheduler": "cosine",
            "train.seed": r.seed, "train.threads": c.run_threads(),
            "train.ema_decay": c.ema_decay if c.stop == "ema" else 0.0}
        arm = ARMS[r.arm]
        over.update(dict(arm.overrides))
        if arm.kd:
            teachers = [str(p) for p in self.teachers]
            over.update({"distill.teacher": teachers[0]} if len(teachers) == 1 else {"distill.teachers": teachers})
            over.update({"distill.teacher_views": c.teacher_views, "distill.teacher_views_dir": str(self.views_dir())})
            if r.point is not None:
                over.update({"distill.alpha": r.point[0], "distill.temperature": r.point[1]})
        return build(RunConfig, overrides=over)

    def record(self) -> dict[str, Any]:
        """What ``plan.json`` holds: the settings, the data after hygiene, the teachers and the rule."""
        c = self.cfg
        return {
            "question": "does distillation pay at each student size, and how small can the student be while "
                        "staying within a point of the teacher?",
            "settings": {k: v for k, v in flat_dict(c).items() if k not in NOT_PLAN},
            "data": to_dict(self.data), "hygiene": self.hygiene, "teachers": [str(p) for p in self.teachers],
            "sizes": [{"key": s.key, "model": s.model, "width": s.width, "image_size": s.image_size}
                      for s in self.sizes],
            "arms": {a: ARMS[a].as_dict() for a in c.arms},
            "rule": {"stop": c.stop, "metric": c.metric, "seeds": c.seeds, "kd_grid": list(c.kd_grid),
                     "selection": "per size, the KD arm and the no-KD arm with the best mean validation score over "
                                  "their seeds (the kd arm at the grid point seed 0 scored best on validation); "
                                  "the headline reports the test scores of these two arms only",
                     "within": c.within},
        }

    def fix(self) -> None:
        """Write ``plan.json`` before the first run, or check that an earlier call planned the same study."""
        path = self.out / PLAN_FILE
        record = self.record()
        if path.is_file():
            old = read_json_object(path, "a study plan (a JSON object, as medistill study writes)")
            changed = differences({k: old.get(k) for k in record}, record)
            if changed:
                raise StudyError(f"{path}: this folder holds a study planned with other settings (differs in "
                                 f"{', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}); a study's rule is "
                                 f"fixed before its first result: choose another --out")
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
