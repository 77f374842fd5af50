"""What rank 0 reports in the status that the operator turns into Kubernetes Events: tracker warnings.

Workers may only patch their own status fields (status_policy.WORKER_STATUS_FIELDS), not create Events; the
operator sees their patches on its watch and posts a Warning Event for each new entry of
status.tracking.warnings (a tracker that could not be reached; training went on without it). Pure: the
caller keeps how many warnings of each job it has announced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.controller.plan import JobEvent

MAX_MESSAGE = 900


def tracker_warnings(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """status.tracking.warnings as written by rank 0 (an empty list when absent or malformed)."""
    tracking = status.get("tracking")
    warnings = tracking.get("warnings") if isinstance(tracking, Mapping) else None
    return [w for w in warnings if isinstance(w, Mapping)] if isinstance(warnings, list) else []


def new_warning_events(announced: int, status: Mapping[str, Any]) -> tuple[int, list[JobEvent]]:
    """(warnings now listed, a Warning Event for each one past the first `announced`). A list shorter than
    `announced` (a new attempt's rank 0 starts it again) announces from its start."""
    warnings = tracker_warnings(status)
    start = announced if announced <= len(warnings) else 0
    events = []
    for warning in warnings[start:]:
        tracker = str(warning.get("tracker") or "a tracker")
        message = str(warning.get("message") or "unreachable")
        events.append(
            JobEvent(
                "Warning",
                str(warning.get("reason") or "TrackerUnavailable"),
                f"{tracker}: {message}; training goes on without it"[:MAX_MESSAGE],
            )
        )
    return len(warnings), events
