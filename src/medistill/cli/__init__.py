"""The ``medistill`` command line: one entry point, one module per subcommand under ``medistill.cli``.

Each subcommand module defines ``register(subparsers)`` (its arguments) and ``run(args) -> int``; heavy imports
happen inside ``run`` so that ``medistill --help`` stays fast and ``medistill predict`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module under medistill.cli
COMMANDS = {
    "data": "data",
    "train": "train",
    "distill": "distill",
    "evaluate": "evaluate",
    "compare": "compare",
    "explain": "explain",
    "export": "export",
    "predict": "predict",
    "benchmark": "benchmark",
    "report": "report",
    "serve": "serve",
    "quickstart": "quickstart",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medistill",
        description="Distil large medical image classifiers into small on-device models, and explain them.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"medistill.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"medistill.cli.{module}":
                raise
            continue  # subcommand not built yet
        mod.register(sub)
    for leaf in _leaf_parsers(parser):
        if not any("--config" in a.option_strings for a in leaf._actions):
            leaf.add_argument("--config", metavar="FILE.yaml",
                              help="YAML file of this command's options by name (e.g. batch_size: 8); "
                                   "flags on the command line win")
            leaf.set_defaults(_options_parser=leaf)
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub)command parser that has no subcommands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    out: list[argparse.ArgumentParser] = []
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            out.extend(_leaf_parsers(child))
    return out


def _apply_options_file(parser: argparse.ArgumentParser, args: argparse.Namespace,
                        argv: list[str] | None) -> argparse.Namespace:
    """``--config`` of commands without a config dataclass: YAML keys are the command's option names.

    Values become the options' defaults and the command line is parsed again, so flags given there win and
    every value goes through the option's own type check. Unknown keys are errors naming the valid ones.
    """
    from ..config import ConfigError, load_yaml

    leaf: argparse.ArgumentParser = args._options_parser
    options = {a.dest: a for a in leaf._actions if a.option_strings and a.dest not in ("help", "config")
               and not a.dest.startswith("_")}
    values = {}
    for key, value in load_yaml(args.config).items():
        dest = str(key).replace("-", "_")
        if dest not in options:
            raise ConfigError(f"{args.config}: unknown key {key!r}; valid keys: {', '.join(sorted(options))}")
        action = options[dest]
        is_flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if is_flag and not isinstance(value, bool):
            raise ConfigError(f"{args.config}: {key}: got {value!r}, expected true or false")
        values[dest] = value if is_flag or isinstance(value, list) or value is None else str(value)
    leaf.set_defaults(**values)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..errors import MedistillError

    if getattr(args, "_options_parser", None) is not None and getattr(args, "config", None):
        try:
            args = _apply_options_file(parser, args, argv)
        except MedistillError as e:
            print(f"medistill {args.command}: error: {e}", file=sys.stderr)
            return 2
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console shows warnings (-v: info); run logs get INFO
        handler.setLevel(level)
    logging.getLogger("medistill").setLevel(min(level, logging.INFO))

    try:
        return int(args.func(args) or 0)
    except MedistillError as e:
        print(f"medistill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"medistill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medistill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
