"""The `kubetune` command. Each subcommand lives in its own module under kubetune.commands.

Subcommand modules expose `register(subparsers)`; the ones that need torch import it only when they run, so
`kubetune validate` and `kubetune operator` work in the torch-free operator image.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kubetune import __version__

COMMAND_MODULES = ("validate", "run", "train", "crd", "docs", "operator")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kubetune",
        description="Fine-tune Hugging Face models from one FineTuneJob file: locally or on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"kubetune.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"kubetune.commands.{name}":
                continue  # not built yet in this checkout
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
