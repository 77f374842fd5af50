"""Reading worker pods (API JSON dicts) into the few facts the planner decides on. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetune.contract import EXIT_INVALID_SPEC, EXIT_PREEMPTED
from kubetune.controller import names
from kubetune.spec.status import FailureReason

# Waiting reasons that mean "this pod will not start by itself"; InvalidImageName never recovers.
STUCK_WAITING_REASONS = {
    "ErrImagePull": FailureReason.IMAGE_PULL,
    "ImagePullBackOff": FailureReason.IMAGE_PULL,
    "InvalidImageName": FailureReason.INVALID_IMAGE,
    "CreateContainerConfigError": FailureReason.CONFIG_ERROR,
    "CreateContainerError": FailureReason.CONFIG_ERROR,
}
MESSAGE_TAIL = 1024
# DisruptionTarget reasons of disruptions that are not the job's fault: they restart the gang without
# counting against backoffLimit (a separate, capped budget: runPolicy.disruptionLimit). The kubelet's own
# evictions (TerminationByKubelet: node memory/disk pressure) are not among them: a pod evicted for
# pressure usually used more than it requested, and a free restart would repeat it forever; they count
# as failures. (A graceful node shutdown also reports TerminationByKubelet, but with pod reason
# Terminated, not Evicted: that one is a disruption.)
EXTERNAL_DISRUPTIONS = frozenset(
    {"PreemptionByScheduler", "EvictionByEvictionAPI", "DeletionByTaintManager", "DeletionByPodGC"}
)


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (None stays None)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z and whole seconds, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tail(text: str | None, limit: int = MESSAGE_TAIL) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else "…" + text[-limit:]


@dataclass(frozen=True)
class Termination:
    exit_code: int
    reason: str
    message: str


@dataclass(frozen=True)
class WorkerPod:
    """One worker pod as the planner sees it."""

    name: str
    index: int
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    scheduled: bool
    ready: bool
    deleting: bool
    termination: Termination | None = None
    stuck_reason: FailureReason | None = None  # why a pending pod cannot start
    stuck_message: str = ""
    disrupted: bool = False  # evicted or preempted by Kubernetes (DisruptionTarget)
    pod_reason: str = ""
    uid: str = ""
    # metadata.deletionTimestamp: when the pod should be gone (the delete's time plus its grace period)
    deletion_time: datetime | None = None
    finalizers: tuple[str, ...] = ()
    disruption_reason: str = ""  # the DisruptionTarget condition's reason
    pod_message: str = ""
    node: str = ""  # spec.nodeName: named when a pod hangs on its node (a lost node never ends it)
    # When the pod became stuck, where the pod says so (PodScheduled's transition time); None: the
    # planner takes the first time it saw it stuck (an image pull error carries no time of its own).
    stuck_since: datetime | None = None

    @property
    def pressure_evicted(self) -> bool:
        """Evicted by its own kubelet for node memory/disk pressure (counted as a failure, see above)."""
        return self.pod_reason == "Evicted" and self.disruption_reason not in EXTERNAL_DISRUPTIONS

    @property
    def invalid_spec(self) -> bool:
        """The trainer exited 2: the job spec cannot work (permanent, never retried)."""
        return self.termination is not None and self.termination.exit_code == EXIT_INVALID_SPEC

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    @property
    def failed(self) -> bool:
        return self.phase == "Failed"

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def preempted(self) -> bool:
        """A failure worth a free gang restart: trainer exit 75 after checkpointing, or a disruption from
        outside (not a kubelet pressure eviction: see EXTERNAL_DISRUPTIONS)."""
        exit_code = self.termination.exit_code if self.termination else None
        if self.pressure_evicted:
            return False
        return self.disrupted or exit_code == EXIT_PREEMPTED

    def failure_reason(self) -> FailureReason | str:
        """OOMKilled, Preempted, Evicted, Error, ... for a failed pod."""
        if self.termination and self.termination.exit_code == EXIT_PREEMPTED:
            return FailureReason.PREEMPTED
        if self.termination and self.termination.reason == "OOMKilled":
            return FailureReason.OOM_KILLED
        if self.pod_reason == "Evicted":
            return FailureReason.EVICTED
        if self.disrupted:
            return FailureReason.PREEMPTED
        if self.termination and self.termination.reason:
            return self.termination.reason
        return self.pod_reason or FailureReason.ERROR


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == names.WORKER_CONTAINER:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def observe_pod(pod: dict[str, Any]) -> WorkerPod | None:
    """The planner's view of one pod; None when it is not a kubetune worker (labels missing or garbled)."""
    metadata = pod.get("metadata", {})
    labels = metadata.get("labels") or {}
    try:
        index = int(labels[names.LABEL_NODE_RANK])
        attempt = int(labels[names.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None
    status = pod.get("status", {})
    phase = status.get("phase") or "Pending"
    scheduled_condition = _condition(pod, "PodScheduled")
    scheduled = bool(pod.get("spec", {}).get("nodeName")) or (
        scheduled_condition is not None and scheduled_condition.get("status") == "True"
    )
    ready_condition = _condition(pod, "Ready")
    container = _trainer_status(pod)
    state = container.get("state") or {}
    termination = None
    terminated = state.get("terminated")
    if terminated:
        termination = Termination(
            exit_code=int(terminated.get("exitCode", 0)),
            reason=terminated.get("reason") or "",
            message=terminated.get("message") or "",
        )
    stuck_reason: FailureReason | None = None
    stuck_message = ""
    stuck_since: datetime | None = None
    if phase == "Pending":
        if (
            scheduled_condition is not None
            and scheduled_condition.get("status") == "False"
            and scheduled_condition.get("reason") == "Unschedulable"
        ):
            stuck_reason = FailureReason.UNSCHEDULABLE
            stuck_message = scheduled_condition.get("message") or ""
            stuck_since = parse_time(scheduled_condition.get("lastTransitionTime"))
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in STUCK_WAITING_REASONS:
            stuck_reason = STUCK_WAITING_REASONS[waiting["reason"]]
            stuck_message = f"{waiting['reason']}: {waiting.get('message') or ''}".strip()
            stuck_since = None
        elif waiting.get("reason") == "ContainerCreating" and scheduled:
            if scheduled_condition is not None:
                stuck_since = parse_time(scheduled_condition.get("lastTransitionTime"))
            # A volume that cannot attach, a missing ConfigMap or Secret: bounded like scheduling.
            stuck_reason = FailureReason.CONTAINER_CREATING
            stuck_message = f"ContainerCreating: {waiting.get('message') or 'the container is not created'}"
    disruption = _condition(pod, "DisruptionTarget")
    disrupted = disruption is not None and disruption.get("status") == "True"
    return WorkerPod(
        name=metadata.get("name", ""),
        index=index,
        attempt=attempt,
        phase=phase,
        scheduled=scheduled,
        ready=phase == "Running" and ready_condition is not None and ready_condition.get("status") == "True",
        deleting=bool(metadata.get("deletionTimestamp")),
        termination=termination,
        stuck_reason=stuck_reason,
        stuck_message=tail(stuck_message),
        disrupted=disrupted,
        pod_reason=status.get("reason") or "",
        uid=metadata.get("uid") or "",
        deletion_time=parse_time(metadata.get("deletionTimestamp")),
        finalizers=tuple(metadata.get("finalizers") or ()),
        disruption_reason=(disruption.get("reason") or "") if disrupted and disruption else "",
        pod_message=tail(status.get("message") or "", 300),
        node=pod.get("spec", {}).get("nodeName") or "",
        stuck_since=stuck_since,
    )
