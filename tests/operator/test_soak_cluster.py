"""Randomized soak (issue 11): 30 FineTuneJobs on KWOK GPU nodes, the real `kubetune operator` (least-privilege
ServiceAccount) and the real controllers, under a seeded random mix of faults: worker failures (exit 1, an
OOM kill, exit 75 after a checkpoint, exit 2 for a spec that cannot work), evictions through the Eviction API,
deleted worker pods, deleted children (Service, ConfigMap), suspend/resume, and `kill -9` of the operator at
random moments (restarted after a random downtime).

Each job gets a script of faults, injected one at a time whenever its gang runs in the expected attempt; an
`Oracle` per job derives from what was actually injected the phase (and counters) that the job's runPolicy
implies, from runPolicy's documented meaning rather than from the planner's code. At the end: every job
in that phase; no two pods for one worker of one attempt, ever, and never live pods of two attempts of a job
at once (a pod watch, in a thread); no object left once the jobs are deleted (the real garbage collector);
the user's own objects in the namespace untouched. One report line gives the counts and the operator's CPU
and peak RSS.

The seed is printed; KUBETUNE_SOAK_SEED=<seed> replays the same scripts and kill schedule (the moments
at which faults land still depend on timing: a replay follows the same plan, not the same interleaving).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.controller import names
from kubetune.spec.models import API_GROUP, API_VERSION
from kubetune.spec.status import FailureReason, Phase

from tests.kube.harness import ClusterError, LocalCluster, wait_for
from tests.operator.conftest import POOL_LABEL, OperatorProcess, job_manifest
from tests.operator.soak_observers import OperatorChaos, OperatorUsage, PodLedger
from tests.operator.test_operator_cluster import end_worker, summary_message

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(480)]

SEED_ENV = "KUBETUNE_SOAK_SEED"
PLURAL = "finetunejobs"
JOBS = 30
SOAK_POOL = "soak"
SOAK_NODES, SOAK_GPUS_PER_NODE = 6, 16  # room for every gang at once (30 jobs of at most 3 one-GPU workers)
STEP_TIMEOUT = 90.0  # longest wait for a job to reach the state its next fault needs
SOAK_TIMEOUT = 210.0  # every job must be final by then
GC_TIMEOUT = 90.0
TICK = 0.3


class FaultKind(StrEnum):
    WORKER_FAILURE = "worker-failure"
    EVICTION = "eviction"
    POD_DELETION = "pod-deletion"
    CHILD_DELETION = "child-deletion"
    SUSPEND_RESUME = "suspend-resume"
    OPERATOR_KILL = "operator-kill"


# How often each per-job fault is drawn.
FAULT_WEIGHTS = {
    FaultKind.WORKER_FAILURE: 4,
    FaultKind.EVICTION: 2,
    FaultKind.POD_DELETION: 2,
    FaultKind.CHILD_DELETION: 2,
    FaultKind.SUSPEND_RESUME: 1,
}
# Worker exit codes: a crash, an OOM kill, a clean stop after a checkpoint (preempted), a spec that can't work.
EXIT_CODE_WEIGHTS = {1: 10, 137: 5, 75: 3, 2: 1}


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    rank: int = 0  # the worker it hits (worker failures, evictions, pod deletions)
    exit_code: int = 1  # worker failures
    child: str = ""  # child deletions: Service or ConfigMap

    def __str__(self) -> str:
        if self.kind == FaultKind.WORKER_FAILURE:
            return f"{self.kind}(rank {self.rank}, exit {self.exit_code})"
        if self.kind in (FaultKind.EVICTION, FaultKind.POD_DELETION):
            return f"{self.kind}(rank {self.rank})"
        if self.kind == FaultKind.CHILD_DELETION:
            return f"{self.kind}({self.child})"
        return str(self.kind)


@dataclass(frozen=True)
class JobScript:
    """One job of the soak: its gang size, limits and the faults to inject one by one; then every worker
    finishes (rank 0 last, with its summary), unless the history has already failed the job."""

    name: str
    nodes: int
    backoff_limit: int
    disruption_limit: int
    faults: tuple[Fault, ...]


def draw_scripts(rng: random.Random, count: int) -> list[JobScript]:
    """`count` job scripts, drawn from `rng`."""
    kinds, weights = list(FAULT_WEIGHTS), list(FAULT_WEIGHTS.values())
    scripts = []
    for number in range(count):
        nodes = rng.randint(1, 3)
        faults = []
        for kind in rng.choices(kinds, weights, k=rng.randint(1, 5)):
            exit_code = rng.choices(list(EXIT_CODE_WEIGHTS), list(EXIT_CODE_WEIGHTS.values()))[0]
            child = rng.choice(["Service", "ConfigMap"])
            faults.append(Fault(kind, rank=rng.randrange(nodes), exit_code=exit_code, child=child))
        scripts.append(
            JobScript(
                name=f"soak-{number:02d}",
                nodes=nodes,
                backoff_limit=rng.randint(0, 3),
                disruption_limit=rng.randint(0, 3),
                faults=tuple(faults),
            )
        )
    return scripts


def draw_operator_kills(rng: random.Random) -> list[tuple[float, float]]:
    """(uptime, downtime) of each of 4-6 operator kills: it is killed `uptime` seconds after it last became
    healthy (a restart takes seconds on a busy machine: counting from it leaves the operator time to work
    between kills), and started again `downtime` seconds after."""
    return [(rng.uniform(1.0, 6.0), rng.uniform(0.0, 3.0)) for _ in range(rng.randint(4, 6))]


@dataclass
class Oracle:
    """The outcome a job's fault history implies, from runPolicy's documented meaning: a worker failure counts
    against backoffLimit (more failures than backoffLimit: Failed, BackoffLimitExceeded); an eviction, a deleted
    worker or a worker that stops after a checkpoint (exit 75) is a disruption, counted against
    disruptionLimit instead (more than it: Failed, DisruptionLimitExceeded); exit 2 fails the job at once
    (InvalidSpec); each restart within the limits is one gang restart; deleted children, suspend/resume and
    operator crashes change nothing; a gang whose workers all finish Succeeds."""

    backoff_limit: int
    disruption_limit: int
    history: list[Fault] = field(default_factory=list)
    failed_attempts: int = 0
    disruptions: int = 0
    restarts: int = 0
    phase: str = ""  # the final phase, once the history implies one
    reason: str = ""  # the Failed condition's reason

    @property
    def final(self) -> bool:
        return bool(self.phase)

    def record(self, fault: Fault) -> None:
        """Account for an injected fault."""
        self.history.append(fault)
        if fault.kind == FaultKind.WORKER_FAILURE and fault.exit_code == 2:
            self.phase, self.reason = Phase.FAILED, FailureReason.INVALID_SPEC
        elif fault.kind == FaultKind.WORKER_FAILURE and fault.exit_code != 75:
            self.failed_attempts += 1
            self._restart_or_fail(self.failed_attempts > self.backoff_limit, FailureReason.BACKOFF_LIMIT)
        elif fault.kind in (FaultKind.WORKER_FAILURE, FaultKind.EVICTION, FaultKind.POD_DELETION):
            self.disruptions += 1
            self._restart_or_fail(self.disruptions > self.disruption_limit, FailureReason.DISRUPTION_LIMIT)

    def all_workers_finished(self) -> None:
        self.phase, self.reason = Phase.SUCCEEDED, ""

    def _restart_or_fail(self, exhausted: bool, reason: str) -> None:
        if exhausted:
            self.phase, self.reason = Phase.FAILED, reason
        else:
            self.restarts += 1

    def differences(self, status: dict[str, Any]) -> list[str]:
        """What in the job's final `status` differs from what the history implies (empty: none)."""
        failed = next((c for c in status.get("conditions") or [] if c["type"] == "Failed"), None)
        expected = {
            "phase": self.phase,
            "Failed reason": self.reason or None,
            "failedAttempts": self.failed_attempts,
            "disruptions": self.disruptions,
            "restarts": self.restarts,
        }
        found = {
            "phase": status.get("phase"),
            "Failed reason": failed["reason"] if failed and failed["status"] == "True" else None,
            "failedAttempts": status.get("failedAttempts", 0),
            "disruptions": status.get("disruptions", 0),
            "restarts": status.get("restarts", 0),
        }
        return [
            f"{key} {found[key]!r}, expected {value!r}"
            for key, value in expected.items()
            if found[key] != value
        ]


