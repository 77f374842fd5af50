"""Progress events: what rank 0 of the trainer reports, and what launchers and the operator read.

One schema for every sink: JSON lines on stdout, the local runner's events file, the termination message
(the final `JobSummary`), and the operator's status reporter. Torch-free, so the operator can parse them.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The kubelet keeps at most 4096 bytes of a termination message; the summary must fit.
TERMINATION_MESSAGE_LIMIT = 4096
# Prefix of progress lines on stdout, so launchers can pick them out of interleaved logs.
STDOUT_PREFIX = "KUBETUNE_EVENT "


class EventKind(StrEnum):
    STARTED = "started"  # loop about to begin (after resume); carries total_steps and resumed_from_step
    STEP = "step"  # every loggingSteps optimizer steps
    EVAL = "eval"  # after an evaluation; metrics holds eval_* values
    CHECKPOINT = "checkpoint"  # a checkpoint was written
    FINISHED = "finished"  # training and saving done
    FAILED = "failed"  # an exception ended training; message says why
    PREEMPTED = "preempted"  # SIGTERM: checkpoint saved, exiting to be resumed
    WARNING = "warning"  # something went wrong that training goes on without (a tracker); message says what


class ProgressEvent(BaseModel):
    """One progress report from rank 0."""

    model_config = ConfigDict(extra="ignore")

    event: EventKind
    time: float = Field(default_factory=time.time, description="Unix time of the event.")
    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, ge=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, ge=0, description="Fractional epochs done.")
    loss: float | None = Field(default=None, description="Mean training loss since the last report.")
    learning_rate: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="eval_* metrics of the last eval.")
    checkpoint: str | None = None
    checkpoint_seconds: float | None = Field(
        default=None, description="How long writing the checkpoint took."
    )
    checkpoint_bytes: int | None = Field(default=None, description="Size of the checkpoint's folder.")
    resumed_from_step: int | None = None
    world_size: int | None = None
    message: str | None = None
    # Where the run's experiment tracking is (status.tracking, camelCase keys), whole each time it is sent.
    tracking: dict[str, Any] | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.step / self.total_steps if self.total_steps else 0.0

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, line: str) -> ProgressEvent:
        return cls.model_validate_json(line.removeprefix(STDOUT_PREFIX))


class JobSummary(BaseModel):
    """The final report of a run, written to metrics.json and (compactly) to the termination message."""

    model_config = ConfigDict(extra="ignore")

    outcome: EventKind = Field(description="finished, failed or preempted.")
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    train_loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    samples_per_second: float | None = None
    train_runtime_seconds: float | None = None
    world_size: int | None = None
    model_path: str | None = None
    message: str | None = None

    def to_termination_message(self) -> str:
        """Compact JSON that fits the kubelet's termination-message limit (message tail trimmed if needed)."""
        text = self.model_dump_json(exclude_none=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        trimmed = self.model_copy(update={"message": (self.message or "")[-1000:]})
        text = trimmed.model_dump_json(exclude_none=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        return trimmed.model_copy(update={"metrics": {}, "message": None}).model_dump_json(exclude_none=True)

    @classmethod
    def from_termination_message(cls, text: str) -> JobSummary | None:
        """Parse a termination message; None when it is not a kubetune summary (e.g. a log tail)."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            return None
        if not isinstance(data, dict) or "outcome" not in data:
            return None
        try:
            return cls.model_validate(data)
        except ValueError:
            return None
