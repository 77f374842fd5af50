"""`kubetune train`: the entry point of a worker pod (or a simulated node): train this node's share of a job.

The node's place in the gang comes from the launcher contract (kubetune.contract); the work is done by
`kubetune_trainer.node_launcher`, imported only when the command runs, so this module stays torch-free.
"""

from __future__ import annotations

import argparse
import sys

from kubetune.contract import EXIT_FAILED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train this node's share of a FineTuneJob (what each worker pod runs)",
        description=(
            "Start this node's training processes with accelerate launch. The job file and the node's rank "
            "come from the KUBETUNE_* environment (see kubetune.contract). Exit codes: 0 finished, "
            "75 preempted (checkpoint saved, rerun to resume), 2 invalid job, 1 failed."
        ),
    )
    parser.add_argument(
        "job_file", nargs="?", metavar="FILE", help="FineTuneJob YAML (default: $KUBETUNE_JOB_FILE)"
    )
    parser.add_argument(
        "--single-process",
        action="store_true",
        help="train in this process with world size 1 (debugging; no accelerate launch)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Validate the job and train; returns the node's exit code."""
    try:
        from kubetune_trainer.node_launcher import main
    except ImportError as error:
        print(
            f"kubetune train needs the trainer packages (pip install 'kubetune[train]'): {error}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return main(job_file=args.job_file, single_process=args.single_process)
