"""Helpers shared by the real-node tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.kube.harness import LocalCluster

RunPod = Callable[..., Any]


@pytest.fixture
def run_pod(real_node_cluster: LocalCluster, real_node_namespace: str) -> RunPod:
    """Creates a Pod from a manifest in the test's namespace and waits for Succeeded or Failed; returns
    the final V1Pod. `timeout` (seconds) bounds the wait; ClusterError when it runs out."""
    core = client.CoreV1Api(real_node_cluster.api_client())

    def run(manifest: dict[str, Any], timeout: float = 120) -> Any:
        core.create_namespaced_pod(real_node_namespace, manifest)
        name = manifest["metadata"]["name"]
        return real_node_cluster.wait_for_pod_phase(
            real_node_namespace, name, ["Succeeded", "Failed"], timeout
        )

    return run


def terminated_state(pod: Any) -> Any:
    """The `terminated` state of the pod's first container (current state, else last state), or None."""
    statuses = pod.status.container_statuses or []
    if not statuses:
        return None
    status = statuses[0]
    for state in (status.state, status.last_state):
        if state is not None and state.terminated is not None:
            return state.terminated
    return None