@dataclass
class Soak:
    """The cluster side of the soak: API clients, the namespace, and the counts of injected faults."""

    cluster: LocalCluster
    namespace: str
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        api = self.cluster.api_client()
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)

    def list_jobs(self) -> dict[str, dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL)
        return {job["metadata"]["name"]: job for job in listed["items"]}

    def list_workers(self) -> dict[str, list[Any]]:
        """The worker pods of the namespace, by job."""
        listed = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{names.LABEL_ROLE}={names.ROLE_WORKER}"
        )
        by_job: dict[str, list[Any]] = {}
        for pod in listed.items:
            by_job.setdefault(pod.metadata.labels[names.LABEL_JOB], []).append(pod)
        return by_job

    def child_uid(self, job: str, kind: str) -> str | None:
        try:
            if kind == "Service":
                return str(
                    self.core.read_namespaced_service(names.service_name(job), self.namespace).metadata.uid
                )
            config = self.core.read_namespaced_config_map(names.config_map_name(job), self.namespace)
            return str(config.metadata.uid)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def set_suspend(self, job: str, suspend: bool) -> None:
        patch = {"spec": {"runPolicy": {"suspend": suspend}}}
        self.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, PLURAL, job, patch)


class JobDriver:
    """Walks one job through its script: waits until its gang runs in the expected attempt, injects the next
    fault, and follows what the fault must lead to (a child back, the job suspended, a final phase)."""

    def __init__(self, script: JobScript, soak: Soak) -> None:
        self.script = script
        self.soak = soak
        self.oracle = Oracle(script.backoff_limit, script.disruption_limit)
        self.next_fault = 0
        self.attempt = 0  # the gang attempt the job must be running before the next fault
        self.waiting_for = "its gang running (attempt 0)"
        self.waiting_since = time.monotonic()
        self.pending: tuple[str, Any] | None = None  # ("child", (kind, old uid)) or ("suspended", None)
        self.final_status: dict[str, Any] | None = None
        self.stuck = ""

    @property
    def done(self) -> bool:
        return self.final_status is not None or bool(self.stuck)

    def manifest(self) -> dict[str, Any]:
        script = self.script
        document: dict[str, Any] = yaml.safe_load(
            job_manifest(
                script.name,
                nodes=script.nodes,
                kubernetes={"nodeSelector": {POOL_LABEL: SOAK_POOL}},
                runPolicy={"backoffLimit": script.backoff_limit, "disruptionLimit": script.disruption_limit},
            )
        )
        return document

    def advance(self, job: dict[str, Any] | None, pods: list[Any]) -> None:
        """Look at the job and its pods (one listing of the namespace) and take the next step when due."""
        if self.done:
            return
        status = (job or {}).get("status") or {}
        if self.oracle.final:
            if status.get("phase") in (Phase.SUCCEEDED, Phase.FAILED):
                self.final_status = status
            else:
                self._check_time(status)
            return
        if self.pending is not None:
            self._follow_pending(status, pods)
            return
        running = self._running_gang(status, pods)
        if running is None:
            self._check_time(status)
            return
        if self.next_fault < len(self.script.faults):
            fault = self.script.faults[self.next_fault]
            self.next_fault += 1
            self._inject(fault, running)
        else:
            self._finish(running)

    def _running_gang(self, status: dict[str, Any], pods: list[Any]) -> list[Any] | None:
        """The gang's pods, by rank, once the job runs in the expected attempt with every worker Running."""
        if status.get("phase") != Phase.RUNNING or status.get("attempt", 0) != self.attempt:
            return None
        live = sorted(
            (p for p in pods if p.metadata.deletion_timestamp is None),
            key=lambda p: int(p.metadata.labels[names.LABEL_NODE_RANK]),
        )
        attempts = {int(p.metadata.labels[names.LABEL_ATTEMPT]) for p in live}
        if len(live) != self.script.nodes or attempts != {self.attempt}:
            return None
        return live if all(p.status.phase == "Running" for p in live) else None

    def _inject(self, fault: Fault, gang: list[Any]) -> None:
        soak, name = self.soak, self.script.name
        pod = gang[fault.rank].metadata.name
        # (deletes name the pod seen, by uid: never a newer pod of that name)
        seen = {"preconditions": {"uid": gang[fault.rank].metadata.uid}}
        if fault.kind == FaultKind.WORKER_FAILURE:
            reason = "OOMKilled" if fault.exit_code == 137 else "Error"
            end_worker(soak.cluster, soak.namespace, pod, fault.exit_code, f"soak fault {fault}", reason)
        elif fault.kind == FaultKind.EVICTION:
            body = {"metadata": {"name": pod, "namespace": soak.namespace}, "deleteOptions": seen}
            soak.core.create_namespaced_pod_eviction(pod, soak.namespace, body)
        elif fault.kind == FaultKind.POD_DELETION:
            soak.core.delete_namespaced_pod(pod, soak.namespace, body=seen)
        elif fault.kind == FaultKind.CHILD_DELETION:
            uid = soak.child_uid(name, fault.child)
            if fault.child == "Service":
                soak.core.delete_namespaced_service(names.service_name(name), soak.namespace)
            else:
                soak.core.delete_namespaced_config_map(names.config_map_name(name), soak.namespace)
            self._wait(("child", (fault.child, uid)), f"its {fault.child} created again")
        elif fault.kind == FaultKind.SUSPEND_RESUME:
            soak.set_suspend(name, True)
            self._wait(("suspended", None), "Suspended with no worker left")
        soak.injected[fault.kind] += 1
        restarts = self.oracle.restarts
        self.oracle.record(fault)
        if self.oracle.final:
            self._waiting(f"the final phase {self.oracle.phase}")
        elif self.oracle.restarts > restarts:
            self.attempt += 1
            self._waiting(f"its gang running again (attempt {self.attempt})")

    def _finish(self, gang: list[Any]) -> None:
        """Every worker ends with exit 0, rank 0 last with its summary (as the trainer does)."""
        soak = self.soak
        for pod in reversed(gang):
            rank = int(pod.metadata.labels[names.LABEL_NODE_RANK])
            message = summary_message() if rank == 0 else ""
            end_worker(soak.cluster, soak.namespace, pod.metadata.name, 0, message)
        self.oracle.all_workers_finished()
        self._waiting("Succeeded")

    def _follow_pending(self, status: dict[str, Any], pods: list[Any]) -> None:
        assert self.pending is not None
        what, detail = self.pending
        if what == "child":
            kind, old_uid = detail
            uid = self.soak.child_uid(self.script.name, kind)
            if uid is not None and uid != old_uid:
                self.pending = None
                self._waiting(f"its gang running (attempt {self.attempt})")
            else:
                self._check_time(status)
        elif status.get("phase") == Phase.SUSPENDED and not pods:
            self.soak.set_suspend(self.script.name, False)
            self.pending = None
            self.attempt += 1  # (a resume starts a new attempt, not counted as a restart)
            self._waiting(f"its gang running again after the resume (attempt {self.attempt})")
        else:
            self._check_time(status)

    def _wait(self, pending: tuple[str, Any], what: str) -> None:
        self.pending = pending
        self._waiting(what)

    def _waiting(self, what: str) -> None:
        self.waiting_for, self.waiting_since = what, time.monotonic()

    def _check_time(self, status: dict[str, Any]) -> None:
        if time.monotonic() - self.waiting_since > STEP_TIMEOUT:
            self.stuck = (
                f"waited {STEP_TIMEOUT:.0f}s for {self.waiting_for}; phase {status.get('phase')}, attempt "
                f"{status.get('attempt')}, message {status.get('message')!r}"
            )

    def problem(self, end_status: dict[str, Any]) -> str | None:
        """Why this job's end is wrong, for the failure message; None when it is right. The status is checked
        as first seen final and again at the end of the soak (`end_status`): a final phase is final."""
        history = ", ".join(str(f) for f in self.oracle.history) or "no fault"
        limits = f"nodes {self.script.nodes}, backoffLimit {self.script.backoff_limit}, "
        limits += f"disruptionLimit {self.script.disruption_limit}"
        which = f"{self.script.name} ({limits}; after {history})"
        if self.stuck:
            return f"{which}: {self.stuck}"
        if self.final_status is None:
            return f"{which}: never final, waiting for {self.waiting_for}"
        for when, status in (("when final", self.final_status), ("at the end", end_status)):
            wrong = self.oracle.differences(status)
            if wrong:
                return f"{which}: {when}, {'; '.join(wrong)} (message {status.get('message')!r})"
        return None


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture
def soak_pool(kube_cluster: LocalCluster) -> Iterator[list[str]]:
    """KWOK GPU nodes for the soak's jobs only (removed afterwards)."""
    if not kube_cluster.has_nodes:
        pytest.skip("needs KWOK nodes")
    added = kube_cluster.add_gpu_nodes(SOAK_NODES, gpus=SOAK_GPUS_PER_NODE, labels={POOL_LABEL: SOAK_POOL})
    kube_cluster.wait_for_nodes_ready()
    yield added
    core = client.CoreV1Api(kube_cluster.api_client())
    for name in added:
        core.delete_node(name)


