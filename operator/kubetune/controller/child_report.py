"""Folding the problems of a job's children into its plan, so that the status says what failed. Pure."""

from __future__ import annotations

from datetime import datetime

from kubetune.controller.observe import WorkerPod, parse_time, tail
from kubetune.controller.ownership import ChildProblem, ChildProblemReason
from kubetune.controller.plan import JobEvent, Plan, PlanOptions, set_condition
from kubetune.spec.status import FINAL_PHASES, ConditionType, Phase


def report_children(
    result: Plan,
    problems: list[ChildProblem],
    pods: list[WorkerPod],
    now: datetime,
    generation: int,
    options: PlanOptions,
    workers_created: bool = False,
) -> None:
    """Fold the children's problems (see `ownership`) into the plan, so that the status is written with them.

    Sets condition ChildrenReady (False with every problem named; back to True once they are gone), one Warning
    Event per problem when it first appears (not one per retry), and a retry (`retry_seconds`). A blocking problem
    (a missing child, or someone else's object under a child's name) holds the job Pending: no workers are created,
    and the workers of this attempt, which would use that object, are removed under a fresh attempt number (not
    counted as a restart). A problem of a progress-only child (`ownership.PROGRESS_ONLY_KINDS`) is reported and
    holds nothing. Failure handling, deadlines and the TTL have already been decided by `plan` and are kept. With
    `workers_created` (the problems were found after this reconcile created its workers) only the condition and
    Events change: the next reconcile (a pod event brings it soon), which ensures the children first, holds the
    job.
    """
    status = result.status
    existing = next((c for c in status.conditions if c.type == ConditionType.CHILDREN_READY), None)
    failing_since = (
        parse_time(existing.last_transition_time) if existing and existing.status == "False" else None
    )
    if not problems:
        if existing is not None and existing.status != "True":
            message = "every child exists and is controlled by the job"
            set_condition(status, ConditionType.CHILDREN_READY, True, "Created", message, now, generation)
        return
    message = tail("; ".join(p.describe() for p in problems), 900)
    if existing is None or existing.status != "False" or existing.message != message:
        result.events.extend(JobEvent("Warning", p.reason, tail(p.describe(), 900)) for p in problems)
    set_condition(status, ConditionType.CHILDREN_READY, False, problems[0].reason, message, now, generation)
    result.requeue(retry_seconds(failing_since, now, options))
    if workers_created:
        return
    if status.phase in FINAL_PHASES or status.phase in (Phase.RESTARTING, Phase.SUSPENDED):
        return
    if not any(p.blocking for p in problems):
        return
    status.workers.created -= len(result.create_workers)
    result.create_workers = []
    if status.phase in (None, Phase.PENDING, Phase.STARTING):
        status.phase = Phase.PENDING
        status.message = tail(f"waiting for the job's children: {message}", 600)
    # (Only an object the workers use makes them go: a user's progress RoleBinding leaves them alone.)
    foreign = any(p.blocking and p.reason == ChildProblemReason.NOT_CONTROLLED for p in problems)
    current = [p for p in pods if p.attempt == status.attempt and not p.deleting]
    if foreign and current:
        result.delete_workers.extend(p.name for p in current if p.name not in result.delete_workers)
        status.attempt += 1
        status.attempt_start_time = None
        status.workers.created = 0


def retry_seconds(failing_since: datetime | None, now: datetime, options: PlanOptions) -> float:
    """How soon to retry the children: child_retry_seconds while the problem is new, then a quarter of how
    long it has lasted (ChildrenReady=False since `failing_since`), at most child_retry_max_seconds.

    Kubernetes controllers back off an item that keeps failing; the age of the condition serves as the
    failure count, so the backoff survives an operator restart and needs no memory of its own."""
    if failing_since is None:
        return options.child_retry_seconds
    age = (now - failing_since).total_seconds()
    return max(options.child_retry_seconds, min(age / 4, options.child_retry_max_seconds))
