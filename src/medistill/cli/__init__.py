"""The ``medistill`` command line: one entry point, one module per subcommand under ``medistill.cli``.

Each subcommand module defines ``register(subparsers)`` (its arguments) and ``run(args) -> int``; heavy imports
happen inside ``run`` so that ``medistill --help`` stays fast and ``medistill predict`` never imports torch. Every
option of every command is a field of an options dataclass, and its flag, its help and its ``--config FILE.yaml``
key come from that one declaration (``cli/common.py``: ``add_config_args`` / ``config_from_args``); only positional
arguments are declared by hand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import MedistillError

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
    "study": "study",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from ..utils.text import EscapingFormatter, shown

    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console shows warnings (-v: info); run logs get INFO
        handler.setLevel(level)
        if type(handler.formatter) is logging.Formatter or handler.formatter is None:  # names escaped in the log
            handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("medistill").setLevel(min(level, logging.INFO))

    try:
        return int(args.func(args) or 0)
    except (MedistillError, FileNotFoundError) as e:  # one line; a file name in it is escaped
        print(f"medistill {args.command}: error: {shown(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medistill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
