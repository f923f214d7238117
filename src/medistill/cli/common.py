"""Helpers shared by subcommands: config flags generated from config dataclasses, progress, printing."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any, TypeVar

from ..config import FLAG_ALIASES, ConfigError, build, field_help, leaf_fields
from ..task import HEADLINE_METRICS, get_task
from ..utils.io import to_jsonable

T = TypeVar("T")


def flag_names(cls: type) -> dict[str, str]:
    """Dotted field -> flag. A leaf name unique across sections gets ``--leaf-name``; others ``--section.leaf``."""
    fields = leaf_fields(cls)
    leaves: dict[str, int] = {}
    for dotted in fields:
        leaves[dotted.rsplit(".", 1)[-1]] = leaves.get(dotted.rsplit(".", 1)[-1], 0) + 1
    out = {}
    for dotted in fields:
        leaf = dotted.rsplit(".", 1)[-1]
        out[dotted] = "--" + FLAG_ALIASES.get(dotted, leaf if leaves[leaf] == 1 else dotted).replace("_", "-")
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "A,B,..."
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return _type_name(args[0])
    return getattr(tp, "__name__", "VALUE").upper()


def _is_bool(tp: Any) -> bool:
    """``bool``, or a union holding it (``bool | Literal["auto"]``): a flag that reads as an on / off switch."""
    return tp is bool or bool in typing.get_args(tp)


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                    switches: bool = False) -> None:
    """``--config FILE.yaml``, ``--set KEY=VALUE`` and one flag per config field (overrides of the file).

    A bool field ``x`` gives ``--x`` and ``--no-x``; a list field takes its items after the flag. With
    ``switches`` (commands with positional arguments, which a flag must never swallow) ``--x`` takes no value and
    a list flag takes one value per use, repeatable (``--allow-host a --allow-host b``); otherwise ``--x`` may take
    one (``--cache false``) and a list flag takes several (``--labels A B`` or ``--labels A,B``).
    """
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML config file (command-line flags override it)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override any config field by its dotted name, e.g. --set train.lr=0.01")
    group = parser.add_argument_group("config fields (each overrides the YAML file)")
    fields = leaf_fields(cls)
    docs = field_help(cls)
    for dotted, flag in flag_names(cls).items():
        if dotted in skip:
            continue
        dest = "cfg__" + dotted.replace(".", "__")
        tp = fields[dotted]
        extra: dict[str, Any] = {"metavar": _type_name(tp)}
        if _is_bool(tp):
            extra = {"action": "store_const", "const": "true"} if switches else {**extra, "nargs": "?", "const": "true"}
        elif extra["metavar"] == "A,B,...":  # a list
            extra = {"action": _RepeatedValue, "metavar": "A"} if switches else \
                {"nargs": "+", "action": _ListValues, "metavar": "A"}
        group.add_argument(flag, dest=dest, default=argparse.SUPPRESS,
                           help=f"{docs.get(dotted, '')} ({dotted})".replace("%", "%%"), **extra)
        if _is_bool(tp) and not dotted.rsplit(".", 1)[-1].startswith("no_"):  # --no-sanity = --sanity false
            group.add_argument("--no-" + flag[2:], dest=dest, action="store_const", const="false",
                               default=argparse.SUPPRESS, help=f"= {flag} false")


class _ListValues(argparse.Action):
    """A list flag: one value is read as ``A,B,...`` (as ``--set`` reads it); several are the items as given."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


class _RepeatedValue(argparse.Action):
    """A list flag of a command with positional arguments: one item per use, as given (commas included)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), values])


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in vars(args).items():
        if k.startswith("cfg__"):
            out[k[5:].replace("__", ".")] = v
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def config_from_args(cls: type[T], args: argparse.Namespace, *, base: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> T:
    """Defaults <- ``base`` <- ``--config`` file <- ``extra`` <- flags / ``--set``."""
    overrides = {**(extra or {}), **overrides_from_args(args)}
    return build(cls, file=getattr(args, "config", None), overrides=overrides, base=base)


def print_json(obj: Any) -> None:
    json.dump(to_jsonable(obj), sys.stdout, indent=2)
    sys.stdout.write("\n")


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr (CLI only; library code takes a callback instead): done / total, rate and ETA."""
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, disable=None, **kwargs)  # disable=None: off when not a terminal


class StageBars:
    """``callback(stage, done, total)`` -> one progress bar per stage, in images (images/s and ETA); a library
    function's ``progress`` argument for several passes (evaluate: val, then test)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            for other in self.bars.values():
                other.close()
            bar = self.bars[stage] = progress(total=total, desc=f"{self.prefix}{stage}", unit="img", leave=False)
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def metrics_text(m: dict[str, Any]) -> str:
    """``Accuracy 0.9100, macro F1 0.9000, macro AUC 0.9800``: the task's main metric first (``Task.main_metric``,
    the one rule every table follows), then the other headline metrics present in ``m`` (a metrics.json)."""
    task = get_task(m.get("task"), default="multilabel")

    def value(key: str) -> str:
        v = m.get(key)
        return "n/a" if v is None or v != v else f"{v:.4f}"

    main, *others = task.headline_metrics
    parts = [f"{task.main_metric_title} {value(main)}"]
    parts += [f"{HEADLINE_METRICS[k]} {value(k)}" + (f" (always {m['majority_class']!r}; chance {m['chance']:.4f})"
                                                    if k == "majority_rate" and "majority_class" in m
                                                    and "chance" in m else "")
              for k in others if m.get(k) is not None]
    return ", ".join(parts)
