"""Given a FineTuneJob sent to a Kueue queue, the planner creates no worker until Kueue admits the whole gang,
puts the admission's flavor on the workers, turns a preemption into an uncounted return to the queue, and
never fails a queued job for waiting. Kueue's answers here are Workload JSON as Kueue v0.17 writes it (the
cluster test tests/kueue runs the real Kueue)."""

from __future__ import annotations

from typing import Any

from kubetune.controller.children import JobRef, WorkerContext, build_worker_pod
from kubetune.controller.observe import observe_pod
from kubetune.controller.plan import ObservedJob, Plan, PlanOptions, plan
from kubetune.controller.queueing import (
    QUEUE_LABEL,
    Admission,
    QueueState,
    build_workload,
    observe_admission,
    requeue_status,
)
from kubetune.spec.loading import parse_spec
from kubetune.spec.status import Phase

from tests.operator.factories import at, job_body, pod
from tests.operator.test_plan import condition, written

OPTIONS = PlanOptions(backoff_base_seconds=10, backoff_max_seconds=60, preemption_delay_seconds=1, kueue=True)
FLAVOR = {
    "metadata": {"name": "a100"},
    "spec": {
        "nodeLabels": {"pool": "a100"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


def queued_body(**spec: Any) -> dict[str, Any]:
    body = job_body(nodes=2, **spec)
    body["metadata"]["labels"] = {QUEUE_LABEL: "team-a"}
    return body


def decide(
    body: dict[str, Any], pods: list[dict[str, Any]], seconds: float, admission: Admission | None
) -> Plan:
    observed = [p for p in (observe_pod(raw) for raw in pods) if p is not None]
    return plan(ObservedJob.from_body(body), observed, at(seconds), OPTIONS, admission)


def workload(*conditions: tuple[str, str, str], admitted_to: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [
            {"type": kind, "status": value, "reason": reason, "message": f"{kind} {reason}"}
            for kind, value, reason in conditions
        ]
    }
    if admitted_to:
        status["admission"] = {
            "clusterQueue": admitted_to,
            "podSetAssignments": [{"name": "workers", "flavors": {"nvidia.com/gpu": "a100"}, "count": 2}],
        }
    return {
        "metadata": {"name": "finetunejob-demo", "resourceVersion": "7", "generation": 1},
        "status": status,
    }


PENDING = workload(("QuotaReserved", "False", "Pending"))
ADMITTED = workload(
    ("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), admitted_to="gpus"
)
EVICTED = workload(
    ("QuotaReserved", "True", "QuotaReserved"),
    ("Admitted", "True", "Admitted"),
    ("Evicted", "True", "Preempted"),
    admitted_to="gpus",
)


def test_a_queued_job_creates_no_worker_and_says_it_is_queued_until_admitted() -> None:
    body = queued_body()
    first = decide(body, [], 0, None)
    assert first.create_workers == [] and first.ensure_workload
    assert first.status.phase == Phase.QUEUED and first.status.queue == "team-a"
    assert condition(first, "Admitted")["status"] == "False"
    assert [e.reason for e in first.events] == ["Queued"]
    body = written(body, first)
    waiting = decide(body, [], 3 * 600 + 1, observe_admission("team-a", PENDING))
    assert (
        waiting.status.phase == Phase.QUEUED and "Pending" in waiting.status.message
    )  # never failed for waiting
    admitted = decide(body, [], 3 * 600 + 2, observe_admission("team-a", ADMITTED, [FLAVOR]))
    assert admitted.create_workers == [0, 1] and admitted.status.phase == Phase.PENDING
    assert condition(admitted, "Admitted")["status"] == "True"
    assert admitted.placement is not None and admitted.placement.node_selector == {"pool": "a100"}


def test_the_flavor_reaches_the_worker_pods() -> None:
    spec = parse_spec(queued_body(kubernetes={"nodeSelector": {"zone": "z1"}})["spec"])
    admission = observe_admission("team-a", ADMITTED, [FLAVOR])
    ctx = WorkerContext(
        JobRef("demo", "ns", "uid"),
        spec,
        0,
        0,
        "img",
        flavor_node_selector=admission.placement.node_selector,
        flavor_tolerations=tuple(admission.placement.tolerations),
    )
    worker = build_worker_pod(ctx)
    assert worker["spec"]["nodeSelector"] == {"zone": "z1", "pool": "a100"}
    assert {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["spec"]["tolerations"]


def test_the_workload_asks_for_the_whole_gang_with_the_workers_resources_and_priority() -> None:
    spec = parse_spec(queued_body(kubernetes={"resources": {"gpusPerNode": 4}})["spec"])
    ref = JobRef("demo", "ns", "uid")
    built = build_workload(
        ref, build_worker_pod(WorkerContext(ref, spec, 0, 0, "img")), 3, "team-a", ("high", 1000)
    )
    pod_set = built["spec"]["podSets"][0]
    assert pod_set["count"] == 3 and built["spec"]["queueName"] == "team-a"
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert built["spec"]["priority"] == 1000 and built["spec"]["priorityClassRef"]["name"] == "high"
    assert built["metadata"]["ownerReferences"][0]["uid"] == "uid"


def test_a_preempted_gang_is_stopped_uncounted_and_requeued_once_its_workers_are_gone() -> None:
    body = queued_body()
    body = written(body, decide(body, [], 0, observe_admission("team-a", ADMITTED, [FLAVOR])))
    running = [pod(0), pod(1)]
    body = written(body, decide(body, running, 5, observe_admission("team-a", ADMITTED, [FLAVOR])))
    assert body["status"]["phase"] == "Running"
    evicted = observe_admission("team-a", EVICTED)
    assert evicted.state == QueueState.EVICTED
    stopping = decide(body, running, 60, evicted)
    assert sorted(stopping.delete_workers) == ["demo-worker-0", "demo-worker-1"]  # SIGTERM: they checkpoint
    assert stopping.status.phase == Phase.QUEUED and not stopping.requeue_workload
    assert (stopping.status.failed_attempts, stopping.status.restarts) == (0, 0)
    assert stopping.status.attempt == 1 and stopping.status.attempts[-1].counted is False
    assert [e.reason for e in stopping.events] == ["Preempted"]
    body = written(body, stopping)
    exiting = [pod(0, phase="Failed", exit_code=75, deleting=True), pod(1, deleting=True)]
    assert not decide(body, exiting, 61, evicted).requeue_workload
    gone = decide(body, [], 62, evicted)
    assert gone.requeue_workload and gone.status.phase == Phase.QUEUED
    body = written(body, gone)
    readmitted = decide(body, [], 200, observe_admission("team-a", ADMITTED, [FLAVOR]))
    assert readmitted.create_workers == [0, 1] and readmitted.status.attempt == 1
    assert readmitted.status.failed_attempts == 0


def test_requeue_clears_the_admission_as_kueues_job_integrations_do() -> None:
    patch = requeue_status(EVICTED, at(0))
    assert patch["status"]["admission"] is None and patch["metadata"]["resourceVersion"] == "7"
    kinds = {c["type"]: (c["status"], c["reason"]) for c in patch["status"]["conditions"]}
    assert kinds["QuotaReserved"] == ("False", "Pending") and kinds["Admitted"][0] == "False"
    assert kinds["Requeued"] == ("True", "Preempted") and kinds["Evicted"] == ("True", "Preempted")


def test_suspending_a_queued_job_releases_its_workload_and_both_suspend_fields_work() -> None:
    for spec in ({"suspend": True}, {"runPolicy": {"suspend": True}}):
        result = decide(queued_body(**spec), [], 0, observe_admission("team-a", ADMITTED))
        assert result.status.phase == Phase.SUSPENDED and result.delete_workload
        field = "spec.suspend" if "suspend" in spec else "spec.runPolicy.suspend"
        assert field in result.status.message


def test_a_queue_label_without_the_kueue_integration_is_refused_with_the_fix() -> None:
    observed = ObservedJob.from_body(queued_body())
    result = plan(observed, [], at(0), PlanOptions())
    assert result.status.phase == Phase.FAILED and "kueue.enabled=true" in result.status.message


def test_a_finished_queued_job_releases_its_workload() -> None:
    body = queued_body()
    body = written(body, decide(body, [], 0, observe_admission("team-a", ADMITTED)))
    done = decide(
        body,
        [pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0)],
        9,
        observe_admission("team-a", ADMITTED),
    )
    assert done.status.phase == Phase.SUCCEEDED and done.delete_workload


def test_a_gang_preempted_while_restarting_records_no_extra_attempt() -> None:
    body = queued_body()
    body = written(body, decide(body, [], 0, observe_admission("team-a", ADMITTED)))
    body = written(body, decide(body, [pod(0), pod(1)], 5, observe_admission("team-a", ADMITTED)))
    crashed = [pod(0), pod(1, phase="Failed", exit_code=1)]
    restarting = decide(body, crashed, 10, observe_admission("team-a", ADMITTED))
    assert restarting.status.phase == Phase.RESTARTING and restarting.status.attempt == 1
    body = written(body, restarting)
    queued = decide(body, crashed, 11, observe_admission("team-a", EVICTED))
    assert queued.status.phase == Phase.QUEUED and queued.status.attempt == 1
    assert [a.attempt for a in queued.status.attempts] == [0]
    assert queued.status.failed_attempts == 1  # the crash counted; the preemption did not


def test_the_quota_goes_back_only_once_no_worker_holds_its_gpus() -> None:
    """Worker 0 succeeded, worker 1 still terminates (its grace period): releasing the quota now would let the
    next gang in while these GPUs are taken, and its pods would wait unschedulable."""
    body = queued_body()
    body = written(body, decide(body, [], 0, observe_admission("team-a", ADMITTED)))
    body = written(body, decide(body, [pod(0), pod(1)], 5, observe_admission("team-a", ADMITTED)))
    done = decide(
        body, [pod(0, phase="Succeeded", exit_code=0), pod(1)], 9, observe_admission("team-a", ADMITTED)
    )
    assert done.status.phase == Phase.SUCCEEDED and done.delete_workers == ["demo-worker-1"]
    assert not done.delete_workload and done.requeue_after is not None
    body = written(body, done)
    still = decide(body, [pod(0, phase="Succeeded", exit_code=0), pod(1, deleting=True)], 10, None)
    assert not still.delete_workload
    gone = decide(body, [pod(0, phase="Succeeded", exit_code=0)], 12, None)
    assert gone.delete_workload


# What Kueue v0.17 writes on a Workload that borrowed another ClusterQueue's quota when that queue takes it back
# (reclaimWithinCohort): Evicted (reason Preempted) and Preempted (reason InCohortReclamation).
RECLAIMED = workload(
    ("QuotaReserved", "True", "QuotaReserved"),
    ("Admitted", "True", "Admitted"),
    ("Evicted", "True", "Preempted"),
    ("Preempted", "True", "InCohortReclamation"),
    admitted_to="gpus",
)


def test_a_reclaimed_borrower_is_stopped_uncounted_and_says_its_quota_was_reclaimed() -> None:
    body = queued_body(runPolicy={"backoffLimit": 1, "disruptionLimit": 1})
    body = written(body, decide(body, [], 0, observe_admission("team-a", ADMITTED, [FLAVOR])))
    running = [pod(0), pod(1)]
    body = written(body, decide(body, running, 5, observe_admission("team-a", ADMITTED, [FLAVOR])))
    reclaimed = observe_admission("team-a", RECLAIMED)
    assert reclaimed.state == QueueState.EVICTED and reclaimed.preemption == "InCohortReclamation"
    stopping = decide(body, running, 60, reclaimed)
    assert sorted(stopping.delete_workers) == ["demo-worker-0", "demo-worker-1"]
    assert stopping.status.phase == Phase.QUEUED
    # Neither budget is touched: a reclaim is the queue's decision, not a failure or a disruption of the job.
    status = stopping.status
    assert (status.failed_attempts, status.disruptions, status.restarts) == (0, 0, 0)
    assert status.last_failure is not None and status.last_failure.reason == "Preempted"
    assert "InCohortReclamation" in status.last_failure.message
    assert "(Preempted, InCohortReclamation)" in status.message
    assert [(e.reason, "InCohortReclamation" in e.message) for e in stopping.events] == [("Preempted", True)]
    body = written(body, stopping)
    gone = decide(body, [], 62, reclaimed)
    assert gone.requeue_workload
    # Reclaimed again after readmission: still nothing counted, however often it happens.
    body = written(body, gone)
    again = decide(body, [], 90, observe_admission("team-a", ADMITTED, [FLAVOR]))
    assert again.create_workers == [0, 1] and again.status.attempt == 1
    body = written(body, again)
    second = decide(body, [pod(0, attempt=1), pod(1, attempt=1)], 95, reclaimed)
    assert (second.status.failed_attempts, second.status.disruptions) == (0, 0)
    assert second.status.phase == Phase.QUEUED and second.status.attempt == 2


def test_an_eviction_that_is_not_a_preemption_names_only_its_reason() -> None:
    stopped = workload(
        ("QuotaReserved", "True", "QuotaReserved"),
        ("Admitted", "True", "Admitted"),
        ("Evicted", "True", "ClusterQueueStopped"),
        admitted_to="gpus",
    )
    admission = observe_admission("team-a", stopped)
    assert admission.state == QueueState.EVICTED and admission.describe() == "ClusterQueueStopped"
