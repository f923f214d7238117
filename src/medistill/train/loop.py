"""The training loop shared by ``medistill train`` (teachers, baseline students) and ``medistill distill``.

One function, :func:`run_training`, does both: with ``cfg.distill.teacher`` (or ``teachers``) set, the loss is
the KD-FMV form ``alpha * hard + (1 - alpha) * T^2 * soft(T)`` (+ an optional feature term); without, the hard
loss alone. Per epoch it validates, appends ``history.csv``, writes ``last.safetensors`` + ``state.pt`` (resume
state in one atomic file: weights, optimizer, scheduler, epoch, best metric, RNG) and ``model.safetensors`` when
validation improves.

Determinism: data order and augmentation of epoch ``e`` come from seeds derived from ``(seed, e)``, so a run
resumed after a crash (even SIGKILL mid-epoch) reproduces the uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .. import runs
from ..config import ConfigError, RunConfig
from ..data import Preprocess, build_dataset, collate
from ..errors import MedistillError
from ..models import cam_layer, create_model, input_config, load_weights
from ..utils.io import atomic_write, atomic_write_text
from ..utils.runtime import resolve_device, seed_everything
from . import distributed as dist_utils
from .teacher import Teacher, TeacherCache, adapt_input, load_teacher

log = logging.getLogger(__name__)

HISTORY_FILE = "history.csv"
TEACHER_LOGITS = "teacher_logits.npy"


class TrainingError(MedistillError):
    """Training cannot go on (NaN loss, nothing to train on); the message names the epoch and batch."""


@dataclass
class Callbacks:
    """Progress hooks for the CLI (library code itself never prints)."""

    on_epoch_start: Callable[[int, int], None] | None = None  # (epoch, batches)
    on_batch: Callable[[int, int, float], None] | None = None  # (epoch, batch, loss)
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None  # (epoch, row of history)
    on_message: Callable[[str], None] | None = None


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0  # epochs without improvement
    history: list[dict[str, float]] = field(default_factory=list)


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("MEDISTILL_CACHE", Path.home() / ".cache" / "medistill")) / "images"


def _validation_metric(task: str, probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str]) -> tuple[str, float]:
    """The number model selection maximises: macro AUC (multi-label) or accuracy (single-label)."""
    from ..evaluate.metrics import compute_metrics

    m = compute_metrics(task, probs, targets, mask, labels, n_bootstrap=0)
    key = "macro_auc" if task == "multilabel" else "accuracy"
    value = m.get(key)
    return key, float("nan") if value is None else float(value)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, *, task: str,
            teacher_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
            channels_last: bool = False) -> dict[str, np.ndarray]:
    """Logits, probabilities, targets and masks of a whole loader: arrays (N, L)."""
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {"logits": [], "targets": [], "mask": []}
    try:
        for batch in loader:
            x = batch["image"].to(device)
            if teacher_input is not None:
                x = teacher_input(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out["logits"].append(model(x).float().cpu().numpy())
            out["targets"].append(batch["target"].numpy())
            out["mask"].append(batch["mask"].numpy())
    finally:
        model.train(was_training)
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["probs"] = probabilities(torch.from_numpy(res["logits"]), task).numpy()
    return res


def _optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)


def _scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule as a LambdaLR (its state is just a step count, so resume is exact)."""
    t = cfg.train
    total = max(t.epochs * steps_per_epoch, 1)
    warm = t.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if t.scheduler == "none":
            return 1.0
        progress = (step - warm) / max(total - warm, 1)
        if t.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 0.1 ** int(progress * 3)  # step: x0.1 at 1/3 and 2/3 of training

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.frombuffer(
        np.random.get_state()[1].astype(np.uint32).tobytes(), dtype=np.uint8).copy()),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}


def _save_state(run: runs.RunDir, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, st: _State,
                extra: dict[str, nn.Module], labels: list[str], task: str) -> None:
    runs.save_model(run, _unwrap(model), labels=labels, task=task, which="last")
    # the weights go into state.pt too: one atomic file holds everything resume needs, so a crash between
    # last.safetensors and state.pt can never pair new weights with an old optimizer state
    state = {"epoch": st.epoch, "best": st.best, "best_epoch": st.best_epoch, "stale": st.stale,
             "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(),
             "extra": {k: m.state_dict() for k, m in extra.items()}}
    atomic_write(run.file(runs.STATE_FILE), lambda p: torch.save(state, p))


