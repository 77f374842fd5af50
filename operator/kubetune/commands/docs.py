"""`kubetune docs`: print or write the FineTuneJob reference (Markdown) generated from the models."""

from __future__ import annotations

import argparse
from pathlib import Path

from kubetune.commands.generated_file import emit_generated


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "docs",
        help="print or write the FineTuneJob reference",
        description=(
            "Render the FineTuneJob field reference (Markdown) from the pydantic models' descriptions. "
            "Without options it is printed; the repository keeps it in docs/reference.md."
        ),
    )
    parser.add_argument("-o", "--output", metavar="PATH", help="write the reference to this file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the file at --output differs from a fresh rendering (for CI)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print, write or check the reference. Returns 0, or 1 when --check finds a stale file."""
    from kubetune.reference import render_reference

    path = Path(args.output) if args.output else None
    return emit_generated(render_reference(), path, args.check, "kubetune docs")
