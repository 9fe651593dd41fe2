"""The ``t2`` command: parses arguments and calls the library; nothing else lives here.

Each subcommand is one module in this package with ``register(subparsers)``; a
:class:`~transformer_squared.errors.T2Error` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import T2Error

# Subcommand modules, in the order `t2 --help` lists them.
COMMAND_MODULES = [
    "demo",
    "info",
    "smoke",
    "data",
    "eval",
    "compare",
    "generate",
    "train",
    "train-router",
    "serve",
    "export",
    "importer",
    "transfer",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2",
        description="Transformer²: train SVF experts and run self-adaptive two-pass inference.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name == f"{__name__}.{name.replace('-', '_')}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except T2Error as exc:
        print(f"t2 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t2 {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
