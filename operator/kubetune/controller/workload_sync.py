"""The Kueue Workload of a queued FineTuneJob: read it (and the flavors its admission names), and carry out
what the plan says about it (create, hand back to the queue, delete). I/O only; the decisions are in
kubetune.controller.queueing and the planner."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetune.controller.children import JobRef, WorkerContext, build_worker_pod
from kubetune.controller.kube import ApiError, Kube
from kubetune.controller.ownership import Control, control_of
from kubetune.controller.plan import ObservedJob, Plan
from kubetune.controller.queueing import (
    Admission,
    assigned_flavors,
    build_workload,
    observe_admission,
    queue_name,
    requeue_status,
    workload_name,
)

logger = logging.getLogger("kubetune.operator")


@dataclass
class WorkloadSync:
    """Reads and writes the Workloads of queued jobs through `kube`."""

    kube: Kube

    def observe(self, job: ObservedJob) -> tuple[Admission | None, dict[str, Any] | None]:
        """Kueue's answer for `job` and its Workload as read; (None, None) for a job without a queue.

        A Workload of that name left by an earlier job of the same name counts as none (it is replaced).
        Raises ApiError when the API refuses a read (e.g. RBAC without the Kueue rules).
        """
        if queue_name(job.labels) is None:
            return None, None
        return self.judge(job, self.read(job.namespace, job.name))

    def read(self, namespace: str, job_name: str) -> dict[str, Any] | None:
        """The Workload of job `job_name` as the API server has it now, None when there is none (it may be
        another job's: `judge` tells). Raises ApiError."""
        return self.kube.get("Workload", namespace, workload_name(job_name))

    def judge(
        self, job: ObservedJob, workload: dict[str, Any] | None
    ) -> tuple[Admission | None, dict[str, Any] | None]:
        """As `observe`, from the Workload already `read` (with the job, in the same round trip): reads only
        the ResourceFlavors its admission names. Raises ApiError."""
        queue = queue_name(job.labels)
        if queue is None:
            return None, None
        if workload is not None and control_of(workload, job.name, job.uid) != Control.OURS:
            return observe_admission(queue, None), workload
        flavors = []
        for name in assigned_flavors(workload or {}):
            flavor = self.kube.get("ResourceFlavor", "", name)
            if flavor is not None:
                flavors.append(flavor)
        return observe_admission(queue, workload, flavors), workload

    def apply(
        self, job: ObservedJob, result: Plan, workload: dict[str, Any] | None, image: str, now: datetime
    ) -> float | None:
        """Create, requeue or delete the job's Workload as `result` says; returns seconds until the next look
        when a write must be retried (a concurrent change), else None. Raises ApiError."""
        queue = queue_name(job.labels)
        if queue is None:
            return None
        ours = workload is not None and control_of(workload, job.name, job.uid) == Control.OURS
        if workload is not None and not ours:
            if control_of(workload, job.name, job.uid) == Control.PREVIOUS_JOB:
                # An earlier job of this name left it (deleted with its owner, not yet collected): replace it.
                self.kube.delete(
                    "Workload", job.namespace, workload["metadata"]["name"], workload["metadata"]["uid"]
                )
                return 1.0
            raise ApiError(409, "NotControlled", f"Workload {workload_name(job.name)} is not this job's")
        if result.delete_workload:
            if workload is not None:
                logger.info("job %s/%s: deleting its Workload (releases the quota)", job.namespace, job.name)
                self.kube.delete(
                    "Workload", job.namespace, workload["metadata"]["name"], workload["metadata"]["uid"]
                )
            return None
        if result.requeue_workload and workload is not None:
            try:
                self.kube.patch_status(
                    "Workload", job.namespace, workload_name(job.name), requeue_status(workload, now)
                )
            except ApiError as error:
                if error.status == 409:
                    return 0.5
                raise
            logger.info(
                "job %s/%s: workers stopped, Workload back in queue %s", job.namespace, job.name, queue
            )
            return None
        if result.ensure_workload and workload is None and result.spec is not None:
            ref = JobRef(job.name, job.namespace, job.uid)
            pod = build_worker_pod(WorkerContext(ref, result.spec, 0, result.status.attempt, image))
            self.kube.create(
                build_workload(ref, pod, result.spec.distribution.nodes, queue, self._priority(result))
            )
        return None

    def _priority(self, result: Plan) -> tuple[str, int] | None:
        """(name, value) of the workers' PriorityClass, which Kueue orders and preempts by; None without one."""
        name = result.spec.kubernetes.priority_class_name if result.spec is not None else None
        if not name:
            return None
        found = self.kube.get("PriorityClass", "", name)
        if found is None:
            return None
        return name, int(found.get("value", 0))
