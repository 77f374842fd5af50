"""The operator on an API server configured the strict way some distributions are (issue 11, items 4 and 9):
the OwnerReferencesPermissionEnforcement admission plugin (OpenShift enables it) and an audit log.

A cluster of its own for this module (the session's cluster runs the default admission plugins): a real etcd
+ kube-apiserver + controller-manager + scheduler + KWOK GPU node, with the extra API server flags passed
through LocalCluster's `apiserver_args`. The operator runs as a ServiceAccount bound to exactly the chart's
namespaced-mode rules (charts/kubetune/files/operator-rules.yaml, which the chart's Role and ClusterRole
grant)."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.kube.binaries import BinariesNotFound, find_binaries
from tests.kube.harness import LocalCluster, wait_for
from tests.operator.conftest import CRD_FILE, POOL, POOL_LABEL, REPO, OperatorProcess, job_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

CHART_RULES = REPO / "charts" / "kubetune" / "files" / "operator-rules.yaml"
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    resources: [{group: "", resources: ["pods", "services", "configmaps"]}]
    verbs: ["list", "watch"]
  - level: None
"""


@pytest.fixture(scope="module")
def strict_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A LocalCluster whose API server enforces owner-reference permissions and writes an audit log."""
    try:
        binaries = find_binaries()
    except BinariesNotFound as error:
        if os.environ.get("KUBETUNE_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"a real cluster is required but: {error}", pytrace=False)
        pytest.skip(str(error))
    if not binaries.has_nodes:
        pytest.skip("needs KWOK nodes (hack/cluster/build.sh)")
    folder = tmp_path_factory.mktemp("strict")
    (folder / "audit-policy.yaml").write_text(AUDIT_POLICY)
    args = [
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        f"--audit-policy-file={folder / 'audit-policy.yaml'}",
        f"--audit-log-path={folder / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
    ]
    with LocalCluster(binaries, gpu_nodes=0, apiserver_args=args) as cluster:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
        established = ("wait", "--for=condition=Established", "--timeout=30s", "crd/finetunejobs.kubetune.io")
        wait_for(lambda: cluster.kubectl(*established, check=False).returncode == 0, 60, "the CRD")
        cluster.add_gpu_nodes(1, gpus=8, labels={POOL_LABEL: POOL})
        cluster.wait_for_nodes_ready()
        cluster.audit_log = folder / "audit.log"  # type: ignore[attr-defined]
        yield cluster


@pytest.fixture
def strict_operator(strict_cluster: LocalCluster, tmp_path: Path) -> Iterator[tuple[str, OperatorProcess]]:
    """A fresh namespace and `kubetune operator` in it, as a ServiceAccount holding the chart's rules."""
    api = strict_cluster.api_client()
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    namespace = f"strict-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), 30, "default SA")
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "kubetune-operator"}})
    # The chart's namespaced mode (the operator below watches one namespace): a Role with the namespaced
    # rules in that namespace and a ClusterRole with the few cluster-wide reads.
    rules = yaml.safe_load(CHART_RULES.read_text())["namespacedMode"]
    subject = {"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": namespace}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "kubetune"}, "rules": rules["namespaced"]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "kubetune"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubetune"},
            "subjects": [subject],
        },
    )
    rbac.create_cluster_role({"metadata": {"name": namespace}, "rules": rules["cluster"]})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": namespace},
            "subjects": [subject],
        }
    )
    kubeconfig = strict_cluster.kubeconfig_for_service_account(namespace, "kubetune-operator")
    process = OperatorProcess(namespace, kubeconfig, tmp_path)
    process.start()
    yield namespace, process
    process.stop()
    rbac.delete_cluster_role_binding(namespace)
    rbac.delete_cluster_role(namespace)
    core.delete_namespace(namespace, propagation_policy="Background")


def phase_of(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    api: Any = client.CustomObjectsApi(cluster.api_client())
    job = api.get_namespaced_custom_object("kubetune.io", "v1alpha1", namespace, "finetunejobs", name)
    return dict(job.get("status") or {})


def test_children_with_block_owner_deletion_are_allowed_by_the_charts_rbac_under_owner_reference_enforcement(
    strict_cluster: LocalCluster, strict_operator: tuple[str, OperatorProcess]
) -> None:
    namespace, process = strict_operator
    strict_cluster.kubectl(f"--namespace={namespace}", "apply", "-f", "-", input=job_manifest("owned", 2))
    core: Any = client.CoreV1Api(strict_cluster.api_client())

    def running() -> list[Any] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="kubetune.io/job-name=owned").items
        ok = len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
        return pods if ok else None

    try:
        pods = wait_for(running, 45, "2 running workers under OwnerReferencesPermissionEnforcement")
    except Exception as error:
        current = phase_of(strict_cluster, namespace, "owned")
        raise AssertionError(f"{error}; status: {current}; operator log:\n{process.log()[-3000:]}") from None
    for pod in pods:
        (owner,) = pod.metadata.owner_references
        assert owner.block_owner_deletion is True and owner.controller is True
    config = core.read_namespaced_config_map("owned-config", namespace)
    assert config.metadata.owner_references[0].block_owner_deletion is True
    assert "cannot set blockOwnerDeletion" not in process.log()


def test_the_operator_watches_only_its_own_pods_with_a_server_side_label_selector(
    strict_cluster: LocalCluster, strict_operator: tuple[str, OperatorProcess]
) -> None:
    namespace, _ = strict_operator
    time.sleep(2)  # the watches are open
    user = f"system:serviceaccount:{namespace}:kubetune-operator"
    audit: Path = strict_cluster.audit_log  # type: ignore[attr-defined]
    watches: dict[str, list[str]] = {}
    for line in audit.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("user", {}).get("username") != user or entry.get("verb") != "watch":
            continue
        resource = entry.get("objectRef", {}).get("resource", "")
        query = urllib.parse.parse_qs(urllib.parse.urlparse(entry["requestURI"]).query)
        watches.setdefault(resource, []).extend(query.get("labelSelector", [""]))
    assert set(watches) >= {"pods", "services", "configmaps"}, watches
    for resource, selectors in watches.items():
        for selector in selectors:
            assert "app.kubernetes.io/managed-by=kubetune-operator" in selector, (resource, selector)
            assert "kubetune.io/job-name" in selector, (resource, selector)
