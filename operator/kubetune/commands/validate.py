"""`kubetune validate FILE`: check FineTuneJob files and explain every problem."""

from __future__ import annotations

import argparse
import sys

from kubetune.contract import EXIT_INVALID_SPEC, EXIT_OK
from kubetune.spec import SpecError, dump_job, load_jobs


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check FineTuneJob files",
        description="Validate FineTuneJob YAML files as kubectl apply would (the cluster's rules included: a "
        "multi-node job needs output.path on a shared volume). Exit 2 when invalid.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="FineTuneJob YAML file(s)")
    parser.add_argument(
        "--show-defaults", action="store_true", help="print each job with every default filled in"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate each file; print problems to stderr. Returns 0 when all are valid, 2 otherwise."""
    failed = False
    for path in args.files:
        try:
            jobs = load_jobs(path, for_cluster=True)
        except SpecError as error:
            failed = True
            print(f"✗ {error}", file=sys.stderr)
            continue
        for job in jobs:
            print(f"✓ {path}: FineTuneJob {job.metadata.name} is valid")
            if args.show_defaults:
                print(dump_job(job))
    return EXIT_INVALID_SPEC if failed else EXIT_OK
