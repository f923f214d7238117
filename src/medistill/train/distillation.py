"""Training objectives: what one batch costs, as named loss terms (timm's ``task/distillation.py`` idea).

The loop stays generic: it hands each batch to an objective and back-propagates ``terms["loss"]``.

- :class:`SupervisedObjective`: the hard-label loss alone (teachers, students without KD).
- :class:`DistillationObjective`: :class:`~medistill.losses.kd.KDLoss`, the golden-tested KD-FMV form
  ``alpha * hard + (1 - alpha) * T^2 * soft(T)`` (+ a feature term), with the teachers' logits either computed
  online on the very view the student sees (consistent KD: same augmentation, same mixup / CutMix) or read from a
  cache computed once (offline KD, only when every view of an image is the same).

Both get the batch as loaded (``x_load``, at the largest input size of student and teachers) and give each model
its own size and normalisation (cross-resolution KD: the same crop, resized per model).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import combine_teacher_logits, gradcam_maps
from ..maps.attributions import attribution_maps
from ..models import InputConfig
from ..models.cam_layers import Grid, layer_by_name
from ..task import Task
from .checkpoint import unwrap
from .teacher import Teacher, adapt_input

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast speeds up convolutions."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16 or a CUDA GPU with bf16, else ``fp32``; others as given."""
    if precision != "auto":
        return precision
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def teacher_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for the teachers' forward at ``resolve_precision(device, precision)``. The teachers only infer,
    so their reduced precision never reaches a gradient."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_hooked(model: nn.Module, x: torch.Tensor, layers: list[str | None], *, detach: list[bool] | None = None
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(the outputs of ``layers`` as ``(B, C, h, w)`` maps, logits ``(B, L)``) in one forward pass; a layer named
    None is the model's declared CAM layer.

    ``detach[k]`` cuts the graph at layer k and makes its output a leaf that requires grad, so gradients of the
    logits reach it (Grad-CAM of a frozen teacher) without running through the network below it."""
    net = unwrap(model)
    detach = detach or [False] * len(layers)
    store: dict[int, torch.Tensor] = {}
    handles = []
    targets = [layer_by_name(net, name) for name in layers]
    for k, (module, _reshape) in enumerate(targets):
        def hook(_m: nn.Module, _i: Any, o: torch.Tensor, k: int = k) -> torch.Tensor | None:
            if detach[k]:
                o = o.detach().requires_grad_(True)
            store[k] = o
            return o if detach[k] else None
        handles.append(module.register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return [store[k] if r is None else r(store[k]) for k, (_m, r) in enumerate(targets)], logits


def features_and_logits(model: nn.Module, x: torch.Tensor, *, detach: bool = False, layer: str | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature map at ``layer`` (default: the model's CAM layer) ``(B, C, h, w)``, logits ``(B, L)``) in one
    forward pass; ``detach`` as in :func:`forward_hooked`."""
    (feat,), logits = forward_hooked(model, x, [layer], detach=[detach])
    return feat, logits


@dataclass
class Batch:
    """One training batch as the objective sees it."""

    x: torch.Tensor  # (B, C, S_load, S_load) normalised for the load input config
    target: torch.Tensor  # (B, L) float, maybe soft (label smoothing, mixup)
    mask: torch.Tensor  # (B, L) 1 = valid
    index: torch.Tensor  # (B,) dataset indices (for cached teacher outputs)
    mixed: bool = False  # mixup / CutMix changed x: cached teacher outputs no longer apply
    view: torch.Tensor | None = None  # (B,) view numbers of a view-cached run (cached consistent KD)


class SupervisedObjective(nn.Module):
    """The hard-label loss on the student's logits: ``{"loss", "hard"}``."""

    def __init__(self, hard: nn.Module, student_input: Callable[[torch.Tensor], torch.Tensor], *,
                 channels_last: bool = False):
        super().__init__()
        self.hard = hard
        self.student_input = student_input
        self.channels_last = channels_last

    def student_view(self, x_load: torch.Tensor) -> torch.Tensor:
        x = self.student_input(x_load)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(self.student_view(batch.x))
        hard = self.hard(logits.float(), batch.target, batch.mask)
        return {"loss": hard, "hard": hard}


