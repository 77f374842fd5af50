"""The side-by-side peer (tests/kube/peer.py) really runs: a TrainJob of 4 nodes on the kubetune-equivalent
runtime becomes a JobSet, a Job and 4 pods that each ask for one GPU, land on the KWOK GPU nodes and run."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.kube.harness import wait_for
from tests.kube.peer import POD_JOB_LABEL, TRAINER_API, PeerManagers, train_job

pytestmark = pytest.mark.cluster


def test_a_train_job_of_four_nodes_runs_four_gpu_pods(
    kube_cluster: Any, kube_peer: PeerManagers, kube_namespace: str
) -> None:
    api = kube_cluster.api_client()
    custom: Any = client.CustomObjectsApi(api)
    core: Any = client.CoreV1Api(api)
    custom.create_namespaced_custom_object(*TRAINER_API, kube_namespace, "trainjobs", train_job("tj", 4))

    def running_pods() -> list[Any] | None:
        pods = core.list_namespaced_pod(kube_namespace, label_selector=f"{POD_JOB_LABEL}=tj").items
        return pods if len(pods) == 4 and all(p.status.phase == "Running" for p in pods) else None

    pods = wait_for(running_pods, 120, "the TrainJob's 4 pods Running")
    gpu_nodes = {
        n.metadata.name for n in core.list_node().items if "nvidia.com/gpu" in (n.status.capacity or {})
    }
    for pod in pods:
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        assert pod.spec.node_name in gpu_nodes
    jobset = custom.get_namespaced_custom_object(
        "jobset.x-k8s.io", "v1alpha2", kube_namespace, "jobsets", "tj"
    )
    assert jobset["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    # torch distributed: Trainer's torch plugin gives every node the rendezvous settings of 4 nodes x 1 process.
    env = {e.name: e.value for e in pods[0].spec.containers[0].env or []}
    assert env.get("PET_NNODES") == "4", env
    assert env.get("PET_NPROC_PER_NODE") == "1", env
