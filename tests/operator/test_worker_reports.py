"""Tracker warnings that rank 0 writes into status.tracking.warnings become Warning Events (issue 13): the
pure part here, the operator posting them through the real API server in test_faults_cluster.py."""

from __future__ import annotations

from kubetune.controller.worker_reports import new_warning_events


def _status(*trackers: str) -> dict[str, object]:
    warnings = [{"tracker": t, "reason": "TrackerUnavailable", "message": f"{t} refused"} for t in trackers]
    return {"tracking": {"warnings": warnings}}


def test_each_new_warning_is_announced_once() -> None:
    seen, events = new_warning_events(0, _status("mlflow"))
    assert seen == 1
    assert [(e.type, e.reason) for e in events] == [("Warning", "TrackerUnavailable")]
    assert events[0].message == "mlflow: mlflow refused; training goes on without it"
    assert new_warning_events(seen, _status("mlflow")) == (1, [])
    seen, events = new_warning_events(seen, _status("mlflow", "wandb"))
    assert (seen, [e.message.split(":")[0] for e in events]) == (2, ["wandb"])


def test_a_shorter_list_is_a_new_attempts_and_is_announced_from_its_start() -> None:
    seen, events = new_warning_events(2, _status("mlflow"))
    assert (seen, len(events)) == (1, 1)


def test_no_or_malformed_tracking_announces_nothing() -> None:
    for status in ({}, {"tracking": None}, {"tracking": {"warnings": "x"}}, {"tracking": {"warnings": [1]}}):
        assert new_warning_events(0, status) == (0, [])
