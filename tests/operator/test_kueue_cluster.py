"""Given a real Kueue (hack/kueue/build.sh, tests/kube/kueue.py) in the local cluster, KWOK GPU nodes and the
real operator (`kubetune operator --kueue`, least-privilege RBAC: OPERATOR_RULES + KUEUE_RULES), FineTuneJobs
sent to a LocalQueue are admitted whole or not at all, wait queued without failing, and a preempted job goes
back to the queue uncounted and runs again.

The workers are KWOK pods: "SIGTERM, checkpoint, exit 75" is what a real trainer does on the graceful delete
these tests observe; the trainer's side of it is tested with real processes in tests/trainer and tests/e2e."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubetune.controller.queueing import QUEUE_LABEL, workload_name

from tests.kube.harness import LocalCluster, wait_for
from tests.kube.kueue import KueueManager
from tests.operator.conftest import OperatorProcess, job_manifest, operator_account, running
from tests.operator.test_operator_cluster import (
    events,
    running_workers,
    status,
    summary_message,
    wait_phase,
    workers,
)

pytestmark = pytest.mark.cluster

GPUS_PER_NODE = 4
NODES = 4  # 16 GPUs, the ClusterQueue's quota
KUEUE_POOL_LABEL = "kubetune.test/kueue-pool"


@pytest.fixture
def gpu_queue(
    kube_cluster: LocalCluster, kube_namespace: str, kube_kueue: KueueManager
) -> Iterator[dict[str, str]]:
    """4 KWOK nodes x 4 GPUs of their own, a ResourceFlavor selecting them, a ClusterQueue with a 16-GPU quota
    (preempting lower priorities) and a LocalQueue `gpus` in the test's namespace."""
    suffix = uuid.uuid4().hex[:6]
    pool = f"kueue-{suffix}"
    kube_cluster.add_gpu_nodes(NODES, gpus=GPUS_PER_NODE, labels={KUEUE_POOL_LABEL: pool})
    kube_cluster.wait_for_nodes_ready()
    flavor, cluster_queue = f"gpu-{suffix}", f"cq-{suffix}"
    custom: Any = client.CustomObjectsApi(kube_cluster.api_client())
    group, version = "kueue.x-k8s.io", "v1beta2"
    custom.create_cluster_custom_object(
        group,
        version,
        "resourceflavors",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "ResourceFlavor",
            "metadata": {"name": flavor},
            "spec": {"nodeLabels": {KUEUE_POOL_LABEL: pool}},
        },
    )
    custom.create_cluster_custom_object(
        group,
        version,
        "clusterqueues",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "1000"},
                                    {"name": "memory", "nominalQuota": "100Ti"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": str(NODES * GPUS_PER_NODE)},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    custom.create_namespaced_custom_object(
        group,
        version,
        kube_namespace,
        "localqueues",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "LocalQueue",
            "metadata": {"name": "gpus"},
            "spec": {"clusterQueue": cluster_queue},
        },
    )
    yield {"pool": pool, "flavor": flavor, "cluster_queue": cluster_queue, "local_queue": "gpus"}
    for plural, name in (("clusterqueues", cluster_queue), ("resourceflavors", flavor)):
        with contextlib.suppress(client.ApiException):
            custom.delete_cluster_custom_object(group, version, plural, name)


