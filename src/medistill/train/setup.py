"""Everything a training run needs before its first epoch: data, student, teachers, objective, optimiser.

:func:`setup` turns a :class:`~medistill.config.RunConfig` into a :class:`Setup`; the loop only consumes it.
How the teachers reach the student is the run's :class:`~.distill_plan.DistillPlan`, decided by the config
(``RunConfig.distill_mode``: cached once when every view of an image is the same, on V replayed and maybe mixed
views when ``distill.teacher_views`` asks, else online on the very view the student sees); setup fills the cache
it names and completes it with the cache's path and key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torchvision
from timm.utils.model_ema import ModelEmaV3
from torch.utils.data import DataLoader

from .. import runs
from ..config import RunConfig
from ..data import Preprocess, build_dataset, collate, image_cache_dir
from ..data.images import INTENSITY_RULE
from ..data.inspect import detect_channels
from ..losses import (AttentionTransfer, CATLoss, E2KDLoss, FitNetsHint, KDLoss, build_hard_loss,
                      class_weights_from_targets)
from ..models import InputConfig, create_model, input_config, load_weights
from ..losses.explanation import MapGrids
from ..maps.base import related_evenly
from ..models.cam_layers import CamLayer, Grid, choose_layers, chosen_grids
from ..task import Task, get_task
from . import distributed as dist_utils
from .checkpoint import unwrap
from .distill_plan import DistillPlan
from .distillation import (AttributionMaps, DistillationObjective, SupervisedObjective, features_and_logits,
                           resolve_precision)
from .mixing import Mixer
from .optim import build_optimizer, build_scheduler
from .teacher import Teacher, adapt_input, load_teacher
from .views import ViewCache, ViewDataset, collate_views
from .views import cache_key as views_cache_key

log = logging.getLogger(__name__)


@dataclass
class Setup:
    task: Task
    labels: list[str]
    model: nn.Module  # the student (DDP-wrapped under torchrun)
    objective: SupervisedObjective
    train_ds: Any
    val_loader: DataLoader
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    params: list[nn.Parameter]
    use_amp: bool
    extra: dict[str, nn.Module] = field(default_factory=dict)  # trainable modules besides the student
    teacher_sources: list[str] = field(default_factory=list)
    plan: DistillPlan = field(default_factory=lambda: DistillPlan("none", "no teacher"))
    collate: Callable = collate
    ema: Any = None  # timm ModelEmaV3 of the student when train.ema_decay > 0

    @property
    def eval_model(self) -> nn.Module:
        """What validation sees and the weight files hold: the weights' moving average when EMA is on."""
        return self.ema.module if self.ema is not None else unwrap(self.model)