def _load_state(run: runs.RunDir, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                extra: dict[str, nn.Module]) -> _State:
    from ..models.weights import load_checkpoint

    state = load_checkpoint(run.file(runs.STATE_FILE))  # weights only: a crafted state.pt runs nothing
    if not isinstance(state, dict) or not {"epoch", "optimizer", "scheduler"} <= set(state):
        raise TrainingError(f"{run.file(runs.STATE_FILE)}: not a medistill resume state (expected epoch, optimizer "
                            f"and scheduler entries)")
    if "model" in state:
        _unwrap(model).load_state_dict(state["model"], strict=True)
    else:  # a state.pt of an earlier medistill: weights only in last.safetensors
        load_weights(_unwrap(model), run.file(runs.LAST_WEIGHTS), strict=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    for k, m in extra.items():
        m.load_state_dict(state["extra"][k])
    st = _State(epoch=int(state["epoch"]), best=float(state["best"]), best_epoch=int(state["best_epoch"]),
                stale=int(state["stale"]))
    if run.file(HISTORY_FILE).is_file():
        with open(run.file(HISTORY_FILE), newline="") as f:
            st.history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)][: st.epoch]
    return st


def _write_history(run: runs.RunDir, history: list[dict[str, float]]) -> None:
    if not history:
        return
    keys = list(history[0].keys())
    lines = [",".join(keys)] + [",".join(f"{row.get(k, float('nan')):.6g}" for k in keys) for row in history]
    atomic_write_text(run.file(HISTORY_FILE), "\n".join(lines) + "\n")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature map at the CAM layer, logits) in one forward pass."""
    m = _unwrap(model)
    layer, reshape = cam_layer(m)
    store: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, o: store.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    feat = store[-1] if reshape is None else reshape(store[-1])
    return feat, logits


def _check_cross_resolution(teachers: list[Teacher], student_size: int) -> int:
    return max([student_size] + [t.input.size for t in teachers])


def run_training(cfg: RunConfig, *, resume: bool = False, callbacks: Callbacks | None = None) -> runs.RunDir:
    """Train (or, with a teacher configured, distil) a model as ``cfg`` says; returns its run directory."""
    cb = callbacks or Callbacks()
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with dist_utils.process_group(device) as distributed:
        if distributed and device.type == "cuda":
            device = resolve_device("auto")
        from contextlib import nullcontext

        # one process per run folder: a second training into the same --out is refused (runs.RunDir.lock)
        with runs.RunDir(cfg.out).lock() if dist_utils.is_main() else nullcontext():
            return _run(cfg, resume=resume, cb=cb, device=device, distributed=distributed)


def _run(cfg: RunConfig, *, resume: bool, cb: Callbacks, device: torch.device, distributed: bool) -> runs.RunDir:
    from ..losses import build_hard_loss, build_kd_loss, class_weights_from_targets, combine_teacher_logits
    from ..losses.feature import FitNetsHint, attention_transfer

    t = cfg.train
    main = dist_utils.is_main()
    out = Path(cfg.out)
    teacher_sources = ([cfg.distill.teacher] if cfg.distill.teacher else []) + list(cfg.distill.teachers)
    distilling = bool(teacher_sources)
    if resume and not (out / runs.STATE_FILE).is_file():
        raise ConfigError(f"--resume: {out} has no {runs.STATE_FILE} to resume from")
    if not resume and main and (out / runs.STATE_FILE).is_file():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    seed_everything(t.seed)
    run = runs.RunDir(out)
    if main:
        run = runs.RunDir.create(out, cfg, kind="distill" if distilling else "train", seed=t.seed)
    dist_utils.barrier()
    with run.logging_to_file() if main else _nullcontext():
        # --- data ----------------------------------------------------------------------------------------
        probe = build_dataset(cfg.data, "train", Preprocess(size=8, channels=cfg.model.in_chans), cache_dir=None)
        labels, task = probe.labels, probe.task
        model = create_model(cfg.model.name, num_classes=len(labels), in_chans=cfg.model.in_chans,
                             pretrained=cfg.model.pretrained, image_size=cfg.data.image_size,
                             drop_rate=cfg.model.drop_rate)
        if cfg.model.weights:
            load_weights(model, cfg.model.weights, strict=False)
        s_in = input_config(model)
        teachers = [load_teacher(src, labels=labels, channels=cfg.model.in_chans, model_name=cfg.distill.teacher_model,
                                 image_size=cfg.distill.teacher_image_size, device=device) for src in teacher_sources]
        weights = list(cfg.distill.teacher_weights) or [1.0] * len(teachers)
        for tch, w in zip(teachers, weights):
            tch.weight = w
        load_size = _check_cross_resolution(teachers, s_in.size)
        load_in = type(s_in)(load_size, s_in.channels, s_in.mean, s_in.std)
        cache_dir = (Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()) if cfg.data.cache else None
        train_ds = build_dataset(cfg.data, "train", Preprocess(load_size, s_in.channels, s_in.mean, s_in.std,
                                                               cfg.data.augment), cache_dir=cache_dir)
        val_ds = build_dataset(cfg.data, "val", Preprocess(load_size, s_in.channels, s_in.mean, s_in.std, "none"),
                               cache_dir=cache_dir)
        log.info("data: %s %d train / %d val images, %d labels (%s), input %d px x %d ch%s", cfg.data.dataset,
                 len(train_ds), len(val_ds), len(labels), task, s_in.size, s_in.channels,
                 f", loaded at {load_size} px for the teacher" if load_size != s_in.size else "")
        student_input = (lambda x: adapt_input(x, load_in, s_in)) if load_size != s_in.size else (lambda x: x)

        # --- losses ----------------------------------------------------------------------------------------
        cw = class_weights_from_targets(torch.from_numpy(train_ds.targets), torch.from_numpy(train_ds.masks), task) \
            if t.class_weights else None
        hard_loss = build_hard_loss(task, t.loss, class_weights=cw, focal_gamma=t.focal_gamma).to(device)
        kd_loss = build_kd_loss(task, cfg.distill.kd, temperature=cfg.distill.temperature) if distilling else None
        extra: dict[str, nn.Module] = {}
        if distilling and cfg.distill.feature == "fitnets":
            with torch.no_grad():
                x0 = torch.zeros(1, s_in.channels, s_in.size, s_in.size, device=device)
                fs, _ = _features(model.to(device).eval(), x0)
                ft, _ = _features(teachers[0].model, adapt_input(torch.zeros(1, s_in.channels, load_size, load_size,
                                                                             device=device), load_in, teachers[0].input))
            extra["hint"] = FitNetsHint(fs.shape[1], ft.shape[1]).to(device)
        model.to(device).train()
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)

        # --- teacher cache (offline distillation) ----------------------------------------------------------
        cached: torch.Tensor | None = None
        if distilling:
            reason = None
            if cfg.data.augment != "none":
                reason = f"augmentation '{cfg.data.augment}' changes each view, so the teacher must see it"
            elif cfg.distill.feature != "none":
                reason = "the feature term needs the teacher's feature maps every step"
            if cfg.distill.cache_teacher == "false":
                reason = "cache_teacher is false"
            elif cfg.distill.cache_teacher == "true" and reason:
                raise ConfigError(f"cache_teacher true: cannot cache teacher outputs, {reason}")
            if reason is None:
                cached = _cache_teacher_logits(run, teachers, train_ds, load_in, device, cfg, task, main)
                log.info("offline distillation: teacher logits cached (%s)", run.file(TEACHER_LOGITS))
            else:
                log.info("online distillation: the teacher runs every step (%s)", reason)
            if cb.on_message:
                cb.on_message("teacher outputs cached once (offline KD)" if cached is not None
                              else f"teacher runs every step: {reason}")

        # --- optimisation --------------------------------------------------------------------------------
        if distributed:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        params = [p for p in model.parameters() if p.requires_grad] + [p for m in extra.values() for p in m.parameters()]
        opt = _optimizer(cfg, params)
        bs = t.batch_size
        steps_per_epoch = max(math.ceil(len(train_ds) / (bs * dist_utils.world_size()) / t.grad_accum), 1)
        sched = _scheduler(cfg, opt, steps_per_epoch)
        use_amp = t.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        st = _load_state(run, model, opt, sched, extra) if resume else _State()
        if resume:
            log.info("resumed %s after epoch %d (best %s %.4f)", out, st.epoch, "metric", st.best)
        val_loader = DataLoader(val_ds, batch_size=bs * 2, shuffle=False, num_workers=cfg.data.num_workers,
                                collate_fn=collate)
        metric_name = "macro_auc" if task == "multilabel" else "accuracy"

        for epoch in range(st.epoch, t.epochs):
            t0 = time.perf_counter()
            seed_everything(t.seed * 100003 + epoch)  # augmentation, dropout and order of this epoch
            g = torch.Generator().manual_seed(t.seed * 100003 + epoch)
            sampler = (DistributedSampler(train_ds, shuffle=True, seed=t.seed + epoch) if distributed
                       else RandomSampler(train_ds, generator=g))
            if distributed:
                sampler.set_epoch(epoch)
            loader = DataLoader(train_ds, batch_size=bs, sampler=sampler, num_workers=cfg.data.num_workers,
                                collate_fn=collate, drop_last=False, generator=g)
            if cb.on_epoch_start:
                cb.on_epoch_start(epoch, len(loader))
            model.train()
            sums: dict[str, float] = {}
            n_seen = 0
            opt.zero_grad(set_to_none=True)
            for b, batch in enumerate(loader):
                x_load = batch["image"].to(device, non_blocking=True)
                y, m = batch["target"].to(device), batch["mask"].to(device)
                x = student_input(x_load)
                if t.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, enabled=use_amp):
                    if distilling and "hint" in extra or cfg.distill.feature == "attention":
                        s_feat, logits = _features(model, x)
                    else:
                        s_feat, logits = None, model(x)
                    terms = {"hard": hard_loss(logits.float(), y, m)}
                    if distilling:
                        if cached is not None:
                            t_logits = cached[batch["index"]].to(device)
                            t_feat = None
                        else:
                            t_logits, t_feat = _teacher_forward(teachers, x_load, load_in, task, cfg,
                                                                need_features=s_feat is not None)
                        terms["soft"] = kd_loss(logits.float(), t_logits, m)
                        loss = cfg.distill.alpha * terms["hard"] + (1 - cfg.distill.alpha) * terms["soft"]
                        if s_feat is not None and t_feat is not None:
                            sample_mask = (m.sum(1) > 0).float()
                            if "hint" in extra:
                                terms["feature"] = extra["hint"](s_feat.float(), t_feat.float(), mask=sample_mask)
                            else:
                                terms["feature"] = attention_transfer(s_feat.float(), t_feat.float(),
                                                                      mask=sample_mask)
                            loss = loss + cfg.distill.feature_weight * terms["feature"]
                    else:
                        loss = terms["hard"]
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, batch {b + 1} of {len(loader)} "
                                        f"(terms: { {k: round(float(v.detach()), 4) for k, v in terms.items()} }); "
                                        f"lower --lr, check the data, or use --max-grad-norm")
                scaler.scale(loss / t.grad_accum).backward()
                if (b + 1) % t.grad_accum == 0 or b + 1 == len(loader):
                    if t.max_grad_norm:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                    scaler.step(opt)
                    scaler.update()
                    opt.zero_grad(set_to_none=True)
                    sched.step()
                k = x.shape[0]
                n_seen += k
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * k
                for name, v in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(v.detach()) * k
                if cb.on_batch:
                    cb.on_batch(epoch, b, float(loss.detach()))
            row: dict[str, float] = {"epoch": epoch + 1, **{f"train_{k}": dist_utils.all_reduce_mean(v / max(n_seen, 1), device)
                                                            for k, v in sums.items()}}
            row["lr"] = opt.param_groups[0]["lr"]
            stop = False
            if main:
                pred = predict(_unwrap(model), val_loader, device, task=task, teacher_input=student_input,
                               channels_last=t.channels_last)
                with torch.no_grad():
                    row["val_loss"] = float(hard_loss(torch.from_numpy(pred["logits"]).to(device),
                                                      torch.from_numpy(pred["targets"]).to(device),
                                                      torch.from_numpy(pred["mask"]).to(device)))
                _, value = _validation_metric(task, pred["probs"], pred["targets"], pred["mask"], labels)
                row[f"val_{metric_name}"] = value
                row["seconds"] = time.perf_counter() - t0
                st.epoch = epoch + 1
                st.history.append(row)
                improved = not math.isnan(value) and value > st.best
                if improved or st.best_epoch < 0:
                    st.best, st.best_epoch, st.stale = (value if not math.isnan(value) else st.best), epoch + 1, 0
                    runs.save_model(run, _unwrap(model), labels=labels, task=task, which="best")
                else:
                    st.stale += 1
                _write_history(run, st.history)
                _save_state(run, model, opt, sched, st, extra, labels, task)
                log.info("epoch %d/%d: %s", epoch + 1, t.epochs, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
                if cb.on_epoch_end:
                    cb.on_epoch_end(epoch, row)
                stop = t.early_stopping > 0 and st.stale >= t.early_stopping
                if stop:
                    log.info("early stopping: no %s improvement for %d epochs", metric_name, st.stale)
            else:
                st.epoch = epoch + 1
            if dist_utils.broadcast_flag(stop, device):
                break
        if main:
            record = {"best_epoch": st.best_epoch, f"best_val_{metric_name}": st.best, "epochs_run": st.epoch,
                      "finished": runs.now(), "world_size": dist_utils.world_size()}
            if distilling:
                record["teacher"] = str(Path(teacher_sources[0]).resolve())
                record["teachers"] = [str(Path(s).resolve()) for s in teacher_sources]
                record["distill_mode"] = "offline" if cached is not None else "online"
            run.update_info(**record)
            run.write_metrics({"train": {"best_epoch": st.best_epoch, f"best_val_{metric_name}": st.best,
                                         "epochs_run": st.epoch}})
    dist_utils.barrier()
    return run


def _teacher_forward(teachers: list[Teacher], x_load: torch.Tensor, load_in: Any, task: str, cfg: RunConfig,
                     need_features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    from ..losses import combine_teacher_logits

    logits, feat = [], None
    with torch.no_grad():
        for i, tch in enumerate(teachers):
            xt = adapt_input(x_load, load_in, tch.input)
            if need_features and i == 0:
                feat, lg = _features(tch.model, xt)
            else:
                lg = tch.model(xt)
            logits.append(lg.float())
    if len(logits) == 1:
        return logits[0], feat
    return combine_teacher_logits(logits, [tch.weight for tch in teachers], task=task,
                                  temperature=cfg.distill.temperature), feat


def _cache_teacher_logits(run: runs.RunDir, teachers: list[Teacher], train_ds: Any, load_in: Any,
                          device: torch.device, cfg: RunConfig, task: str, main: bool) -> torch.Tensor:
    cache = TeacherCache(run.file(TEACHER_LOGITS))
    key = TeacherCache.key(teachers, [str(p) for p in train_ds.data.records["path"]], load_in.size)

    def compute() -> np.ndarray:
        loader = DataLoader(train_ds, batch_size=cfg.train.batch_size * 2, shuffle=False,
                            num_workers=cfg.data.num_workers, collate_fn=collate)
        out = []
        for batch in loader:
            lg, _ = _teacher_forward(teachers, batch["image"].to(device), load_in, task, cfg, need_features=False)
            out.append(lg.cpu().numpy())
        return np.concatenate(out)

    if main:
        logits = cache.load_or_compute(key, compute)
        dist_utils.barrier()
        return logits
    dist_utils.barrier()
    return cache.load_or_compute(key, compute)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None
