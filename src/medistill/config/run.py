"""The configs of a training or distillation run: sections ``data``, ``model``, ``train``, ``distill`` and
:class:`RunConfig` holding them (saved resolved as ``config.yaml`` in the run directory). Each field is declared
with :func:`~medistill.config.core.option` (its help text); ``validate`` checks ranges so that a bad value fails
before any work starts.
"""

from __future__ import annotations

import dataclasses
import re

from ..cam_policy import CAM_LAYER_POLICIES, DEFAULT_CAM_LAYERS, DEFAULT_CAM_MIN_SIZE
from ..datasets import DATASETS, SOURCES, taking
from .core import ConfigError, check_choice, check_range, option

# ---------------------------------------------------------------------------------------------------------
# The sections shared by train / distill / evaluate / quickstart. Each field has its help text; ``validate``
# checks ranges so a bad value fails before any work starts.
# ---------------------------------------------------------------------------------------------------------

#: Command-line flags that read better than the generated ``--leaf-name`` (dotted field -> flag without dashes).
FLAG_ALIASES = {"model.name": "model"}

#: fields of a run's config that change where or how fast it runs, not what it learns: two runs that differ only in
#: these (and ``train.seed``) are seeds of one recipe (``medistill compare`` pools only such runs)
NOT_RECIPE = ("out", "recipe", "train.seed", "train.threads", "train.device", "data.num_workers", "data.cache",
              "data.cache_dir", "distill.teacher_views_dir", "train.amp")


@dataclasses.dataclass
class DataConfig:
    dataset: str = option("phantom", f"one of {', '.join(DATASETS)}")
    root: str | None = option(None, "dataset folder (or the .npz file for medmnist); phantom generates into it")
    image_size: int = option(128, "side of the square model input, in pixels")
    limit: int | None = option(None, "cap on images per split (smoke runs); None = all")
    split_seed: int = option(0, "seed of patient-wise / stratified splits when no official split exists")
    val_fraction: float = option(0.1, "validation share when the source has no validation split")
    test_fraction: float = option(0.2, "test share when the source has no test split")
    views: list[str] = option(factory=list, help="keep only these views (PA, AP, ...); [] = all")
    frontal_only: bool = option(False, "CheXpert: frontal images only")
    uncertainty: str = option(
        "ignore", "CheXpert -1 labels: ignore (masked), ones, zeros, mixed (U-Ones/U-Zeros per label)")
    blank: str = option("negative", "CheXpert blank (unmentioned) labels: negative (0, mask 1) or ignore (mask 0)")
    labels: list[str] = option(factory=list, help="label subset/order; [] = the source's default")
    group_by: str | None = option(
        None, "folder datasets: a regular expression whose first capture group names the patient or study in each "
              "file name (e.g. '^(\\d+)_' for 1234_left.jpg / 1234_right.jpg); images of one group stay in one "
              "split and count as one patient; None = each image is its own patient")
    group_similar: float | None = option(
        None, "folder datasets without patient names: images whose 48 px grey thumbnails correlate at this value or "
              "more (e.g. 0.98) are one group, as are their neighbours' (the slices of one scan); groups stay in one "
              "split and count as one patient (data inspect shows split folders that share one); None = off")
    resplit: bool = option(
        False, "folder datasets: ignore the split folders and draw train / val / test (test_fraction, val_fraction) "
               "by patient or group, stratified by class: for folders whose official splits share patients (data "
               "inspect's patient overlap, e.g. the Kaggle Alzheimer MRI set with group_similar)")
    drop_near_copies: float | None = option(
        None, "folder datasets: leave out validation and test images whose nearest training image's 48 px grey "
              "thumbnail correlates at this value or more (e.g. 0.98: a copy of a training image, so a score on it "
              "measures memory; data inspect counts them); None = keep every image")
    skip_unreadable: bool = option(False, "drop unreadable images (and report how many) instead of failing")
    cache: bool = option(True, "decode each image once into a uint8 memory-mapped cache at image_size")
    cache_dir: str | None = option(
        None, "where the cache lives; None = $MEDISTILL_CACHE/images, else ~/.cache/medistill/images")
    augment: str = option("light", "train-time augmentation: none, light, strong")
    num_workers: int = option(0, "DataLoader worker processes")

    def validate(self) -> None:
        check_choice("dataset", self.dataset, SOURCES)
        source = SOURCES[self.dataset]  # what it takes is the registry's answer, never a test of its name
        check_range("image_size", self.image_size, 8, 2048)
        check_range("limit", self.limit, 1)
        check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        check_range("test_fraction", self.test_fraction, 0.0, 0.9)
        check_choice("uncertainty", self.uncertainty, ("ignore", "ones", "zeros", "mixed"))
        check_choice("blank", self.blank, ("negative", "ignore"))
        check_choice("augment", self.augment, ("none", "light", "strong"))
        check_range("num_workers", self.num_workers, 0, 64)
        if self.group_similar is not None:
            check_range("group_similar", self.group_similar, 0.5, 0.9999)
            if not source.takes("group_similar"):
                raise ConfigError(f"group_similar: only {taking('group_similar')} datasets take a grouping (dataset is "
                                  f"{self.dataset!r}, whose table names its patients)")
            if self.group_by is not None:
                raise ConfigError(f"group_similar: give either group_by ({self.group_by!r}) or group_similar "
                                  f"({self.group_similar}), not both")
        if self.resplit and not source.takes("resplit"):
            raise ConfigError(f"resplit: only {taking('resplit')} datasets (dataset is {self.dataset!r}, whose source "
                              f"defines or draws its own splits by patient)")
        if self.drop_near_copies is not None:
            check_range("drop_near_copies", self.drop_near_copies, 0.5, 0.9999)
            if not source.takes("drop_near_copies"):
                raise ConfigError(f"drop_near_copies: only {taking('drop_near_copies')} datasets (dataset is "
                                  f"{self.dataset!r})")
        if self.group_by is not None:
            if not source.takes("group_by"):
                raise ConfigError(f"group_by: only {taking('group_by')} datasets take a grouping (dataset is "
                                  f"{self.dataset!r}, whose table names its patients)")
            try:
                groups = re.compile(self.group_by).groups
            except re.error as e:
                raise ConfigError(f"group_by: {self.group_by!r} is not a valid regular expression ({e})") from None
            if groups < 1:
                raise ConfigError(f"group_by: {self.group_by!r} has no capture group; expected one in parentheses "
                                  f"that names the patient, e.g. '^(\\d+)_'")