def setup(cfg: RunConfig, run: runs.RunDir, *, device: torch.device, distributed: bool, main: bool,
          cb: Any) -> Setup:
    t = cfg.train
    teacher_sources = cfg.teacher_sources
    probe = build_dataset(dataclasses.replace(cfg.data, cache=False), "train", Preprocess(size=8))  # not cached
    labels, task = list(probe.labels), get_task(probe.task)
    plan = DistillPlan.decide(cfg, task)
    in_chans = _in_chans(cfg, teacher_sources, probe, run)
    model = create_model(cfg.model.name, num_classes=len(labels), in_chans=in_chans,
                         pretrained=cfg.model.pretrained, image_size=cfg.data.image_size,
                         drop_rate=cfg.model.drop_rate)
    if cfg.model.weights:
        load_weights(model, cfg.model.weights, strict=False)
    s_in = input_config(model)
    teachers = [load_teacher(src, labels=labels, channels=in_chans, model_name=cfg.distill.teacher_model,
                             image_size=cfg.distill.teacher_image_size, device=device) for src in teacher_sources]
    for tch, w in zip(teachers, list(cfg.distill.teacher_weights) or [1.0] * len(teachers)):
        tch.weight = w
    # the loader produces the largest input size; each model gets the batch resized to its own
    load_in = InputConfig(max([s_in.size] + [tch.input.size for tch in teachers]), s_in.channels, s_in.mean, s_in.std)
    cache_dir = image_cache_dir(cfg.data)
    train_ds = build_dataset(cfg.data, "train", Preprocess(load_in.size, s_in.channels, s_in.mean, s_in.std,
                                                           cfg.data.augment), cache_dir=cache_dir)
    val_ds = build_dataset(cfg.data, "val", Preprocess(load_in.size, s_in.channels, s_in.mean, s_in.std, "none"),
                           cache_dir=cache_dir)
    log.info("data: %s %d train / %d val images, %d labels (%s), input %d px x %d ch%s", cfg.data.dataset,
             len(train_ds), len(val_ds), len(labels), task.name, s_in.size, s_in.channels,
             f", loaded at {load_in.size} px for the teacher" if load_in.size != s_in.size else "")
    student_input = (lambda x: adapt_input(x, load_in, s_in)) if load_in.size != s_in.size else (lambda x: x)

    cw = class_weights_from_targets(torch.from_numpy(train_ds.targets), torch.from_numpy(train_ds.masks), task) \
        if t.class_weights else None
    model.to(device).train()
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective: SupervisedObjective
    if teachers:
        feature = _feature_term(cfg, model, teachers[0], s_in, load_in, device)
        maps = _map_layers(cfg, model, teachers[0], s_in)
        kd = KDLoss.build(task, alpha=cfg.distill.alpha, temperature=plan.temperature, kd=cfg.distill.kd,
                          hard=t.loss, class_weights=cw, focal_gamma=t.focal_gamma, feature=feature,
                          feature_weight=cfg.distill.feature_weight,
                          explanation=_explanation_term(cfg, task, maps.grids),
                          explanation_weight=cfg.distill.explain_weight).to(device)
        objective = DistillationObjective(kd, teachers, load_in, task, student_input,
                                          temperature=plan.temperature, precision=cfg.distill.teacher_precision,
                                          channels_last=t.channels_last, map_layers=(maps.student, maps.teacher),
                                          map_grids=(maps.student_grids, maps.teacher_grids),
                                          map_combine="poly" if cfg.distill.cam_layers == "poly" else "fuse",
                                          attribution=_attribution(cfg, maps.side, lambda: build_dataset(
                                              cfg.data, "train", Preprocess(load_in.size, s_in.channels, s_in.mean,
                                                                            s_in.std, "none"), cache_dir=cache_dir)))
        plan = plan.completed(teacher_image_size=max(tch.input.size for tch in teachers))
        if plan.cached:
            train_ds, plan = _cache(cfg, plan, objective, run, train_ds, device, main, cb)
        _announce(plan, cb)
    else:
        objective = SupervisedObjective(build_hard_loss(task, t.loss, class_weights=cw,
                                                        focal_gamma=t.focal_gamma).to(device),
                                        student_input, channels_last=t.channels_last)
    trainable = objective.trainable() if isinstance(objective, DistillationObjective) else {}
    extra = dict(trainable)  # modules whose state resume restores besides the student
    ema = None
    if t.ema_decay > 0:
        # warm-up: the average starts from the current weights instead of being dominated by the initial ones
        ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=True)
        ema.module.requires_grad_(False)
        extra["ema"] = ema
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad] + [p for m in trainable.values() for p in m.parameters()]
    opt = build_optimizer(cfg, params)
    steps_per_epoch = max(math.ceil(len(train_ds) / (t.batch_size * dist_utils.world_size()) / t.grad_accum), 1)
    use_amp = t.amp and device.type == "cuda"
    val_loader = DataLoader(val_ds, batch_size=t.batch_size * 2, shuffle=False, num_workers=cfg.data.num_workers,
                            collate_fn=collate)
    return Setup(task, labels, model, objective, train_ds, val_loader, opt, build_scheduler(cfg, opt, steps_per_epoch),
                 torch.amp.GradScaler("cuda", enabled=use_amp), params, use_amp, extra, teacher_sources, plan,
                 collate_views if plan.cached else collate, ema)


def _in_chans(cfg: RunConfig, teacher_sources: list[str], probe: Any, run: runs.RunDir) -> int:
    """The student's input channels: ``model.in_chans`` when given; for ``auto``, the first teacher run's (teacher
    and student must agree), else detected from a sample of the training images. Logged, and stored in the run
    record with the intensity rule the images are decoded by."""
    if cfg.model.in_chans != "auto":
        chans, why = int(cfg.model.in_chans), "given (model.in_chans)"
    else:
        teacher_input = [runs.RunDir(p if Path(p).is_dir() else Path(p).parent).info().get("input") or {}
                         for p in teacher_sources]
        known = [int(i["channels"]) for i in teacher_input if i.get("channels")]
        if known:
            chans, why = known[0], f"the teacher's ({teacher_sources[0]})"
        else:
            chans, why = detect_channels(probe, seed=cfg.data.split_seed)
            why = f"detected: {why}"
    log.info("input channels: %d (%s)", chans, why)
    run.update_info(input_channels={"channels": chans, "source": why}, intensity=INTENSITY_RULE)
    return chans


def _feature_term(cfg: RunConfig, model: nn.Module, teacher: Teacher, s_in: InputConfig, load_in: InputConfig,
                  device: torch.device) -> nn.Module | None:
    """The feature loss KDLoss adds: a FitNets hint (its 1x1 projector sized from one dummy forward of each
    network) or attention transfer; None without one."""
    if cfg.distill.feature == "attention":
        return AttentionTransfer()
    if cfg.distill.feature != "fitnets":
        return None
    with torch.no_grad():
        fs, _ = features_and_logits(model.to(device).eval(), torch.zeros(1, s_in.channels, s_in.size, s_in.size,
                                                                        device=device))
        x0 = torch.zeros(1, s_in.channels, load_in.size, load_in.size, device=device)
        ft, _ = features_and_logits(teacher.model, adapt_input(x0, load_in, teacher.input))
    model.train()
    return FitNetsHint(fs.shape[1], ft.shape[1])


