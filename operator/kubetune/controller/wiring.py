"""kopf wiring: watch events become work-queue requests; kopf contributes the watch streams, peering (two
replicas: one active), the liveness endpoint and logging.

No kopf change handlers are used, so kopf writes nothing to the objects (no annotations, no finalizers).
The watches of the operator's children (pods, Services, ConfigMaps) carry a server-side label selector, so
the operator receives the events of its own children only, not of every pod in the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from kubetune.controller import connection, names
from kubetune.controller.reconciler import Reconciler
from kubetune.spec.models import API_GROUP, API_VERSION, PLURAL


@dataclass(frozen=True)
class OperatorSettings:
    """How `kubetune operator` runs (from its command line)."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    peering_name: str = "kubetune"
    standalone: bool = False
    priority: int = 0
    batch_window: float = 0.01
    pod_event_batch_seconds: float = 0.1
    kueue: bool = False  # watch the jobs' Kueue Workloads (admission, preemption)


# The watched children: label filter (client side, per handler) and the same as a server-side selector.
CHILD_LABELS: dict[str, Any] = {names.LABEL_MANAGED_BY: names.MANAGED_BY, names.LABEL_JOB: kopf.PRESENT}
CHILD_SELECTOR = f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY},{names.LABEL_JOB}"
CHILD_WATCHES = ("pods", "services", "configmaps")
WORKLOAD_RESOURCE = ("kueue.x-k8s.io/v1beta2", "workloads")
KOPF_WORKER_IDLE_SECONDS = 0.25  # see `configure`


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
        # The same credentials as our own requests: in-cluster ServiceAccount, else $KUBECONFIG (read again
        # at each login: kopf logs in again when the API server refuses a rotated token).
        return connection.login(**kwargs)

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
        # kopf keeps a task per watched object until no event came for this long, and it holds the object's
        # last body (a whole pod) meanwhile: with 5 s (kopf's default), a burst of 1,000 jobs keeps thousands
        # of them alive. Our handlers only queue a request, so a short wait loses nothing: a later event of the
        # object starts a new task (kopf removes the idle one's queue in the same step, so no event is lost).
        settings.queueing.idle_timeout = KOPF_WORKER_IDLE_SECONDS
        # Sent to the API server as the watch's labelSelector: the operator receives events of its own
        # children only, not of every pod in the cluster (the `labels=` filters below act on the client).
        for plural in CHILD_WATCHES:
            settings.watching.label_selectors["v1", plural] = CHILD_SELECTOR
        if operator_settings.kueue:
            settings.watching.label_selectors[WORKLOAD_RESOURCE] = CHILD_SELECTOR

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
        reconciler.announce_worker_warnings(key, body)
        changed = reconciler.changed_for_us(key, body)
        if reconciler.is_own_write(key, meta.get("resourceVersion")) or not changed:
            return  # the echo of our own status patch, or only live progress: nothing new to decide on
        reconciler.request(key)

    @kopf.on.event("", "v1", "pods", labels=CHILD_LABELS, registry=registry)
    async def pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
        if namespace is not None:
            # A gang's pods change together (scheduled, started, ended): batch their events into one look.
            reconciler.request(
                (namespace, labels[names.LABEL_JOB]), delay=operator_settings.pod_event_batch_seconds
            )

    @kopf.on.event("", "v1", "services", labels=CHILD_LABELS, registry=registry)
    async def service_event(event: Any, labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
        if namespace is not None and event.get("type") == "DELETED":
            reconciler.child_deleted((namespace, labels[names.LABEL_JOB]))

    @kopf.on.event("", "v1", "configmaps", labels=CHILD_LABELS, registry=registry)
    async def config_map_event(
        event: Any, labels: Mapping[str, str], namespace: str | None, **_: Any
    ) -> None:
        if namespace is not None and event.get("type") == "DELETED":
            reconciler.child_deleted((namespace, labels[names.LABEL_JOB]))

    if settings.kueue:

        @kopf.on.event(*WORKLOAD_RESOURCE, labels=CHILD_LABELS, registry=registry)
        async def workload_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
            # Kueue admitted, preempted or requeued a job's Workload: the reconcile creates or stops the gang,
            # so it must not wait behind new jobs' first reconciles (in a burst of applies it would, 3 s a
            # time: benchmarks/README.md, operator_queued).
            if namespace is not None:
                reconciler.request((namespace, labels[names.LABEL_JOB]), urgent=True)

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        reconciler.shutdown()

    return registry


class PeeringPauseFollower(logging.Handler):
    """Pauses and resumes the Reconciler with kopf's peering. kopf stops its own handlers while a replica of
    higher priority is alive, but offers no hook for work it does not run itself (our requeue timers and
    work queue), so this follows the two log records its peering engine writes on every switch."""

    LOGGER = "kopf._core.engines.peering"

    def __init__(self, reconciler: Reconciler, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.reconciler = reconciler
        self.loop = loop

    def install(self) -> None:
        """Listen to kopf's peering logger (whose INFO records must then be created at all)."""
        peering = logging.getLogger(self.LOGGER)
        if not peering.isEnabledFor(logging.INFO):
            peering.setLevel(logging.INFO)
        peering.addHandler(self)

    def remove(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Pausing"):
            self.loop.call_soon_threadsafe(self.reconciler.pause)
        elif message.startswith("Resuming"):
            self.loop.call_soon_threadsafe(self.reconciler.resume)


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
    follower = PeeringPauseFollower(reconciler, loop)
    follower.install()
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
        follower.remove()
        loop.close()
