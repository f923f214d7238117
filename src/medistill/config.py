"""Typed configuration: plain YAML data loaded into dataclasses.

Every command has one options dataclass (training runs: one made of sections ``data``, ``model``, ``train`` ...).
Each field is declared with :func:`option`, which keeps its help text in the field's metadata; the CLI generates one
flag per field from it (``cli/common.py``). A config is built from defaults, then a YAML file (``yaml.safe_load``
only; YAML never imports or calls code), then command-line overrides. Unknown keys are errors that name the key and
list the valid ones; values are coerced to the field's declared type and checked by each section's ``validate``.

Why our own coercer (``_coerce``) rather than pydantic: pydantic is not a dependency of the core package (only of
the ``serve`` extra, through FastAPI), and its messages would have to be rewritten to name the key and the valid
keys as these do.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from .errors import MedistillError

T = TypeVar("T")


class ConfigError(MedistillError):
    """A config value, key or file is wrong; the message names it and says what was expected."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose help text (its ``--flag``'s help) is ``metadata["help"]``, read at run time::

        image_size: int = option(128, "side of the square model input, in pixels")
        views: list[str] = option(factory=list, help="keep only these views; [] = all")
    """
    meta = {"help": help}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_help(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted name -> help text (``option``'s ``metadata["help"]``) of every leaf field of a config dataclass."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        dotted = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            out.update(field_help(tp, dotted + "."))
        else:
            out[dotted] = str(f.metadata.get("help", ""))
    return out


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` (from YAML or the command line) to type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: got {value!r}, expected one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: got {value!r}, expected a list")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: got {value!r}, expected a mapping of {tp.__name__} fields")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where}: got {value!r}, expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: got {value!r}, expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{where}: got {value!r}, expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: got {value!r}, expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: got {value!r}, expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: got {value!r}, expected a string")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: got {value!r}, expected a path")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise ConfigError naming the valid keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(f"unknown config key {key!r}; valid keys{' of ' + where if where else ''}: "
                          f"{', '.join(sorted(types_))}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate(obj, where)
    return obj


def validate(obj: Any, where: str = "") -> None:
    """Run ``validate()`` of ``obj`` and of every nested section, prefixing errors with their path."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, f"{where}.{f.name}" if where else f.name)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML-safe) form of a config."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def leaf_fields(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted name -> type for every leaf field of a (nested) config dataclass."""
    out: dict[str, Any] = {}
    for name, tp in _field_types(cls).items():
        dotted = f"{prefix}.{name}" if prefix else name
        if _is_dataclass_type(tp):
            out.update(leaf_fields(tp, dotted))
        else:
            out[dotted] = tp
    return out


def _deep_set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a section")
        d = nxt
    d[parts[-1]] = value


RECIPES = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """A built-in recipe (``medistill/recipes/<name>.yaml``): plain config values, read with ``yaml.safe_load``."""
    path = RECIPES / f"{name}.yaml"
    if name not in recipe_names():
        raise ConfigError(f"recipe: got {name!r}, expected one of {recipe_names()}")
    return load_yaml(path)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (update wins)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def build(cls: type[T], *, file: str | Path | None = None, overrides: dict[str, Any] | None = None,
          base: dict[str, Any] | None = None) -> T:
    """Defaults <- ``base`` <- YAML ``file`` <- dotted ``overrides`` (``{"train.epochs": "3"}``)."""
    data: dict[str, Any] = dict(base or {})
    if file is not None:
        data = merge(data, load_yaml(file))
    recipe = (overrides or {}).get("recipe", data.get("recipe"))
    if recipe and any(f.name == "recipe" for f in dataclasses.fields(cls)):
        data = merge(load_recipe(str(recipe)), data)
    from_file, data = data, copy.deepcopy(data)  # overrides are set into the copy
    fields = leaf_fields(cls)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(fields))}")
        if isinstance(value, str) and typing.get_origin(fields[key]) not in (list, tuple) and fields[key] is not str:
            # a command-line string such as "0.1", "null" or "[1, 2]" is read as YAML, then type-checked
            raw = value
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            value = value if parsed is None and "null" not in value.lower() and value.strip() else parsed
            if value is not None and set(typing.get_args(fields[key])) == {str, type(None)}:
                value = raw  # an optional string (a path, a name) stays as typed: --out 1e3 is "1e3", not 1000.0
        _deep_set(data, key, value)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        if file is not None and _same_error(cls, from_file, e):  # the file's fault, not a flag's: name the file
            raise ConfigError(f"{file}: {e}") from None
        raise


def _same_error(cls: type, data: dict[str, Any], error: ConfigError) -> bool:
    """Whether building ``cls`` from ``data`` alone raises the same message as ``error``."""
    try:
        from_dict(cls, data)
    except ConfigError as e:
        return str(e) == str(error)
    return False


def check_range(name: str, value: float | int | None, lo: float | None = None, hi: float | None = None,
                *, lo_open: bool = False) -> None:
    """Raise ConfigError unless lo <= value <= hi (lo < value when lo_open)."""
    if value is None:
        return
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)
    if bad:
        lo_s = "-inf" if lo is None else f"{lo}"
        hi_s = "inf" if hi is None else f"{hi}"
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{name}: got {value!r}, expected a value in {bracket}{lo_s}, {hi_s}]")


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name}: got {value!r}, expected one of {choices}")


# ---------------------------------------------------------------------------------------------------------
# The sections shared by train / distill / evaluate / quickstart. Each field has its help text; ``validate``
# checks ranges so a bad value fails before any work starts.
# ---------------------------------------------------------------------------------------------------------

#: Command-line flags that read better than the generated ``--leaf-name`` (dotted field -> flag without dashes).
FLAG_ALIASES = {"model.name": "model"}

DATASETS = ("phantom", "nih", "chexpert", "padchest", "medmnist", "folder")


@dataclasses.dataclass
class DataConfig:
    dataset: str = option("phantom", "one of DATASETS")
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
    skip_unreadable: bool = option(False, "drop unreadable images (and report how many) instead of failing")
    cache: bool = option(True, "decode each image once into a uint8 memory-mapped cache at image_size")
    cache_dir: str | None = option(
        None, "where the cache lives; None = $MEDISTILL_CACHE/images, else ~/.cache/medistill/images")
    augment: str = option("light", "train-time augmentation: none, light, strong")
    num_workers: int = option(0, "DataLoader worker processes")

    def validate(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_range("image_size", self.image_size, 8, 2048)
        check_range("limit", self.limit, 1)
        check_range("val_fraction", self.val_fraction, 0.0, 0.9)
        check_range("test_fraction", self.test_fraction, 0.0, 0.9)
        check_choice("uncertainty", self.uncertainty, ("ignore", "ones", "zeros", "mixed"))
        check_choice("blank", self.blank, ("negative", "ignore"))
        check_choice("augment", self.augment, ("none", "light", "strong"))
        check_range("num_workers", self.num_workers, 0, 64)
        if self.group_by is not None:
            import re

            if self.dataset != "folder":
                raise ConfigError(f"group_by: only folder datasets take a grouping (dataset is {self.dataset!r}, "
                                  f"whose table names its patients)")
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
    channels_last: bool = option(False, "NHWC memory format")
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
    temperature: float = option(4.0, "softening temperature T")
    feature: str = option("none", "feature distillation: none, fitnets (1x1 projector hint), attention (AT)")
    feature_weight: float = option(1.0, "weight of the feature term")
    teacher_image_size: int | None = option(None, "teacher input size when it differs from the student's")
    cache_teacher: str = option("auto", "cache teacher logits once: auto (when augmentation allows), true, false")
    teacher_precision: str = option(
        "auto", "teacher forward: auto (bf16 on CPUs with native bf16, else fp32), fp32, bf16")
    teacher_views: int = option(0, "cached consistent KD (FKD): the teacher's outputs on this many augmented views "
                                   "per image are computed once and replayed, one view per image each epoch; 0 = off")
    teacher_views_dir: str | None = option(None, "where the view cache lives (share it between student seeds); "
                                                 "None = the run directory")
    explain_loss: str = option("none", "explanation-aware KD on per-label Grad-CAM maps: none, e2kd (map similarity, "
                                       "Parchami-Araghi et al. 2024), cat (class attention transfer, Guo et al. 2023)")
    explain_weight: float = option(1.0, "weight of the explanation term")
    cat_pool: int = option(2, "CAT-KD: side of the pooled class activation maps")

    def validate(self) -> None:
        check_choice("kd", self.kd, ("auto", "kl", "bce", "mse"))
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("temperature", self.temperature, 0.0, 100.0, lo_open=True)
        check_choice("feature", self.feature, ("none", "fitnets", "attention"))
        check_range("teacher_image_size", self.teacher_image_size, 8, 2048)
        check_choice("cache_teacher", self.cache_teacher, ("auto", "true", "false"))
        check_choice("teacher_precision", self.teacher_precision, ("auto", "fp32", "bf16"))
        check_range("teacher_views", self.teacher_views, 0, 1000)
        check_choice("explain_loss", self.explain_loss, ("none", "e2kd", "cat"))
        check_range("explain_weight", self.explain_weight, 0.0, 1e6)
        check_range("cat_pool", self.cat_pool, 1, 64)
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
