"""How a run's teachers reach its student, decided once (:class:`DistillPlan`).

The mode comes from the config alone (:meth:`medistill.config.RunConfig.distill_mode`, which ``validate`` also
calls, so an impossible combination fails before any work starts); :mod:`.setup` completes the plan with what the
loaded teachers decide (their input size, the cache's path and key) and hands it to the loop and the run record.
Nothing else asks how distillation runs: the loop replays cached views when ``plan.cached``, mixes batches unless
``plan.mixed`` (the cached views are mixed already), and ``run.json`` records ``plan.record()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..task import Task

MODES = ("none", "online", "offline", "views")


@dataclass(frozen=True)
class DistillPlan:
    mode: str  # one of MODES
    reason: str  # why this mode, in words (the log and run.json say it)
    views: int = 0  # the teachers' outputs cached per image: 1 offline, V views, 0 online / none
    mixed: bool = False  # the cached views are mixed (mixup / CutMix): the loop must not mix them again
    temperature: float | None = None  # T of the soft targets (None without a teacher)
    teacher_image_size: int | None = None  # the teachers' input size (the batch is loaded at the larger one)
    cache_path: Path | None = None  # the cache of the teachers' outputs
    cache_key: str | None = None  # everything that changes the cached soft targets, hashed

    @classmethod
    def decide(cls, cfg: RunConfig, task: Task) -> "DistillPlan":
        """The plan as the config decides it for ``task`` (its T: ``distill.temperature``, else the task's
        default); the teachers' size and the cache's path and key come with :meth:`completed`."""
        mode, reason = cfg.distill_mode()
        d, t = cfg.distill, cfg.train
        views = {"views": d.teacher_views, "offline": 1}.get(mode, 0)
        temperature = None if mode == "none" else d.temperature if d.temperature is not None else task.kd_temperature
        return cls(mode, reason, views=views, mixed=mode == "views" and (t.mixup > 0 or t.cutmix > 0),
                   temperature=temperature)

    @property
    def cached(self) -> bool:
        """Whether the teachers' outputs are read from a cache (offline KD, cached views) instead of computed."""
        return self.views > 0

    def completed(self, **fields: Any) -> "DistillPlan":
        """The plan with what setup learnt (``teacher_image_size``, ``cache_path``, ``cache_key``, ``mixed``)."""
        return dataclasses.replace(self, **fields)

    def record(self) -> dict[str, Any]:
        """What ``run.json`` keeps of the plan (``distill_plan``)."""
        out = dataclasses.asdict(self)
        out["cache_path"] = str(self.cache_path) if self.cache_path else None
        return out
