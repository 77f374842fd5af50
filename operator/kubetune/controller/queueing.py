"""All-or-nothing admission through Kueue, as pure functions: the Workload a queued job asks for, and what
Kueue's answer means for the gang. The reconciler does the I/O (kubetune.controller.reconciler).

Why the operator owns one `Workload` rather than using Kueue's plain-pod groups: a gang is one podSet of
`nodes` identical workers, which is exactly a Workload, and Kueue admits a Workload whole or not at all. With
a Workload no worker pod exists before admission (nothing holds a GPU, nothing is gated in the scheduler),
and Kueue's preemption arrives as the Workload's `Evicted` condition, which the planner turns into the same
path as `spec.suspend` (delete the workers: SIGTERM, checkpoint, exit 75), uncounted. Plain-pod groups put
Kueue's finalizer on every worker and expect the owner to send replacement pods into the group after a
preemption ("Kueue does not re-create pods it deleted"), while a gang restart here waits for the old pods to
be gone first: the two would wait on each other. The protocol is the one Kueue's own job integrations follow
(jobframework): create the Workload, start once it is Admitted, on Evicted stop the workers and, once they
are gone, clear the admission (QuotaReserved=False, reason Pending) so that it queues again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kubetune.controller import names
from kubetune.controller.children import JobRef, owner_reference
from kubetune.controller.observe import format_time
from kubetune.spec.models import QUEUE_LABEL

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
WORKLOAD_API_VERSION = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
POD_SET = "workers"


class QueueState(StrEnum):
    QUEUED = "Queued"  # no quota reserved (yet, or again)
    ADMITTED = "Admitted"  # quota reserved and every admission check ready: the gang may run
    EVICTED = "Evicted"  # admitted, and Kueue wants it stopped (preemption, a stopped queue, ...)


@dataclass(frozen=True)
class Placement:
    """Where the admission's flavors put the workers: merged into every worker pod."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Admission:
    """Kueue's answer for one job, as the planner reads it."""

    queue: str
    state: QueueState
    reason: str = ""
    message: str = ""
    placement: Placement = field(default_factory=Placement)
    # Why Kueue preempted an evicted Workload: its Preempted condition's reason (InClusterQueue: a higher
    # priority in the same ClusterQueue; InCohortReclamation: another ClusterQueue of the cohort took back the
    # quota this job borrowed; InCohortReclaimWhileBorrowing, InCohortFairSharing). Empty otherwise.
    preemption: str = ""

    def describe(self) -> str:
        """'Preempted, InCohortReclamation' (or the reason alone): what the job's messages say Kueue did."""
        return ", ".join(part for part in (self.reason, self.preemption) if part)


def queue_name(labels: dict[str, str] | None) -> str | None:
    """The LocalQueue a FineTuneJob asks for (label kueue.x-k8s.io/queue-name), None when it uses none."""
    value = (labels or {}).get(QUEUE_LABEL, "").strip()
    return value or None


def workload_name(job: str) -> str:
    """The job's Workload: named after the job, as Kueue names the Workloads of its own integrations."""
    return f"finetunejob-{job}"


