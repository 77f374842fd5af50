"""Given a FineTuneJob's children, every child a worker pod uses is written before any worker, and the
RoleBinding, which no worker uses when it is created, goes in the workers' own batch, and only when its Role
is the job's."""

from __future__ import annotations

from typing import Any

from kubetune.controller.child_order import binding_blocked_by, order_children
from kubetune.controller.children import build_job_children
from kubetune.controller.ownership import ChildProblem, ChildProblemReason
from kubetune.controller.pod_groups import build_pod_group

from tests.operator.test_children import JOB, spec, worker

COSCHEDULING = {"podGroupPolicy": {"coscheduling": {"scheduleTimeoutSeconds": 60}}}


def used_by(pod: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of every object of the job that the worker pod names."""
    used = {("Service", pod["spec"]["subdomain"])}
    used |= {("ConfigMap", v["configMap"]["name"]) for v in pod["spec"]["volumes"] if "configMap" in v}
    if "serviceAccountName" in pod["spec"]:
        used.add(("ServiceAccount", pod["spec"]["serviceAccountName"]))
    group = pod["metadata"]["labels"].get("scheduling.x-k8s.io/pod-group")
    if group:
        used.add(("PodGroup", group))
    return used


def names(children: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(c["kind"], c["metadata"]["name"]) for c in children}


def test_every_child_a_worker_uses_is_written_before_the_workers() -> None:
    job_spec = spec(kubernetes=COSCHEDULING)
    pod = worker(kubernetes=COSCHEDULING)
    children = [*build_job_children(JOB, job_spec), build_pod_group(JOB, job_spec, pod)]
    order = order_children([c for c in children if c is not None])
    assert used_by(pod) == {
        ("Service", "bert"),
        ("ConfigMap", "bert-config"),
        ("ServiceAccount", "bert-worker"),
        ("PodGroup", "bert"),
    }
    assert used_by(pod) <= names(order.before_workers)
    # and the Role the job's RoleBinding grants the workers' ServiceAccount
    assert ("Role", "bert-progress") in names(order.before_workers)
    assert names(order.with_workers) == {("RoleBinding", "bert-progress")}


def test_a_job_whose_children_had_a_problem_writes_all_of_them_before_any_worker() -> None:
    children = build_job_children(JOB, spec())
    order = order_children(children, troubled=True)
    assert order.before_workers == children and order.with_workers == []


def test_without_progress_reporting_nothing_waits_for_the_workers_batch() -> None:
    order = order_children(build_job_children(JOB, spec(runPolicy={"reportProgress": False})))
    assert names(order.before_workers) == {("Service", "bert"), ("ConfigMap", "bert-config")}
    assert order.with_workers == []


def test_the_role_binding_is_held_back_while_its_role_is_missing_or_someone_elses() -> None:
    binding = next(c for c in build_job_children(JOB, spec()) if c["kind"] == "RoleBinding")
    foreign = ChildProblem("Role", "bert-progress", ChildProblemReason.NOT_CONTROLLED, "a user's")
    refused = ChildProblem("Role", "bert-progress", ChildProblemReason.CREATE_REFUSED, "quota")
    assert binding_blocked_by(binding, [foreign]) == foreign
    assert binding_blocked_by(binding, [refused]) == refused
    # but not by the job's own Role that could not be converged, nor by other children's problems
    stale = ChildProblem("Role", "bert-progress", ChildProblemReason.UPDATE_REFUSED, "webhook")
    other = ChildProblem("ConfigMap", "bert-progress", ChildProblemReason.NOT_CONTROLLED, "a user's")
    assert binding_blocked_by(binding, [stale, other]) is None
    assert binding_blocked_by(binding, []) is None