@dataclass
class AttributionMaps:
    """The teacher's side of an explanation loss from pixel attributions instead of its Grad-CAM.

    e2KD and CAT-KD match the student's Grad-CAM to the teacher's, which only teaches where to look when the
    teacher's Grad-CAM finds the evidence. EfficientNet's does not on the phantom (every layer's pointing game is
    at chance, its peaks on the border) while its GradientShap maps point at the lesion (``benchmarks/
    explain_fidelity.py``). So the teacher's map of each label is its GradientShap attribution
    (:func:`medistill.maps.attributions.attribution_maps`: absolute values summed over channels, divided by the
    maximum), area-pooled to the student's map grid ``side``. ``background``: loaded training images ``(M, C, S,
    S)`` at the load size, normalised (GradientShap's baselines). One map costs ``samples`` forward and backward
    passes of the teacher, so these maps are only computed into a cache (offline KD or cached views), never per
    step. Draws are seeded (``seed``), so a cache is reproducible.
    """

    background: torch.Tensor
    side: int
    samples: int = 16
    seed: int = 0

    def __call__(self, model: nn.Module, x: torch.Tensor, background: torch.Tensor, labels: int) -> torch.Tensor:
        """Maps ``(B, labels, side, side)`` of ``model`` on its input ``x`` ``(B, C, H, W)``, ``background``
        adapted to the same input."""
        rows = x.repeat_interleave(labels, dim=0)  # image-major: (image 0, label 0), (image 0, label 1), ...
        maps = attribution_maps(model, rows, list(range(labels)) * len(x), method="gradientshap",
                                background=background, n_samples=self.samples, seed=self.seed,
                                batch_size=max(64, 4 * self.samples))  # (B * L, H, W) in [0, 1]
        pooled = F.adaptive_avg_pool2d(torch.from_numpy(maps)[:, None], self.side)[:, 0]
        return pooled.view(len(x), labels, self.side, self.side).to(x.device)