def _explanation_term(cfg: RunConfig, task: Task, grids: MapGrids) -> nn.Module | None:
    """e2KD (the teacher's predicted class for single-label data, every valid label for multi-label) or CAT-KD,
    comparing the maps where their cells sit on the image (``grids``: student, teacher)."""
    if cfg.distill.explain_loss == "e2kd":
        return E2KDLoss(single_label=not task.multilabel, predicted_only=cfg.distill.explain_labels == "predicted",
                        grids=grids)
    if cfg.distill.explain_loss == "cat":
        return CATLoss(cfg.distill.cat_pool, grids=grids)
    return None


@dataclass(frozen=True)
class MapLayers:
    """The explanation loss's maps: the layers of each model they come from and where their cells sit."""

    student: tuple[str, ...] = ()  # the student's layers, shallow to deep (several: combined)
    teacher: tuple[str, ...] = ()  # the teacher's (none for GradientShap teacher maps)
    side: int = 0  # the student map's side
    # each layer's cells on its model's input, for combining several layers' maps (None: they tile evenly, or
    # the trace cannot tell: combined by bilinear resizing, as before)
    student_grids: tuple[Grid, ...] | None = None
    teacher_grids: tuple[Grid, ...] | None = None
    grids: MapGrids = (None, None)  # (student, teacher) cells of the maps the loss compares, on the image


def _traced(model: nn.Module, chosen: list[CamLayer], input_shape: tuple[int, int, int]
            ) -> tuple[tuple[Grid, ...] | None, Grid | None]:
    """(each chosen layer's grid on the input, None when all tile evenly or one is unknown; the grid on the image
    of the map the loss gets from them: the finest layer's, where a combined map is; None: even). Traced once
    here, by one forward pass at the model's input size, not per step."""
    grids = chosen_grids(model, chosen, input_shape)
    finest = max(range(len(chosen)), key=lambda k: chosen[k].side)
    on_image = None if grids[finest] is None else grids[finest].on_image(input_shape[-2:])
    size = input_shape[-2:]
    even = all(g is not None and related_evenly(g, (c.side, c.side), Grid.half_pixel(size, (c.side, c.side)),
                                                (c.side, c.side)) for g, c in zip(grids, chosen))
    layers = None if even or any(g is None for g in grids) else tuple(grids)
    return layers, on_image


def _map_layers(cfg: RunConfig, model: nn.Module, teacher: Teacher, s_in: InputConfig) -> MapLayers:
    """The explanation loss's maps, by ``distill.cam_layers`` at each model's own input size: the layers ``explain``
    hooks under the same policy (one, or several combined under ``fuse`` / ``poly``), so the student is trained on
    the maps it is judged by, and where their cells sit. No teacher layers for GradientShap teacher maps (pooled
    evenly from its pixels: grid None); nothing without an explanation loss."""
    if cfg.distill.explain_loss == "none":
        return MapLayers()
    policy, min_size = cfg.distill.cam_layers, cfg.distill.cam_min_size
    s_shape = (s_in.channels, s_in.size, s_in.size)
    student = choose_layers(model, policy, min_size=min_size, input_shape=s_shape)
    s_names, side = tuple(c.name for c in student), max(c.side for c in student)
    s_layers, s_grid = _traced(model, student, s_shape)
    if cfg.distill.explain_teacher_maps == "gradientshap":  # the teacher's maps come from its input, not a layer
        log.info("explanation loss on maps of %s (student, %d px a side) and the teacher's GradientShap "
                 "attributions pooled to %d px (cam_layers %s)", " + ".join(s_names), side, side, policy)
        return MapLayers(s_names, (), side, s_layers, None, (s_grid, None))
    t_in = teacher.input
    t_shape = (t_in.channels, t_in.size, t_in.size)
    teach = choose_layers(teacher.model, policy, min_size=min_size, input_shape=t_shape)
    t_layers, t_grid = _traced(teacher.model, teach, t_shape)
    log.info("explanation loss on maps of %s (student, %d px a side) and %s (teacher, %d px) (cam_layers %s); "
             "cells compared where they sit on the image (student %s, teacher %s)", " + ".join(s_names), side,
             " + ".join(c.name for c in teach), max(c.side for c in teach), policy, s_grid, t_grid)
    return MapLayers(s_names, tuple(c.name for c in teach), side, s_layers, t_layers, (s_grid, t_grid))


