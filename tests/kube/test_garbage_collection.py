"""Given the local cluster, deleting an owner makes the controller-manager's garbage collector
delete its dependents (the mechanism kopf.adopt relies on)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube.harness import LocalCluster, wait_for

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("require_kube_controllers"),
]


def _meta(name: str, owner: client.V1OwnerReference | None = None) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(name=name, owner_references=[owner] if owner else None)


def _config_map(name: str, owner: client.V1OwnerReference | None = None) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=_meta(name, owner))


def _gone(read: Any) -> bool:
    try:
        read()
    except ApiException as error:
        return error.status == 404
    return False


def test_deleting_the_owner_collects_its_dependents(kube_cluster: LocalCluster, kube_namespace: str) -> None:
    core = client.CoreV1Api(kube_cluster.api_client())
    # Given a ConfigMap owning a Secret and another ConfigMap
    owner: Any = core.create_namespaced_config_map(kube_namespace, _config_map("owner"))
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_secret(
        kube_namespace, client.V1Secret(metadata=_meta("dependent-secret", owner=reference))
    )
    core.create_namespaced_config_map(kube_namespace, _config_map("dependent-map", owner=reference))
    # and an unrelated ConfigMap
    core.create_namespaced_config_map(kube_namespace, _config_map("bystander"))

    # When the owner is deleted (background propagation: the API server does not cascade by itself)
    core.delete_namespaced_config_map("owner", kube_namespace, propagation_policy="Background")

    # Then the garbage collector deletes both dependents, and nothing else
    wait_for(
        lambda: (
            _gone(lambda: core.read_namespaced_secret("dependent-secret", kube_namespace))
            and _gone(lambda: core.read_namespaced_config_map("dependent-map", kube_namespace))
        ),
        60,
        "the garbage collector to delete the dependents",
    )
    bystander: Any = core.read_namespaced_config_map("bystander", kube_namespace)
    assert bystander.metadata.name == "bystander"


def test_foreground_deletion_of_a_deployment_removes_its_replica_sets(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any
) -> None:
    apps = client.AppsV1Api(kube_cluster.api_client())
    # Given a Deployment (no GPUs needed) and the ReplicaSet the controller made for it
    kubectl("create", "deployment", "web", "--image=registry.invalid/web:1", "--replicas=0")
    wait_for(lambda: apps.list_namespaced_replica_set(kube_namespace).items, 30, "the ReplicaSet")

    # When it is deleted with foreground cascading, then kubectl returns once the ReplicaSet is gone
    kubectl("delete", "deployment", "web", "--cascade=foreground", "--wait=true", "--timeout=60s")
    wait_for(lambda: not apps.list_namespaced_replica_set(kube_namespace).items, 30, "no ReplicaSets")
