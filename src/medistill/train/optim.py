"""Optimiser and learning-rate schedule of a training run (``cfg.train``)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import RunConfig


def build_optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (Nesterov) as ``cfg.train.optimizer`` says."""
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)


def build_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, steps_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule as a LambdaLR (its state is just a step count, so resume is exact): linear warm-up for
    ``warmup_epochs``, then cosine to 0, step decay (x0.1 at 1/3 and 2/3 of training) or constant."""
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
        return 0.1 ** int(progress * 3)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
