"""Workers cannot change the operator's fields (issue 11, item 7): the chart's ValidatingAdmissionPolicy,
against the real API server, with the worker's own ServiceAccount token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.controller.status_policy import (
    GUARD_FILE,
    operator_status_fields,
    render_guard_file,
    status_writer_policy,
)

from tests.kube.harness import LocalCluster, wait_for
from tests.operator.conftest import REPO, OperatorProcess, job_manifest
from tests.operator.test_operator_cluster import fail_worker, running_workers, status, wait_phase

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"


def test_the_charts_guard_is_generated_from_the_status_model() -> None:
    assert (REPO / GUARD_FILE).read_text() == render_guard_file(), (
        f"{GUARD_FILE} is stale: run `python -m kubetune.controller.status_policy`"
    )
    fields = operator_status_fields()
    assert "phase" in fields and "failedAttempts" in fields and "attempts" in fields
    assert "progress" not in fields and "metrics" not in fields
    template = (REPO / "charts" / "kubetune" / "templates" / "status-policy.yaml").read_text()
    assert '.Files.Get "files/status-guard.cel"' in template


@pytest.fixture
def status_policy(kube_cluster: LocalCluster, kube_namespace: str) -> Iterator[None]:
    """The policy as the chart renders it, bound to the test's namespace only (the cluster is shared)."""
    api: Any = client.AdmissionregistrationV1Api(kube_cluster.api_client())
    name = f"status-writers-{kube_namespace}"
    operator = f"system:serviceaccount:{kube_namespace}:kubetune-operator"
    policy, binding = status_writer_policy(name, operator, namespaces=[kube_namespace])
    api.create_validating_admission_policy(policy)
    api.create_validating_admission_policy_binding(binding)
    yield
    api.delete_validating_admission_policy_binding(name)
    api.delete_validating_admission_policy(name)


@pytest.mark.cluster
@pytest.mark.timeout(180)
def test_a_worker_may_report_progress_but_not_change_the_operators_fields(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    status_policy: None,
    operator: OperatorProcess,
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("guarded", nodes=2))
    running_workers(kube_cluster, kube_namespace, "guarded", 2)
    wait_phase(kube_cluster, kube_namespace, "guarded", "Running")
    identity = kube_cluster.kubeconfig_for_service_account(kube_namespace, "guarded-worker")
    with kube_cluster.new_api_client(identity) as api:
        custom: Any = client.CustomObjectsApi(api)

        def patch(body: dict[str, Any]) -> Any:
            return custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, kube_namespace, PLURAL, "guarded", {"status": body}
            )

        # The worker's token may write progress and metrics (once the policy is active, it still may)
        patch({"progress": {"step": 5, "totalSteps": 50, "summary": "5/50 (10%)"}})

        # But not the operator's fields: the API server refuses, naming the rule. (The policy takes a moment
        # to be loaded: wait with a harmless field, the message, which the operator rewrites anyway.)
        def refused() -> ApiException | None:
            try:
                patch({"message": "forged"})
            except ApiException as error:
                return error
            return None

        wait_for(refused, 20, "the policy to refuse a worker's write of status.message")
        with pytest.raises(ApiException) as error:
            patch({"phase": "Succeeded"})
        assert error.value.status in (403, 422)
        assert "status.progress, status.metrics, status.lastCheckpoint and status.tracking" in str(
            error.value.body
        )
        for forged in ({"failedAttempts": 5}, {"restarts": 3}, {"attempt": 7}, {"conditions": []}):
            with pytest.raises(ApiException) as again:
                patch(forged)
            assert again.value.status in (403, 422)
        # rank 0 also reports its checkpoints (they size the grace of the operator's deletes)
        patch(
            {
                "metrics": {"primary": "accuracy=0.5"},
                "progress": {"step": 6, "totalSteps": 50},
                "lastCheckpoint": {"step": 5, "saveSeconds": 0.5, "sizeBytes": 1000},
            }
        )
        # and where its trackers are, with a tracker it could not reach (issue 13)
        patch(
            {
                "tracking": {
                    "mlflowRunId": "abc",
                    "warnings": [{"tracker": "mlflow", "reason": "TrackerUnavailable", "message": "down"}],
                }
            }
        )

    current = status(kube_cluster, kube_namespace, "guarded")
    assert current["phase"] == "Running" and current["progress"]["step"] == 6
    # And the operator itself still writes every field: a failure restarts the gang
    fail_worker(kube_cluster, kube_namespace, "guarded-worker-1", exit_code=1, message="boom")
    wait_for(
        lambda: status(kube_cluster, kube_namespace, "guarded").get("restarts") == 1, 30, "the gang restart"
    )
