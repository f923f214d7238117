"""The training loop shared by ``medistill train`` (teachers, baseline students) and ``medistill distill``.

:func:`run_training` builds a :class:`Setup` (data, model, objective, optimiser: :func:`setup`), then runs epochs:
each batch is mixed when asked (:mod:`.mixing`), handed to the objective (:mod:`.distillation`: the hard loss, or
KD-FMV's ``alpha * hard + (1 - alpha) * T^2 * soft(T)``), and back-propagated; each epoch validates, appends
``history.csv`` and checkpoints (:mod:`.checkpoint`).

Determinism: data order, augmentation and mixing of epoch ``e`` come from seeds derived from ``(seed, e)``, so a
run resumed after a crash (even SIGKILL mid-epoch) reproduces the uninterrupted run exactly on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .. import runs
from ..config import ConfigError, RunConfig, validate
from ..evaluate.predict import predict, validation_metric
from ..utils.io import DiskFullError
from ..utils.runtime import resolve_device, seed_everything
from . import distributed as dist_utils
from .checkpoint import TrainingError, TrainState, load_state, save_state, unwrap, write_history
from .distillation import Batch, SupervisedObjective
from .mixing import Mixer, smooth_targets
from .setup import Setup, setup

log = logging.getLogger(__name__)

__all__ = ["Callbacks", "TrainingError", "predict", "run_training"]


@dataclass
class Callbacks:
    """Progress hooks for the CLI (library code itself never prints)."""

    on_epoch_start: Callable[[int, int], None] | None = None  # (epoch, batches)
    on_batch: Callable[[int, int, float], None] | None = None  # (epoch, batch, loss)
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None  # (epoch, row of history)
    on_message: Callable[[str], None] | None = None
    on_cache: Callable[[int, int, int, int], None] | None = None  # (view, views, images done, images) while caching


def run_training(cfg: RunConfig, *, resume: bool = False, callbacks: Callbacks | None = None) -> runs.RunDir:
    """Train (or, with a teacher configured, distil) a model as ``cfg`` says; returns its run directory."""
    cb = callbacks or Callbacks()
    validate(cfg)  # a config built in code is checked as one from a file or the command line is
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with dist_utils.process_group(device) as distributed:
        if distributed and device.type == "cuda":
            device = resolve_device("auto")

        # one process per run folder: a second training into the same --out is refused (runs.RunDir.lock)
        with runs.RunDir(cfg.out).lock() if dist_utils.is_main() else nullcontext():
            return _run(cfg, resume=resume, cb=cb, device=device, distributed=distributed)


def _run(cfg: RunConfig, *, resume: bool, cb: Callbacks, device: torch.device, distributed: bool) -> runs.RunDir:
    main = dist_utils.is_main()
    out = Path(cfg.out)
    has_state = (out / runs.STATE_FILE).is_file()
    if not resume and main and has_state:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not has_state:  # killed before its first checkpoint: nothing to resume, start cleanly
        log.info("--resume: %s has no %s yet (stopped before the first epoch ended); starting the run afresh",
                 out, runs.STATE_FILE)
        resume = False
    if resume:
        _check_resume_config(runs.RunDir(out), cfg)
    seed_everything(cfg.train.seed)
    run = runs.RunDir(out)
    if main:
        run = runs.RunDir.create(out, cfg, kind="distill" if cfg.distill.teacher or cfg.distill.teachers else "train",
                                 seed=cfg.train.seed, resumed=resume)
    dist_utils.barrier()
    with run.logging_to_file() if main else nullcontext():
        s = setup(cfg, run, device=device, distributed=distributed, main=main, cb=cb)
        if main:  # what evaluate's majority-class rate needs, without rebuilding the training split
            counts = (s.train_ds.targets * s.train_ds.masks).sum(axis=0)
            run.update_info(train_label_counts={lab: float(c) for lab, c in zip(s.labels, counts)})
        st = load_state(run, s.model, s.opt, s.sched, s.extra) if resume else TrainState()
        if resume:
            log.info("resumed %s after epoch %d (best %s %.4f)", out, st.epoch, s.task.main_metric, st.best)
        for epoch in range(st.epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            row = _train_epoch(cfg, s, epoch, device, distributed, cb)
            stop = False
            if main:
                stop = _end_epoch(cfg, s, st, run, row, epoch, t0, device, cb)
            else:
                st.epoch = epoch + 1
            if dist_utils.broadcast_flag(stop, device):
                break
        if main:
            _finish(cfg, s, st, run)
    dist_utils.barrier()
    return run


def _check_resume_config(run: runs.RunDir, cfg: RunConfig) -> None:
    """Refuse a resume whose epoch count differs from the run's: the learning-rate schedule (warm-up, cosine or
    step decay) was laid out over the original number of epochs, so silently changing it corrupts the run."""
    old = run.config().train.epochs
    if old != cfg.train.epochs:
        raise ConfigError(f"--resume: {run.path} was started with epochs={old}, now epochs={cfg.train.epochs}; its "
                          f"learning-rate schedule was made for {old} epochs. Resume with --epochs {old}, or start a "
                          f"new run (another --out, --weights {run.file(runs.LAST_WEIGHTS)}) to train longer")


def _train_epoch(cfg: RunConfig, s: Setup, epoch: int, device: torch.device, distributed: bool,
                 cb: Callbacks) -> dict[str, float]:
    """One pass over the training split; returns the epoch's mean loss terms (``train_<name>``) and the lr."""
    t = cfg.train
    seed_everything(t.seed * 100003 + epoch)  # augmentation, mixing, dropout and order of this epoch
    g = torch.Generator().manual_seed(t.seed * 100003 + epoch)
    sampler = (DistributedSampler(s.train_ds, shuffle=True, seed=t.seed + epoch) if distributed
               else RandomSampler(s.train_ds, generator=g))
    if distributed:
        sampler.set_epoch(epoch)
    if s.plan.cached:  # a ViewDataset: each image's view of this epoch
        s.train_ds.set_epoch(t.seed, epoch)
    loader = DataLoader(s.train_ds, batch_size=t.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=s.collate, drop_last=False, generator=g)
    if cb.on_epoch_start:
        cb.on_epoch_start(epoch, len(loader))
    # a view-cached run with mixing replays mixed views (the teacher's outputs are cached on them): no second mix
    mixer = Mixer() if s.plan.mixed else Mixer(t.mixup, t.cutmix, t.mix_prob)
    s.model.train()
    sums: dict[str, float] = {}
    n_seen = 0
    s.opt.zero_grad(set_to_none=True)
    for b, raw in enumerate(loader):
        x, y, m, lam = mixer(raw["image"].to(device, non_blocking=True), raw["target"].to(device),
                             raw["mask"].to(device))
        batch = Batch(x, smooth_targets(y, t.label_smoothing, s.task), m, raw["index"], mixed=lam != 1.0,
                      view=raw.get("view"))
        with torch.autocast(device.type, enabled=s.use_amp):
            terms = s.objective(s.model, batch)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1}, batch {b + 1} of {len(loader)} "
                                f"(terms: { {k: round(float(v.detach()), 4) for k, v in terms.items()} }); "
                                f"lower --lr, check the data, or use --max-grad-norm")
        s.scaler.scale(loss / t.grad_accum).backward()
        if (b + 1) % t.grad_accum == 0 or b + 1 == len(loader):
            if t.max_grad_norm:
                s.scaler.unscale_(s.opt)
                torch.nn.utils.clip_grad_norm_(s.params, t.max_grad_norm)
            s.scaler.step(s.opt)
            s.scaler.update()
            s.opt.zero_grad(set_to_none=True)
            s.sched.step()
            if s.ema is not None:
                s.ema.update(unwrap(s.model), step=s.sched.last_epoch)
        k = x.shape[0]
        n_seen += k
        for name, v in terms.items():
            sums[name] = sums.get(name, 0.0) + float(v.detach()) * k
        if cb.on_batch:
            cb.on_batch(epoch, b, float(loss.detach()))
    row: dict[str, float] = {"epoch": epoch + 1, **{f"train_{k}": dist_utils.all_reduce_mean(v / max(n_seen, 1), device)
                                                    for k, v in sums.items()}}
    row["lr"] = s.opt.param_groups[0]["lr"]
    return row


