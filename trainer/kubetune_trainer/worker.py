"""One training process: `python -m kubetune_trainer.worker` (what `accelerate launch` starts on each node).

Reads the launcher contract from the environment, trains, and leaves a status file for `kubetune train`
(rank-<N>.json in KUBETUNE_WORKER_STATUS_DIR: outcome, exit code, and the tail of a traceback), because
torchrun reports only "a child failed", not why or whether it was a preemption.

Exit codes when run directly: 0 finished, 75 preempted (checkpoint saved), 2 the job does not fit its data or
model, 1 anything else. Under torchrun a preempted rank exits 0 so the agent does not kill its peers while they
finish the same checkpoint; the status file carries the preemption.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from kubetune.contract import EXIT_FAILED, EXIT_INVALID_SPEC, EXIT_OK, EXIT_PREEMPTED, ContractError
from kubetune.launch import LaunchConfigError
from kubetune.spec import SpecError

from kubetune_trainer.settings import RunSettings

TRACEBACK_TAIL_LINES = 25


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ


def _configure_logging() -> None:
    rank = global_rank()
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    if rank != 0:
        import datasets
        import transformers

        transformers.logging.set_verbosity_error()
        datasets.disable_progress_bars()


def write_status(
    status_dir: Path | None, outcome: str, exit_code: int, message: str | None = None, tail: str | None = None
) -> None:
    """Leave this rank's result for the node launcher (no-op without a status folder)."""
    if status_dir is None:
        return
    status_dir.mkdir(parents=True, exist_ok=True)
    rank = global_rank()
    record: dict[str, Any] = {"rank": rank, "outcome": outcome, "exit_code": exit_code}
    if message:
        record["message"] = message
    if tail:
        record["traceback"] = tail
    temporary = status_dir / f".rank-{rank}.json.tmp"
    temporary.write_text(json.dumps(record), encoding="utf-8")
    os.replace(temporary, status_dir / f"rank-{rank}.json")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that mean "fix the job", not "retry": exit 2 and no traceback needed."""
    from kubetune_trainer.adapters import AdapterError
    from kubetune_trainer.checkpoints import CheckpointMismatchError
    from kubetune_trainer.data import DataError
    from kubetune_trainer.modelio import ModelSourceError

    return (
        SpecError,
        ContractError,
        LaunchConfigError,
        DataError,
        ModelSourceError,
        CheckpointMismatchError,
        AdapterError,
    )


def run_worker(settings: RunSettings) -> int:
    """Train with `settings`; returns the exit code (see the module docstring)."""
    from kubetune_trainer.loop import train
    from kubetune_trainer.preemption import StopRequest

    stop = StopRequest()  # the loop installs its signal handlers once setup is done
    try:
        outcome = train(settings, stop=stop)
    except user_error_types() as error:
        message = str(error)
        print(f"kubetune train: {message}", file=sys.stderr, flush=True)
        write_status(settings.status_dir, "failed", EXIT_INVALID_SPEC, message)
        return EXIT_INVALID_SPEC
    except Exception as error:
        tail = "".join(traceback.format_exc().splitlines(keepends=True)[-TRACEBACK_TAIL_LINES:])
        print(tail, file=sys.stderr, flush=True)
        write_status(settings.status_dir, "failed", EXIT_FAILED, f"{type(error).__name__}: {error}", tail)
        return EXIT_FAILED
    finally:
        stop.uninstall()
    code = outcome.exit_code
    write_status(settings.status_dir, str(outcome.summary.outcome), code, outcome.summary.message)
    if code == EXIT_PREEMPTED and under_torchrun():
        return EXIT_OK
    return code


def main() -> int:
    """Entry point of `python -m kubetune_trainer.worker`."""
    _configure_logging()
    try:
        settings = RunSettings.from_env()
    except (ContractError, SpecError) as error:
        print(f"kubetune train: {error}", file=sys.stderr, flush=True)
        return EXIT_INVALID_SPEC
    return run_worker(settings)


if __name__ == "__main__":
    sys.exit(main())
