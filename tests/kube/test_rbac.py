"""Given the local cluster, RBAC is enforced by the real API server: a ServiceAccount without
permissions is refused (403), and the same request succeeds once a Role is bound to it."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.kube.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def _config_map(name: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))


ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: configmap-writer
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: robot-writes-configmaps
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: configmap-writer
subjects:
- kind: ServiceAccount
  name: robot
"""


def test_service_account_needs_a_role_binding_to_create(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any
) -> None:
    # Given a ServiceAccount with no permissions and a kubeconfig carrying its token
    kubectl("create", "serviceaccount", "robot")
    robot = kube_cluster.kubeconfig_for_service_account(kube_namespace, "robot")

    # When it creates a ConfigMap, then the server answers 403 Forbidden (through kubectl and the client)
    refused = kubectl("create", "configmap", "settings", "--from-literal=a=1", kubeconfig=robot, check=False)
    assert refused.returncode != 0
    assert 'configmaps is forbidden: User "system:serviceaccount:' in refused.stderr
    assert (
        f'system:serviceaccount:{kube_namespace}:robot" cannot create resource "configmaps"' in refused.stderr
    )
    with kube_cluster.new_api_client(robot) as api, pytest.raises(ApiException) as error:
        client.CoreV1Api(api).create_namespaced_config_map(kube_namespace, _config_map("settings"))
    assert error.value.status == 403

    # When a Role allowing it is bound, then the same request succeeds
    kubectl("apply", "-f", "-", input=ROLE)
    wait_for(
        lambda: (
            kubectl("auth", "can-i", "create", "configmaps", kubeconfig=robot, check=False).stdout.strip()
            == "yes"
        ),
        30,
        "the RoleBinding to take effect",
    )
    kubectl("create", "configmap", "settings", "--from-literal=a=1", kubeconfig=robot)
    # and what the Role does not grant stays refused
    denied = kubectl("delete", "configmap", "settings", kubeconfig=robot, check=False)
    assert 'cannot delete resource "configmaps"' in denied.stderr
