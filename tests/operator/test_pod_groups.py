"""Given a FineTuneJob with spec.kubernetes.podGroupPolicy.coscheduling, the operator builds one PodGroup for the
gang (scheduling.x-k8s.io/v1alpha1, what the coscheduling plugin of kubernetes-sigs/scheduler-plugins reads)
with minMember = nodes and the gang's total requests, owned by the job, and labels every worker with it; a job
asking for it from an operator without the integration fails naming the fix. Pure: no cluster (the cluster
test is tests/operator/test_coscheduling_cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune.controller import names
from kubetune.controller.child_sync import MISSING_KIND_FIXES
from kubetune.controller.children import JobRef, WorkerContext, build_worker_pod
from kubetune.controller.observe import observe_pod
from kubetune.controller.plan import ObservedJob, PlanOptions, plan
from kubetune.controller.pod_groups import build_pod_group, gang_requests, wants_pod_group
from kubetune.controller.rbac import cluster_role
from kubetune.spec.loading import SpecError, parse_spec
from kubetune.spec.status import Phase

from tests.operator.factories import at, job_body, pod
from tests.operator.test_plan import written

JOB = JobRef("demo", "ns", "uid-1")
GANG = {"podGroupPolicy": {"coscheduling": {"scheduleTimeoutSeconds": 120}}}


def gang_spec(nodes: int = 4, **kubernetes: Any) -> Any:
    body = job_body(nodes=nodes, kubernetes={**GANG, **kubernetes})
    return parse_spec(body["spec"])


def workers(spec: Any, attempt: int = 0) -> list[dict[str, Any]]:
    return [
        build_worker_pod(WorkerContext(JOB, spec, index, attempt, "img"))
        for index in range(spec.distribution.nodes)
    ]


def test_the_pod_group_asks_for_the_whole_gang_and_is_owned_by_the_job() -> None:
    spec = gang_spec(nodes=4, resources={"gpusPerNode": 8, "cpu": "32", "memory": "256Gi"})
    group = build_pod_group(JOB, spec, workers(spec)[0])
    assert group is not None
    assert (group["apiVersion"], group["kind"]) == ("scheduling.x-k8s.io/v1alpha1", "PodGroup")
    assert group["metadata"]["name"] == "demo" and group["metadata"]["namespace"] == "ns"
    assert group["spec"] == {
        "minMember": 4,
        "minResources": {"cpu": "128", "memory": "1024Gi", "nvidia.com/gpu": "32"},
        "scheduleTimeoutSeconds": 120,
    }
    owner = group["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "FineTuneJob",
        "demo",
        "uid-1",
        True,
    )
    assert group["metadata"]["labels"][names.LABEL_JOB] == "demo"


def test_every_worker_of_every_attempt_carries_the_pod_group_label() -> None:
    spec = gang_spec(nodes=3, labels={names.LABEL_POD_GROUP: "someone-elses"}, schedulerName="coscheduler")
    for attempt in (0, 1):
        pods = workers(spec, attempt)
        assert {p["metadata"]["labels"][names.LABEL_POD_GROUP] for p in pods} == {"demo"}
        assert {p["spec"]["schedulerName"] for p in pods} == {"coscheduler"}
        assert {p["metadata"]["labels"][names.LABEL_ATTEMPT] for p in pods} == {str(attempt)}


def test_without_the_policy_there_is_no_pod_group_and_no_label() -> None:
    spec = parse_spec(job_body(nodes=2, kubernetes={"schedulerName": "coscheduler"})["spec"])
    assert not wants_pod_group(spec)
    assert build_pod_group(JOB, spec, workers(spec)[0]) is None
    assert all(names.LABEL_POD_GROUP not in p["metadata"]["labels"] for p in workers(spec))


def test_the_timeout_defaults_to_kubeflow_trainers_and_an_empty_policy_is_refused() -> None:
    spec = parse_spec(job_body(kubernetes={"podGroupPolicy": {"coscheduling": {}}})["spec"])
    group = build_pod_group(JOB, spec, workers(spec)[0])
    assert group is not None and group["spec"]["scheduleTimeoutSeconds"] == 60
    with pytest.raises(SpecError, match=r"podGroupPolicy names no gang scheduler.*coscheduling"):
        parse_spec(job_body(kubernetes={"podGroupPolicy": {}})["spec"])


def test_a_coscheduling_pod_group_for_volcano_is_refused_naming_both_fields() -> None:
    with pytest.raises(SpecError, match=r"podGroupPolicy.coscheduling.*Volcano.*schedulerName"):
        parse_spec(job_body(kubernetes={**GANG, "schedulerName": "volcano"})["spec"])


@pytest.mark.parametrize(
    ("requests", "nodes", "total"),
    [
        ({"cpu": "500m", "memory": "2Gi"}, 3, {"cpu": "1500m", "memory": "6Gi"}),
        ({"cpu": "1.5", "memory": "1000M"}, 2, {"cpu": "3", "memory": "2000M"}),
        ({"cpu": "2", "memory": "1.5Gi"}, 2, {"cpu": "4", "memory": "3221225472"}),
    ],
)
def test_min_resources_are_the_requests_times_the_nodes(
    requests: dict[str, str], nodes: int, total: dict[str, str]
) -> None:
    worker = {"spec": {"containers": [{"name": "trainer", "resources": {"requests": requests}}]}}
    assert gang_requests(worker, nodes) == total


def test_an_operator_without_the_integration_fails_such_a_job_naming_the_fix() -> None:
    body = job_body(nodes=2, kubernetes=GANG)
    result = plan(ObservedJob.from_body(body), [], at(0), PlanOptions())
    assert result.status.phase == Phase.FAILED and result.create_workers == []
    message = result.status.message or ""
    assert "spec.kubernetes.podGroupPolicy.coscheduling" in message
    assert "coscheduling.enabled=true" in message and "--coscheduling" in message
    allowed = plan(ObservedJob.from_body(body), [], at(0), PlanOptions(coscheduling=True))
    assert allowed.create_workers == [0, 1] and allowed.ensure_children


def test_a_gang_restart_keeps_the_one_pod_group_and_waits_for_the_old_gang() -> None:
    """The plugin counts the group's pods: the next attempt is created only once the old pods are gone."""
    options = PlanOptions(coscheduling=True, backoff_base_seconds=1)

    def decide(body: dict[str, Any], pods: list[dict[str, Any]], seconds: float) -> Any:
        observed = [p for p in (observe_pod(raw) for raw in pods) if p is not None]
        return plan(ObservedJob.from_body(body), observed, at(seconds), options)

    body = job_body(nodes=2, kubernetes=GANG)
    body = written(body, decide(body, [], 0))
    body = written(body, decide(body, [pod(0), pod(1)], 5))
    restarting = decide(body, [pod(0), pod(1, phase="Failed", exit_code=1)], 6)
    assert restarting.status.phase == Phase.RESTARTING and restarting.create_workers == []
    body = written(body, restarting)
    waiting = decide(body, [pod(0, deleting=True), pod(1, phase="Failed", exit_code=1)], 20)
    assert waiting.create_workers == []
    gone = decide(body, [], 21)
    assert gone.create_workers == [0, 1] and gone.status.attempt == 1 and gone.ensure_children


def test_the_missing_crd_names_the_field_and_the_fix() -> None:
    fix = MISSING_KIND_FIXES["PodGroup"]
    assert "spec.kubernetes.podGroupPolicy" in fix and "podgroups.scheduling.x-k8s.io" in fix
    assert "manifests/coscheduling" in fix


def test_the_rbac_of_the_integration_is_podgroups_only_and_only_when_enabled() -> None:
    def podgroup_verbs(role: dict[str, Any]) -> set[str]:
        return {v for rule in role["rules"] if "podgroups" in rule["resources"] for v in rule["verbs"]}

    assert podgroup_verbs(cluster_role()) == set()
    assert podgroup_verbs(cluster_role(coscheduling=True)) == {"get", "create", "patch", "delete"}
    extra = [r for r in cluster_role(coscheduling=True)["rules"] if r not in cluster_role()["rules"]]
    assert extra == [
        {
            "apiGroups": ["scheduling.x-k8s.io"],
            "resources": ["podgroups"],
            "verbs": ["get", "create", "patch", "delete"],
        }
    ]
