"""Fault injection against the real API server (issue 11): the real `kubetune operator` (least-privilege
ServiceAccount) meets objects it does not own, a ResourceQuota, a finalizer that holds a pod Terminating,
deleted children and a permanent trainer error. Each test fails on the operator before the fix."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kube.harness import LocalCluster, wait_for
from tests.operator.conftest import GPUS_PER_NODE, POOL, POOL_LABEL, OperatorProcess, job_manifest, running
from tests.operator.test_operator_cluster import (
    GROUP,
    PLURAL,
    VERSION,
    events,
    fail_worker,
    get_job,
    running_workers,
    status,
    wait_event_reasons,
    wait_phase,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def condition(current: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in current.get("conditions") or [] if c["type"] == kind), None)


def wait_condition(
    cluster: LocalCluster, namespace: str, name: str, kind: str, value: str, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = condition(status(cluster, namespace, name), kind)
        return found if found is not None and found["status"] == value else None

    try:
        return wait_for(reached, timeout, f"condition {kind}={value} on {name}")
    except Exception as error:
        raise AssertionError(f"{error}; status: {status(cluster, namespace, name)}") from None


def resource_version(obj: Any) -> str:
    """The resourceVersion of a typed object (core API) or of a dict (custom objects)."""
    if isinstance(obj, dict):
        return str(obj["metadata"]["resourceVersion"])
    return str(obj.metadata.resource_version)


@contextlib.contextmanager
def recorded(list_call: Callable[..., Any], *args: Any, keep: Callable[[str, Any], None]) -> Iterator[None]:
    """`keep(type, object)` for every change `list_call(*args)`'s watch delivers from now on, starting at the
    resourceVersion of a listing taken on entry: an object that lives for a millisecond is seen too, which
    polling could miss. The record is complete when the block ends (the watch is stopped then)."""
    start = resource_version(list_call(*args))
    stop = threading.Event()
    failures: list[BaseException] = []

    def record() -> None:
        version = start
        stream = watch.Watch()
        try:
            while not stop.is_set():
                for change in stream.stream(
                    list_call, *args, resource_version=version, allow_watch_bookmarks=True, timeout_seconds=2
                ):
                    version = resource_version(change["object"])
                    if change["type"] != "BOOKMARK":
                        keep(change["type"], change["object"])
                    if stop.is_set():
                        stream.stop()
        except BaseException as error:  # (a 410 Gone would make the record incomplete: fail the test)
            failures.append(error)

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        time.sleep(1)  # (the watch delivers what the API server has written, a moment later)
        stop.set()
        watcher.join(10)
    assert not failures, f"the watch failed, its record is incomplete: {failures[0]!r}"
    assert not watcher.is_alive(), "the watch did not stop"


@contextlib.contextmanager
def pods_created(cluster: LocalCluster, namespace: str) -> Iterator[list[str]]:
    """Every pod created in `namespace` from now on (names, in order; see `recorded`)."""
    core: Any = client.CoreV1Api(cluster.api_client())
    created: list[str] = []

    def keep(kind: str, pod: Any) -> None:
        if kind == "ADDED" and pod.metadata.name not in created:
            created.append(pod.metadata.name)

    with recorded(core.list_namespaced_pod, namespace, keep=keep):
        yield created


@contextlib.contextmanager
def statuses_written(cluster: LocalCluster, namespace: str, name: str) -> Iterator[list[dict[str, Any]]]:
    """Every status of FineTuneJob `name` from now on, in the order written (see `recorded`)."""
    api: Any = client.CustomObjectsApi(cluster.api_client())
    written: list[dict[str, Any]] = []

    def keep(kind: str, job: dict[str, Any]) -> None:
        if job["metadata"]["name"] == name and job.get("status") and job["status"] not in written[-1:]:
            written.append(job["status"])

    with recorded(api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, keep=keep):
        yield written


@pytest.fixture
def quick_force_delete(
    kube_namespace: str, finetunejob_crd: None, gpu_pool: list[str], operator_kubeconfig: Any, tmp_path: Any
) -> Iterator[OperatorProcess]:
    """The operator, force-deleting workers 3 s past their grace period (the chart's default is 300 s)."""
    args = ("--standalone", "--terminating-timeout-seconds", "3")
    with running(OperatorProcess(kube_namespace, operator_kubeconfig, tmp_path, args)) as process:
        yield process


def test_a_users_objects_under_child_names_are_never_adopted_or_changed_but_reported(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    # Given a user's ConfigMap that happens to be named like the job's ConfigMap, and a Service of the job's
    # name controlled by another object
    core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "mine-config"}, "data": {"owner": "the user"}}
    )
    holder = core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "holder"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "holder",
        "uid": holder.metadata.uid,
        "controller": True,
    }
    core.create_namespaced_service(
        kube_namespace,
        {
            "metadata": {"name": "mine", "ownerReferences": [reference]},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}},
        },
    )

    # When the job is applied (every pod created in the namespace from before the apply on is recorded)
    with pods_created(kube_cluster, kube_namespace) as created:
        kubectl("apply", "-f", "-", input=job_manifest("mine", nodes=2))

        # Then the job reports both objects by name, with the fix, on a condition and in Warning Events
        reported = wait_condition(kube_cluster, kube_namespace, "mine", "ChildrenReady", "False")
        assert reported["reason"] == "ChildNotControlled"
        assert "ConfigMap mine-config" in reported["message"] and "Service mine" in reported["message"]
        assert "delete or rename" in reported["message"]
        # One Warning Event per object, posted in the background: wait for both, not the first.
        wait_for(
            lambda: (
                {"ConfigMap mine-config", "Service mine"}
                <= {
                    message.split(":", 1)[0]
                    for _, reason, message in events(kube_cluster, kube_namespace, "mine")
                    if reason == "ChildNotControlled"
                }
            ),
            10,
            "a ChildNotControlled Event for each of the user's objects",
        )
        assert status(kube_cluster, kube_namespace, "mine")["phase"] == "Pending"
        # and neither object was adopted or changed
        time.sleep(2)
        config = core.read_namespaced_config_map("mine-config", kube_namespace)
        assert config.data == {"owner": "the user"} and not config.metadata.owner_references
        service = core.read_namespaced_service("mine", kube_namespace)
        assert [r.uid for r in service.metadata.owner_references] == [holder.metadata.uid]
        assert service.spec.selector == {"app": "theirs"}
        assert status(kube_cluster, kube_namespace, "mine")["phase"] == "Pending"
    # and no worker was ever created, not even for a moment, that would mount the user's ConfigMap
    assert created == [], f"worker pods were created while the job's children were someone else's: {created}"

    # When the user removes them, the job creates its own and runs, without counting a restart
    core.delete_namespaced_config_map("mine-config", kube_namespace)
    core.delete_namespaced_service("mine", kube_namespace)
    running_workers(kube_cluster, kube_namespace, "mine", 2)
    current = wait_phase(kube_cluster, kube_namespace, "mine", "Running")
    assert current["restarts"] == 0
    assert wait_condition(kube_cluster, kube_namespace, "mine", "ChildrenReady", "True")

    # And deleting a job never takes a user's object with it
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "kept"}, "data": {"a": "b"}})
    kubectl("delete", "ftj", "mine", "--wait=true")
    time.sleep(3)
    assert core.read_namespaced_config_map("kept", kube_namespace).data == {"a": "b"}
    assert core.read_namespaced_config_map("holder", kube_namespace) is not None


