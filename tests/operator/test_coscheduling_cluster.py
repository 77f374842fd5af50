"""Given the PodGroup CRD of kubernetes-sigs/scheduler-plugins (v0.34.7, vendored in tests/kube/crds/; its schema is
v0.34.1-devel's) in the real API server and the real operator with its coscheduling integration (`kubetune operator
--coscheduling`, least-privilege RBAC: OPERATOR_RULES + COSCHEDULING_RULES), a FineTuneJob with
spec.kubernetes.podGroupPolicy.coscheduling gets one PodGroup, owned by the job and garbage-collected with it,
with minMember = its nodes; every worker of every attempt carries the group's label and the named scheduler;
without the CRD the job waits Pending, saying which field needs what, and goes on once the CRD is installed.

The gang guarantee is tested with the real plugin: a second scheduler with the Coscheduling plugin of
scheduler-plugins v0.34.1-devel, built against the control plane's Kubernetes v1.36.3 (hack/coscheduling; an
adapted copy of the plugin: Kubernetes 1.36's API moves and a client-go PodGroup reader, no scheduling logic
changed), started by tests/kube/coscheduling.py with the profile scheduler-plugins-scheduler. Two gangs of
3 x 4 GPUs on 4 KWOK nodes x 4 GPUs: one runs whole, the other binds no worker until the first has finished, then
runs; neither fails. scheduler-plugins' PodGroup status controller (cmd/controller) is not run; the scheduler's
retry of unschedulable pods is shortened to 20 s in its stead (see tests/kube/coscheduling.py). Where a test needs
no placement, workers without schedulerName are placed by the default scheduler on KWOK nodes (as with
scheduler-plugins installed as the only scheduler)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.kube.coscheduling import (
    SCHEDULER_NAME,
    CoschedulingNotFound,
    CoschedulingScheduler,
    find_coscheduling,
)
from tests.kube.harness import LocalCluster, wait_for
from tests.operator.conftest import (
    POOL,
    POOL_LABEL,
    REPO,
    OperatorProcess,
    job_manifest,
    operator_account,
    running,
)
from tests.operator.test_operator_cluster import (
    events,
    fail_worker,
    running_workers,
    status,
    summary_message,
    wait_phase,
    workers,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

POD_GROUP_CRD_FILE = REPO / "tests" / "kube" / "crds" / "scheduling.x-k8s.io_podgroups.yaml"
POD_GROUP_CRD = "podgroups.scheduling.x-k8s.io"
GROUP, VERSION, PLURAL = "scheduling.x-k8s.io", "v1alpha1", "podgroups"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
SECOND_SCHEDULER = SCHEDULER_NAME  # scheduler-plugins' name as a second scheduler (its chart)
GANG_POOL_LABEL = "kubetune.test/gang-pool"
GANG_POOL_NODES, GANG_POOL_GPUS = 4, 4  # 16 GPUs: room for one gang of 3 x 4, not two


def install_pod_group_crd(cluster: LocalCluster) -> None:
    """The vendored PodGroup CRD, applied and Established."""
    cluster.kubectl("apply", "--server-side", "-f", str(POD_GROUP_CRD_FILE))
    established = ("wait", "--for=condition=Established", "--timeout=30s", f"crd/{POD_GROUP_CRD}")
    wait_for(
        lambda: cluster.kubectl(*established, check=False).returncode == 0, 60, "PodGroup CRD Established"
    )


def remove_pod_group_crd(cluster: LocalCluster) -> None:
    """No PodGroup CRD in the cluster (deleted, with every PodGroup, when a test installed it)."""
    cluster.kubectl("delete", "crd", POD_GROUP_CRD, "--ignore-not-found", "--wait=true")
    wait_for(
        lambda: cluster.kubectl("get", "crd", POD_GROUP_CRD, check=False).returncode != 0,
        60,
        "the PodGroup CRD gone",
    )


@pytest.fixture
def pod_group_crd(kube_cluster: LocalCluster) -> Iterator[None]:
    install_pod_group_crd(kube_cluster)
    yield
    remove_pod_group_crd(kube_cluster)


@pytest.fixture
def coscheduling_operator(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    finetunejob_crd: None,
    gpu_pool: list[str],
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """`kubetune operator --coscheduling` as a ServiceAccount holding exactly OPERATOR_RULES +
    COSCHEDULING_RULES."""
    with operator_account(kube_cluster, kube_namespace, coscheduling=True) as kubeconfig:
        process = OperatorProcess(
            kube_namespace, kubeconfig, tmp_path, extra_args=("--standalone", "--coscheduling")
        )
        with running(process):
            yield process


def gang_job(name: str, nodes: int, timeout: int = 30, **kubernetes: Any) -> str:
    """A FineTuneJob on the GPU pool asking for a coscheduling PodGroup."""
    settings = {
        "nodeSelector": {POOL_LABEL: POOL},
        "podGroupPolicy": {"coscheduling": {"scheduleTimeoutSeconds": timeout}},
        **kubernetes,
    }
    return job_manifest(name, nodes=nodes, kubernetes=settings)


def get_pod_group(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    try:
        found: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return found
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def job_uid(cluster: LocalCluster, namespace: str, name: str) -> str:
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    job = custom.get_namespaced_custom_object("kubetune.io", "v1alpha1", namespace, "finetunejobs", name)
    return str(job["metadata"]["uid"])


def test_a_gang_gets_one_pod_group_owned_by_the_job_and_every_attempt_is_labelled_for_it(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    pod_group_crd: None,
    coscheduling_operator: OperatorProcess,
) -> None:
    kubectl("apply", "-f", "-", input=gang_job("gang", nodes=3, resources={"gpusPerNode": 2}))
    first = running_workers(kube_cluster, kube_namespace, "gang", 3)
    group = get_pod_group(kube_cluster, kube_namespace, "gang")
    assert group is not None, "no PodGroup gang"
    assert group["spec"]["minMember"] == 3 and group["spec"]["scheduleTimeoutSeconds"] == 30
    assert group["spec"]["minResources"]["nvidia.com/gpu"] == "6"  # 3 workers x 2 GPUs
    owner = next(r for r in group["metadata"]["ownerReferences"] if r.get("controller"))
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "FineTuneJob",
        "gang",
        job_uid(kube_cluster, kube_namespace, "gang"),
    )
    assert {p.metadata.labels[POD_GROUP_LABEL] for p in first} == {"gang"}

    # A gang restart: the same PodGroup, a new gang labelled for it (created once the old one is gone).
    fail_worker(kube_cluster, kube_namespace, "gang-worker-1", exit_code=1, message="RuntimeError: NCCL")

    def second_gang() -> list[Any] | None:
        pods = running_workers(kube_cluster, kube_namespace, "gang", 3)
        fresh = {p.metadata.uid for p in pods}.isdisjoint({p.metadata.uid for p in first})
        return pods if fresh and {p.metadata.labels["kubetune.io/attempt"] for p in pods} == {"1"} else None

    second = wait_for(second_gang, 60, "the gang recreated as attempt 1")
    assert {p.metadata.labels[POD_GROUP_LABEL] for p in second} == {"gang"}
    after = get_pod_group(kube_cluster, kube_namespace, "gang")
    assert after is not None and after["metadata"]["uid"] == group["metadata"]["uid"]
    assert after["spec"]["minMember"] == 3
    assert wait_phase(kube_cluster, kube_namespace, "gang", "Running")["restarts"] == 1

    # Deleting the job garbage-collects its PodGroup with the rest.
    kubectl("delete", "ftj", "gang", "--wait=true")
    wait_for(
        lambda: get_pod_group(kube_cluster, kube_namespace, "gang") is None,
        60,
        "garbage collection of the PodGroup",
    )


def test_the_workers_go_to_the_named_scheduler_in_their_group(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    pod_group_crd: None,
    coscheduling_operator: OperatorProcess,
) -> None:
    """scheduler-plugins as a second scheduler: the workers name it (no such scheduler runs here, so they stay
    unbound: what the default scheduler must not touch)."""
    kubectl("apply", "-f", "-", input=gang_job("aside", nodes=2, schedulerName=SECOND_SCHEDULER))

    def created() -> list[Any] | None:
        found = workers(kube_cluster, kube_namespace, "aside")
        return found if len(found) == 2 else None

    pods = wait_for(created, 30, "the 2 workers created")
    assert {p.spec.scheduler_name for p in pods} == {SECOND_SCHEDULER}
    assert {p.metadata.labels[POD_GROUP_LABEL] for p in pods} == {"aside"}
    group = get_pod_group(kube_cluster, kube_namespace, "aside")
    assert group is not None and group["spec"]["minMember"] == 2
    assert all(not p.spec.node_name for p in workers(kube_cluster, kube_namespace, "aside"))


def test_without_the_pod_group_crd_the_job_waits_naming_the_field_and_the_fix_then_goes_on(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    coscheduling_operator: OperatorProcess,
) -> None:
    remove_pod_group_crd(kube_cluster)
    try:
        kubectl("apply", "-f", "-", input=gang_job("early", nodes=2))

        def held() -> dict[str, Any] | None:
            current = status(kube_cluster, kube_namespace, "early")
            ready = next((c for c in current.get("conditions", []) if c["type"] == "ChildrenReady"), None)
            return current if ready is not None and ready["status"] == "False" else None

        waiting = wait_for(held, 30, "ChildrenReady=False on the job")
        assert waiting["phase"] == "Pending", waiting
        message = waiting["message"]
        assert "PodGroup early" in message and "spec.kubernetes.podGroupPolicy" in message, message
        assert "podgroups.scheduling.x-k8s.io" in message and "scheduler-plugins" in message, message
        assert workers(kube_cluster, kube_namespace, "early") == []  # no gang without its PodGroup
        assert any(
            kind == "Warning" and reason == "ChildCreateRefused" and "podGroupPolicy" in text
            for kind, reason, text in events(kube_cluster, kube_namespace, "early")
        )
        assert coscheduling_operator.healthy()  # the reconcile reported it, nothing crashed

        install_pod_group_crd(kube_cluster)  # the fix: the job goes on by itself (child retry: 1 s here)
        running_workers(kube_cluster, kube_namespace, "early", 2, timeout=60)
        assert get_pod_group(kube_cluster, kube_namespace, "early") is not None
        ready = next(
            c
            for c in status(kube_cluster, kube_namespace, "early")["conditions"]
            if c["type"] == "ChildrenReady"
        )
        assert ready["status"] == "True"
    finally:
        with contextlib.suppress(Exception):
            remove_pod_group_crd(kube_cluster)


@pytest.fixture
def gang_pool(kube_cluster: LocalCluster) -> str:
    """4 KWOK nodes x 4 GPUs in a pool of their own; returns the pool's label value."""
    if not kube_cluster.has_nodes:
        pytest.fail(
            "the gang test needs the local cluster with its controllers and KWOK nodes", pytrace=False
        )
    pool = f"gang-{uuid.uuid4().hex[:6]}"
    kube_cluster.add_gpu_nodes(GANG_POOL_NODES, gpus=GANG_POOL_GPUS, labels={GANG_POOL_LABEL: pool})
    kube_cluster.wait_for_nodes_ready()
    return pool


