"""Command line: `sam-plugins <command> ...`.

Each command lives in the module that owns its feature and exposes `register(subparsers)`,
which adds its parser and sets `func` (called with the parsed arguments, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, attribute) pairs; a module is imported only to build the parser.
COMMAND_MODULES = (
    "sam_plugins.commands.segment",
    "sam_plugins.commands.models",
    "sam_plugins.commands.tune",
    "sam_plugins.training.cli",
    "sam_plugins.batch.cli",
    "sam_plugins.fiftyone.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-plugins", description="Segment Anything for microscopy: segment, train, label datasets."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # that feature is not part of this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"sam-plugins {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