class DistillationObjective(SupervisedObjective):
    """:class:`~medistill.losses.kd.KDLoss` against one or several teachers:
    ``{"loss", "hard", "soft"[, "feature"][, "explain"]}``.

    ``map_layers``: (student, teacher) layer names the explanation maps come from, a tuple per model (None: the
    declared CAM layer; several layers: one map combined by ``map_combine``, ``"fuse"``
    (:func:`~medistill.maps.combine.fuse_maps`) or ``"poly"`` (:func:`~medistill.maps.combine.refine_maps`);
    :mod:`medistill.train.setup` picks both with ``distill.cam_layers``, the policy ``explain`` uses).
    ``cached``: the teachers' outputs by name (``"logits"``, and ``"maps"`` for an explanation loss): ``(N, V, ...)``
    on ``V`` replayed views of each training image (``V = 1``: offline KD; cached consistent KD, :mod:`.views`),
    read at each batch's ``view``, or None to run the teachers on each batch (online, consistent KD). ``map_grids``:
    (student, teacher) each map layer's cells on its model's input (:func:`medistill.models.cam_layers.chosen_grids`,
    traced once by :mod:`medistill.train.setup`), so that several layers' maps are combined where their cells sit
    (None: even tiling, as bilinear resizing assumes). ``attribution``: the
    teacher's maps from :class:`AttributionMaps` instead of its Grad-CAM (cached outputs only). The teachers are not
    submodules: their weights are neither trained nor saved with the student's resume state.
    """

    def __init__(self, kd: nn.Module, teachers: list[Teacher], load_in: InputConfig, task: Task,
                 student_input: Callable[[torch.Tensor], torch.Tensor], *, temperature: float,
                 precision: str = "fp32", cached: dict[str, torch.Tensor] | None = None,
                 channels_last: bool = False,
                 map_layers: tuple[tuple[str | None, ...], tuple[str | None, ...]] = ((None,), (None,)),
                 map_combine: str = "fuse", attribution: AttributionMaps | None = None,
                 map_grids: tuple[tuple[Grid | None, ...] | None, tuple[Grid | None, ...] | None] = (None, None)):
        super().__init__(kd.hard, student_input, channels_last=channels_last)
        self.kd = kd
        self._teachers = list(teachers)
        self.load_in = load_in
        self.task = task
        self.temperature = temperature
        self.precision = precision
        self.cached = cached
        self.map_layers = map_layers
        self.map_combine = map_combine
        self.map_grids = map_grids
        self.attribution = attribution

    @property
    def teachers(self) -> list[Teacher]:
        return self._teachers

    @property
    def needs_features(self) -> bool:
        return self.kd.feature is not None

    @property
    def needs_maps(self) -> bool:
        return self.kd.explanation is not None

    def teacher_outputs(self, x_load: torch.Tensor, *, need_features: bool = False, need_maps: bool = False
                        ) -> dict[str, torch.Tensor]:
        """The teachers' outputs on a loaded batch: ``"logits"`` ``(B, L)`` (several teachers combined at
        temperature T), and when asked the first teacher's CAM-layer ``"features"`` ``(B, C, h, w)`` and per-label
        ``"maps"`` ``(B, L, h, w)`` (Grad-CAM, or :class:`AttributionMaps` when set). Runs in the teacher precision,
        under ``inference_mode`` unless maps are needed (Grad-CAM's gradients run through the teacher's head
        only); results are plain tensors the student's loss can save for backward."""
        out: dict[str, torch.Tensor] = {}
        logits = []
        grad_ctx = torch.enable_grad() if need_maps else torch.inference_mode()
        with grad_ctx, teacher_autocast(x_load.device, self.precision):
            for i, tch in enumerate(self._teachers):
                xt = adapt_input(x_load, self.load_in, tch.input).contiguous(memory_format=torch.channels_last)
                cam = need_maps and i == 0 and self.attribution is None
                if (need_features and i == 0) or cam:
                    t_layers = list(self.map_layers[1]) if cam else []
                    layers = ([None] if need_features else []) + t_layers
                    # the graph is cut at the shallowest map layer (a frozen teacher); the deeper ones stay in it
                    feats, lg = forward_hooked(tch.model, xt, layers, detach=[False] * need_features + [
                        k == 0 for k in range(len(t_layers))])
                    if cam:
                        out["maps"] = gradcam_maps(feats[len(feats) - len(t_layers):], lg,
                                                   combine=self.map_combine,
                                                   grids=self.map_grids[1]).detach().float()
                    if need_features:
                        out["features"] = feats[0].detach().float().clone()
                else:
                    lg = tch.model(xt)
                if need_maps and i == 0 and self.attribution is not None:
                    bg = adapt_input(self.attribution.background.to(xt.device), self.load_in, tch.input)
                    with torch.autocast(xt.device.type, enabled=False):  # fp32: bf16 backward is no faster on CPU
                        out["maps"] = self.attribution(tch.model, xt.float(), bg.float(), lg.shape[1]).float()
                logits.append(lg.detach().float())
        if len(logits) > 1:
            out["logits"] = combine_teacher_logits(logits, [t.weight for t in self._teachers], task=self.task,
                                                   temperature=self.temperature)
        else:
            out["logits"] = logits[0].clone()
        return out

    def _cached_rows(self, batch: Batch) -> dict[str, torch.Tensor]:
        idx, view = batch.index.cpu(), batch.view.cpu()
        return {name: arr[idx, view].to(batch.x.device) for name, arr in self.cached.items()}

    def forward(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.student_view(batch.x)
        s_layers = list(self.map_layers[0]) if self.needs_maps else []
        layers = ([None] if self.needs_features else []) + s_layers
        feats, logits = forward_hooked(model, x, layers) if layers else ([], model(x))
        s_feat = feats[0] if self.needs_features else None
        if self.cached is not None and not batch.mixed and not self.needs_features:
            t = self._cached_rows(batch)
        else:
            t = self.teacher_outputs(batch.x, need_features=self.needs_features, need_maps=self.needs_maps)
        s_maps = gradcam_maps(feats[len(feats) - len(s_layers):], logits, create_graph=True,
                              combine=self.map_combine, grids=self.map_grids[0]) if s_layers else None
        return self.kd(logits.float(), t["logits"], batch.target, batch.mask,
                       student_features=s_feat.float() if self.needs_features else None,
                       teacher_features=t.get("features"), student_maps=s_maps, teacher_maps=t.get("maps"))

    def trainable(self) -> dict[str, nn.Module]:
        """Modules with parameters the optimiser trains besides the student (a FitNets projector), by name."""
        return {"objective": self.kd} if any(True for _ in self.kd.parameters()) else {}
