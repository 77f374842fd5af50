"""`kubetune crd`: print or write the FineTuneJob CustomResourceDefinition generated from the models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubetune.contract import EXIT_FAILED, EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crd",
        help="print or write the FineTuneJob CRD",
        description=(
            "Generate the FineTuneJob CustomResourceDefinition from the pydantic models. "
            "Without options it is printed (kubetune crd | kubectl apply -f -)."
        ),
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write to this file, or into this folder as finetunejobs.kubetune.io.yaml",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the file at --output differs from a fresh generation (for CI)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print, write or check the CRD. Returns 0, or 1 when --check finds a stale file."""
    from kubetune.crd import CRD_FILE, render_crd

    text = render_crd()
    if not args.output:
        if args.check:
            print("kubetune crd --check needs --output PATH", file=sys.stderr)
            return EXIT_FAILED
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(args.output)
    if path.is_dir():
        path = path / CRD_FILE
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is stale: regenerate it with `kubetune crd -o {path}`", file=sys.stderr)
            return EXIT_FAILED
        print(f"{path} is up to date")
        return EXIT_OK
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return EXIT_OK
