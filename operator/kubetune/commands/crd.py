"""`kubetune crd`: print or write the FineTuneJob CustomResourceDefinition generated from the models."""

from __future__ import annotations

import argparse
from pathlib import Path

from kubetune.commands.generated_file import emit_generated


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

    path = Path(args.output) if args.output else None
    if path is not None and path.is_dir():
        path = path / CRD_FILE
    return emit_generated(render_crd(), path, args.check, "kubetune crd")