def _attribution(cfg: RunConfig, side: int, plain_train: Callable[[], Any]) -> AttributionMaps | None:
    """The teacher's GradientShap maps for the explanation loss (``distill.explain_teacher_maps gradientshap``):
    16 training images (``plain_train()``: the training split loaded without augmentation), drawn with the split
    seed, as the background. None for Grad-CAM maps."""
    d = cfg.distill
    if d.explain_loss == "none" or d.explain_teacher_maps != "gradientshap":
        return None
    train_ds = plain_train()
    rows = sorted(np.random.default_rng(cfg.data.split_seed).choice(len(train_ds), min(16, len(train_ds)),
                                                                     replace=False).tolist())
    background = torch.stack([train_ds[i]["image"] for i in rows])
    return AttributionMaps(background, side, samples=d.explain_teacher_samples, seed=cfg.data.split_seed)


def _announce(plan: DistillPlan, cb: Any) -> None:
    """Log the plan in one line (and tell the CLI when the teacher runs every step: the slow mode)."""
    log.info("distillation %s: %s%s", plan.mode, plan.reason,
             f" ({plan.cache_path})" if plan.cache_path is not None else "")
    if plan.mode == "online" and cb.on_message:
        cb.on_message(f"teacher runs every step: {plan.reason}")


def _cache(cfg: RunConfig, plan: DistillPlan, objective: DistillationObjective, run: runs.RunDir, train_ds: Any,
           device: torch.device, main: bool, cb: Any) -> tuple[Any, DistillPlan]:
    """Wrap ``train_ds`` in a :class:`~.views.ViewDataset` of the plan's views (mixed when the plan says so), fill
    ``objective.cached`` from the cache (computing what is missing), and return the dataset and the plan completed
    with the cache's path and key."""
    d, t = cfg.distill, cfg.train
    views = plan.views
    ds = ViewDataset(train_ds, views, seed=cfg.data.split_seed,
                     mixer=Mixer(t.mixup, t.cutmix, t.mix_prob) if plan.mixed else None)
    # the maps' layers and the mixing are part of the key only when used (older caches keep their key: one layer
    # by its name, GradientShap maps by None)
    t_layers = list(objective.map_layers[1])
    optional = {"map_layer": t_layers[0] if len(t_layers) == 1 else t_layers or None} if objective.needs_maps else {}
    if objective.needs_maps and len(t_layers) > 1 and objective.map_combine != "fuse":
        optional["map_combine"] = objective.map_combine  # the same layers combined otherwise are other maps
    if objective.needs_maps and len(t_layers) > 1 and objective.map_grids[1] is not None:
        # layers combined where their cells sit (not evenly tiled) are other maps than those combined by resizing
        optional["map_cells"] = [[list(g.stride), list(g.offset)] for g in objective.map_grids[1]]
    if objective.needs_maps and objective.attribution is not None:
        att = objective.attribution
        optional["teacher_maps"] = ["gradientshap", att.samples, att.side, att.seed, len(att.background)]
    if ds.mixer is not None:
        optional["mixing"] = [ds.mixer.mixup, ds.mixer.cutmix, ds.mixer.prob]
    if len(objective.teachers) > 1:  # several teachers' logits are cached combined at T; one teacher's raw
        optional["temperature"] = objective.temperature  # logits are the same at every T, so runs share them
    key = views_cache_key({**optional,
        "teachers": [(tch.source, tch.fingerprint(), tch.weight, tch.input.size) for tch in objective.teachers],
        "precision": resolve_precision(device, objective.precision), "load_size": objective.load_in.size,
        "augment": cfg.data.augment, "views": views, "seed": cfg.data.split_seed, "maps": objective.needs_maps,
        "images": [str(p) for p in train_ds.data.records["path"]], "torchvision": torchvision.__version__})
    if views == 1 and not d.teacher_views_dir:
        path = run.file(runs.TEACHER_LOGITS)
    else:
        path = (Path(d.teacher_views_dir) if d.teacher_views_dir else run.path) / f"teacher_views-{key}.npy"
    cache = ViewCache(path)
    on_view = (lambda v, n: cb.on_message(f"teacher outputs cached on view {v}/{n}")) if cb.on_message else None
    if not main:
        dist_utils.barrier()
    # runs sharing teacher_views_dir take turns on the cache (a lock file beside it): the second one reads it
    objective.cached = cache.load_or_compute(key, ds, cfg.train.batch_size * 2,
                                             lambda x: objective.teacher_outputs(x, need_maps=objective.needs_maps),
                                             device, on_view, getattr(cb, "on_cache", None))
    if main:
        dist_utils.barrier()
    if cb.on_message:
        cb.on_message("teacher outputs cached once (offline KD)" if views == 1 else
                      f"teacher outputs cached on {views} augmented views per image (FKD)")
    return ds, plan.completed(cache_path=path, cache_key=key, mixed=ds.mixer is not None)