def build_workload(
    job: JobRef, worker_pod: dict[str, Any], nodes: int, queue: str, priority: tuple[str, int] | None
) -> dict[str, Any]:
    """The Workload asking `queue` for `nodes` workers shaped like `worker_pod` (its containers' resources,
    node selector, tolerations and affinity: what Kueue's flavor assignment reads).

    `priority` is the (PriorityClass name, value) of the workers, None without one.
    """
    pod_spec = worker_pod["spec"]
    template: dict[str, Any] = {}
    # Only what Kueue counts and matches flavors on: the containers' requests, placement, priority.
    for key in ("containers", "initContainers"):
        if pod_spec.get(key):
            template[key] = [
                {"name": c["name"], "image": c.get("image", ""), "resources": c.get("resources") or {}}
                for c in pod_spec[key]
            ]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if pod_spec.get(key):
            template[key] = pod_spec[key]
    spec: dict[str, Any] = {
        "queueName": queue,
        "podSets": [{"name": POD_SET, "count": nodes, "template": {"spec": template}}],
    }
    if priority is not None:
        name, value = priority
        spec["priorityClassRef"] = {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": name}
        spec["priority"] = value
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(job.name),
            "namespace": job.namespace,
            "labels": {**names.job_labels(job.name), names.LABEL_COMPONENT: "workload"},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


def _condition(workload: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (workload.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _true(condition: dict[str, Any] | None) -> bool:
    return condition is not None and condition.get("status") == "True"


def assigned_flavors(workload: dict[str, Any]) -> list[str]:
    """The ResourceFlavor names the admission assigned to the workers (empty when not admitted)."""
    admission = (workload.get("status") or {}).get("admission") or {}
    found: list[str] = []
    for assignment in admission.get("podSetAssignments") or []:
        for flavor in (assignment.get("flavors") or {}).values():
            if flavor not in found:
                found.append(str(flavor))
    return found


def placement_of(flavors: list[dict[str, Any]]) -> Placement:
    """The node labels and tolerations of the assigned ResourceFlavors (their spec.nodeLabels,
    spec.tolerations), as Kueue's own integrations inject them into the pods."""
    selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    for flavor in flavors:
        spec = flavor.get("spec") or {}
        selector.update(spec.get("nodeLabels") or {})
        for toleration in spec.get("tolerations") or []:
            if toleration not in tolerations:
                tolerations.append(toleration)
    return Placement(selector, tolerations)


def observe_admission(
    queue: str, workload: dict[str, Any] | None, flavors: list[dict[str, Any]] | None = None
) -> Admission:
    """What Kueue decided for a job sent to `queue`, from its Workload (None: not created yet) and the
    ResourceFlavors its admission names."""
    if workload is None:
        return Admission(queue, QueueState.QUEUED, "Pending", f"waiting in LocalQueue {queue}")
    reserved = _condition(workload, "QuotaReserved")
    admitted = _condition(workload, "Admitted")
    evicted = _condition(workload, "Evicted")
    has_admission = bool((workload.get("status") or {}).get("admission"))
    if evicted is not None and _true(evicted) and (_true(reserved) or has_admission):
        preempted = _condition(workload, "Preempted")
        return Admission(
            queue,
            QueueState.EVICTED,
            str(evicted.get("reason") or "Evicted"),
            str(evicted.get("message") or ""),
            preemption=str(preempted.get("reason") or "") if preempted and _true(preempted) else "",
        )
    if _true(admitted) and has_admission:
        return Admission(
            queue,
            QueueState.ADMITTED,
            "Admitted",
            f"admitted by ClusterQueue {workload['status']['admission'].get('clusterQueue', '')}",
            placement_of(flavors or []),
        )
    # Kueue says why in QuotaReserved's message ("couldn't assign flavors to pod set workers: insufficient
    # quota for nvidia.com/gpu ...") once it has tried; before that, nothing.
    detail = (reserved or {}).get("message") or f"waiting in LocalQueue {queue}"
    reason = (reserved or {}).get("reason") or "Pending"
    return Admission(queue, QueueState.QUEUED, str(reason), str(detail))


def requeue_status(workload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The status (a whole-object merge patch body) that hands an evicted Workload back to its queue once
    its workers are gone, as Kueue's jobframework does: no admission, QuotaReserved=False (Pending),
    Admitted=False, Requeued=True. The resourceVersion guards it against a concurrent write by Kueue."""
    evicted = _condition(workload, "Evicted") or {}
    message = str(evicted.get("message") or "the workers are stopped")
    generation = (workload.get("metadata") or {}).get("generation")
    stamp = format_time(now)
    updates = {
        "QuotaReserved": ("False", "Pending", message),
        "Admitted": ("False", "NoReservation", "The workload has no reservation"),
        "Requeued": ("True", str(evicted.get("reason") or "Evicted"), message),
    }
    conditions = []
    for condition in (workload.get("status") or {}).get("conditions") or []:
        kind = condition.get("type")
        if kind in updates:
            status, reason, text = updates.pop(kind)
            if condition.get("status") != status:
                condition = {**condition, "lastTransitionTime": stamp}
            condition = {**condition, "status": status, "reason": reason, "message": text}
            if generation is not None:
                condition["observedGeneration"] = generation
        conditions.append(condition)
    for kind, (status, reason, text) in updates.items():
        added = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": text,
            "lastTransitionTime": stamp,
        }
        if generation is not None:
            added["observedGeneration"] = generation
        conditions.append(added)
    return {
        "metadata": {"resourceVersion": (workload.get("metadata") or {}).get("resourceVersion")},
        "status": {"admission": None, "conditions": conditions},
    }