def create_foreign_objects(soak: Soak) -> dict[tuple[str, str], tuple[str, str]]:
    """A user's objects in the soak's namespace, some carrying a job's labels or living among its children;
    returns (kind, name) → (uid, resourceVersion) once they have settled."""
    core, namespace = soak.core, soak.namespace
    job_labels = names.job_labels("soak-00")  # as if copied from a job's children
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "user-settings"}, "data": {"a": "1"}})
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "user-notes", "labels": job_labels}, "data": {"b": "2"}}
    )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "user-token"}, "stringData": {"t": "x"}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "user-robot"}})
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "user-api", "labels": names.job_labels("soak-01")},
            "spec": {"ports": [{"port": 80}], "selector": {names.LABEL_JOB: "soak-01"}},
        },
    )
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "user-notebook", "labels": names.job_labels("soak-02")},
            "spec": {
                "nodeSelector": {POOL_LABEL: SOAK_POOL},
                "containers": [{"name": "notebook", "image": "jupyter/base-notebook"}],
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod("user-notebook", namespace).status.phase == "Running",
        30,
        "the user's pod running",
    )
    return read_foreign_objects(soak)


FOREIGN = (
    ("ConfigMap", "user-settings"),
    ("ConfigMap", "user-notes"),
    ("Secret", "user-token"),
    ("ServiceAccount", "user-robot"),
    ("Service", "user-api"),
    ("Pod", "user-notebook"),
)


