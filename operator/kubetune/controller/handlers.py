"""kopf wiring: watch events become reconcile requests; a reconcile reads, plans, and writes. I/O only.

Watch events (of FineTuneJobs and of their worker pods) only *trigger* work; each reconcile then reads the
job and its pods fresh from the API server and decides with the pure `plan()`. The one exception is the
first look at a job no operator has touched, which acts on its watch event alone (see `reconcile`): it
is on the path from `kubectl apply` to the pods, and such a job can have no pods to read. Requests for
one job are coalesced and never run concurrently (a burst of pod events is one or two reconciles),
different jobs run in parallel on a thread pool. Time-based transitions (backoff, deadlines, scheduling
timeouts, TTL) come back through `requeue_after`, like controller-runtime's RequeueAfter.

kopf contributes the watch streams, peering (two replicas: one active), the liveness endpoint and logging.
No kopf change handlers are used, so kopf writes nothing to the objects (no annotations, no finalizers).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from kubetune.controller import names
from kubetune.controller.children import JobRef, WorkerContext, build_job_children, build_worker_pod
from kubetune.controller.kube import ApiError, Kube
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.observe import format_time, observe_pod, tail
from kubetune.controller.plan import JobEvent, ObservedJob, Plan, PlanOptions, plan, status_patch
from kubetune.spec.models import API_GROUP, API_VERSION, KIND, PLURAL

logger = logging.getLogger("kubetune.operator")

JobKey = tuple[str, str]  # (namespace, name)
MAX_ERROR_DELAY = 30.0
# How long a running job's reconcile may be held back while new jobs' pods are being created.
FOLLOW_UP_MAX_DELAY = 3.0


@dataclass
class _KeyState:
    running: bool = False
    dirty: bool = False
    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0
    errors: int = 0
    task: asyncio.Task[None] | None = None


@dataclass
class Reconciler:
    """Reconciles FineTuneJobs: `request()` from the event loop, `reconcile()` on worker threads."""

    kube: Kube
    options: PlanOptions = field(default_factory=PlanOptions)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    threads: int = 16
    _states: dict[JobKey, _KeyState] = field(default_factory=dict)
    _ensured: set[tuple[str, str, str, int]] = field(default_factory=set)
    # resourceVersion of our own last status write per job: its watch event needs no reconcile.
    _own_writes: dict[JobKey, str] = field(default_factory=dict)
    _fingerprints: dict[JobKey, str] = field(default_factory=dict)
    _seen: dict[JobKey, dict[str, Any]] = field(default_factory=dict)  # identity, for error Events
    # Jobs no operator has touched yet (no status), as their watch event showed them: see `reconcile`.
    _untouched: dict[JobKey, dict[str, Any]] = field(default_factory=dict)
    _reconciled: set[JobKey] = field(default_factory=set)
    _executor: ThreadPoolExecutor | None = None
    _first_executor: ThreadPoolExecutor | None = None
    _new_in_flight: int = 0  # first reconciles of new jobs queued or running (event loop only)
    _quiet: asyncio.Event | None = None  # set while _new_in_flight is 0
    _events: ThreadPoolExecutor | None = None
    _writers: ThreadPoolExecutor | None = None
    _instance: str = field(default_factory=socket.gethostname)

    # --- scheduling (event loop) ------------------------------------------------------------------------------

    def request(self, key: JobKey, delay: float = 0.0) -> None:
        """Reconcile `key` now (coalesced with a running reconcile) or after `delay` seconds."""
        loop = asyncio.get_running_loop()
        state = self._states.setdefault(key, _KeyState())
        if delay > 0:
            due = loop.time() + delay
            if state.timer is not None and state.timer_due <= due:
                return  # an earlier wake-up is already scheduled
            if state.timer is not None:
                state.timer.cancel()
            state.timer = loop.call_later(delay, self._timer_fired, key)
            state.timer_due = due
            return
        if state.running:
            state.dirty = True
            return
        state.running = True
        state.task = loop.create_task(self._run(key), name=f"reconcile {key[0]}/{key[1]}")

    def is_own_write(self, key: JobKey, resource_version: str | None) -> bool:
        """True when a watch event shows exactly the object our last status patch produced."""
        return bool(resource_version) and self._own_writes.get(key) == resource_version

    def changed_for_us(self, key: JobKey, body: Mapping[str, Any]) -> bool:
        """False when a job's watch event differs from the last one only in what the operator does not decide
        on: rank 0's live progress and metrics (written every few seconds per running job), annotations."""
        metadata = body.get("metadata") or {}
        status = {k: v for k, v in (body.get("status") or {}).items() if k not in ("progress", "metrics")}
        fingerprint = json.dumps(
            [metadata.get("uid"), metadata.get("generation"), metadata.get("deletionTimestamp"), status],
            sort_keys=True,
            default=str,
        )
        if self._fingerprints.get(key) == fingerprint:
            return False
        self._fingerprints[key] = fingerprint
        return True

    def saw_untouched(self, key: JobKey, body: Mapping[str, Any]) -> None:
        """Remember a job's body from its watch event while no operator has written its status yet."""
        if key not in self._reconciled and not (body.get("status") or {}).get("phase"):
            self._untouched[key] = dict(body)

    def _timer_fired(self, key: JobKey) -> None:
        state = self._states.get(key)
        if state is not None:
            state.timer = None
        self.request(key)

    def forget(self, key: JobKey) -> None:
        """The job is gone: drop its timers and bookkeeping."""
        state = self._states.pop(key, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()
        self._ensured = {marker for marker in self._ensured if marker[:2] != key}
        self._own_writes.pop(key, None)
        self._fingerprints.pop(key, None)
        self._seen.pop(key, None)
        self._untouched.pop(key, None)
        self._reconciled.discard(key)
        self.metrics.observe_phase(key, None)

    async def _run(self, key: JobKey) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="reconcile")
            # A new job's first reconcile (it creates the pods) must not queue behind the follow-up
            # reconciles of a burst of running jobs: it gets threads of its own.
            self._first_executor = ThreadPoolExecutor(self.threads, thread_name_prefix="first-reconcile")
        state = self._states[key]
        try:
            while True:
                state.dirty = False
                first = key not in self._reconciled
                if first:
                    self._count_new(+1)
                else:
                    await self._yield_to_new_jobs()
                try:
                    executor = self._first_executor if first else self._executor
                    requeue = await loop.run_in_executor(executor, self.reconcile, key)
                    state.errors = 0
                except Exception as error:  # an API hiccup must not kill the loop: retry with backoff
                    state.errors += 1
                    requeue = min(MAX_ERROR_DELAY, 0.5 * 2 ** (state.errors - 1))
                    self.metrics.reconcile_errors.inc()
                    logger.warning(
                        "reconcile of %s/%s failed (retry in %.1fs): %s", key[0], key[1], requeue, error
                    )
                    body = self._seen.get(key)
                    if body is not None and (state.errors in (3, 10) or state.errors % 50 == 0):
                        # A persistent error (RBAC, admission, quota) must be visible on the job itself.
                        message = f"reconcile failing ({state.errors} attempts), retrying: {error}"
                        self._event_executor().submit(
                            self._post_event, body, JobEvent("Warning", "ReconcileError", message)
                        )
                finally:
                    if first:
                        self._count_new(-1)
                if key not in self._states:
                    return  # forgotten (deleted) meanwhile
                if requeue is not None and not state.dirty:
                    if requeue <= 0:
                        state.dirty = True
                    else:
                        self.request(key, requeue)
                if not state.dirty:
                    return
        finally:
            state.running = False

    async def _yield_to_new_jobs(self) -> None:
        """While new jobs' first reconciles are queued or running, hold a running job's reconcile back, for at
        most FOLLOW_UP_MAX_DELAY: its status bookkeeping can wait a moment, and in a burst of new jobs it
        would otherwise share the API server (on a small control plane, saturated) with their pods (the
        effect is measured in benchmarks/README.md)."""
        if self._new_in_flight == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_new_jobs().wait(), FOLLOW_UP_MAX_DELAY)

    def _no_new_jobs(self) -> asyncio.Event:
        if self._quiet is None:
            self._quiet = asyncio.Event()
        return self._quiet

    def _count_new(self, change: int) -> None:
        self._new_in_flight += change
        if self._new_in_flight == 0:
            self._no_new_jobs().set()
        else:
            self._no_new_jobs().clear()

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
        if self._writers is None:
            self._writers = ThreadPoolExecutor(32, thread_name_prefix="writes")
        futures = [self._writers.submit(action, obj) for obj in objects]
        results: list[Any] = []
        for future in futures:
            raised = future.exception()
            results.append(raised if raised is not None else future.result())
        return results

    def _event_executor(self) -> ThreadPoolExecutor:
        # Events are posted off the reconcile path: they are informational and must not delay pods.
        if self._events is None:
            self._events = ThreadPoolExecutor(2, thread_name_prefix="events")
        return self._events

    def shutdown(self) -> None:
        for executor in (self._executor, self._first_executor, self._events, self._writers):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

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
        body = untouched or self.kube.get_job(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.metrics.observe_phase(key, None)
            return None
        job = ObservedJob.from_body(body)
        self._seen[key] = {"metadata": {k: body["metadata"][k] for k in ("name", "namespace", "uid")}}
        pods = []
        for raw in [] if untouched else self.kube.list_pods(namespace, names.worker_selector(name)):
            observed = observe_pod(raw)
            if observed is None:
                continue
            owners = {ref.get("uid") for ref in raw["metadata"].get("ownerReferences") or []}
            if job.uid not in owners:
                # A leftover of an earlier job of the same name: stale, to be deleted before we reuse names.
                observed = dataclasses.replace(observed, attempt=-1)
            pods.append(observed)
        result = plan(job, pods, datetime.now(UTC), self.options)
        children = self._children_to_ensure(job, result)
        self._ensure_children(job, children, before_workers=True, new=bool(untouched))
        existed = self._create_workers(job, result)
        if untouched and existed:
            return 0.0  # pods of that name exist (ours from an earlier process, or stale): look properly
        self._ensure_children(job, children, before_workers=False, new=bool(untouched))
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
                self._event_executor().submit(self._post_event, body, event)
            if result.status.phase != job.status.phase:
                logger.info(
                    "job %s/%s: %s -> %s: %s",
                    namespace,
                    name,
                    job.status.phase,
                    result.status.phase,
                    result.status.message,
                )
        for pod_name in result.delete_workers:
            self.kube.delete_pod(namespace, pod_name)
        if result.delete_job:
            logger.info("job %s/%s: ttlSecondsAfterFinished passed, deleting it", namespace, name)
            self.kube.delete_job(namespace, name, job.uid)
        self.metrics.observe_phase(key, str(result.status.phase) if result.status.phase else None)
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        return result.requeue_after

    def _children_to_ensure(self, job: ObservedJob, result: Plan) -> list[dict[str, Any]]:
        """Service, ConfigMap and progress RBAC, when this process has not yet ensured them for this spec
        generation (built once per reconcile: the ConfigMap's YAML is not free)."""
        if not result.ensure_children or result.spec is None:
            return []
        if (job.namespace, job.name, job.uid, job.generation) in self._ensured:
            return []
        return build_job_children(JobRef(job.name, job.namespace, job.uid), result.spec)

    def _ensure_children(
        self, job: ObservedJob, children: list[dict[str, Any]], before_workers: bool, new: bool = False
    ) -> None:
        """Create (a new job) or server-side apply `children`: before the workers only the ServiceAccount
        (pods naming a missing one are refused at admission); the rest right after the pods, so they do not
        delay them (the kubelet waits for the ConfigMap, ranks resolve the Service only once they run)."""
        wanted = [c for c in children if (c["kind"] == "ServiceAccount") == before_workers]

        def ensure(child: dict[str, Any]) -> None:
            # A new job's children are created (on the path to its pods, and cheaper for the API server
            # than an apply); one that exists already is applied to converge it.
            if new and self.kube.create(child):
                return
            try:
                self.kube.apply(child)
            except ApiError as error:
                if error.status != 422 or not self._replace_foreign_child(child, job.uid):
                    raise

        # Two round trips: a RoleBinding is checked against its Role, so it goes once the rest exist.
        for wave in (
            [c for c in wanted if c["kind"] != "RoleBinding"],
            [c for c in wanted if c["kind"] == "RoleBinding"],
        ):
            for outcome in self._in_parallel(ensure, wave):
                if isinstance(outcome, Exception):
                    raise outcome
        if children and not before_workers:
            self._ensured.add((job.namespace, job.name, job.uid, job.generation))

    def _replace_foreign_child(self, child: dict[str, Any], uid: str) -> bool:
        """When the existing object of `child`'s name is controlled by another owner (the job deleted and
        applied again before the garbage collector removed its children), delete it and create `child`:
        an apply over it would give it two controllers, which the API refuses (422). Returns False when the
        object is not such a leftover."""
        metadata = child["metadata"]
        current = self.kube.get(child["kind"], metadata["namespace"], metadata["name"])
        if current is None:
            return self.kube.create(child)
        refs = current["metadata"].get("ownerReferences") or []
        controllers = {ref.get("uid") for ref in refs if ref.get("controller")}
        if not controllers or uid in controllers:
            return False
        logger.info("replacing %s %s left by an earlier job of that name", child["kind"], metadata["name"])
        self.kube.delete(child["kind"], metadata["namespace"], metadata["name"], current["metadata"]["uid"])
        return self.kube.create(child)

    def _create_workers(self, job: ObservedJob, result: Plan) -> int:
        """Create the plan's worker pods; returns how many already existed."""
        if not result.create_workers or result.spec is None:
            return 0
        existed = 0
        ref = JobRef(job.name, job.namespace, job.uid)
        image = result.spec.kubernetes.image or self.options.default_image
        failures: list[str] = []
        pods = [
            build_worker_pod(
                WorkerContext(ref, result.spec, index, result.status.attempt, image), job.generation
            )
            for index in result.create_workers
        ]
        for pod, outcome in zip(pods, self._in_parallel(self.kube.create, pods), strict=True):
            if isinstance(outcome, ApiError):
                failures.append(f"{pod['metadata']['name']}: {outcome}")
            elif isinstance(outcome, Exception):
                raise outcome
            elif outcome:
                self.metrics.pods_created.inc()
            else:
                existed += 1
        if failures:
            # Admission (quota, pod security, a webhook) refused a worker: say so and keep trying.
            result.status.workers.created -= len(failures)
            result.status.message = tail("cannot create worker pods: " + "; ".join(failures), 600)
            result.events.append(JobEvent("Warning", "FailedCreatePod", tail(failures[0], 900)))
            result.requeue(10.0)
        return existed

    def _post_event(self, body: dict[str, Any], event: JobEvent) -> None:
        metadata = body["metadata"]
        now = format_time(datetime.now(UTC))
        record = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "type": event.type,
            "reason": event.reason,
            "message": tail(event.message, 1000),
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": names.MANAGED_BY,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.kube.request(
                "POST", f"/api/v1/namespaces/{metadata['namespace']}/events", record, decode=False
            )
        except ApiError as error:  # an Event is nice to have; never worth failing a reconcile
            logger.warning("could not post event %s on %s: %s", event.reason, metadata["name"], error)


