"""The config machinery, for any options dataclass: :func:`option` (a field and its help), :func:`build`
(defaults <- YAML file <- overrides), coercion to the declared types, validation, YAML and the named recipes.

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

from ..errors import MedistillError

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


def flat_dict(obj: Any) -> dict[str, Any]:
    """A config (dataclass or nested dict) as ``{dotted field: value}`` over its leaves."""
    out: dict[str, Any] = {}

    def walk(d: Any, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, "")
    return out


def differences(a: Any, b: Any, *, ignore: typing.Iterable[str] = ()) -> list[str]:
    """The dotted fields whose values differ between configs ``a`` and ``b`` (a field only one has counts),
    leaving out ``ignore``."""
    fa, fb = flat_dict(a), flat_dict(b)
    skip = set(ignore)
    return sorted(k for k in set(fa) | set(fb) if k not in skip and fa.get(k, _ABSENT) != fb.get(k, _ABSENT))


_ABSENT = object()


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


RECIPES = Path(__file__).resolve().parent.parent / "recipes"  # package data: medistill/recipes/*.yaml


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
