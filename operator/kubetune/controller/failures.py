"""What ended a gang attempt, and what it costs: the Failure to report, the attempt's history record, whether
a limit is exhausted, and which old pods are stuck Terminating. Pure helpers of the planner."""

from __future__ import annotations

from datetime import datetime, timedelta

from kubetune.controller.observe import WorkerPod, format_time, parse_time, tail
from kubetune.events import JobSummary
from kubetune.spec.models import FineTuneJobSpec, RunPolicy
from kubetune.spec.status import (
    MAX_ATTEMPT_HISTORY,
    AttemptRecord,
    Failure,
    FailureReason,
    FineTuneJobStatus,
)


def failure_of(pod: WorkerPod, now: datetime) -> Failure:
    """The Failure of a failed worker: exit code, reason and the tail of its termination message (the
    JobSummary's message when the trainer wrote one)."""
    termination = pod.termination
    message = tail(termination.message if termination else "")
    summary = JobSummary.from_termination_message(message) if message else None
    if summary is not None and summary.message:
        message = tail(summary.message)
    return Failure(
        pod=pod.name,
        container="trainer",
        exit_code=termination.exit_code if termination else None,
        reason=str(pod.failure_reason()),
        message=message,
        attempt=pod.attempt,
        time=format_time(now),
    )


def deleted_failure(disrupted: list[WorkerPod], attempt: int, now: datetime) -> Failure:
    """The Failure for a worker deleted (or evicted, or gone) while the gang was running."""
    pod = sorted(disrupted, key=lambda p: p.index)[0] if disrupted else None
    reason, what = FailureReason.POD_DELETED, "deleted"
    if pod is not None and pod.disruption_reason == "EvictionByEvictionAPI":
        reason, what = FailureReason.EVICTED, "evicted through the Eviction API (e.g. kubectl drain)"
    elif pod is not None and pod.disruption_reason == "PreemptionByScheduler":
        reason, what = FailureReason.PREEMPTED, "preempted by the scheduler"
    elif pod is not None and pod.disruption_reason == "DeletionByTaintManager":
        reason = FailureReason.NODE_LOST
        what = (
            f"evicted from node {pod.node or '(unknown)'}, which stopped reporting "
            "(spec.runPolicy.nodeLossTimeoutSeconds elapsed)"
        )
    return Failure(
        pod=pod.name if pod is not None else "",
        reason=reason,
        message=f"a worker pod was {what} while the gang was running",
        attempt=attempt,
        time=format_time(now),
    )


def exhausted_limit(
    policy: RunPolicy, status: FineTuneJobStatus, failure: Failure, counts: bool
) -> tuple[str, str] | None:
    """(reason, message) when the restart just counted exceeds backoffLimit (failures) or disruptionLimit
    (disruptions), else None."""
    what = f"{failure.pod or 'a worker'} failed ({failure.reason}, exit code {failure.exit_code})"
    if counts and status.failed_attempts > policy.backoff_limit:
        return FailureReason.BACKOFF_LIMIT, (
            f"{what} and the gang has failed {status.failed_attempts} times, more than "
            f"runPolicy.backoffLimit ({policy.backoff_limit}): {failure.message}"
        )
    if not counts and status.disruptions > policy.disruption_limit:
        return FailureReason.DISRUPTION_LIMIT, (
            f"{what} and the gang has been disrupted {status.disruptions} times, more than "
            f"runPolicy.disruptionLimit ({policy.disruption_limit}): {failure.message}"
        )
    return None


def close_attempt(
    status: FineTuneJobStatus,
    spec: FineTuneJobSpec | None,
    now: datetime,
    reason: str,
    failure: Failure | None,
    counted: bool,
) -> None:
    """Append the attempt that ends now to status.attempts (kept to the last MAX_ATTEMPT_HISTORY); nothing
    when it never started (invalid spec, suspended) or is recorded already."""
    started = parse_time(status.attempt_start_time)
    history = status.attempts
    if started is None or (history and history[-1].attempt == status.attempt):
        return
    gpus = 0
    if spec is not None:
        per_node = spec.kubernetes.resources.gpus_per_node
        if per_node is None:
            per_node = spec.distribution.processes_per_node
        gpus = per_node * spec.distribution.nodes
    record = AttemptRecord(
        attempt=status.attempt,
        start_time=status.attempt_start_time,
        end_time=format_time(now),
        reason=str(failure.reason) if failure is not None else reason,
        pod=failure.pod if failure is not None else "",
        exit_code=failure.exit_code if failure is not None else None,
        message=tail(failure.message if failure is not None else "", 300),
        counted=counted,
        gpu_seconds=round(gpus * max(0.0, (now - started).total_seconds()), 1),
    )
    status.attempts = [*history, record][-MAX_ATTEMPT_HISTORY:]


def stuck_terminating(
    pods: list[WorkerPod], now: datetime, timeout_seconds: float
) -> tuple[list[str], float | None]:
    """The pods still Terminating `timeout_seconds` past their deletion time (to force-delete: a pod on a
    lost node never finishes its graceful deletion, and its name blocks the next attempt), and the seconds
    until the next one is due (None: none is waiting)."""
    bound = timedelta(seconds=timeout_seconds)
    stuck: list[str] = []
    next_due: float | None = None
    for pod in pods:
        if not pod.deleting or pod.deletion_time is None:
            continue
        due = pod.deletion_time + bound
        if now >= due:
            stuck.append(pod.name)
        else:
            seconds = (due - now).total_seconds()
            next_due = seconds if next_due is None else min(next_due, seconds)
    return stuck, next_due


def terminating_summary(pods: list[WorkerPod], forced: list[str], timeout_seconds: float) -> str:
    """'1 pod of earlier attempts to go: demo-worker-1 on node n1 Terminating (due …), held by finalizers …': what a
    restart waits on, for a status message that tells the truth."""
    parts = []
    for pod in sorted(pods, key=lambda p: p.name)[:3]:
        if not pod.deleting:
            parts.append(f"{pod.name} (being deleted)")
            continue
        due = format_time(pod.deletion_time) if pod.deletion_time else "?"
        where = f" on node {pod.node}" if pod.node else ""
        text = f"{pod.name}{where} Terminating (due {due})"
        if pod.name in forced:
            text += f", force-deleted {timeout_seconds:.0f}s after that"
        if pod.finalizers:
            text += f", held by finalizers {', '.join(pod.finalizers)}: whoever added them must remove them"
        parts.append(text)
    more = f" and {len(pods) - 3} more" if len(pods) > 3 else ""
    noun = "pod" if len(pods) == 1 else "pods"
    return f"{len(pods)} {noun} of earlier attempts to go: {'; '.join(parts)}{more}"