@dataclass(frozen=True)
class OperatorSettings:
    """How `kubetune operator` runs (from its command line)."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    peering_name: str = "kubetune"
    standalone: bool = False
    priority: int = 0
    batch_window: float = 0.01
    pod_event_batch_seconds: float = 0.1


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """kopf deep-copies every watched body to diff it for change handlers; we have none (watch events only
    trigger reconciles), and that copy was most of the operator's CPU per pod event. Nothing is stored."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return kopf.BodyEssence()

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def build_registry(reconciler: Reconciler, settings: OperatorSettings) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers (a fresh one, so importing this module registers nothing)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # The same credentials as our own client: in-cluster ServiceAccount, else $KUBECONFIG.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # we post our own Events, only on phase transitions
        settings.persistence.diffbase_storage = NoDiffBaseStorage()
        settings.peering.name = operator_settings.peering_name
        settings.peering.priority = operator_settings.priority
        settings.peering.standalone = operator_settings.standalone
        settings.peering.mandatory = False  # without the kopf.dev peering CRDs: run alone, with a warning
        # kopf waits this long to batch the events of one object; ours coalesce anyway, so keep it short.
        settings.batching.batch_window = operator_settings.batch_window
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    operator_settings = settings

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    async def job_event(event: Any, body: Any, name: str, namespace: str | None, meta: Any, **_: Any) -> None:
        if namespace is None:
            return
        key = (namespace, name)
        if event.get("type") == "DELETED":
            reconciler.forget(key)
            return
        reconciler.saw_untouched(key, body)
        changed = reconciler.changed_for_us(key, body)
        if reconciler.is_own_write(key, meta.get("resourceVersion")) or not changed:
            return  # the echo of our own status patch, or only live progress: nothing new to decide on
        reconciler.request(key)

    @kopf.on.event(
        "",
        "v1",
        "pods",
        labels={names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_JOB: kopf.PRESENT},
        registry=registry,
    )
    async def pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
        if namespace is not None:
            # A gang's pods change together (scheduled, started, ended): batch their events into one look.
            reconciler.request(
                (namespace, labels[names.LABEL_JOB]), delay=operator_settings.pod_event_batch_seconds
            )

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        reconciler.shutdown()

    return registry


def run_operator(
    reconciler: Reconciler,
    settings: OperatorSettings,
    liveness_endpoint: str | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
    on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None,
) -> None:
    """Run kopf with our handlers until stopped (SIGTERM/SIGINT or `stop_flag`)."""
    registry = build_registry(reconciler, settings)
    loop = asyncio.new_event_loop()
    if on_loop is not None:
        on_loop(loop)
    namespaces = list(settings.namespaces)
    kwargs: dict[str, Any] = {"clusterwide": not namespaces, "namespaces": namespaces}
    try:
        kopf.run(
            loop=loop,
            registry=registry,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            standalone=settings.standalone or None,
            **kwargs,
        )
    finally:
        loop.close()