def _end_epoch(cfg: RunConfig, s: Setup, st: TrainState, run: runs.RunDir, row: dict[str, float], epoch: int,
               t0: float, device: torch.device, cb: Callbacks) -> bool:
    """Validate, record, checkpoint (rank 0); returns whether early stopping says stop."""
    t = cfg.train
    objective: SupervisedObjective = s.objective
    acc = predict(s.eval_model, s.val_loader, device, task=s.task, labels=s.labels,
                  transform=objective.student_input, channels_last=t.channels_last)
    a = acc.arrays()
    with torch.no_grad():
        row["val_loss"] = float(objective.hard(torch.from_numpy(a["logits"]).to(device),
                                               torch.from_numpy(a["targets"]).to(device),
                                               torch.from_numpy(a["mask"]).to(device)))
    name, value = validation_metric(acc)
    row[f"val_{name}"] = value
    row["seconds"] = time.perf_counter() - t0
    st.epoch = epoch + 1
    st.history.append(row)
    improved = not math.isnan(value) and value > st.best
    with _checkpoint(run, epoch):
        if improved or st.best_epoch < 0:
            st.best, st.best_epoch, st.stale = (value if not math.isnan(value) else st.best), epoch + 1, 0
            runs.save_model(run, s.eval_model, labels=s.labels, task=s.task.name, which="best")
        else:
            st.stale += 1
        write_history(run, st.history)
        save_state(run, s.model, s.opt, s.sched, st, s.extra, s.labels, s.task.name, weights=s.eval_model)
    log.info("epoch %d/%d: %s", epoch + 1, t.epochs, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
    if cb.on_epoch_end:
        cb.on_epoch_end(epoch, row)
    stop = t.early_stopping > 0 and st.stale >= t.early_stopping
    if stop:
        log.info("early stopping: no %s improvement for %d epochs", name, st.stale)
    return stop


@contextmanager
def _checkpoint(run: runs.RunDir, epoch: int) -> Iterator[None]:
    """One epoch's checkpoint (best and last weights, history, ``state.pt``). When the disk fills during the run's
    first one, the files it did write are removed: weights and a history without the state they belong to would
    look like a trained run. A later checkpoint leaves the previous ``state.pt``, which ``--resume`` continues
    from (redoing this epoch exactly), as after a crash."""
    names = (runs.BEST_WEIGHTS, runs.LAST_WEIGHTS, runs.HISTORY_FILE)
    had = {n for n in names if run.file(n).exists()}
    had_state = run.file(runs.STATE_FILE).is_file()
    try:
        yield
    except DiskFullError as e:
        if not had_state:
            for n in set(names) - had:
                run.file(n).unlink(missing_ok=True)
            raise DiskFullError(f"{e} (the run stopped in epoch {epoch + 1}, before its first checkpoint: nothing "
                                f"of it was kept)") from None
        raise DiskFullError(f"{e} (the run stopped in epoch {epoch + 1}; `--resume` continues it from its last "
                            f"checkpoint)") from None


#: a run whose last validation loss is this many times a constant answer's, with a best validation metric no better
#: than chance, is said to have diverged
DIVERGED_LOSS_FACTOR = 10.0


def divergence(history: list[dict[str, float]], best: float, task: Any, classes: int, chance: float,
               lr: float) -> str | None:
    """A sentence saying that training diverged, or None: the last epoch's validation loss (the hard loss on clean
    validation images) is over :data:`DIVERGED_LOSS_FACTOR` times that of a constant answer (ln 2 per label for
    multi-label, ln C for C classes) and the best validation metric ``best`` is within 0.05 of ``chance``. A run
    that merely overfits (a high loss, a good metric) is not flagged."""
    if not history:
        return None
    loss = history[-1].get("val_loss", float("nan"))
    constant = math.log(2) if task.multilabel else math.log(max(classes, 2))
    if math.isfinite(loss) and loss <= DIVERGED_LOSS_FACTOR * constant:
        return None
    if math.isfinite(best) and best > chance + 0.05:
        return None
    return (f"training seems to have diverged: the validation loss ended at {loss:.4g}, "
            f"{'far ' if math.isfinite(loss) else ''}above the {constant:.2f} of a constant answer, and the best "
            f"validation {task.main_metric} is {best:.3f}, no better than chance ({chance:.2f}); lower --lr (now "
            f"{lr:g}), use --warmup-epochs or --max-grad-norm")


def _finish(cfg: RunConfig, s: Setup, st: TrainState, run: runs.RunDir) -> None:
    name = s.task.main_metric
    record: dict[str, Any] = {"best_epoch": st.best_epoch, f"best_val_{name}": st.best, "epochs_run": st.epoch,
                              "finished": runs.now(), "world_size": dist_utils.world_size()}
    train: dict[str, Any] = {"best_epoch": st.best_epoch, f"best_val_{name}": st.best, "epochs_run": st.epoch}
    if s.task.multilabel:
        chance = 0.5  # macro AUC of a constant answer
    else:  # accuracy of always answering the training split's most frequent class
        counts = (s.train_ds.targets * s.train_ds.masks).sum(axis=0)
        chance = float(counts.max() / max(counts.sum(), 1))
    warning = divergence(st.history, st.best, s.task, len(s.labels), chance, cfg.train.lr)
    if warning:
        log.warning("%s", warning)
        record["warnings"] = train["warnings"] = [warning]
    if s.teacher_sources:
        record["teacher"] = str(Path(s.teacher_sources[0]).resolve())
        record["teachers"] = [str(Path(p).resolve()) for p in s.teacher_sources]
        record["distill_mode"] = s.plan.mode
        record["distill_plan"] = s.plan.record()
    # metrics first, run.json's "finished" last: a run whose records could not all be written (a full disk) does not
    # say it finished, and --resume writes them (its state.pt holds the last epoch)
    run.write_metrics({"train": train})
    run.update_info(**record)