# A user's object under the name of a child the workers use: the ConfigMap they mount, the ServiceAccount they
# run as (its token), and the Role the job's RoleBinding would grant that ServiceAccount. The Role here holds
# rules the operator holds too, so RBAC would let the operator bind it: only the operator's check stops it.
USERS_OBJECTS = {
    "ConfigMap": {"apiVersion": "v1", "kind": "ConfigMap", "data": {"owner": "the user"}},
    "ServiceAccount": {"apiVersion": "v1", "kind": "ServiceAccount"},
    "Role": {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "delete"]}],
    },
}


@pytest.mark.parametrize(
    ("kind", "name"),
    [("ConfigMap", "taken-config"), ("ServiceAccount", "taken-worker"), ("Role", "taken-progress")],
)
def test_no_worker_is_ever_created_while_a_child_it_uses_is_a_users_object(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    operator: OperatorProcess,
    kind: str,
    name: str,
) -> None:
    api = kube_cluster.api_client()
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    # Given a user's object named like a child of job `taken`
    users = {**USERS_OBJECTS[kind], "metadata": {"name": name, "namespace": kube_namespace}}
    if kind == "Role":
        rbac.create_namespaced_role(kube_namespace, users)
    elif kind == "ServiceAccount":
        core.create_namespaced_service_account(kube_namespace, users)
    else:
        core.create_namespaced_config_map(kube_namespace, users)

    # When the job is applied (every pod created in the namespace from before the apply on is recorded)
    with pods_created(kube_cluster, kube_namespace) as created:
        kubectl("apply", "-f", "-", input=job_manifest("taken", nodes=2))

        # Then the job reports the object and stays Pending
        reported = wait_condition(kube_cluster, kube_namespace, "taken", "ChildrenReady", "False")
        assert reported["reason"] == "ChildNotControlled" and f"{kind} {name}" in reported["message"]
        assert status(kube_cluster, kube_namespace, "taken")["phase"] == "Pending"
        wait_event_reasons(kube_cluster, kube_namespace, "taken", "ChildNotControlled")
        time.sleep(3)  # (child retries every second: several reconciles)
        assert status(kube_cluster, kube_namespace, "taken")["phase"] == "Pending"
        if kind == "Role":
            # and the job's ServiceAccount was never bound to the user's Role
            with pytest.raises(ApiException) as missing:
                rbac.read_namespaced_role_binding("taken-progress", kube_namespace)
            assert missing.value.status == 404
    # and no worker pod was ever created, not even for a moment
    assert created == [], f"worker pods were created while {kind} {name} was the user's: {created}"

    # When the user deletes their object, the job creates its own and its workers (which the watch sees)
    with pods_created(kube_cluster, kube_namespace) as created:
        if kind == "Role":
            rbac.delete_namespaced_role(name, kube_namespace)
        elif kind == "ServiceAccount":
            core.delete_namespaced_service_account(name, kube_namespace)
        else:
            core.delete_namespaced_config_map(name, kube_namespace)
        pods = running_workers(kube_cluster, kube_namespace, "taken", 2)
        assert wait_phase(kube_cluster, kube_namespace, "taken", "Running")["restarts"] == 0
    assert sorted(created) == ["taken-worker-0", "taken-worker-1"]
    assert {p.spec.service_account_name for p in pods} == {"taken-worker"}
    binding = rbac.read_namespaced_role_binding("taken-progress", kube_namespace)
    assert binding.role_ref.name == "taken-progress"
    assert [r.uid for r in binding.metadata.owner_references] == [
        get_job(kube_cluster, kube_namespace, "taken")["metadata"]["uid"]
    ]