def read_foreign_objects(soak: Soak) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, name) → (uid, resourceVersion) of the user's objects (("", "") for one that is gone or being
    deleted)."""
    core, namespace = soak.core, soak.namespace
    readers = {
        "ConfigMap": core.read_namespaced_config_map,
        "Secret": core.read_namespaced_secret,
        "ServiceAccount": core.read_namespaced_service_account,
        "Service": core.read_namespaced_service,
        "Pod": core.read_namespaced_pod,
    }
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for kind, name in FOREIGN:
        try:
            obj = readers[kind](name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            found[(kind, name)] = ("", "")
            continue
        gone = obj.metadata.deletion_timestamp is not None
        found[(kind, name)] = ("", "") if gone else (obj.metadata.uid, obj.metadata.resource_version)
    return found


def leftovers(soak: Soak, job_uids: set[str], foreign_uids: set[str]) -> list[str]:
    """Objects of the soak's jobs still in the namespace: a job's label or an ownerReference to a job."""
    core, rbac = soak.core, client.RbacAuthorizationV1Api(soak.cluster.api_client())
    namespace = soak.namespace
    listings = {
        "Pod": core.list_namespaced_pod(namespace).items,
        "Service": core.list_namespaced_service(namespace).items,
        "ConfigMap": core.list_namespaced_config_map(namespace).items,
        "ServiceAccount": core.list_namespaced_service_account(namespace).items,
        "Role": rbac.list_namespaced_role(namespace).items,
        "RoleBinding": rbac.list_namespaced_role_binding(namespace).items,
    }
    found = []
    for kind, items in listings.items():
        for obj in items:
            if obj.metadata.uid in foreign_uids:
                continue
            owners = {ref.uid for ref in obj.metadata.owner_references or []}
            labelled = names.LABEL_JOB in (obj.metadata.labels or {})
            if labelled or owners & job_uids:
                found.append(f"{kind} {obj.metadata.name}")
    return sorted(found)


# --- the soak ---------------------------------------------------------------------------------------------------


def test_30_jobs_under_random_faults_and_operator_kills_each_end_as_their_history_implies(
    kube_cluster: LocalCluster,
    kube_namespace: str,
    operator: OperatorProcess,
    soak_pool: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1_000_000))
    with capsys.disabled():
        print(f"\nsoak seed {seed} (replay: {SEED_ENV}={seed})", flush=True)
    rng = random.Random(seed)
    scripts = draw_scripts(rng, JOBS)
    kills = draw_operator_kills(rng)
    soak = Soak(kube_cluster, kube_namespace)
    foreign_before = create_foreign_objects(soak)

    ledger = PodLedger(kube_cluster.new_api_client(), kube_namespace)
    usage = OperatorUsage(operator)
    chaos = OperatorChaos(operator, usage, kills)
    drivers = [JobDriver(script, soak) for script in scripts]
    ledger.start()
    usage.start()
    started = time.monotonic()
    for driver in drivers:
        soak.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, kube_namespace, PLURAL, driver.manifest()
        )
    chaos.start()
    try:
        while not all(d.done for d in drivers) and time.monotonic() - started < SOAK_TIMEOUT:
            jobs, workers = soak.list_jobs(), soak.list_workers()
            for driver in drivers:
                driver.advance(jobs.get(driver.script.name), workers.get(driver.script.name, []))
            time.sleep(TICK)
    finally:
        chaos.stop()
        usage.stop()
    soak_seconds = time.monotonic() - started
    soak.injected[FaultKind.OPERATOR_KILL] = chaos.kills

    # Every job deleted: the garbage collector removes everything they owned, and nothing else
    final_jobs = soak.list_jobs()
    job_uids = {job["metadata"]["uid"] for job in final_jobs.values()}
    soak.custom.delete_collection_namespaced_custom_object(API_GROUP, API_VERSION, kube_namespace, PLURAL)
    wait_for(lambda: not soak.list_jobs(), 30, "the FineTuneJobs deleted")
    foreign_uids = {uid for uid, _ in foreign_before.values()}
    with contextlib.suppress(ClusterError):  # (what is left is counted and reported below)
        wait_for(lambda: not leftovers(soak, job_uids, foreign_uids), GC_TIMEOUT, "garbage collection")
    orphans = leftovers(soak, job_uids, foreign_uids)
    ledger.stop()
    foreign_after = read_foreign_objects(soak)
    touched = [
        f"{kind} {name}"
        for (kind, name), seen in foreign_before.items()
        if foreign_after[(kind, name)] != seen
    ]

    end_status = {name: job.get("status") or {} for name, job in final_jobs.items()}
    wrong = [
        f"{problem}\n  its pods:\n{ledger.timeline(d.script.name)}"
        for d in drivers
        if (problem := d.problem(end_status.get(d.script.name, {}))) is not None
    ]
    phases = Counter(str(end_status.get(d.script.name, {}).get("phase")) for d in drivers)
    faults = ", ".join(f"{kind} {soak.injected[kind]}" for kind in FaultKind)
    report = (
        f"soak seed {seed}: {len(drivers)} jobs in {soak_seconds:.0f}s; faults: {faults} "
        f"(total {sum(soak.injected.values())}); final phases: "
        f"{', '.join(f'{p} {n}' for p, n in sorted(phases.items()))}; worker pods {ledger.pods_seen}; "
        f"duplicates {len(ledger.violations)}; orphans {len(orphans)}; foreign touched {len(touched)}; "
        f"wrong outcomes {len(wrong)}; operator CPU {usage.cpu_seconds:.1f}s, "
        f"peak RSS {usage.peak_rss_bytes / 2**20:.0f} MiB"
    )
    with capsys.disabled():
        print(report, flush=True)
    problems = [*wrong, *ledger.violations]
    problems += [f"left after the jobs were deleted: {', '.join(orphans)}"] if orphans else []
    problems += [f"a user's object was changed or deleted: {', '.join(touched)}"] if touched else []
    problems += (
        [f"the pod watch relisted {ledger.relists} times (events may be missed)"] if ledger.relists else []
    )
    assert not problems, f"{report}\n" + "\n".join(problems) + f"\n(replay: {SEED_ENV}={seed})"
