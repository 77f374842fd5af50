"""Given a real Kueue (hack/kueue/build.sh, tests/kube/kueue.py) in the local cluster, KWOK GPU nodes and the
real operator (`kubetune operator --kueue`, least-privilege RBAC: OPERATOR_RULES + KUEUE_RULES), FineTuneJobs
sent to a LocalQueue are admitted whole or not at all, wait queued without failing, and a preempted job goes
back to the queue uncounted and runs again.

The workers are KWOK pods: "SIGTERM, checkpoint, exit 75" is what a real trainer does on the graceful delete
these tests observe; the trainer's side of it is tested with real processes in tests/trainer and tests/e2e."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubetune.controller.kube import ApiConnection, Kube
from kubetune.controller.plan import PlanOptions
from kubetune.controller.queueing import QUEUE_LABEL, workload_name
from kubetune.controller.reconciler import Reconciler

from tests.kube.harness import LocalCluster, wait_for
from tests.kube.kueue import KueueManager
from tests.operator.conftest import OperatorProcess, job_manifest, operator_account, running
from tests.operator.test_connection import login_with
from tests.operator.test_operator_cluster import (
    events,
    running_workers,
    status,
    summary_message,
    wait_phase,
    workers,
)

pytestmark = pytest.mark.cluster

GPUS_PER_NODE = 4
NODES = 4  # 16 GPUs, the ClusterQueue's quota
KUEUE_POOL_LABEL = "kubetune.test/kueue-pool"


KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"


def cluster_queue(
    name: str, flavor: str, gpus: int, preemption: dict[str, Any], cohort: str | None = None
) -> dict[str, Any]:
    """A ClusterQueue of `gpus` GPUs (and CPU and memory to spare) of one flavor, in `cohort` if given."""
    spec: dict[str, Any] = {
        "namespaceSelector": {},
        "preemption": preemption,
        "resourceGroups": [
            {
                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [
                    {
                        "name": flavor,
                        "resources": [
                            {"name": "cpu", "nominalQuota": "500"},
                            {"name": "memory", "nominalQuota": "50Ti"},
                            {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)},
                        ],
                    }
                ],
            }
        ],
    }
    if cohort is not None:
        spec["cohortName"] = cohort
    return {
        "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": spec,
    }


@contextlib.contextmanager
def kueue_objects(
    cluster: LocalCluster,
    namespace: str,
    flavor: str,
    cluster_queues: list[dict[str, Any]],
    local_queues: dict[str, str],
) -> Iterator[str]:
    """4 KWOK nodes x 4 GPUs in a pool of their own (yielded: the pool's label value), ResourceFlavor `flavor`
    selecting them, the `cluster_queues` (of that flavor) and the LocalQueues (name -> ClusterQueue) in
    `namespace`; the cluster-scoped objects are deleted afterwards."""
    pool = f"kueue-{uuid.uuid4().hex[:6]}"
    cluster.add_gpu_nodes(NODES, gpus=GPUS_PER_NODE, labels={KUEUE_POOL_LABEL: pool})
    cluster.wait_for_nodes_ready()
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    created: list[tuple[str, str]] = []
    try:
        custom.create_cluster_custom_object(
            KUEUE_GROUP,
            KUEUE_VERSION,
            "resourceflavors",
            {
                "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
                "kind": "ResourceFlavor",
                "metadata": {"name": flavor},
                "spec": {"nodeLabels": {KUEUE_POOL_LABEL: pool}},
            },
        )
        created.append(("resourceflavors", flavor))
        for queue in cluster_queues:
            custom.create_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", queue)
            created.insert(0, ("clusterqueues", queue["metadata"]["name"]))
        for local, target in local_queues.items():
            custom.create_namespaced_custom_object(
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                "localqueues",
                {
                    "apiVersion": f"{KUEUE_GROUP}/{KUEUE_VERSION}",
                    "kind": "LocalQueue",
                    "metadata": {"name": local},
                    "spec": {"clusterQueue": target},
                },
            )
        yield pool
    finally:
        for plural, name in created:
            with contextlib.suppress(client.ApiException):
                custom.delete_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, plural, name)


@pytest.fixture
def gpu_queue(
    kube_cluster: LocalCluster, kube_namespace: str, kube_kueue: KueueManager
) -> Iterator[dict[str, str]]:
    """4 KWOK nodes x 4 GPUs of their own, a ResourceFlavor selecting them, a ClusterQueue with a 16-GPU quota
    (preempting lower priorities) and a LocalQueue `gpus` in the test's namespace."""
    suffix = uuid.uuid4().hex[:6]
    name, flavor = f"cq-{suffix}", f"gpu-{suffix}"
    queue = cluster_queue(name, flavor, NODES * GPUS_PER_NODE, {"withinClusterQueue": "LowerPriority"})
    with kueue_objects(kube_cluster, kube_namespace, flavor, [queue], {"gpus": name}) as pool:
        yield {"pool": pool, "cluster_queue": name, "local_queue": "gpus"}


TEAM_GPUS = NODES * GPUS_PER_NODE // 2  # each team's nominal quota: half the pool


@pytest.fixture
def cohort_queues(
    kube_cluster: LocalCluster, kube_namespace: str, kube_kueue: KueueManager
) -> Iterator[dict[str, str]]:
    """The pool of 16 GPUs shared by two teams: ClusterQueues for team-a and team-b in one cohort, each with a
    nominal quota of 8 GPUs that the other may borrow while it is unused, and `reclaimWithinCohort: Any`: a
    queue takes its lent quota back from a borrower of any priority. LocalQueues team-a and team-b."""
    suffix = uuid.uuid4().hex[:6]
    flavor, cohort = f"gpu-{suffix}", f"cohort-{suffix}"
    names = {"team-a": f"cq-a-{suffix}", "team-b": f"cq-b-{suffix}"}
    preemption = {"reclaimWithinCohort": "Any", "withinClusterQueue": "Never"}
    queues = [cluster_queue(name, flavor, TEAM_GPUS, preemption, cohort) for name in names.values()]
    with kueue_objects(kube_cluster, kube_namespace, flavor, queues, names) as pool:
        yield {"pool": pool, "cohort": cohort, **names}


@pytest.fixture
def kueue_operator(
    kube_cluster: LocalCluster, kube_namespace: str, finetunejob_crd: None, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """`kubetune operator --kueue` as a ServiceAccount holding exactly OPERATOR_RULES + KUEUE_RULES."""
    with operator_account(kube_cluster, kube_namespace, kueue=True) as kubeconfig:
        process = OperatorProcess(
            kube_namespace, kubeconfig, tmp_path, extra_args=("--standalone", "--kueue")
        )
        with running(process):
            yield process


def queued_job(name: str, queue: str, nodes: int = 3, priority_class: str | None = None, **spec: Any) -> str:
    """A FineTuneJob of `nodes` x 4 GPUs sent to LocalQueue `queue` (no node selector: the flavor gives it)."""
    kubernetes: dict[str, Any] = {"resources": {"gpusPerNode": GPUS_PER_NODE}}
    if priority_class:
        kubernetes["priorityClassName"] = priority_class
    document = yaml.safe_load(job_manifest(name, nodes=nodes, kubernetes=kubernetes, **spec))
    document["metadata"]["labels"] = {QUEUE_LABEL: queue}
    return yaml.safe_dump(document, sort_keys=False)


def bound_pods(cluster: LocalCluster, namespace: str, name: str) -> list[Any]:
    return [p for p in workers(cluster, namespace, name) if p.spec.node_name]


def finish(cluster: LocalCluster, namespace: str, name: str) -> None:
    """Worker 0 exits 0 with its summary: the job succeeds."""
    cluster.complete_pod(namespace, f"{name}-worker-0", exit_code=0, message=summary_message())


def get_workload(cluster: LocalCluster, namespace: str, job: str) -> dict[str, Any] | None:
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    try:
        found: dict[str, Any] = custom.get_namespaced_custom_object(
            "kueue.x-k8s.io", "v1beta2", namespace, "workloads", workload_name(job)
        )
        return found
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def test_two_gangs_over_quota_one_runs_the_other_waits_queued_without_a_pod_and_neither_fails(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    gpu_queue: dict[str, str],
    kueue_operator: OperatorProcess,
    kube_kueue: KueueManager,
) -> None:
    began = time.monotonic()
    queue = gpu_queue["local_queue"]
    # The second job's schedulingTimeoutSeconds is 5: it waits in the queue far longer than 3 x 5 s.
    kubectl("apply", "-f", "-", input=queued_job("first", queue))
    wait_phase(kube_cluster, kube_namespace, "first", "Running", timeout=60)
    kubectl("apply", "-f", "-", input=queued_job("second", queue, runPolicy={"schedulingTimeoutSeconds": 5}))
    first = running_workers(kube_cluster, kube_namespace, "first", 3)
    assert {p.spec.node_selector[KUEUE_POOL_LABEL] for p in first} == {gpu_queue["pool"]}  # the flavor
    assert all(p.spec.node_name for p in first)

    queued = wait_phase(kube_cluster, kube_namespace, "second", "Queued", timeout=30)
    admitted = next(c for c in queued["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "False" and queued["queue"] == queue
    shown = kubectl("get", "finetunejobs", "second", "-o", "wide").stdout
    assert "Queued" in shown, shown
    time.sleep(16)  # > 3 x schedulingTimeoutSeconds
    assert workers(kube_cluster, kube_namespace, "second") == []  # no pod, so no GPU held
    assert status(kube_cluster, kube_namespace, "second")["phase"] == "Queued"

    finish(kube_cluster, kube_namespace, "first")
    wait_phase(kube_cluster, kube_namespace, "first", "Succeeded", timeout=30)
    second = running_workers(kube_cluster, kube_namespace, "second", 3, timeout=60)
    assert {p.spec.node_selector[KUEUE_POOL_LABEL] for p in second} == {gpu_queue["pool"]}
    finish(kube_cluster, kube_namespace, "second")
    done = wait_phase(kube_cluster, kube_namespace, "second", "Succeeded", timeout=30)
    assert done["failedAttempts"] == 0 and done.get("restarts", 0) == 0
    assert ("Normal", "Queued") in {
        (kind, reason) for kind, reason, _ in events(kube_cluster, kube_namespace, "second")
    }
    print(
        f"Kueue start {kube_kueue.startup_seconds:.1f}s; no-deadlock scenario {time.monotonic() - began:.1f}s"
    )


def test_a_high_priority_gang_preempts_a_low_one_which_requeues_uncounted_and_runs_again(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    gpu_queue: dict[str, str],
    kueue_operator: OperatorProcess,
    kube_kueue: KueueManager,
) -> None:
    began = time.monotonic()
    queue = gpu_queue["local_queue"]
    scheduling: Any = client.SchedulingV1Api(kube_cluster.api_client())
    low, high = f"low-{kube_namespace[-6:]}", f"high-{kube_namespace[-6:]}"
    for name, value in ((low, 100), (high, 1000)):
        scheduling.create_priority_class({"metadata": {"name": name}, "value": value})
    try:
        kubectl("apply", "-f", "-", input=queued_job("batch", queue, priority_class=low))
        before = running_workers(kube_cluster, kube_namespace, "batch", 3, timeout=60)
        kubectl("apply", "-f", "-", input=queued_job("urgent", queue, priority_class=high))

        requeued = wait_phase(kube_cluster, kube_namespace, "batch", "Queued", timeout=60)
        assert requeued["failedAttempts"] == 0 and requeued["lastFailure"]["reason"] == "Preempted"
        assert requeued["attempts"][-1]["counted"] is False
        # Its workers were deleted gracefully (SIGTERM to a real trainer: checkpoint, exit 75).
        wait_for(lambda: bound_pods(kube_cluster, kube_namespace, "batch") == [], 30, "batch's workers gone")
        assert all(
            p.metadata.uid not in {q.metadata.uid for q in workers(kube_cluster, kube_namespace, "batch")}
            for p in before
        )
        running_workers(kube_cluster, kube_namespace, "urgent", 3, timeout=60)
        reasons = {reason for _, reason, _ in events(kube_cluster, kube_namespace, "batch")}
        assert "Preempted" in reasons

        finish(kube_cluster, kube_namespace, "urgent")
        wait_phase(kube_cluster, kube_namespace, "urgent", "Succeeded", timeout=30)
        again = running_workers(kube_cluster, kube_namespace, "batch", 3, timeout=120)
        assert {p.metadata.labels["kubetune.io/attempt"] for p in again} == {"1"}  # resumes as a new attempt
        resumed = wait_phase(kube_cluster, kube_namespace, "batch", "Running", timeout=30)
        assert resumed["failedAttempts"] == 0
        finish(kube_cluster, kube_namespace, "batch")
        wait_phase(kube_cluster, kube_namespace, "batch", "Succeeded", timeout=30)
    finally:
        for name in (low, high):
            scheduling.delete_priority_class(name)
    print(f"preemption scenario: {time.monotonic() - began:.1f}s")


def test_spec_suspend_on_a_queued_job_releases_its_quota_and_resume_queues_it_again(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    gpu_queue: dict[str, str],
    kueue_operator: OperatorProcess,
    kube_kueue: KueueManager,
) -> None:
    queue = gpu_queue["local_queue"]
    kubectl("apply", "-f", "-", input=queued_job("pausable", queue))
    running_workers(kube_cluster, kube_namespace, "pausable", 3, timeout=60)
    assert get_workload(kube_cluster, kube_namespace, "pausable") is not None
    kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = wait_phase(kube_cluster, kube_namespace, "pausable", "Suspended")
    assert "spec.suspend" in suspended["message"]
    wait_for(lambda: workers(kube_cluster, kube_namespace, "pausable") == [], 30, "the workers removed")
    wait_for(
        lambda: get_workload(kube_cluster, kube_namespace, "pausable") is None, 30, "the Workload deleted"
    )
    kubectl("patch", "ftj", "pausable", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    running_workers(kube_cluster, kube_namespace, "pausable", 3, timeout=60)
    assert status(kube_cluster, kube_namespace, "pausable")["failedAttempts"] == 0


def test_without_the_integration_a_job_asking_for_a_queue_fails_at_once_naming_the_fix(
    kube_cluster: LocalCluster, kube_namespace: str, kubectl: Any, operator: OperatorProcess
) -> None:
    """The operator without --kueue never runs a job unqueued that asked for a queue."""
    kubectl("apply", "-f", "-", input=queued_job("unqueued", "gpus"))
    failed = wait_phase(kube_cluster, kube_namespace, "unqueued", "Failed")
    assert "kueue.enabled=true" in failed["message"]
    assert workers(kube_cluster, kube_namespace, "unqueued") == []


def cluster_queue_usage(cluster: LocalCluster, name: str, resource: str = "nvidia.com/gpu") -> dict[str, str]:
    """{'total': ..., 'borrowed': ...} of `resource` in ClusterQueue `name`'s status.flavorsUsage."""
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    found = custom.get_cluster_custom_object(KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", name)
    for flavor in (found.get("status") or {}).get("flavorsUsage") or []:
        for entry in flavor.get("resources") or []:
            if entry.get("name") == resource:
                return {"total": str(entry.get("total", "0")), "borrowed": str(entry.get("borrowed", "0"))}
    return {"total": "0", "borrowed": "0"}


def deletion_graces(cluster: LocalCluster, namespace: str, job: str) -> tuple[dict[str, int], Any]:
    """Starts recording the grace period of every deletion of `job`'s pods (name -> seconds, the first one seen:
    KWOK removes a pod at once, so only a watch started beforehand sees it); returns the record and a stop()."""
    graces: dict[str, int] = {}
    stop = threading.Event()
    core = client.CoreV1Api(cluster.api_client())

    def record() -> None:
        stream = watch.Watch()
        while not stop.is_set():
            for change in stream.stream(
                core.list_namespaced_pod,
                namespace,
                label_selector=f"kubetune.io/job-name={job}",
                timeout_seconds=10,
            ):
                pod = change["object"]
                if pod.metadata.deletion_grace_period_seconds is not None:
                    graces.setdefault(pod.metadata.name, pod.metadata.deletion_grace_period_seconds)
                if stop.is_set():
                    stream.stop()

    watcher = threading.Thread(target=record, daemon=True)
    watcher.start()

    def finish() -> None:
        stop.set()
        watcher.join(15)

    return graces, finish


def test_a_gang_borrowing_its_cohorts_quota_is_reclaimed_requeues_uncounted_and_runs_again_once_it_is_free(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    cohort_queues: dict[str, str],
    kueue_operator: OperatorProcess,
    kube_kueue: KueueManager,
) -> None:
    """Team A's gang of 3 x 4 GPUs is more than its nominal 8: it runs on 4 GPUs borrowed from team B's idle
    quota. Team B then sends 2 x 4 GPUs, within its own quota: Kueue reclaims the lent GPUs by preempting the
    borrower (Evicted: Preempted, Preempted: InCohortReclamation). The borrower's workers get a graceful delete
    (SIGTERM: a real trainer checkpoints and exits 75), it waits Queued with its restart budgets untouched
    (backoffLimit and disruptionLimit 0: one counted failure or disruption would fail it), team B's gang runs,
    and when team B's job is deleted the borrower is admitted again and resumes as a new attempt."""
    began = time.monotonic()
    budgets = {"backoffLimit": 0, "disruptionLimit": 0}
    kubectl("apply", "-f", "-", input=queued_job("borrower", "team-a", nodes=3, runPolicy=budgets))
    before = running_workers(kube_cluster, kube_namespace, "borrower", 3, timeout=60)
    assert {p.spec.node_selector[KUEUE_POOL_LABEL] for p in before} == {cohort_queues["pool"]}
    wait_for(
        lambda: (
            cluster_queue_usage(kube_cluster, cohort_queues["team-a"]) == {"total": "12", "borrowed": "4"}
        ),
        30,
        "team A's ClusterQueue using 12 GPUs, 4 of them borrowed",
    )
    wait_phase(kube_cluster, kube_namespace, "borrower", "Running", timeout=30)

    graces, stop_recording = deletion_graces(kube_cluster, kube_namespace, "borrower")
    try:
        kubectl("apply", "-f", "-", input=queued_job("owner", "team-b", nodes=2))
        requeued = wait_phase(kube_cluster, kube_namespace, "borrower", "Queued", timeout=60)
        wait_for(lambda: len(graces) == 3, 30, "the borrower's 3 workers being deleted")
    finally:
        stop_recording()
    # The pods' own grace period (120 s), never a kill: the suspend path.
    assert graces == {f"borrower-worker-{i}": 120 for i in range(3)}, graces
    assert requeued["failedAttempts"] == 0 and requeued.get("disruptions", 0) == 0
    assert requeued.get("restarts", 0) == 0
    assert requeued["lastFailure"]["reason"] == "Preempted"
    assert "InCohortReclamation" in requeued["lastFailure"]["message"], requeued["lastFailure"]
    assert requeued["attempts"][-1]["counted"] is False
    preempted = get_workload(kube_cluster, kube_namespace, "borrower")
    assert preempted is not None
    reasons = {c["type"]: c.get("reason") for c in preempted["status"]["conditions"] if c["status"] == "True"}
    assert reasons.get("Preempted") == "InCohortReclamation", preempted["status"]["conditions"]
    events_seen = events(kube_cluster, kube_namespace, "borrower")
    assert any(r == "Preempted" and "InCohortReclamation" in m for _, r, m in events_seen), events_seen

    owner = running_workers(kube_cluster, kube_namespace, "owner", 2, timeout=60)
    assert {p.spec.node_selector[KUEUE_POOL_LABEL] for p in owner} == {cohort_queues["pool"]}
    wait_for(
        lambda: bound_pods(kube_cluster, kube_namespace, "borrower") == [], 30, "the borrower's workers gone"
    )
    # It cannot come back while team B uses its quota (8 + 12 > 16), and waiting fails nothing.
    time.sleep(5)
    waiting = status(kube_cluster, kube_namespace, "borrower")
    assert waiting["phase"] == "Queued" and waiting["failedAttempts"] == 0, waiting
    assert workers(kube_cluster, kube_namespace, "borrower") == []

    kubectl("delete", "finetunejob", "owner", "--wait=false")
    again = running_workers(kube_cluster, kube_namespace, "borrower", 3, timeout=120)
    assert {p.metadata.labels["kubetune.io/attempt"] for p in again} == {"1"}  # a new attempt: resumes
    resumed = wait_phase(kube_cluster, kube_namespace, "borrower", "Running", timeout=30)
    assert resumed["failedAttempts"] == 0 and resumed.get("disruptions", 0) == 0
    wait_for(
        lambda: (
            cluster_queue_usage(kube_cluster, cohort_queues["team-a"]) == {"total": "12", "borrowed": "4"}
        ),
        30,
        "team A borrowing again",
    )
    finish(kube_cluster, kube_namespace, "borrower")
    done = wait_phase(kube_cluster, kube_namespace, "borrower", "Succeeded", timeout=30)
    assert done["failedAttempts"] == 0
    print(f"cohort reclaim scenario: {time.monotonic() - began:.1f}s")


class LatentKube(Kube):
    """The operator's real API client against the real API server, with `latency` seconds added to every
    request (a busy API server answers each in 0.2-1 s: benchmarks/README.md, operator_queued), recording
    each request's (method, path, start, end)."""

    def __init__(self, kubeconfig: Path, latency: float) -> None:
        super().__init__(ApiConnection(login_with(kubeconfig)))
        self.latency = latency
        self.calls: list[tuple[str, str, float, float]] = []
        self._lock = threading.Lock()

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        began = time.monotonic()
        time.sleep(self.latency)
        try:
            return super().request(method, path, *args, **kwargs)
        finally:
            with self._lock:
                self.calls.append((method, path, began, time.monotonic()))


def round_trips_in_a_row(calls: list[tuple[str, str, float, float]]) -> int:
    """The longest chain of `calls` (method, path, start, end) in which each starts after the one before it
    ended: how many round trips they cost one after the other."""
    depth: dict[int, int] = {}
    for index, (_, _, start, _) in sorted(enumerate(calls), key=lambda item: item[1][2]):
        depth[index] = 1 + max(
            (depth[i] for i, c in enumerate(calls) if i in depth and c[3] <= start), default=0
        )
    return max(depth.values(), default=0)


def test_an_admitted_jobs_reconcile_reads_the_job_its_pods_and_its_workload_in_one_round_trip(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    kubectl: Any,
    finetunejob_crd: None,
    gpu_queue: dict[str, str],
) -> None:
    """On the path from Kueue's admission to the pods, every request that waits on the one before costs a
    round trip, up to a second each on a busy API server: the reconcile after the admission reads the job, its
    pods and its Workload at once, so its first pod create goes out two round trips after it began (those
    reads, then the admission's ResourceFlavor), not four. (In-process Reconciler with real requests, slowed
    by 0.2 s each so that requests in flight together overlap plainly; the real Kueue admits.)"""
    latency = 0.2
    kube = LatentKube(kube_cluster.kubeconfig, latency)
    reconciler = Reconciler(kube, PlanOptions(kueue=True))
    key = (kube_namespace, "admitted")
    try:
        kubectl("apply", "-f", "-", input=queued_job("admitted", gpu_queue["local_queue"]))
        reconciler.reconcile(key)  # the job queues: its Workload is created
        wait_for(
            lambda: (
                (get_workload(kube_cluster, kube_namespace, "admitted") or {})
                .get("status", {})
                .get("admission")
            ),
            60,
            "Kueue to admit the Workload",
        )
        kube.calls.clear()
        reconciler.reconcile(key)
        calls = sorted(kube.calls, key=lambda call: call[2])
        pod_creates = [c for c in calls if c[0] == "POST" and c[1].endswith("/pods")]
        assert len(pod_creates) == 3, calls
        reads = [c for c in calls if c[0] == "GET" and c[2] < pod_creates[0][2]]
        read_paths = [path for _, path, _, _ in reads]
        assert any("/finetunejobs/admitted" in p for p in read_paths), read_paths
        assert any(p.endswith("/pods") for p in read_paths), read_paths
        assert any("/workloads/" in p for p in read_paths), read_paths
        first_round = [c for c in reads if "resourceflavors" not in c[1]]
        # The job, pod and Workload reads were all in flight together
        assert max(c[2] for c in first_round) < min(c[3] for c in first_round), first_round
        # Two round trips one after the other (those reads, then the flavor) before the first pod create, not
        # four (job, pods, Workload, flavor)
        assert round_trips_in_a_row(reads) == 2, reads
    finally:
        reconciler.shutdown()