def test_a_child_refused_by_a_resource_quota_still_gets_the_status_written_and_the_deadline_runs(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    # Given a ResourceQuota that allows no more ConfigMaps in the namespace (its kube-root-ca.crt counts)
    wait_for(
        lambda: core.read_namespaced_config_map("kube-root-ca.crt", kube_namespace), 30, "kube-root-ca.crt"
    )
    core.create_namespaced_resource_quota(
        kube_namespace, {"metadata": {"name": "no-more"}, "spec": {"hard": {"configmaps": "1"}}}
    )
    wait_for(
        lambda: (core.read_namespaced_resource_quota("no-more", kube_namespace).status.used or {}).get(
            "configmaps"
        ),
        30,
        "the quota's usage",
    )

    # When a job with a deadline is applied
    kubectl("apply", "-f", "-", input=job_manifest("quota", nodes=1, runPolicy={"activeDeadlineSeconds": 8}))

    # Then its status is written and says which child failed and why
    refused = wait_condition(kube_cluster, kube_namespace, "quota", "ChildrenReady", "False")
    assert refused["reason"] == "ChildCreateRefused"
    assert "ConfigMap quota-config" in refused["message"] and "exceeded quota" in refused["message"]
    assert status(kube_cluster, kube_namespace, "quota")["phase"] in ("Pending", "Starting", "Running")
    wait_event_reasons(kube_cluster, kube_namespace, "quota", "ChildCreateRefused")
    # and the deadline still ends it
    failed = wait_phase(kube_cluster, kube_namespace, "quota", "Failed", timeout=30)
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"  # type: ignore[index]


REFUSE_BINDING = """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: kubetune-test-refuse-{namespace}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [rbac.authorization.k8s.io]
        apiVersions: ["*"]
        operations: [CREATE]
        resources: [rolebindings]
  matchConditions:
    - name: the-jobs-progress-binding
      expression: request.namespace == "{namespace}" && request.name == "{name}"
  validations:
    - expression: "false"
      message: role bindings are reviewed by the platform team here
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: kubetune-test-refuse-{namespace}}}
spec:
  policyName: kubetune-test-refuse-{namespace}
  validationActions: [Deny]
"""


@pytest.mark.parametrize("fault", ["users", "refused"])
def test_a_progress_role_binding_that_cannot_be_written_is_reported_and_the_job_runs_without_live_progress(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess, fault: str
) -> None:
    """The RoleBinding only lets rank 0 write live progress. A user's RoleBinding under its name, or an
    admission policy that refuses it (403), is reported on the job, naming it and the fix, while the job is
    planned, its workers created once (never removed), its status kept and a crash restarts the gang; the
    user's object is never touched. Once the obstacle is gone, the job's own RoleBinding is created."""
    rbac: Any = client.RbacAuthorizationV1Api(kube_cluster.api_client())
    job, binding = f"rb-{fault}", f"rb-{fault}-progress"
    users = {
        "metadata": {"name": binding, "namespace": kube_namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "users-role"},
        "subjects": [{"kind": "ServiceAccount", "name": "someone", "namespace": kube_namespace}],
    }
    try:
        if fault == "users":
            # Given a user's RoleBinding named like the job's progress RoleBinding
            rbac.create_namespaced_role_binding(kube_namespace, users)
        else:
            # Given an admission policy that refuses the job's progress RoleBinding (effective once it
            # refuses ours: policies take a moment to load)
            kubectl("apply", "-f", "-", input=REFUSE_BINDING.format(namespace=kube_namespace, name=binding))

            def refusing() -> bool:
                try:
                    rbac.create_namespaced_role_binding(kube_namespace, users)
                except ApiException as error:
                    return error.status == 403
                rbac.delete_namespaced_role_binding(binding, kube_namespace)
                return False

            wait_for(refusing, 30, "the admission policy refusing the RoleBinding")

        # When the job is applied (every pod created and every status written from before the apply on are
        # recorded)
        with (
            pods_created(kube_cluster, kube_namespace) as created,
            statuses_written(kube_cluster, kube_namespace, job) as written,
        ):
            kubectl("apply", "-f", "-", input=job_manifest(job, nodes=2))

            # Then its workers run, and the binding is reported by name, with the fix and what it costs
            running_workers(kube_cluster, kube_namespace, job, 2)
            reported = wait_condition(kube_cluster, kube_namespace, job, "ChildrenReady", "False")
            reason = "ChildNotControlled" if fault == "users" else "ChildCreateRefused"
            assert reported["reason"] == reason, reported
            assert f"RoleBinding {binding}" in reported["message"]
            if fault == "users":
                assert "delete or rename that RoleBinding" in reported["message"]
            else:
                assert "reviewed by the platform team" in reported["message"]
            wait_event_reasons(kube_cluster, kube_namespace, job, reason)
            assert wait_phase(kube_cluster, kube_namespace, job, "Running")["restarts"] == 0
            time.sleep(3)  # (child retries every second: several reconciles)
            current = status(kube_cluster, kube_namespace, job)
            assert (current["phase"], current["attempt"], current["restarts"]) == ("Running", 0, 0)
            reported = condition(current, "ChildrenReady") or {}
            assert "without live progress" in reported.get("message", ""), reported
        # and the workers were created once and never removed
        assert sorted(created) == [f"{job}-worker-0", f"{job}-worker-1"]
        # and the binding was reported from the start: in the first status that counts any worker
        first = next(w for w in written if (w.get("workers") or {}).get("created"))
        assert (condition(first, "ChildrenReady") or {}).get("status") == "False", written
        if fault == "users":
            # and the user's RoleBinding is unchanged
            theirs = rbac.read_namespaced_role_binding(binding, kube_namespace)
            assert theirs.role_ref.name == "users-role" and not theirs.metadata.owner_references
            assert [s.name for s in theirs.subjects] == ["someone"]

        # And failure handling goes on: a crashed worker restarts the gang, whose new workers are created
        fail_worker(kube_cluster, kube_namespace, f"{job}-worker-1", exit_code=1, message="boom")

        def restarted() -> dict[str, Any] | None:
            current = status(kube_cluster, kube_namespace, job)
            return current if (current.get("phase"), current.get("attempt")) == ("Running", 1) else None

        assert wait_for(restarted, 30, "attempt 1 running")["restarts"] == 1
    finally:
        # When the obstacle is gone
        if fault == "users":
            rbac.delete_namespaced_role_binding(binding, kube_namespace)
        else:
            kubectl(
                "delete",
                "validatingadmissionpolicybinding,validatingadmissionpolicy",
                f"kubetune-test-refuse-{kube_namespace}",
                "--ignore-not-found",
            )

    # Then the job's own RoleBinding is created and the condition turns True (no new attempt for it)
    wait_condition(kube_cluster, kube_namespace, job, "ChildrenReady", "True")
    own = rbac.read_namespaced_role_binding(binding, kube_namespace)
    assert [r.uid for r in own.metadata.owner_references] == [
        get_job(kube_cluster, kube_namespace, job)["metadata"]["uid"]
    ]
    assert status(kube_cluster, kube_namespace, job)["attempt"] == 1


def test_a_worker_stuck_terminating_is_force_deleted_after_a_bounded_wait_and_the_status_says_why(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, quick_force_delete: OperatorProcess
) -> None:
    process = quick_force_delete
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    kubectl("apply", "-f", "-", input=job_manifest("held", nodes=2))
    running_workers(kube_cluster, kube_namespace, "held", 2)
    # Given rank 1 carries a finalizer that nobody will remove (as a stuck storage driver would)
    core.patch_namespaced_pod(
        "held-worker-1", kube_namespace, {"metadata": {"finalizers": ["kubetune.test/hold"]}}
    )
    held = core.read_namespaced_pod("held-worker-1", kube_namespace)
    uid, worker_node = held.metadata.uid, held.spec.node_name

    # When rank 0 crashes, the gang restart deletes rank 1, which stays Terminating
    fail_worker(kube_cluster, kube_namespace, "held-worker-0", exit_code=1, message="boom")

    # Then the status says what the restart waits for, naming the pod and its finalizer
    def truthful() -> dict[str, Any] | None:
        current = status(kube_cluster, kube_namespace, "held")
        message = current.get("message", "")
        stuck = f"held-worker-1 on node {worker_node} Terminating"
        return current if stuck in message and "force-deleted" in message else None

    current = wait_for(truthful, 30, "the restart's message naming the stuck pod")
    assert current["phase"] == "Restarting" and "kubetune.test/hold" in current["message"]
    # and the operator force-deleted it (grace 0), the very pod it saw (uid precondition)
    pod = core.read_namespaced_pod("held-worker-1", kube_namespace)
    assert pod.metadata.uid == uid and pod.metadata.deletion_grace_period_seconds == 0
    assert "force-deleting held-worker-1" in process.log()

    # When the finalizer is finally removed, the next attempt starts
    core.patch_namespaced_pod("held-worker-1", kube_namespace, {"metadata": {"finalizers": None}})

    def second_gang() -> list[Any] | None:
        pods = running_workers(kube_cluster, kube_namespace, "held", 2)
        return pods if {p.metadata.labels["kubetune.io/attempt"] for p in pods} == {"1"} else None

    wait_for(second_gang, 30, "attempt 1 running")


def test_a_deleted_service_or_config_map_is_created_again_within_the_same_generation(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    kubectl("apply", "-f", "-", input=job_manifest("again", nodes=1))
    running_workers(kube_cluster, kube_namespace, "again", 1)
    wait_phase(kube_cluster, kube_namespace, "again", "Running")
    uids = {
        "service": core.read_namespaced_service("again", kube_namespace).metadata.uid,
        "config": core.read_namespaced_config_map("again-config", kube_namespace).metadata.uid,
    }
    core.delete_namespaced_service("again", kube_namespace)
    core.delete_namespaced_config_map("again-config", kube_namespace)

    def recreated() -> bool:
        try:
            service = core.read_namespaced_service("again", kube_namespace)
            config = core.read_namespaced_config_map("again-config", kube_namespace)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return service.metadata.uid != uids["service"] and config.metadata.uid != uids["config"]

    wait_for(recreated, 30, "the Service and ConfigMap created again")
    assert get_job(kube_cluster, kube_namespace, "again")["metadata"]["generation"] == 1
    assert status(kube_cluster, kube_namespace, "again")["restarts"] == 0


def test_exit_code_2_fails_the_job_at_once_without_a_restart(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    kubectl("apply", "-f", "-", input=job_manifest("bad", nodes=2, runPolicy={"backoffLimit": 5}))
    running_workers(kube_cluster, kube_namespace, "bad", 2)
    fail_worker(kube_cluster, kube_namespace, "bad-worker-1", exit_code=2, message="training.lr must be > 0")
    failed = wait_phase(kube_cluster, kube_namespace, "bad", "Failed")
    assert failed["restarts"] == 0 and condition(failed, "Failed")["reason"] == "InvalidSpec"  # type: ignore[index]
    assert "training.lr" in failed["message"]
    assert failed["attempts"][-1]["exitCode"] == 2 and failed["attempts"][-1]["pod"] == "bad-worker-1"
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in events(kube_cluster, kube_namespace, "bad")]


def test_resuming_while_the_suspended_workers_still_terminate_is_not_a_gang_restart(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    kubectl("apply", "-f", "-", input=job_manifest("nap", nodes=2))
    running_workers(kube_cluster, kube_namespace, "nap", 2)
    wait_phase(kube_cluster, kube_namespace, "nap", "Running")
    # Given a worker that will stay Terminating for a while (a finalizer: as a slow checkpoint upload would)
    core.patch_namespaced_pod(
        "nap-worker-1", kube_namespace, {"metadata": {"finalizers": ["kubetune.test/slow"]}}
    )
    kubectl("patch", "ftj", "nap", "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    wait_phase(kube_cluster, kube_namespace, "nap", "Suspended")

    # When the job is resumed while that pod still terminates
    kubectl("patch", "ftj", "nap", "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    time.sleep(3)
    current = status(kube_cluster, kube_namespace, "nap")
    # Then it waits for the name instead of counting a restart
    assert current["restarts"] == 0 and current["phase"] == "Pending", current
    core.patch_namespaced_pod("nap-worker-1", kube_namespace, {"metadata": {"finalizers": None}})
    running_workers(kube_cluster, kube_namespace, "nap", 2)
    assert wait_phase(kube_cluster, kube_namespace, "nap", "Running")["restarts"] == 0


def test_secret_env_the_pod_overlay_and_default_requests_reach_the_real_pods_and_bad_overlays_are_refused(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    # A bad overlay is refused by the API server at apply, naming the field (the CRD's CEL rules)
    bad = job_manifest(
        "clash",
        nodes=1,
        kubernetes={
            "nodeSelector": {"kubetune.test/pool": "operator"},
            "podOverlay": {"volumes": [{"name": "dshm", "source": {"emptyDir": {}}}]},
        },
    )
    refused = kubectl("apply", "-f", "-", input=bad, check=False)
    assert refused.returncode != 0 and "podOverlay.volumes" in refused.stderr, refused.stderr
    unknown_mount = job_manifest(
        "clash",
        nodes=1,
        kubernetes={"podOverlay": {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}},
    )
    refused = kubectl("apply", "-f", "-", input=unknown_mount, check=False)
    assert refused.returncode != 0 and "podOverlay.volumeMounts" in refused.stderr, refused.stderr

    # A good one, with Secret-sourced env, reaches the pods the API server admits
    manifest = job_manifest(
        "rdma",
        nodes=1,
        kubernetes={
            "nodeSelector": {"kubetune.test/pool": "operator"},
            "secretEnv": {"WANDB_API_KEY": {"name": "wandb", "key": "api-key"}},
            "envFromSecrets": ["shared-keys"],
            "annotations": {"k8s.v1.cni.cncf.io/networks": "ib-net"},
            "podOverlay": {
                "volumes": [{"name": "ib", "source": {"emptyDir": {"medium": "Memory"}}}],
                "volumeMounts": [{"name": "ib", "mountPath": "/dev/infiniband"}],
                "addCapabilities": ["IPC_LOCK"],
            },
        },
    )
    kubectl("apply", "-f", "-", input=manifest)
    (pod,) = running_workers(kube_cluster, kube_namespace, "rdma", 1)
    (container,) = pod.spec.containers
    key = next(e for e in container.env if e.name == "WANDB_API_KEY")
    assert (key.value, key.value_from.secret_key_ref.name) == (None, "wandb")
    assert [s.secret_ref.name for s in container.env_from] == ["shared-keys"]
    assert container.security_context.capabilities.add == ["IPC_LOCK"]
    assert {m.name: m.mount_path for m in container.volume_mounts}["ib"] == "/dev/infiniband"
    assert pod.metadata.annotations["k8s.v1.cni.cncf.io/networks"] == "ib-net"
    # and a worker asking only for GPUs is not BestEffort
    assert pod.status.qos_class == "Burstable"
    assert container.resources.requests["cpu"] == "1" and container.resources.requests["memory"] == "2Gi"


def test_an_eviction_seen_together_with_a_peer_crash_is_blamed_on_the_evicted_rank_and_not_counted(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    kubectl("apply", "-f", "-", input=job_manifest("drained", nodes=2, runPolicy={"backoffLimit": 0}))
    running_workers(kube_cluster, kube_namespace, "drained", 2)
    wait_phase(kube_cluster, kube_namespace, "drained", "Running")
    # Given the operator does not look while (as in a drain) rank 1 is evicted through the Eviction API, its
    # grace period still running (a finalizer stands in for it), and rank 0 crashes because its peer left
    operator.kill()
    core.patch_namespaced_pod(
        "drained-worker-1", kube_namespace, {"metadata": {"finalizers": ["kubetune.test/grace"]}}
    )
    core.create_namespaced_pod_eviction(
        "drained-worker-1",
        kube_namespace,
        {"metadata": {"name": "drained-worker-1", "namespace": kube_namespace}},
    )
    kube_cluster.complete_pod(
        kube_namespace, "drained-worker-0", exit_code=1, message="NCCL error: peer gone"
    )

    # When the operator sees both at once
    operator.start()

    # Then the eviction is blamed, and backoffLimit 0 is not used up: the gang restarts
    def restarted() -> dict[str, Any] | None:
        current = status(kube_cluster, kube_namespace, "drained")
        return current if current.get("restarts") == 1 else None

    current = wait_for(restarted, 30, "the gang restart")
    assert current["phase"] != "Failed", current
    assert (current["failedAttempts"], current["disruptions"]) == (0, 1)
    assert current["lastFailure"]["pod"] == "drained-worker-1"
    assert current["lastFailure"]["reason"] == "Evicted"
    core.patch_namespaced_pod("drained-worker-1", kube_namespace, {"metadata": {"finalizers": None}})


SILENCE_NODE = """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: kubetune-test-silence-{node}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["*"]
        operations: [UPDATE]
        resources: [nodes, nodes/status]
      - apiGroups: [coordination.k8s.io]
        apiVersions: ["*"]
        operations: [UPDATE]
        resources: [leases]
      - apiGroups: [""]
        apiVersions: ["*"]
        operations: [UPDATE, DELETE]
        resources: [pods, pods/status]
  matchConditions:
    - name: kwok-writes-for-this-node
      expression: >-
        request.userInfo.username == "kwok-controller" && (request.resource.resource == "pods"
        ? oldObject.spec.nodeName == "{node}" : request.name == "{node}")
  validations:
    - expression: "false"
      message: this node is silenced by a test (what its kubelet would write is refused)
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: kubetune-test-silence-{node}}}
spec:
  policyName: kubetune-test-silence-{node}
  validationActions: [Deny]
"""


@pytest.mark.timeout(360)
def test_a_worker_on_a_node_that_stops_reporting_is_evicted_after_node_loss_timeout_seconds_not_300(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, quick_force_delete: OperatorProcess
) -> None:
    """One KWOK node stops reporting: a ValidatingAdmissionPolicy refuses KWOK's writes for that node (its
    Lease, its status, its pods' status and deletion: what a lost kubelet no longer does; the test's only
    stand-in, as KWOK itself cannot silence one node). The real node
    controller marks the node unreachable and taints it NoExecute after its grace period, the real taint
    manager evicts the worker after the job's runPolicy.nodeLossTimeoutSeconds (5 s here, instead of the API
    server's default 300 s), the operator force-deletes the pod that hangs Terminating there, and the gang
    restarts on the nodes that still report, counted as a disruption and named as a node loss. (Silencing
    every KWOK node would not do: the node controller stops evicting in a zone where all nodes are down.)"""
    core: Any = client.CoreV1Api(kube_cluster.api_client())
    silenced = ""
    try:
        kubectl(
            "apply",
            "-f",
            "-",
            input=job_manifest(
                "silent",
                nodes=2,
                runPolicy={"nodeLossTimeoutSeconds": 5},
                # (a pod on a lost node is force-deleted only past its grace period: keep that short)
                kubernetes={"nodeSelector": {POOL_LABEL: POOL}, "terminationGracePeriodSeconds": 30},
            ),
        )
        pods = running_workers(kube_cluster, kube_namespace, "silent", 2)
        wait_phase(kube_cluster, kube_namespace, "silent", "Running")
        lost = next(p.spec.node_name for p in pods if p.metadata.name == "silent-worker-1")
        # Given rank 1's node goes silent
        kubectl("apply", "-f", "-", input=SILENCE_NODE.format(node=lost))
        silenced, stopped = lost, time.monotonic()

        # Then the gang restarts away from it, counted as a disruption, naming the node
        def moved() -> list[Any] | None:
            pods = running_workers(kube_cluster, kube_namespace, "silent", 2)
            fresh = {p.metadata.labels["kubetune.io/attempt"] for p in pods} == {"1"}
            return pods if fresh and all(p.spec.node_name != lost for p in pods) else None

        try:
            wait_for(moved, 150, "attempt 1 running away from the silent node")
        except Exception:
            seen = [
                (p.metadata.name, p.spec.node_name, p.status.phase, p.metadata.deletion_timestamp)
                for p in core.list_namespaced_pod(kube_namespace).items
            ]
            raise AssertionError(
                f"taints of {lost}: {core.read_node(lost).spec.taints}; pods {seen}; "
                f"status {status(kube_cluster, kube_namespace, 'silent')}"
            ) from None
        recovered = time.monotonic() - stopped
        current = status(kube_cluster, kube_namespace, "silent")
        assert (current["failedAttempts"], current["disruptions"]) == (0, 1), current
        assert current["lastFailure"]["pod"] == "silent-worker-1", (
            current["lastFailure"],
            current["attempts"],
        )
        assert current["lastFailure"]["reason"] == "NodeLost"
        assert lost in current["lastFailure"]["message"]
        # the node controller's grace (50 s by default) + 5 s + the pod's 30 s grace + 3 s: under 300 s
        assert recovered < 150, recovered
        print(f"node silent -> attempt 1 running elsewhere in {recovered:.0f} s")
    finally:
        if silenced:
            kubectl("delete", "-f", "-", input=SILENCE_NODE.format(node=silenced))
            # KWOK does not take a node it could not update back: a fresh node replaces it in the pool.
            core.delete_node(silenced)
            kube_cluster.add_gpu_nodes(1, gpus=GPUS_PER_NODE, labels={POOL_LABEL: POOL})
            kube_cluster.wait_for_nodes_ready(120)


def test_a_tracker_warning_rank_0_writes_into_the_status_becomes_a_warning_event(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    """Workers may patch status.tracking but not create Events: the operator announces each new warning.
    (The status patch is the admin's here, standing in for rank 0's, which the trainer tests check.)"""
    kubectl("apply", "-f", "-", input=job_manifest("tracked", nodes=1))
    wait_phase(kube_cluster, kube_namespace, "tracked", "Running")
    warning = {"tracker": "mlflow", "reason": "TrackerUnavailable", "message": "http://mlflow:5000 refused"}
    # Beside it, where an offline W&B run is: the API server keeps these fields (the CRD's status schema has them).
    offline_run = "offline-run-20261202_050948-piw7xwfg"
    wandb_run = {
        "wandbRunId": "piw7xwfg",
        "wandbMode": "offline",
        "wandbRunDir": f"/output/wandb/{offline_run}",
        "wandbRunLocation": f"s3://bucket/tracked/wandb/{offline_run}",
        "wandbSyncCommand": f"wandb sync {offline_run}",
    }
    api = client.CustomObjectsApi(kube_cluster.api_client())
    api.patch_namespaced_custom_object_status(
        "kubetune.io",
        "v1alpha1",
        kube_namespace,
        "finetunejobs",
        "tracked",
        {"status": {"tracking": {**wandb_run, "warnings": [warning]}}},
    )
    found = wait_event_reasons(kube_cluster, kube_namespace, "tracked", "TrackerUnavailable")
    assert (
        "Warning",
        "TrackerUnavailable",
        "mlflow: http://mlflow:5000 refused; training goes on without it",
    ) in found
    job = api.get_namespaced_custom_object(
        "kubetune.io", "v1alpha1", kube_namespace, "finetunejobs", "tracked"
    )
    tracking = job["status"]["tracking"]
    assert {key: tracking.get(key) for key in wandb_run} == wandb_run, tracking
