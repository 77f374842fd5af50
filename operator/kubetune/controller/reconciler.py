"""One reconcile of one FineTuneJob: read, plan, write. I/O only.

Watch events (of FineTuneJobs and of their children) only *trigger* work (`wiring`, through the
`workqueue`); each reconcile then reads the job and its pods fresh from the API server and decides with the
pure `plan()`. The one exception is the first look at a job no operator has touched, which acts on its watch
event alone (see `reconcile`): it is on the path from `kubectl apply` to the pods, and such a job can have no
pods to read. Children are written create-only (`child_sync`); Events go out through the `EventRecorder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubetune.controller import names
from kubetune.controller.child_order import order_children
from kubetune.controller.child_report import report_children
from kubetune.controller.child_sync import ChildWriter
from kubetune.controller.children import JobRef, WorkerContext, build_job_children, build_worker_pod
from kubetune.controller.event_recorder import EventRecorder
from kubetune.controller.grace import deletion_grace_seconds
from kubetune.controller.kube import ApiError, Kube
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.observe import WorkerPod, observe_pod, tail
from kubetune.controller.ownership import ChildProblem, Control, control_of, not_controlled
from kubetune.controller.plan import (
    JobEvent,
    ObservedJob,
    Plan,
    PlanOptions,
    plan,
    status_patch,
)
from kubetune.controller.pod_groups import build_pod_group, wants_pod_group
from kubetune.controller.queueing import queue_name
from kubetune.controller.status_policy import WORKER_STATUS_FIELDS
from kubetune.controller.worker_reports import new_warning_events
from kubetune.controller.workload_sync import WorkloadSync
from kubetune.controller.workqueue import JobKey, WorkQueue
from kubetune.spec.status import FINAL_PHASES

logger = logging.getLogger("kubetune.operator")


@dataclass
class Reconciler:
    """Reconciles FineTuneJobs: `request()` from the event loop (into the work queue), `reconcile()` on its
    threads."""

    kube: Kube
    options: PlanOptions = field(default_factory=PlanOptions)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    threads: int = 16
    # (namespace, name, uid, generation, attempt) whose children this process has ensured: each new spec
    # generation and each new attempt ensures them again (a deleted Service or ConfigMap comes back).
    _ensured: set[tuple[str, str, str, int, int]] = field(default_factory=set)
    # Jobs whose last ensure found a problem: their children are ensured before any worker is created.
    _child_trouble: set[JobKey] = field(default_factory=set)
    # resourceVersion of our own last status write per job: its watch event needs no reconcile.
    _own_writes: dict[JobKey, str] = field(default_factory=dict)
    _fingerprints: dict[JobKey, bytes] = field(default_factory=dict)
    _seen: dict[JobKey, dict[str, Any]] = field(default_factory=dict)  # identity, for error Events
    _tracker_warnings: dict[JobKey, int] = field(default_factory=dict)  # announced as Events, per job
    # Jobs no operator has touched yet (no status), as their watch event showed them: see `reconcile`.
    _untouched: dict[JobKey, dict[str, Any]] = field(default_factory=dict)
    _reconciled: set[JobKey] = field(default_factory=set)
    # Jobs sent to a Kueue queue when last read: their next reconcile reads the Workload with the job.
    _queued: set[JobKey] = field(default_factory=set)
    _writers: ThreadPoolExecutor | None = None
    queue: WorkQueue = field(init=False)
    events: EventRecorder = field(init=False)
    workloads: WorkloadSync = field(init=False)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self.reconcile, self._is_new, self._reconcile_failed, self.threads)
        self.events = EventRecorder(self.kube)
        self.workloads = WorkloadSync(self.kube)

    # --- from the event loop -----------------------------------------------------------------------------------

    def request(self, key: JobKey, delay: float = 0.0, urgent: bool = False) -> None:
        """Reconcile `key` now (coalesced with a running reconcile) or after `delay` seconds; `urgent` when
        it is on the path to a gang's pods (see WorkQueue.request)."""
        self.queue.request(key, delay, urgent)

    def pause(self) -> None:
        """Another replica is active (kopf peering): no reconcile and no timer until `resume`."""
        self.queue.pause()

    def resume(self) -> None:
        self.queue.resume()

    def is_own_write(self, key: JobKey, resource_version: str | None) -> bool:
        """True when a watch event shows exactly the object our last status patch produced."""
        return bool(resource_version) and self._own_writes.get(key) == resource_version

    def changed_for_us(self, key: JobKey, body: Mapping[str, Any]) -> bool:
        """False when a job's watch event differs from the last one only in what the operator does not decide
        on: rank 0's live progress, metrics and checkpoint reports (written every few seconds per running job),
        annotations. (The checkpoint report is read when workers are deleted, not acted on when it arrives.)"""
        metadata = body.get("metadata") or {}
        status = {k: v for k, v in (body.get("status") or {}).items() if k not in WORKER_STATUS_FIELDS}
        # Kept per job as a 16-byte digest, not the status's JSON (a kilobyte or more per job).
        fingerprint = hashlib.blake2b(
            json.dumps(
                [metadata.get("uid"), metadata.get("generation"), metadata.get("deletionTimestamp"), status],
                sort_keys=True,
                default=str,
            ).encode(),
            digest_size=16,
        ).digest()
        if self._fingerprints.get(key) == fingerprint:
            return False
        self._fingerprints[key] = fingerprint
        return True

    def announce_worker_warnings(self, key: JobKey, body: Mapping[str, Any]) -> None:
        """Post a Warning Event for each tracker warning rank 0 added to the status (worker_reports)."""
        announced, events = new_warning_events(self._tracker_warnings.get(key, 0), body.get("status") or {})
        self._tracker_warnings[key] = announced
        for event in events:
            self.events.post(body, event)

    def saw_untouched(self, key: JobKey, body: Mapping[str, Any]) -> None:
        """Remember a job's body from its watch event while no operator has written its status yet."""
        if key not in self._reconciled and not (body.get("status") or {}).get("phase"):
            self._untouched[key] = dict(body)

    def forget(self, key: JobKey) -> None:
        """The job is gone: drop its timers and bookkeeping."""
        self.queue.forget(key)
        self._ensured = {marker for marker in self._ensured if marker[:2] != key}
        self._own_writes.pop(key, None)
        self._fingerprints.pop(key, None)
        self._seen.pop(key, None)
        self._tracker_warnings.pop(key, None)
        self._untouched.pop(key, None)
        self._reconciled.discard(key)
        self._queued.discard(key)
        self._child_trouble.discard(key)
        self.metrics.observe_phase(key, None)

    def child_deleted(self, key: JobKey) -> None:
        """A child of the job (Service, ConfigMap) was deleted: ensure the children again, now."""
        self._ensured = {marker for marker in self._ensured if marker[:2] != key}
        self.request(key)

    def _in_parallel(
        self, action: Callable[[dict[str, Any]], Any], objects: list[dict[str, Any]]
    ) -> list[Any]:
        """`action` on every object at once (the gang's pods are written in one round trip, not N); returns
        each result or the exception it raised, in order."""
        if len(objects) <= 1:
            outcomes: list[Any] = []
            for obj in objects:
                try:
                    outcomes.append(action(obj))
                except Exception as failure:
                    outcomes.append(failure)
            return outcomes
        futures = [self._pool().submit(action, obj) for obj in objects]
        results: list[Any] = []
        for future in futures:
            raised = future.exception()
            results.append(raised if raised is not None else future.result())
        return results

    def _pool(self) -> ThreadPoolExecutor:
        """The threads that make a reconcile's independent requests at once."""
        if self._writers is None:
            self._writers = ThreadPoolExecutor(32, thread_name_prefix="writes")
        return self._writers

    def _read(
        self, key: JobKey, with_workload: bool
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, Any] | None]:
        """The job, its worker pods and (`with_workload`) its Kueue Workload, read fresh and all at once.

        One after another they were three round trips on the path from Kueue's admission to the gang's pods,
        and on a busy API server each takes up to a second (benchmarks/README.md, operator_queued). Returns
        (job or None, pods, Workload or None); raises the first read's error (ApiError, connection errors).
        """
        namespace, name = key
        reads: list[Callable[[], Any]] = [
            lambda: self.kube.get_job(namespace, name),
            lambda: self.kube.list_pods(namespace, names.worker_selector(name)),
        ]
        if with_workload:
            reads.append(lambda: self.workloads.read(namespace, name))
        futures = [self._pool().submit(read) for read in reads]
        answers = [future.result() for future in futures]
        return answers[0], answers[1], answers[2] if with_workload else None

    def _is_new(self, key: JobKey) -> bool:
        return key not in self._reconciled

    def _reconcile_failed(self, key: JobKey, error: Exception, attempts: int, retry_in: float) -> None:
        self.metrics.reconcile_errors.inc()
        body = self._seen.get(key)
        if body is not None and (attempts in (3, 10) or attempts % 50 == 0):
            # A persistent error (RBAC, admission) must be visible on the job itself.
            message = f"reconcile failing ({attempts} attempts), retrying in {retry_in:.0f}s: {error}"
            self.events.post(body, JobEvent("Warning", "ReconcileError", message))

    def shutdown(self) -> None:
        self.queue.shutdown()
        self.events.shutdown()
        if self._writers is not None:
            self._writers.shutdown(wait=False, cancel_futures=True)

    # --- one reconcile (worker thread) ------------------------------------------------------------------------

    def reconcile(self, key: JobKey) -> float | None:
        """Read job + pods, plan, write. Returns seconds until the next look (None: only on events).

        Raises ApiError (or connection errors) for the caller to retry with backoff.
        """
        namespace, name = key
        started = time.monotonic()
        # The first look at a job no operator has touched skips both reads: its watch event is as fresh as a
        # GET, and it cannot have pods yet. (If an earlier operator process created them and died before
        # writing the status, creating them again answers AlreadyExists, and the status patch, guarded by
        # the resourceVersion, sends any stale view back through the full path.) Every later look reads
        # fresh, so no decision about existing pods is ever taken on a cached view.
        untouched = self._untouched.pop(key, None) if key not in self._reconciled else None
        self._reconciled.add(key)
        # A job that was queued when last read has its Workload read with it: that Workload's event (Kueue
        # admitted it) is what most often brings it here.
        with_workload = self.options.kueue and key in self._queued and not untouched
        body, raw_pods, read_workload = (untouched, [], None) if untouched else self._read(key, with_workload)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.metrics.observe_phase(key, None)
            return None
        job = ObservedJob.from_body(body)
        if queue_name(job.labels) is not None:
            self._queued.add(key)
        else:
            self._queued.discard(key)
        self._seen[key] = {"metadata": {k: body["metadata"][k] for k in ("name", "namespace", "uid")}}
        pods, problems = self._observe_pods(job, raw_pods)
        admission, workload = (None, None)
        if self.options.kueue and not untouched:  # (a brand-new job has no Workload yet)
            if with_workload:
                admission, workload = self.workloads.judge(job, read_workload)
            else:
                admission, workload = self.workloads.observe(job)
        now = datetime.now(UTC)
        result = plan(job, pods, now, self.options, admission)
        if self.options.kueue:
            image = (result.spec.kubernetes.image if result.spec else None) or self.options.default_image
            retry = self.workloads.apply(job, result, workload, image, now)
            if retry is not None:
                result.requeue(retry)
        existed = self._write_children_and_workers(key, job, result, pods, problems, now, bool(untouched))
        if untouched and existed:
            return 0.0  # pods of that name exist (ours from an earlier process, or stale): look properly
        patch = status_patch(body.get("status") or {}, result.status)
        if patch:
            try:
                written = self.kube.patch_job_status(
                    namespace, name, patch, body["metadata"].get("resourceVersion")
                )
                self._own_writes[key] = str(written.get("metadata", {}).get("resourceVersion", ""))
            except ApiError as error:
                if error.status == 409:
                    return 0.0  # the job changed under us: re-read and re-plan right away
                raise
            restarts = result.status.restarts - job.status.restarts
            if restarts > 0:
                self.metrics.restarts.inc(restarts)
            for event in result.events:
                self.events.post(body, event)
            if result.status.phase != job.status.phase:
                logger.info(
                    "job %s/%s: %s -> %s: %s",
                    namespace,
                    name,
                    job.status.phase,
                    result.status.phase,
                    result.status.message,
                )
        uids = {pod.name: pod.uid for pod in pods}
        grace = deletion_grace_seconds(result.spec, result.status)
        for pod_name in result.delete_workers:
            if pod_name not in result.force_delete_workers:
                self.kube.delete_pod(namespace, pod_name, uids.get(pod_name, ""), grace_seconds=grace)
        for pod_name in result.force_delete_workers:
            logger.warning("job %s/%s: force-deleting %s, stuck Terminating", namespace, name, pod_name)
            self.kube.delete_pod(namespace, pod_name, uids.get(pod_name, ""), grace_seconds=0)
        if result.delete_job:
            logger.info("job %s/%s: ttlSecondsAfterFinished passed, deleting it", namespace, name)
            self.kube.delete_job(namespace, name, job.uid)
        self.metrics.observe_phase(key, str(result.status.phase) if result.status.phase else None)
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        return result.requeue_after

    def _observe_pods(
        self, job: ObservedJob, raw_pods: list[dict[str, Any]]
    ) -> tuple[list[WorkerPod], list[ChildProblem]]:
        """The job's worker pods (`raw_pods`, as listed) as the planner sees them, and a problem for each pod
        under a worker's name that the job does not control (left alone, never deleted)."""
        pods: list[WorkerPod] = []
        problems: list[ChildProblem] = []
        for raw in raw_pods:
            observed = observe_pod(raw)
            if observed is None:
                continue
            control = control_of(raw, job.name, job.uid)
            if control == Control.PREVIOUS_JOB:
                # A leftover of a deleted job of the same name: stale, deleted before its name is reused.
                observed = dataclasses.replace(observed, attempt=-1)
            elif control == Control.FOREIGN:
                problems.append(not_controlled("Pod", observed.name, raw))
                continue
            pods.append(observed)
        return pods, problems

    def _children_to_ensure(self, job: ObservedJob, result: Plan) -> list[dict[str, Any]]:
        """Service, ConfigMap and progress RBAC, when this process has not yet ensured them for this spec
        generation and attempt (built once per reconcile: the ConfigMap's YAML is not free)."""
        if not result.ensure_children or result.spec is None:
            return []
        if result.status.phase in FINAL_PHASES:
            return []
        if self._ensured_marker(job, result) in self._ensured:
            return []
        ref = JobRef(job.name, job.namespace, job.uid)
        children = build_job_children(ref, result.spec)
        if wants_pod_group(result.spec):
            image = result.spec.kubernetes.image or self.options.default_image
            worker = build_worker_pod(WorkerContext(ref, result.spec, 0, result.status.attempt, image))
            pod_group = build_pod_group(ref, result.spec, worker)
            if pod_group is not None:
                children.append(pod_group)
        return children

    @staticmethod
    def _ensured_marker(job: ObservedJob, result: Plan) -> tuple[str, str, str, int, int]:
        return (job.namespace, job.name, job.uid, job.generation, result.status.attempt)

    def _write_children_and_workers(
        self,
        key: JobKey,
        job: ObservedJob,
        result: Plan,
        pods: list[WorkerPod],
        problems: list[ChildProblem],
        now: datetime,
        untouched: bool,
    ) -> int:
        """Ensure the children and create the plan's workers; returns how many workers already existed.

        Order (`child_order`): every child a worker uses (ConfigMap, ServiceAccount, Service, Role, PodGroup)
        at once, then the workers, only when none of those has a blocking problem (`report_children` clears
        them), in one parallel batch with the RoleBinding, whose problems are reported but hold nothing (it only
        serves live progress: `ownership.PROGRESS_ONLY_KINDS`). So a worker never mounts a user's ConfigMap or runs
        with a user's ServiceAccount's token, not even for a moment, and the path from apply to the pods is still
        two round trips. A job whose children had a problem last time ensures all of them first.
        """
        children = self._children_to_ensure(job, result)
        order = order_children(children, troubled=key in self._child_trouble)
        with_workers = order.with_workers
        writer = ChildWriter(self.kube, self._in_parallel)
        problems = problems + writer.ensure(job.name, job.uid, order.before_workers)
        blocked = any(p.blocking for p in problems)
        if blocked and with_workers:
            # Off the fast path now (a blocking problem holds the workers back): report every problem at once.
            problems += writer.ensure(job.name, job.uid, with_workers, known=problems)
            with_workers = []
        if blocked:
            report_children(result, problems, pods, now, job.generation, self.options)  # holds the workers
        existed, found = self._create_workers(job, result, untouched, writer, with_workers)
        problems = problems + found
        if not blocked or found:
            # Reported once, with what the workers' batch found too (a user's progress RoleBinding holds
            # nothing: the same report whether it was found before the workers or with them).
            created = bool(result.create_workers)
            report_children(result, problems, pods, now, job.generation, self.options, created)
        if not problems:
            self._child_trouble.discard(key)
            if children:
                self._ensured.add(self._ensured_marker(job, result))
        else:
            self._child_trouble.add(key)
            logger.warning(
                "job %s/%s: %s", job.namespace, job.name, "; ".join(p.describe() for p in problems)
            )
        return existed

    def _create_workers(
        self,
        job: ObservedJob,
        result: Plan,
        untouched: bool,
        writer: ChildWriter,
        with_workers: list[dict[str, Any]],
    ) -> tuple[int, list[ChildProblem]]:
        """Create the plan's worker pods, and ensure the children `with_workers`, in one parallel batch;
        returns how many workers already existed, and the problems: the children's, and one for each worker
        that exists and is someone else's (a pod without our labels is not in the listing the planner saw).

        Raises what is not an answer of the API server (connection errors), for the caller's retry.
        """
        pods = self._worker_pods(job, result)
        if not pods and not with_workers:
            return 0, []

        def write(obj: dict[str, Any]) -> Any:
            if obj["kind"] == "Pod":
                return self.kube.create(obj)
            return writer.ensure_one(job.name, job.uid, obj)

        outcomes = self._in_parallel(write, pods + with_workers)
        problems: list[ChildProblem] = []
        for outcome in outcomes[len(pods) :]:
            if isinstance(outcome, ChildProblem):
                problems.append(outcome)
            elif isinstance(outcome, Exception):
                raise outcome
        existed = 0
        taken: list[str] = []
        failures: list[str] = []
        for pod, outcome in zip(pods, outcomes[: len(pods)], strict=True):
            if isinstance(outcome, ApiError):
                failures.append(f"{pod['metadata']['name']}: {outcome}")
            elif isinstance(outcome, Exception):
                raise outcome
            elif outcome:
                self.metrics.pods_created.inc()
            else:
                existed += 1
                taken.append(pod["metadata"]["name"])
        if not untouched:  # (a new job's first look saw no pods at all: it looks again properly first)
            foreign: list[ChildProblem] = []
            for name in taken:
                current = self.kube.get("Pod", job.namespace, name)
                if current is not None and control_of(current, job.name, job.uid) == Control.FOREIGN:
                    foreign.append(not_controlled("Pod", name, current))
            result.status.workers.created -= len(foreign)
            problems += foreign
        if failures:
            # Admission (quota, pod security, a webhook) refused a worker: say so and keep trying.
            result.status.workers.created -= len(failures)
            result.status.message = tail("cannot create worker pods: " + "; ".join(failures), 600)
            result.events.append(JobEvent("Warning", "FailedCreatePod", tail(failures[0], 900)))
            result.requeue(10.0)
        return existed, problems

    def _worker_pods(self, job: ObservedJob, result: Plan) -> list[dict[str, Any]]:
        """The worker pods the plan creates (none when it creates none)."""
        if not result.create_workers or result.spec is None:
            return []
        ref = JobRef(job.name, job.namespace, job.uid)
        image = result.spec.kubernetes.image or self.options.default_image
        placement = result.placement
        return [
            build_worker_pod(
                WorkerContext(
                    ref,
                    result.spec,
                    index,
                    result.status.attempt,
                    image,
                    flavor_node_selector=placement.node_selector if placement else None,
                    flavor_tolerations=tuple(placement.tolerations) if placement else (),
                ),
                job.generation,
            )
            for index in result.create_workers
        ]
