"""What one training process needs to know: the validated job and this node's launch context.

Built once at start (`RunSettings.from_env`) and passed down; no module reads os.environ on its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetune.contract import NodeContext
from kubetune.spec import FineTuneJob, FineTuneJobSpec, load_job

# Internal variables between `kubetune train` (the node launcher) and its worker processes; not part of the
# launcher contract because only our own launcher sets them.
WORKER_STATUS_DIR = "KUBETUNE_WORKER_STATUS_DIR"  # each rank writes rank-<N>.json (outcome, error tail) here
DEBUG_WEIGHTS_HASH = "KUBETUNE_DEBUG_WEIGHTS_HASH"  # "1": every rank writes a hash of its final weights


@dataclass(frozen=True)
class RunSettings:
    """The job, where its results go, and how this process reports."""

    job: FineTuneJob
    context: NodeContext
    output_dir: Path
    status_dir: Path | None = None
    debug_weights_hash: bool = False

    @property
    def spec(self) -> FineTuneJobSpec:
        return self.job.spec

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"

    @classmethod
    def from_job(
        cls, job: FineTuneJob, context: NodeContext, env: Mapping[str, str] | None = None
    ) -> RunSettings:
        """Settings for `job` on the node described by `context`; KUBETUNE_OUTPUT_DIR overrides output.path."""
        source = os.environ if env is None else env
        status_dir = source.get(WORKER_STATUS_DIR)
        return cls(
            job=job,
            context=context,
            output_dir=Path(context.output_dir or job.spec.output.path),
            status_dir=Path(status_dir) if status_dir else None,
            debug_weights_hash=source.get(DEBUG_WEIGHTS_HASH, "") == "1",
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunSettings:
        """Read the launcher contract and load the job file.

        Raises kubetune.contract.ContractError or kubetune.spec.SpecError.
        """
        context = NodeContext.from_env(env)
        return cls.from_job(load_job(context.job_file), context, env)
