"""Kubernetes Events on FineTuneJobs (core/v1, as `kubectl describe` shows them), posted off the reconcile
path: they are informational, must never delay the pods, and a failure to post one never fails anything."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubetune.controller import names
from kubetune.controller.kube import ApiError, Kube
from kubetune.controller.observe import format_time, tail
from kubetune.controller.plan import JobEvent
from kubetune.spec.models import API_GROUP, API_VERSION, KIND

logger = logging.getLogger("kubetune.operator")


class EventRecorder:
    """Posts Events in the background on two threads of its own."""

    def __init__(self, kube: Kube, instance: str | None = None) -> None:
        self.kube = kube
        self._instance = instance or socket.gethostname()
        self._executor: ThreadPoolExecutor | None = None

    def post(self, body: Mapping[str, Any], event: JobEvent) -> None:
        """Queue `event` on the job `body` (only its metadata name, namespace and uid are read)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(2, thread_name_prefix="events")
        # The queue keeps the three fields, not the whole job: in a burst of new jobs on a busy API server,
        # thousands of Events wait here, and whole bodies were most of the operator's memory per job.
        metadata = body["metadata"]
        involved = {key: metadata[key] for key in ("name", "namespace", "uid")}
        self._executor.submit(self._post, involved, event)

    def _post(self, metadata: dict[str, str], event: JobEvent) -> None:
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

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
