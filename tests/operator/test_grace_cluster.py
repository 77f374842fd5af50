"""Given a running FineTuneJob whose rank 0 reported a slow checkpoint, when it is suspended, then the real
operator deletes its workers with a grace period sized from that save (3 x 100 s), longer than the pods'
own 120 s: the API server records it on the pods it is deleting."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from kubernetes import client, watch

from tests.kube.harness import LocalCluster, wait_for
from tests.operator.conftest import OperatorProcess, job_manifest
from tests.operator.test_operator_cluster import running_workers, wait_phase

pytestmark = pytest.mark.cluster


def test_suspend_deletes_workers_with_a_grace_sized_from_the_last_checkpoint(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("slow-saves", nodes=2))
    pods = running_workers(kube_cluster, kube_namespace, "slow-saves", 2)
    assert all(p.spec.termination_grace_period_seconds == 120 for p in pods)
    # What rank 0's status sink writes after a checkpoint that took 100 s (the same merge patch).
    report = {"status": {"lastCheckpoint": {"step": 50, "saveSeconds": 100.0, "sizeBytes": 10**11}}}
    kubectl("patch", "ftj", "slow-saves", "--subresource=status", "--type=merge", "-p", json.dumps(report))

    # Every grace period the API server gives the workers while they are being deleted (KWOK removes them
    # at once, so a watch started beforehand sees it).
    graces: dict[str, int] = {}
    stop = threading.Event()
    core = client.CoreV1Api(kube_cluster.api_client())

    def record() -> None:
        stream = watch.Watch()
        for change in stream.stream(
            core.list_namespaced_pod,
            kube_namespace,
            label_selector="kubetune.io/job-name=slow-saves",
            timeout_seconds=30,
        ):
            pod = change["object"]
            if pod.metadata.deletion_grace_period_seconds is not None:
                graces.setdefault(pod.metadata.name, pod.metadata.deletion_grace_period_seconds)
            if stop.is_set() or len(graces) == 2:
                stream.stop()

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    kubectl("patch", "ftj", "slow-saves", "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    suspended = wait_phase(kube_cluster, kube_namespace, "slow-saves", "Suspended")
    wait_for(lambda: len(graces) == 2, 30, "both workers being deleted")
    stop.set()
    watcher.join(35)
    assert graces == {"slow-saves-worker-0": 300, "slow-saves-worker-1": 300}, graces
    assert suspended["lastCheckpoint"]["saveSeconds"] == 100.0, "the operator keeps rank 0's report"
