"""`kubetune run FILE`: run a FineTuneJob on this machine as several simulated nodes.

Only the arguments live here; the runner (kubetune_trainer.runner) is imported when the command runs, so the
torch-free operator image can still list every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubetune.contract import EXIT_FAILED


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0 seconds")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a FineTuneJob on this machine as simulated nodes",
        description=(
            "Run a FineTuneJob file on this machine: one `kubetune train` process per simulated node, a real "
            "multi-node torch.distributed run over loopback (gloo on CPU, NCCL with a GPU per process). "
            "Ctrl-C saves a checkpoint and exits 75; running the same command again resumes. "
            "Exit codes: 0 done, 1 failed, 2 invalid spec, 75 interrupted (resumable)."
        ),
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="FineTuneJob YAML file")
    parser.add_argument("--nodes", type=_positive, help="simulated nodes (default: spec.distribution.nodes)")
    parser.add_argument(
        "--processes-per-node",
        type=_positive,
        help="training processes per node (default: spec.distribution.processesPerNode)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="output folder (default: spec.output.path, or ./runs/<name> when that is /output)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete the output folder first instead of resuming"
    )
    parser.add_argument(
        "--timeout", type=_seconds, help="fail the run after this many seconds (default: no limit)"
    )
    parser.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=1800.0,
        help="fail when no node writes any output for this many seconds (default: 1800)",
    )
    parser.add_argument(
        "--stop-grace-period",
        type=_seconds,
        default=120.0,
        help="seconds nodes get to save a checkpoint after SIGTERM before SIGKILL (default: 120)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the job. Returns 0 done, 1 failed, 2 invalid spec, 75 interrupted (resumable)."""
    try:
        from kubetune_trainer.runner import RunOptions, WatchdogLimits, run_local
    except ImportError as error:
        print(
            f"✗ kubetune run needs the trainer ({error.name} is missing): pip install 'kubetune[train]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    limits = WatchdogLimits(
        deadline_seconds=args.timeout,
        stall_seconds=args.stall_timeout,
        stop_grace_seconds=args.stop_grace_period,
    )
    options = RunOptions(
        job_file=args.file,
        nodes=args.nodes,
        procs_per_node=args.processes_per_node,
        output_dir=args.output,
        fresh=args.fresh,
        limits=limits,
    )
    return run_local(options)
