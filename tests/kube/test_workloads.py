"""Given the local cluster, when a Deployment asking for GPUs is applied with kubectl, then the
controller-manager creates its ReplicaSet and pods, the scheduler binds them to KWOK GPU nodes without
exceeding any node's nvidia.com/gpu, and KWOK makes them Running. A Job's pods end the way a test
says, with the exit code and termination message a kubelet would report, and the Job controller acts
on it. A Service gets EndpointSlices with the Running pods' IPs."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from kubernetes import client

from tests.kube.harness import GPU_RESOURCE, LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180), pytest.mark.usefixtures("require_kube_nodes")]

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: trainer
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: trainer}}
  template:
    metadata:
      labels: {{app: trainer}}
    spec:
      nodeSelector: {{kubetune.test/pool: {pool}}}
      containers:
      - name: main
        image: registry.invalid/trainer:1
        resources:
          limits: {{nvidia.com/gpu: {gpus}}}
"""


def _pods(api: client.ApiClient, namespace: str) -> list[Any]:
    return list(client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=trainer").items)


def test_deployment_pods_are_scheduled_on_gpu_nodes_within_their_capacity(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any
) -> None:
    # Given a pool of two fresh nodes with 8 GPUs each, used by this test alone
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    nodes = kube_cluster.add_gpu_nodes(2, gpus=8, labels={"kubetune.test/pool": pool})
    kube_cluster.wait_for_nodes_ready()
    api = kube_cluster.api_client()

    # When five replicas of 4 GPUs each are applied (room for four)
    kubectl("apply", "-f", "-", input=DEPLOYMENT.format(replicas=5, pool=pool, gpus=4))

    # Then the Deployment controller made a ReplicaSet owned by the Deployment
    replica_sets = wait_for(
        lambda: client.AppsV1Api(api).list_namespaced_replica_set(kube_namespace).items,
        30,
        "the ReplicaSet",
    )
    replica_set: Any = replica_sets[0]
    assert [owner.kind for owner in replica_set.metadata.owner_references] == ["Deployment"]

    # and four pods run, two on each node, never more than 8 GPUs per node
    def four_running() -> list[Any] | None:
        running = [p for p in _pods(api, kube_namespace) if p.status.phase == "Running"]
        return running if len(running) == 4 else None

    running = wait_for(four_running, 60, "four Running trainer pods")
    per_node = Counter(p.spec.node_name for p in running)
    assert set(per_node) == set(nodes)
    assert all(count * 4 <= 8 for count in per_node.values())
    assert all(p.status.pod_ip and p.status.container_statuses[0].ready for p in running)

    # and the fifth stays Pending because no node has 4 GPUs left
    def unschedulable() -> Any:
        pending = [p for p in _pods(api, kube_namespace) if p.status.phase == "Pending"]
        for pod in pending:
            for condition in pod.status.conditions or []:
                if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
                    return condition
        return None

    condition = wait_for(unschedulable, 30, "the fifth pod to be Unschedulable")
    assert f"Insufficient {GPU_RESOURCE}" in condition.message

    # And `kubectl get pods -o wide` shows the same through the real CLI
    table = kubectl("get", "pods", "-o", "wide").stdout
    assert table.count("Running") == 4 and "Pending" in table


JOB = """
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: registry.invalid/trainer:1
        resources:
          limits: {{nvidia.com/gpu: 1}}
"""


def _job_pod(api: client.ApiClient, namespace: str, job: str) -> Any:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods[0] if pods else None


def _job_condition(api: client.ApiClient, namespace: str, job: str, kind: str) -> Any:
    status: Any = client.BatchV1Api(api).read_namespaced_job_status(job, namespace).status
    return next((c for c in status.conditions or [] if c.type == kind and c.status == "True"), None)


@pytest.mark.parametrize(
    ("exit_code", "message", "reason", "phase", "job_condition"),
    [
        (0, "", None, "Succeeded", "Complete"),
        (3, "CUDA error: out of memory", "OOMKilled", "Failed", "Failed"),
    ],
)
def test_a_test_ends_a_job_pod_with_exit_code_and_termination_message(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    exit_code: int,
    message: str,
    reason: str | None,
    phase: str,
    job_condition: str,
) -> None:
    api = kube_cluster.api_client()
    # Given a Job whose pod is Running on a KWOK node
    kubectl("apply", "-f", "-", input=JOB.format(name="train"))
    pod = wait_for(lambda: _job_pod(api, kube_namespace, "train"), 30, "the Job's pod")

    # When the test ends the pod's container
    ended = kube_cluster.complete_pod(kube_namespace, pod.metadata.name, exit_code, message, reason=reason)

    # Then the pod reports it like a kubelet would
    assert ended.status.phase == phase
    terminated = ended.status.container_statuses[0].state.terminated
    assert terminated.exit_code == exit_code
    assert (terminated.message or "") == message  # the API omits an empty message
    assert terminated.reason == (reason or "Completed")
    # and the Job controller draws its conclusion from it
    wait_for(lambda: _job_condition(api, kube_namespace, "train", job_condition), 60, f"Job {job_condition}")


def test_a_service_gets_endpoint_slices_with_the_running_pods_ips(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any
) -> None:
    api = kube_cluster.api_client()
    # Given two Running pods behind a Service (rendezvous services of training jobs look like this)
    kubectl("create", "deployment", "rendezvous", "--image=registry.invalid/trainer:1", "--replicas=2")
    kubectl("expose", "deployment", "rendezvous", "--port=29500", "--cluster-ip=None")

    def running_ips() -> set[str] | None:
        pods = (
            client.CoreV1Api(api).list_namespaced_pod(kube_namespace, label_selector="app=rendezvous").items
        )
        ips = {str(p.status.pod_ip) for p in pods if p.status and p.status.phase == "Running"}
        return ips if len(ips) == 2 else None

    ips = wait_for(running_ips, 60, "two Running rendezvous pods")

    # Then the EndpointSlice controller publishes exactly their IPs as ready endpoints
    def slice_ips() -> set[str] | None:
        slices = (
            client.DiscoveryV1Api(api)
            .list_namespaced_endpoint_slice(
                kube_namespace, label_selector="kubernetes.io/service-name=rendezvous"
            )
            .items
        )
        ready = {
            address
            for endpoint_slice in slices
            for endpoint in endpoint_slice.endpoints or []
            if endpoint.conditions and endpoint.conditions.ready
            for address in endpoint.addresses
        }
        return ready if ready == ips else None

    wait_for(slice_ips, 30, f"an EndpointSlice with {sorted(ips)}")
