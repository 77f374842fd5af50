"""Live progress from rank 0 into its FineTuneJob's status (torch-free; runs inside the trainer).

Least privilege: the operator gives each job's workers a ServiceAccount whose Role allows `get` and `patch`
on `finetunejobs/status` for *that one job* (`resourceNames`), nothing else: no spec, no other jobs, no
pods, no secrets. A compromised worker could at worst scribble on its own job's status; the fields the
operator owns (phase, conditions, restarts) are recomputed from the pods on every reconcile. This sink
writes only `status.progress`, `status.metrics`, `status.lastCheckpoint` and `status.tracking` (the fields
`TrackingStatus` declares), as JSON merge patches (so it never clobbers the operator's fields), rate-limited,
from a background thread: a slow or unreachable API server never stalls training, and failures are logged,
never raised.

Without live reporting (runPolicy.reportProgress: false) the final metrics still reach the status: rank 0
writes the JobSummary to its termination message and the operator reads it from the pod.

Hooked into the trainer's reporter through the `kubetune.sinks` entry point (`make_sink`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubetune.contract import NodeContext
from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune.mappings import deep_merge
from kubetune.spec.models import FineTuneJob
from kubetune.spec.status import TrackingStatus

log = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 5.0  # at most one status write per interval for step events
CLOSE_TIMEOUT_SECONDS = 10.0
# Events that are worth writing at once (rare, and what a user watches for).
URGENT_EVENTS = {
    EventKind.STARTED,
    EventKind.EVAL,
    EventKind.FINISHED,
    EventKind.FAILED,
    EventKind.PREEMPTED,
    EventKind.WARNING,
}

Patcher = Callable[[dict[str, Any]], None]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress(step: int, total: int, epoch: float, eta: float | None) -> dict[str, Any]:
    percent = round(100.0 * step / total, 2) if total else 0.0
    summary = f"{step}/{total} ({percent:.0f}%)" if total else str(step)
    progress: dict[str, Any] = {
        "step": step,
        "totalSteps": total,
        "epoch": round(epoch, 4),
        "percent": percent,
        "summary": summary,
        "updateTime": _now(),
    }
    if _finite(eta) is not None:
        progress["etaSeconds"] = round(float(eta or 0.0), 1)
    return progress


def _metrics(
    loss: float | None, samples_per_second: float | None, evals: dict[str, float], primary_metric: str
) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    if _finite(loss) is not None:
        metrics["trainLoss"] = loss
    if _finite(samples_per_second) is not None:
        metrics["samplesPerSecond"] = samples_per_second
    clean = {k: v for k, v in evals.items() if _finite(v) is not None}
    if clean:
        metrics["eval"] = clean
        for key in (f"eval_{primary_metric}", primary_metric):
            if key in clean:
                metrics["primary"] = f"{primary_metric}={clean[key]:.4g}"
                break
    return metrics


def _tracking(reported: dict[str, Any] | None) -> dict[str, Any] | None:
    """status.tracking from what rank 0 reported, through the status model: only its typed fields (camelCase),
    nothing else, those it did not set as nulls (in a merge patch a null removes the key: a later attempt's rank 0
    replaces the whole of status.tracking, leaving no field of an earlier attempt's runs beside its own); None when
    nothing was reported or it does not fit the model (logged: the sink never raises)."""
    if reported is None:
        return None
    try:
        tracking = TrackingStatus.model_validate(reported)
    except ValidationError as error:
        log.warning("status.tracking not written: rank 0 reported %r: %s", reported, error)
        return None
    return tracking.model_dump(by_alias=True, mode="json")


def status_patch_for_event(event: ProgressEvent, primary_metric: str) -> dict[str, Any]:
    """The `status` merge patch that reports one progress event."""
    patch: dict[str, Any] = {
        "progress": _progress(event.step, event.total_steps, event.epoch, event.eta_seconds)
    }
    metrics = _metrics(event.loss, event.samples_per_second, event.metrics, primary_metric)
    if metrics:
        patch["metrics"] = metrics
    tracking = _tracking(event.tracking)
    if tracking is not None:
        patch["tracking"] = tracking  # whole: unset fields are nulls, and a merge patch replaces its warnings
    if event.event == EventKind.CHECKPOINT and _finite(event.checkpoint_seconds) is not None:
        patch["lastCheckpoint"] = {
            "step": event.step,
            "saveSeconds": round(float(event.checkpoint_seconds or 0.0), 3),
            "time": _now(),
            **({"sizeBytes": event.checkpoint_bytes} if event.checkpoint_bytes is not None else {}),
        }
    return patch


def status_patch_for_summary(summary: JobSummary, primary_metric: str) -> dict[str, Any]:
    """The `status` merge patch that reports the final summary."""
    total = summary.total_steps or summary.step
    eta = 0.0 if summary.outcome == EventKind.FINISHED else None
    patch: dict[str, Any] = {"progress": _progress(summary.step, total, summary.epoch, eta)}
    metrics = _metrics(summary.train_loss, summary.samples_per_second, summary.metrics, primary_metric)
    if summary.model_path:
        metrics["modelPath"] = summary.model_path
    if metrics:
        patch["metrics"] = metrics
    return patch


class StatusSink:
    """A progress sink (`emit`, `close`) that merge-patches its FineTuneJob's status in the background."""

    def __init__(
        self,
        patcher: Patcher,
        primary_metric: str = "accuracy",
        min_interval: float = MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._patcher = patcher
        self._primary = primary_metric
        self._min_interval = min_interval
        self._clock = clock
        self._pending: dict[str, Any] | None = None
        self._urgent = False
        self._last_sent = -math.inf
        self._closed = False
        self._failures = 0
        self._writes = 0
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="kubetune-status-sink", daemon=True)
        self._thread.start()

    @property
    def writes(self) -> int:
        """Status writes that succeeded so far."""
        return self._writes

    def emit(self, event: ProgressEvent) -> None:
        """Queue the event's progress/metrics (coalesced with what is not yet written). Never blocks."""
        self._queue(status_patch_for_event(event, self._primary), urgent=event.event in URGENT_EVENTS)

    def close(self, summary: JobSummary) -> None:
        """Write the final summary (waits up to CLOSE_TIMEOUT_SECONDS) and stop the background thread."""
        self._queue(status_patch_for_summary(summary, self._primary), urgent=True)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(CLOSE_TIMEOUT_SECONDS)

    def _queue(self, patch: dict[str, Any], urgent: bool) -> None:
        with self._condition:
            if self._closed:
                return
            self._pending = patch if self._pending is None else deep_merge(self._pending, patch)
            self._urgent = self._urgent or urgent
            self._condition.notify_all()

    def _loop(self) -> None:
        while True:
            with self._condition:
                while True:
                    if self._pending is not None:
                        wait = self._last_sent + self._min_interval - self._clock()
                        if self._urgent or self._closed or wait <= 0:
                            break
                        self._condition.wait(wait)
                    elif self._closed:
                        return
                    else:
                        self._condition.wait()
                patch, self._pending, self._urgent = self._pending, None, False
                closing = self._closed
            self._send(patch)
            if closing and self._pending is None:
                return

    def _send(self, patch: dict[str, Any] | None) -> None:
        if not patch:
            return
        self._last_sent = self._clock()
        try:
            self._patcher(patch)
            self._writes += 1
        except Exception as error:  # reporting must never stop training
            self._failures += 1
            if self._failures <= 3 or self._failures % 100 == 0:
                log.warning(
                    "could not report progress to the FineTuneJob status (%d failures): %s",
                    self._failures,
                    error,
                )


def kube_patcher(namespace: str, name: str) -> Patcher:
    """A Patcher writing `status` of FineTuneJob namespace/name with the pod's own ServiceAccount (in-cluster),
    else $KUBECONFIG. Raises kopf.LoginError when neither is available."""
    from kubetune.controller.kube import Kube, load_client_config

    kube = Kube(load_client_config())

    def patch(status: dict[str, Any]) -> None:
        kube.patch_job_status(namespace, name, status, resource_version=None)

    return patch


def make_sink(context: NodeContext, job: FineTuneJob) -> StatusSink | None:
    """The trainer's sink factory (entry point `kubetune.sinks`): a StatusSink when the job runs under the
    operator (KUBETUNE_JOB_NAME/NAMESPACE set) with spec.runPolicy.reportProgress; None otherwise."""
    if not (context.job_name and context.job_namespace and job.spec.run_policy.report_progress):
        return None
    try:
        patcher = kube_patcher(context.job_namespace, context.job_name)
    except Exception as error:
        log.warning("live progress to the FineTuneJob status is off: no API credentials (%s)", error)
        return None
    return StatusSink(patcher, primary_metric=job.spec.primary_metric)