@pytest.fixture
def kueue_operator(
    kube_cluster: LocalCluster, kube_namespace: str, finetunejob_crd: None, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """`kubetune operator --kueue` as a ServiceAccount holding exactly OPERATOR_RULES + KUEUE_RULES."""
    with operator_account(kube_cluster, kube_namespace, kueue=True) as kubeconfig:
        process = OperatorProcess(
            kube_namespace, kubeconfig, tmp_path, extra_args=("--standalone", "--kueue")
        )
        with running(process):
            yield process


def queued_job(name: str, queue: str, nodes: int = 3, priority_class: str | None = None, **spec: Any) -> str:
    """A FineTuneJob of `nodes` x 4 GPUs sent to LocalQueue `queue` (no node selector: the flavor gives it)."""
    kubernetes: dict[str, Any] = {"resources": {"gpusPerNode": GPUS_PER_NODE}}
    if priority_class:
        kubernetes["priorityClassName"] = priority_class
    document = yaml.safe_load(job_manifest(name, nodes=nodes, kubernetes=kubernetes, **spec))
    document["metadata"]["labels"] = {QUEUE_LABEL: queue}
    return yaml.safe_dump(document, sort_keys=False)


def bound_pods(cluster: LocalCluster, namespace: str, name: str) -> list[Any]:
    return [p for p in workers(cluster, namespace, name) if p.spec.node_name]


def finish(cluster: LocalCluster, namespace: str, name: str) -> None:
    """Worker 0 exits 0 with its summary: the job succeeds."""
    cluster.complete_pod(namespace, f"{name}-worker-0", exit_code=0, message=summary_message())


def get_workload(cluster: LocalCluster, namespace: str, job: str) -> dict[str, Any] | None:
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    try:
        found: dict[str, Any] = custom.get_namespaced_custom_object(
            "kueue.x-k8s.io", "v1beta2", namespace, "workloads", workload_name(job)
        )
        return found
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def test_two_gangs_over_quota_one_runs_the_other_waits_queued_without_a_pod_and_neither_fails(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    gpu_queue: dict[str, str],
    kueue_operator: OperatorProcess,
    kube_kueue: KueueManager,
) -> None:
    began = time.monotonic()
    queue = gpu_queue["local_queue"]
    # The second job's schedulingTimeoutSeconds is 5: it waits in the queue far longer than 3 x 5 s.
    kubectl("apply", "-f", "-", input=queued_job("first", queue))
    wait_phase(kube_cluster, kube_namespace, "first", "Running", timeout=60)
    kubectl("apply", "-f", "-", input=queued_job("second", queue, runPolicy={"schedulingTimeoutSeconds": 5}))
    first = running_workers(kube_cluster, kube_namespace, "first", 3)
    assert {p.spec.node_selector[KUEUE_POOL_LABEL] for p in first} == {gpu_queue["pool"]}  # the flavor
    assert all(p.spec.node_name for p in first)

    queued = wait_phase(kube_cluster, kube_namespace, "second", "Queued", timeout=30)
    admitted = next(c for c in queued["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "False" and queued["queue"] == queue
    shown = kubectl("get", "finetunejobs", "second", "-o", "wide").stdout
    assert "Queued" in shown, shown
    time.sleep(16)  # > 3 x schedulingTimeoutSeconds
    assert workers(kube_cluster, kube_namespace, "second") == []  # no pod, so no GPU held
    assert status(kube_cluster, kube_namespace, "second")["phase"] == "Queued"

    finish(kube_cluster, kube_namespace, "first")
    wait_phase(kube_cluster, kube_namespace, "first", "Succeeded", timeout=30)
    second = running_workers(kube_cluster, kube_namespace, "second", 3, timeout=60)
    assert {p.spec.node_selector[KUEUE_POOL_LABEL] for p in second} == {gpu_queue["pool"]}
    finish(kube_cluster, kube_namespace, "second")
    done = wait_phase(kube_cluster, kube_namespace, "second", "Succeeded", timeout=30)
    assert done["failedAttempts"] == 0 and done.get("restarts", 0) == 0
    assert ("Normal", "Queued") in {
        (kind, reason) for kind, reason, _ in events(kube_cluster, kube_namespace, "second")
    }
    print(
        f"Kueue start {kube_kueue.startup_seconds:.1f}s; no-deadlock scenario {time.monotonic() - began:.1f}s"
    )


def test_a_high_priority_gang_preempts_a_low_one_which_requeues_uncounted_and_runs_again(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    gpu_queue: dict[str, str],
    kueue_operator: OperatorProcess,
    kube_kueue: KueueManager,
) -> None:
    began = time.monotonic()
    queue = gpu_queue["local_queue"]
    scheduling: Any = client.SchedulingV1Api(kube_cluster.api_client())
    low, high = f"low-{kube_namespace[-6:]}", f"high-{kube_namespace[-6:]}"
    for name, value in ((low, 100), (high, 1000)):
        scheduling.create_priority_class({"metadata": {"name": name}, "value": value})
    try:
        kubectl("apply", "-f", "-", input=queued_job("batch", queue, priority_class=low))
        before = running_workers(kube_cluster, kube_namespace, "batch", 3, timeout=60)
        kubectl("apply", "-f", "-", input=queued_job("urgent", queue, priority_class=high))

        requeued = wait_phase(kube_cluster, kube_namespace, "batch", "Queued", timeout=60)
        assert requeued["failedAttempts"] == 0 and requeued["lastFailure"]["reason"] == "Preempted"
        assert requeued["attempts"][-1]["counted"] is False
        # Its workers were deleted gracefully (SIGTERM to a real trainer: checkpoint, exit 75).
        wait_for(lambda: bound_pods(kube_cluster, kube_namespace, "batch") == [], 30, "batch's workers gone")
        assert all(
            p.metadata.uid not in {q.metadata.uid for q in workers(kube_cluster, kube_namespace, "batch")}
            for p in before
        )
        running_workers(kube_cluster, kube_namespace, "urgent", 3, timeout=60)
        reasons = {reason for _, reason, _ in events(kube_cluster, kube_namespace, "batch")}
        assert "Preempted" in reasons

        finish(kube_cluster, kube_namespace, "urgent")
        wait_phase(kube_cluster, kube_namespace, "urgent", "Succeeded", timeout=30)
        again = running_workers(kube_cluster, kube_namespace, "batch", 3, timeout=120)
        assert {p.metadata.labels["kubetune.io/attempt"] for p in again} == {"1"}  # resumes as a new attempt
        resumed = wait_phase(kube_cluster, kube_namespace, "batch", "Running", timeout=30)
        assert resumed["failedAttempts"] == 0
        finish(kube_cluster, kube_namespace, "batch")
        wait_phase(kube_cluster, kube_namespace, "batch", "Succeeded", timeout=30)
    finally:
        for name in (low, high):
            scheduling.delete_priority_class(name)
    print(f"preemption scenario: {time.monotonic() - began:.1f}s")


def test_spec_suspend_on_a_queued_job_releases_its_quota_and_resume_queues_it_again(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    gpu_queue: dict[str, str],
    kueue_operator: OperatorProcess,
    kube_kueue: KueueManager,
) -> None:
    queue = gpu_queue["local_queue"]
    kubectl("apply", "-f", "-", input=queued_job("pausable", queue))
    running_workers(kube_cluster, kube_namespace, "pausable", 3, timeout=60)
    assert get_workload(kube_cluster, kube_namespace, "pausable") is not None
    kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = wait_phase(kube_cluster, kube_namespace, "pausable", "Suspended")
    assert "spec.suspend" in suspended["message"]
    wait_for(lambda: workers(kube_cluster, kube_namespace, "pausable") == [], 30, "the workers removed")
    wait_for(
        lambda: get_workload(kube_cluster, kube_namespace, "pausable") is None, 30, "the Workload deleted"
    )
    kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    running_workers(kube_cluster, kube_namespace, "pausable", 3, timeout=60)
    assert status(kube_cluster, kube_namespace, "pausable")["failedAttempts"] == 0


def test_without_the_integration_a_job_asking_for_a_queue_fails_at_once_naming_the_fix(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    """The operator without --kueue never runs a job unqueued that asked for a queue."""
    kubectl("apply", "-f", "-", input=queued_job("unqueued", "gpus"))
    failed = wait_phase(kube_cluster, kube_namespace, "unqueued", "Failed")
    assert "kueue.enabled=true" in failed["message"]
    assert workers(kube_cluster, kube_namespace, "unqueued") == []
