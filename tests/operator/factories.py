"""Small builders of FineTuneJob bodies and worker pods, as the API server returns them (for pure tests)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune.controller import names
from kubetune.controller.observe import format_time

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """T0 + seconds."""
    return T0 + timedelta(seconds=seconds)


def job_body(
    name: str = "demo",
    nodes: int = 2,
    status: dict[str, Any] | None = None,
    generation: int = 1,
    **spec_overrides: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "prajjwal1/bert-tiny"},
        "dataset": {"name": "glue", "config": "sst2"},
        "distribution": {"nodes": nodes, "processesPerNode": 1},
    }
    for key, value in spec_overrides.items():
        spec[key] = value
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "uid-1",
            "generation": generation,
            "resourceVersion": "10",
            "creationTimestamp": format_time(T0),
        },
        "spec": spec,
        "status": copy.deepcopy(status) if status else {},
    }


def pod(
    index: int,
    attempt: int = 0,
    phase: str = "Running",
    job: str = "demo",
    ready: bool | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str = "",
    waiting: str | None = None,
    unschedulable: bool = False,
    deleting: bool = False,
    disrupted: bool = False,
    disruption_reason: str = "PreemptionByScheduler",
    deletion_timestamp: str = "2026-01-01T12:00:00Z",
    finalizers: list[str] | None = None,
    pod_reason: str | None = None,
    pod_message: str = "",
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A worker pod dict. Running pods are scheduled and ready unless told otherwise."""
    scheduled = phase != "Pending" or (waiting is not None and not unschedulable)
    conditions: list[dict[str, Any]] = [
        {
            "type": "PodScheduled",
            "status": "True" if scheduled else "False",
            **(
                {"reason": "Unschedulable", "message": "0/4 nodes: Insufficient nvidia.com/gpu"}
                if unschedulable
                else {}
            ),
        }
    ]
    is_ready = phase == "Running" if ready is None else ready
    conditions.append({"type": "Ready", "status": "True" if is_ready else "False"})
    if disrupted:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disruption_reason})
    state: dict[str, Any] = {}
    if exit_code is not None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "message": message,
            }
        }
    elif waiting:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} for image"}}
    elif phase == "Running":
        state = {"running": {"startedAt": "2026-01-01T12:00:00Z"}}
    metadata: dict[str, Any] = {
        "name": names.worker_name(job, index),
        "namespace": "ns",
        "labels": {
            names.LABEL_JOB: job,
            names.LABEL_ROLE: names.ROLE_WORKER,
            names.LABEL_NODE_RANK: str(index),
            names.LABEL_ATTEMPT: str(attempt),
        },
        "uid": f"pod-uid-{job}-{index}-{attempt}",
        "ownerReferences": [
            owner
            or {
                "apiVersion": "kubetune.io/v1alpha1",
                "uid": "uid-1",
                "kind": "FineTuneJob",
                "name": job,
                "controller": True,
            }
        ],
    }
    if deleting:
        metadata["deletionTimestamp"] = deletion_timestamp
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    return {
        "metadata": metadata,
        "spec": {"nodeName": f"node-{index}"} if scheduled else {},
        "status": {
            **({"reason": pod_reason} if pod_reason else {}),
            **({"message": pod_message} if pod_message else {}),
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [{"name": "trainer", "state": state}] if state else [],
        },
    }
