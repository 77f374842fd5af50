"""Given a job whose first attempt's rank 0 reported an offline W&B run in status.tracking, when the next attempt's
rank 0 reports its own runs (W&B online this time, as after a change of WANDB_MODE), then status.tracking holds
the new attempt's runs only: no sync command, folder or copy of the earlier offline run beside the online one.

The status sink of each rank 0 writes through a real API server (merge patches of the status subresource of a
FineTuneJob made from the generated CRD); no operator runs."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubetune.controller.kube import Kube
from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune.spec.models import API_GROUP, API_VERSION, KIND, PLURAL
from kubetune.status_sink import StatusSink

from tests.operator.test_connection import kube_for
from tests.operator.test_status_sink import OFFLINE

pytestmark = pytest.mark.cluster

ONLINE = {
    "tensorboardDir": "s3://bucket/job/tensorboard",
    "wandbRunId": "k2b7q9zx",
    "wandbMode": "online",
    "wandbRunUrl": "https://wandb.example/team/project/runs/k2b7q9zx",
    "wandbRunDir": "/output/wandb/run-20261202_060000-k2b7q9zx",
    "warnings": [],
}


def report(kube: Kube, namespace: str, tracking: dict[str, Any]) -> None:
    """What one attempt's rank 0 writes: its STARTED event with status.tracking, then its summary."""
    sink = StatusSink(
        lambda patch: kube.patch_job_status(namespace, "tracked", patch, None), min_interval=0.0
    )
    sink.emit(ProgressEvent(event=EventKind.STARTED, step=0, total_steps=40, tracking=tracking))
    sink.close(JobSummary(outcome=EventKind.PREEMPTED, step=10, total_steps=40))
    assert sink.writes >= 1


def test_the_next_attempts_report_replaces_status_tracking_whole(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    job = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": "tracked"},
        "spec": {"model": {"name": "m"}, "dataset": {"name": "glue"}},
    }
    api.create_namespaced_custom_object(API_GROUP, API_VERSION, kube_namespace, PLURAL, job)
    kube = kube_for(kube_cluster.kubeconfig)

    report(kube, kube_namespace, OFFLINE)
    first = api.get_namespaced_custom_object(API_GROUP, API_VERSION, kube_namespace, PLURAL, "tracked")
    assert first["status"]["tracking"] == OFFLINE

    report(kube, kube_namespace, ONLINE)
    second = api.get_namespaced_custom_object(API_GROUP, API_VERSION, kube_namespace, PLURAL, "tracked")
    assert second["status"]["tracking"] == ONLINE, second["status"]["tracking"]
