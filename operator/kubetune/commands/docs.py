"""`kubetune docs`: print or write the FineTuneJob reference (Markdown) generated from the models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubetune.contract import EXIT_FAILED, EXIT_OK


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
    from kubetune.reference import REFERENCE_FILE, render_reference

    text = render_reference()
    if not args.output:
        if args.check:
            print(f"kubetune docs --check needs --output PATH (e.g. {REFERENCE_FILE})", file=sys.stderr)
            return EXIT_FAILED
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(args.output)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is stale: regenerate it with `kubetune docs -o {path}`", file=sys.stderr)
            return EXIT_FAILED
        print(f"{path} is up to date")
        return EXIT_OK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return EXIT_OK