@dataclasses.dataclass
class ModelConfig:
    name: str = option("eeea_net_c2", "a medistill model (eeea_net_c2, kdfmv, tiny_cnn) or any timm model name")
    pretrained: bool = option(False, "load ImageNet weights (offline only where a package ships them)")
    weights: str | None = option(None, "a local .safetensors or torch state-dict file to start from")
    drop_rate: float = option(0.2, "dropout before the classifier")
    in_chans: int | str = option(
        "auto", "input channels: auto (follow the data: 3 when a sample of the training images is colour, else 1; "
                "a distilled student takes its teacher's), 1 for grayscale X-ray / MRI, 3 for colour (fundus, skin)")

    def validate(self) -> None:
        if self.in_chans not in ("auto", 1, 3):
            raise ConfigError(f"in_chans: got {self.in_chans!r}, expected one of [1, 3] or 'auto'")
        if not self.name:
            raise ConfigError("name: expected a model name, got an empty string")
        check_range("drop_rate", self.drop_rate, 0.0, 0.99)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = option(10, "passes over the training split")
    batch_size: int = option(32, "images per optimisation step (per process under torchrun)")
    lr: float = option(1e-3, "peak learning rate")
    optimizer: str = option("adamw", "adamw, adam, sgd")
    weight_decay: float = option(1e-4, "decoupled weight decay (adamw) or L2 (sgd, adam)")
    momentum: float = option(0.9, "sgd momentum")
    scheduler: str = option("cosine", "cosine, step, none")
    warmup_epochs: int = option(0, "linear warm-up epochs before the schedule")
    loss: str = option("auto", "hard-label loss: auto (bce for multi-label, ce for single-label), bce, focal, ce")
    focal_gamma: float = option(2.0, "focusing parameter of the focal loss")
    class_weights: bool = option(False, "weight CE / BCE by inverse class frequency (imbalanced sets)")
    amp: bool = option(False, "mixed precision (CUDA only; ignored on CPU)")
    channels_last: bool = option(True, "NHWC memory format for the student (on this project's CPU a training step "
                                       "of kdfmv / eeea_net_c2 / resnet10t takes 0.65-0.85x the NCHW time: "
                                       "benchmarks/results/cpu_speed.md); the teachers always infer in NHWC")
    grad_accum: int = option(1, "micro-batches accumulated per optimiser step")
    max_grad_norm: float | None = option(None, "clip gradients to this norm")
    early_stopping: int = option(0, "stop after this many epochs without validation improvement; 0 = off")
    seed: int = option(0, "seed of weights, data order and augmentation")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    threads: int | None = option(None, "torch CPU threads; None = torch's default")
    label_smoothing: float = option(0.0, "hard targets y -> y (1 - e) + e / K (K = classes, or 2 per label)")
    mixup: float = option(0.0, "mixup Beta(a, a) parameter (Zhang et al. 2018); 0 = off")
    cutmix: float = option(
        0.0, "CutMix Beta(a, a) parameter (Yun et al. 2019); 0 = off; with mixup, one of the two per batch")
    mix_prob: float = option(1.0, "share of batches that are mixed when mixup or cutmix is on")
    ema_decay: float = option(0.0, "exponential moving average of the weights (e.g. 0.999, with warm-up): validation "
                                   "and the saved weights are the average's; 0 = off")

    def validate(self) -> None:
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_range("mixup", self.mixup, 0.0, 10.0)
        check_range("cutmix", self.cutmix, 0.0, 10.0)
        check_range("mix_prob", self.mix_prob, 0.0, 1.0)
        check_range("ema_decay", self.ema_decay, 0.0, 0.99999)
        check_range("epochs", self.epochs, 1, 100000)
        check_range("batch_size", self.batch_size, 1, 65536)
        check_range("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_choice("optimizer", self.optimizer, ("adamw", "adam", "sgd"))
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice("scheduler", self.scheduler, ("cosine", "step", "none"))
        check_range("warmup_epochs", self.warmup_epochs, 0)
        check_choice("loss", self.loss, ("auto", "bce", "focal", "ce"))
        check_range("grad_accum", self.grad_accum, 1, 1024)
        check_range("early_stopping", self.early_stopping, 0)


@dataclasses.dataclass
class DistillConfig:
    teacher: str | None = option(None, "teacher run directory or checkpoint file")
    teachers: list[str] = option(factory=list, help="several teachers: soft targets averaged")
    teacher_weights: list[float] = option(factory=list, help="weights of `teachers`; [] = equal")
    teacher_model: str | None = option(None, "architecture of a bare checkpoint (a run directory knows its own)")
    kd: str = option("auto", "soft loss: auto (softmax KL single-label, binary KL multi-label), kl, bce, mse")
    alpha: float = option(0.5, "weight of the hard-label loss; (1 - alpha) * T^2 weights the soft loss")
    temperature: float | None = option(
        None, "softening temperature T; None = the task's default (4 single-label, Hinton et al. 2015; 1 multi-label, "
              "where T = 4 flattens every label's sigmoid towards 0.5)")
    feature: str = option("none", "feature distillation: none, fitnets (1x1 projector hint), attention (AT)")
    feature_weight: float = option(1.0, "weight of the feature term")
    teacher_image_size: int | None = option(None, "teacher input size when it differs from the student's")
    cache_teacher: str = option("auto", "cache teacher logits once: auto (when augmentation allows), true, false")
    teacher_precision: str = option(
        "auto", "teacher forward: auto (bf16 on CPUs with native bf16, else fp32), fp32, bf16")
    teacher_views: int = option(0, "cached consistent KD (FKD): the teacher's outputs on this many augmented views "
                                   "per image (mixed with a partner image's when mixup / CutMix is on) are computed "
                                   "once and replayed, one view per image each epoch; 0 = off")
    teacher_views_dir: str | None = option(None, "where the view cache lives, offline KD's one-view cache too when "
                                                 "set (share it between student seeds); None = the run directory")
    explain_loss: str = option("none", "explanation-aware KD on per-label Grad-CAM maps: none, e2kd (map similarity, "
                                       "Parchami-Araghi et al. 2024), cat (class attention transfer, Guo et al. 2023)")
    explain_weight: float = option(1.0, "weight of the explanation term")
    explain_teacher_maps: str = option(
        "gradcam", "the teacher's side of the explanation loss: gradcam (its Grad-CAM, as e2KD and CAT-KD do) or "
                   "gradientshap (its GradientShap attributions area-pooled to the student's map grid: for a "
                   "teacher whose Grad-CAM does not find the evidence; computed once, so the teacher's outputs "
                   "must be cached: augment none, or teacher_views)")
    explain_teacher_samples: int = option(16, "gradientshap teacher maps: random points per image")
    explain_labels: str = option("all", "e2kd on multi-label data: all (every valid label) or predicted (only the "
                                        "labels the teacher predicts present, as e2KD explains the teacher's "
                                        "prediction; single-label data always explains the teacher's class)")
    cat_pool: int = option(2, "CAT-KD: side of the pooled class activation maps")
    cam_layers: str = option(DEFAULT_CAM_LAYERS, "explanation losses: which layer each model's maps come from, the "
                                                 "policy explain's --cam-layers uses: auto (the deepest feature "
                                                 "stage at least cam_min_size px a side), fuse (that stage and "
                                                 "every deeper one, their maps fused), poly (the same stages, the "
                                                 "deepest map refined by the finer ones: Poly-CAM) or model (the "
                                                 "declared layer)")
    cam_min_size: int = option(DEFAULT_CAM_MIN_SIZE, "explanation losses, cam_layers auto / fuse / poly: the "
                                                     "smallest map side accepted (explain's --cam-min-size; a finer "
                                                     "map can point at smaller lesions)")

    def validate(self) -> None:
        check_choice("kd", self.kd, ("auto", "kl", "bce", "mse"))
        check_range("alpha", self.alpha, 0.0, 1.0)
        if self.temperature is not None:
            check_range("temperature", self.temperature, 0.0, 100.0, lo_open=True)
        check_choice("feature", self.feature, ("none", "fitnets", "attention"))
        check_range("teacher_image_size", self.teacher_image_size, 8, 2048)
        check_choice("cache_teacher", self.cache_teacher, ("auto", "true", "false"))
        check_choice("teacher_precision", self.teacher_precision, ("auto", "fp32", "bf16"))
        check_range("teacher_views", self.teacher_views, 0, 1000)
        check_choice("explain_loss", self.explain_loss, ("none", "e2kd", "cat"))
        check_range("explain_weight", self.explain_weight, 0.0, 1e6)
        check_choice("explain_teacher_maps", self.explain_teacher_maps, ("gradcam", "gradientshap"))
        check_range("explain_teacher_samples", self.explain_teacher_samples, 1, 4096)
        check_choice("explain_labels", self.explain_labels, ("all", "predicted"))
        check_range("cat_pool", self.cat_pool, 1, 64)
        check_choice("cam_layers", self.cam_layers, CAM_LAYER_POLICIES)
        check_range("cam_min_size", self.cam_min_size, 1, 2048)
        if self.teacher_weights and len(self.teacher_weights) != len(self.teachers):
            raise ConfigError(f"teacher_weights: got {len(self.teacher_weights)} weights for "
                              f"{len(self.teachers)} teachers, expected one per teacher")


@dataclasses.dataclass
class RunConfig:
    """Everything a training or distillation run needs; saved resolved as ``config.yaml`` in the run dir."""

    out: str = option("runs/run", "run directory")
    recipe: str | None = option(None, "a named recipe under the YAML file and the flags (they override it): "
                                      "finetune (pretrained), scratch, distill (patient, consistent, cached KD)")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    @property
    def teacher_sources(self) -> list[str]:
        """Every teacher the run distils from (``distill.teacher`` first, then ``distill.teachers``)."""
        return ([self.distill.teacher] if self.distill.teacher else []) + list(self.distill.teachers)

    def distill_mode(self) -> tuple[str, str]:
        """How the teachers' outputs reach the student, decided from the config alone: ``(mode, why)``, mode one
        of ``none`` (no teacher), ``offline`` (every view of an image is the same: the outputs are cached once, one
        view), ``views`` (``teacher_views`` > 0 with augmentation or mixing: the outputs on V replayed, maybe mixed,
        views are cached once: FKD / function matching) or ``online`` (the teachers run on each batch, on the view
        the student sees). ConfigError for combinations that cannot work, so that ``validate`` refuses them before
        any work starts."""
        t, d = self.train, self.distill
        if not self.teacher_sources:
            return "none", "no teacher"
        mixing = t.mixup > 0 or t.cutmix > 0
        varies = self.data.augment != "none" or mixing
        if d.teacher_views > 0:
            for bad, why in ((d.feature != "none", "the feature term needs the teacher's feature maps every step"),
                             (d.cache_teacher == "false", "cache_teacher is false")):
                if bad:
                    raise ConfigError(f"teacher_views {d.teacher_views}: the teacher's outputs cannot be cached, "
                                      f"{why}; set --teacher-views 0 for online KD")
            if varies:
                return "views", (f"the teacher's outputs on {d.teacher_views} {'mixed ' if mixing else ''}views per "
                                 f"image are cached once and replayed, one view per image each epoch")
        reason = None
        if self.data.augment != "none":
            reason = f"augmentation '{self.data.augment}' changes each view, so the teacher must see it"
        elif mixing:
            reason = "mixup / CutMix make new images, so the teacher must see them"
        elif d.feature != "none":
            reason = "the feature term needs the teacher's feature maps every step"
        if d.cache_teacher == "false":
            reason = "cache_teacher is false"
        elif d.cache_teacher == "true" and reason:
            raise ConfigError(f"cache_teacher true: cannot cache teacher outputs, {reason}")
        if reason is None:
            return "offline", "every view of an image is the same: the teacher's outputs are cached once"
        if d.explain_loss != "none" and d.explain_teacher_maps == "gradientshap":
            raise ConfigError(f"explain_teacher_maps gradientshap: the teacher's attributions are computed once into "
                              f"a cache, but its outputs cannot be cached here ({reason}); set data.augment none, "
                              f"or distill.teacher_views > 0 to cache them on replayed views")
        return "online", reason

    def validate(self) -> None:
        """Checks across sections (each section checks its own fields first)."""
        self.distill_mode()