@pytest.fixture
def coscheduling_scheduler(
    kube_cluster: LocalCluster, pod_group_crd: None
) -> Iterator[CoschedulingScheduler]:
    """The real coscheduling scheduler (hack/coscheduling/build.sh) as a second scheduler, started after the
    PodGroup CRD and stopped before it is removed. No build is a failure naming the command, never a skip."""
    try:
        build = find_coscheduling()
    except CoschedulingNotFound as error:
        pytest.fail(str(error), pytrace=False)
    scheduler = CoschedulingScheduler(build, kube_cluster)
    scheduler.start()
    yield scheduler
    scheduler.stop()


def bound_workers(cluster: LocalCluster, namespace: str, name: str) -> list[Any]:
    return [p for p in workers(cluster, namespace, name) if p.spec.node_name]


@pytest.mark.timeout(300)
def test_the_coscheduling_scheduler_runs_one_gang_whole_and_binds_none_of_the_other_until_it_fits(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    gang_pool: str,
    coscheduling_scheduler: CoschedulingScheduler,
    coscheduling_operator: OperatorProcess,
) -> None:
    """Two gangs of 3 nodes x 4 GPUs, applied together, on 4 nodes x 4 GPUs: room for one. The default
    scheduler could bind 2 workers of each (16 GPUs held, neither job able to start); coscheduling binds one
    gang whole and not one worker of the other, which runs once the first has finished."""
    began = time.monotonic()
    settings = {
        "nodeSelector": {GANG_POOL_LABEL: gang_pool},
        "schedulerName": SCHEDULER_NAME,
        "resources": {"gpusPerNode": GANG_POOL_GPUS},
        "podGroupPolicy": {"coscheduling": {"scheduleTimeoutSeconds": 30}},
    }
    names = ("alpha", "beta")
    kubectl(
        "apply", "-f", "-", input="---\n".join(job_manifest(n, nodes=3, kubernetes=settings) for n in names)
    )

    def one_running() -> str | None:
        running = [n for n in names if status(kube_cluster, kube_namespace, n).get("phase") == "Running"]
        return running[0] if running else None

    first = wait_for(one_running, 90, "one of the two gangs Running")
    second = next(n for n in names if n != first)
    placed = running_workers(kube_cluster, kube_namespace, first, 3)
    assert len({p.spec.node_name for p in placed}) == 3  # 4 GPUs each: one worker per node
    pool_nodes = set(
        kubectl("get", "nodes", "-l", f"{GANG_POOL_LABEL}={gang_pool}", "-o", "name").stdout.split()
    )
    assert {f"node/{p.spec.node_name}" for p in placed} <= pool_nodes
    assert {p.spec.scheduler_name for p in placed} == {SCHEDULER_NAME}

    # The other gang: all 3 workers exist, named for the second scheduler, and not one is bound, for a while.
    def created() -> list[Any] | None:
        found = workers(kube_cluster, kube_namespace, second)
        return found if len(found) == 3 else None

    waiting = wait_for(created, 30, f"the 3 workers of {second}")
    assert {p.spec.scheduler_name for p in waiting} == {SCHEDULER_NAME}
    watched_until = time.monotonic() + 15
    samples = 0
    while time.monotonic() < watched_until:
        bound = bound_workers(kube_cluster, kube_namespace, second)
        assert bound == [], (
            f"{second} has bound workers while {first} runs: {[p.metadata.name for p in bound]}"
        )
        assert len(running_workers(kube_cluster, kube_namespace, first, 3)) == 3
        samples += 1
        time.sleep(0.5)
    held = status(kube_cluster, kube_namespace, second)
    assert held.get("phase") not in ("Running", "Failed", "Succeeded"), held

    # The waiting gang's pods are Unschedulable: status.waiting lists them (schedulingTimeoutSeconds applies).
    def listed_waiting() -> list[dict[str, Any]] | None:
        entries: list[dict[str, Any]] = status(kube_cluster, kube_namespace, second).get("waiting") or []
        return entries if {e["pod"] for e in entries} == {p.metadata.name for p in waiting} else None

    entries = wait_for(listed_waiting, 30, f"the 3 workers of {second} in status.waiting")
    assert {e["reason"] for e in entries} == {"Unschedulable"}, entries
    conditions = [
        c
        for p in workers(kube_cluster, kube_namespace, second)
        for c in (p.status.conditions or [])
        if c.type == "PodScheduled"
    ]
    print(
        f"{second} while {first} runs: phase {held.get('phase')}, waiting {held.get('waiting')}, "
        f"PodScheduled {[(c.status, c.reason, c.message) for c in conditions]}"
    )
    for name in names:
        group = get_pod_group(kube_cluster, kube_namespace, name)
        assert group is not None and group["spec"]["minMember"] == 3

    # The first gang finishes: the second is placed whole, and neither job failed.
    kube_cluster.complete_pod(kube_namespace, f"{first}-worker-0", exit_code=0, message=summary_message())
    wait_phase(kube_cluster, kube_namespace, first, "Succeeded", timeout=30)
    finished_at = time.monotonic()
    later = running_workers(kube_cluster, kube_namespace, second, 3, timeout=120)
    placed_after = time.monotonic() - finished_at
    assert {f"node/{p.spec.node_name}" for p in later} <= pool_nodes
    kube_cluster.complete_pod(kube_namespace, f"{second}-worker-0", exit_code=0, message=summary_message())
    for name in names:
        done = wait_phase(kube_cluster, kube_namespace, name, "Succeeded", timeout=30)
        assert done["failedAttempts"] == 0 and done.get("restarts", 0) == 0, done
    print(
        f"coscheduling scheduler {coscheduling_scheduler.build.scheduler_plugins_version} started in "
        f"{coscheduling_scheduler.startup_seconds:.1f}s; {samples} samples of {second} with no bound worker; "
        f"{second} running {placed_after:.1f}s after {first} succeeded; scenario {time.monotonic() - began:.1f}s"
    )
