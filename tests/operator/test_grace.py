"""Given the save time rank 0 measured for its last checkpoint, workers the operator deletes get long enough to
write the next one: max(kubernetes.terminationGracePeriodSeconds, 3 x that time); before any measurement, the
pods' own grace."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune.controller.grace import (
    MAX_DERIVED_GRACE_SECONDS,
    SAVE_TIME_SAFETY_FACTOR,
    deletion_grace_seconds,
)
from kubetune.events import EventKind, ProgressEvent
from kubetune.spec import parse_spec
from kubetune.spec.status import FineTuneJobStatus
from kubetune.status_sink import status_patch_for_event


def _spec(grace: int | None = None) -> Any:
    kubernetes = {"terminationGracePeriodSeconds": grace} if grace else {}
    return parse_spec({"model": {"name": "m"}, "dataset": {"name": "glue"}, "kubernetes": kubernetes})


def _status_after(event: ProgressEvent) -> FineTuneJobStatus:
    """The status as rank 0's sink leaves it after reporting `event` (its merge patch, read back)."""
    return FineTuneJobStatus.model_validate(status_patch_for_event(event, "accuracy"))


def _checkpoint(seconds: float, size: int = 10**9) -> ProgressEvent:
    return ProgressEvent(
        event=EventKind.CHECKPOINT, step=200, checkpoint_seconds=seconds, checkpoint_bytes=size
    )


def test_a_checkpoint_event_reports_its_save_time_and_size_in_the_status() -> None:
    report = _status_after(_checkpoint(41.5, 110 * 10**9)).last_checkpoint
    assert report is not None
    assert (report.step, report.save_seconds, report.size_bytes) == (200, 41.5, 110 * 10**9)
    assert report.time
    step = ProgressEvent(event=EventKind.STEP, step=210, loss=0.5)
    assert "lastCheckpoint" not in status_patch_for_event(step, "accuracy")


@pytest.mark.parametrize(
    ("grace", "save_seconds", "expected"),
    [
        (None, 5.0, 120),  # a quick save: the default grace covers it
        (600, 30.0, 600),  # the spec's grace is longer
        (None, 100.0, 300),  # a large checkpoint: 3 x 100 s
        (300, 250.4, 752),  # rounded up to whole seconds
        (None, 10**6, 3600),  # the workers write the report: a wild figure is believed only up to the cap
        (7200, 10**6, 7200),  # the spec's own grace is the user's choice and is kept
    ],
)
def test_deleted_workers_get_the_longer_of_the_spec_grace_and_the_measured_save(
    grace: int | None, save_seconds: float, expected: int
) -> None:
    assert SAVE_TIME_SAFETY_FACTOR == 3.0 and MAX_DERIVED_GRACE_SECONDS == 3600
    status = _status_after(_checkpoint(save_seconds))
    assert deletion_grace_seconds(_spec(grace), status) == expected


def test_without_a_measured_save_the_pods_keep_their_own_grace() -> None:
    assert deletion_grace_seconds(_spec(600), FineTuneJobStatus()) is None
    assert deletion_grace_seconds(None, _status_after(_checkpoint(100.0))) is None
