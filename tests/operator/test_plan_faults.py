"""Given a FineTuneJob under faults, the pure planner decides as a Kubernetes controller maintainer expects
(issue 11): bounded waits for pods stuck Terminating, disruptions blamed right and budgeted apart from
failures, no spurious restart on resume, permanent errors not retried, children it does not control left
alone and reported, and every ended attempt kept in the status for diagnosis."""

from __future__ import annotations

from kubetune.controller.child_report import report_children, retry_seconds
from kubetune.controller.observe import observe_pod
from kubetune.controller.ownership import (
    ChildProblem,
    ChildProblemReason,
    Control,
    control_of,
    not_controlled,
)
from kubetune.spec.status import Phase

from tests.operator.factories import at, job_body, pod
from tests.operator.test_plan import OPTIONS, condition, decide, running_job, written

OWNER = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "demo", "controller": True}


def restarting_job() -> tuple[dict, list[dict]]:
    body, _ = running_job()
    failed = [pod(0), pod(1, phase="Failed", exit_code=1, message="boom")]
    result = decide(body, failed, 10)
    assert result.status.phase == Phase.RESTARTING
    return written(body, result), failed


def test_a_pod_stuck_terminating_is_force_deleted_after_a_bounded_wait_and_the_message_says_so() -> None:
    body, _ = restarting_job()
    # Given the old rank 1 held Terminating by a finalizer nobody removes (due at 12:00:20)
    stuck = [
        pod(1, deleting=True, deletion_timestamp="2026-01-01T12:00:20Z", finalizers=["example.com/hold"])
    ]
    waiting = decide(body, stuck, 60)
    # Then the status says what it waits on, not "restarting in 1s"
    assert waiting.status.phase == Phase.RESTARTING and waiting.create_workers == []
    # (naming its node: a worker on a lost node is what usually hangs there)
    assert "demo-worker-1 on node node-1 Terminating" in waiting.status.message
    assert "example.com/hold" in waiting.status.message and "in 1s" not in waiting.status.message
    assert waiting.force_delete_workers == []
    assert waiting.requeue_after is not None and waiting.requeue_after <= OPTIONS.terminating_timeout_seconds
    # And once terminatingTimeout has passed since it was due, it is force-deleted (grace 0)
    late = decide(body, stuck, 20 + OPTIONS.terminating_timeout_seconds + 1)
    assert late.force_delete_workers == ["demo-worker-1"]
    assert "force-deleted" in late.status.message
    # And when it is finally gone, the next attempt starts
    assert decide(body, [], 20 + OPTIONS.terminating_timeout_seconds + 5).create_workers == [0, 1]


def test_an_eviction_seen_with_a_peer_crash_is_blamed_on_the_evicted_rank_and_not_counted() -> None:
    body, _ = running_job(runPolicy={"backoffLimit": 0})
    seen = [
        pod(0, phase="Failed", exit_code=1, message="NCCL error: remote process exited"),
        pod(1, phase="Failed", exit_code=137, disrupted=True, disruption_reason="EvictionByEvictionAPI"),
    ]
    result = decide(body, seen, 10)
    assert result.status.phase == Phase.RESTARTING
    assert result.status.last_failure is not None and result.status.last_failure.pod == "demo-worker-1"
    assert (result.status.failed_attempts, result.status.disruptions, result.status.restarts) == (0, 1, 1)


def test_a_kubelet_pressure_eviction_counts_as_a_failure() -> None:
    body, _ = running_job(runPolicy={"backoffLimit": 0})
    evicted = pod(
        1,
        phase="Failed",
        disrupted=True,
        disruption_reason="TerminationByKubelet",
        pod_reason="Evicted",
        pod_message="The node was low on resource: memory.",
    )
    result = decide(body, [pod(0), evicted], 10)
    assert result.status.phase == Phase.FAILED
    assert condition(result, "Failed")["reason"] == "BackoffLimitExceeded"
    assert result.status.last_failure is not None and result.status.last_failure.reason == "Evicted"


def test_disruptions_have_their_own_capped_budget() -> None:
    body, _ = running_job(runPolicy={"backoffLimit": 0, "disruptionLimit": 1})
    preempted = [pod(0), pod(1, phase="Failed", exit_code=75)]
    first = decide(body, preempted, 10)
    assert first.status.phase == Phase.RESTARTING and first.status.disruptions == 1
    body = written(body, first)
    body = written(body, decide(body, [], 20))  # attempt 1 created
    again = [pod(0, attempt=1), pod(1, attempt=1, phase="Failed", exit_code=75)]
    second = decide(body, again, 30)
    assert second.status.phase == Phase.FAILED
    assert condition(second, "Failed")["reason"] == "DisruptionLimitExceeded"
    assert second.status.failed_attempts == 0 and second.status.disruptions == 2


def test_resuming_while_the_suspended_pods_still_terminate_is_not_a_restart() -> None:
    body, pods = running_job()
    body["spec"]["runPolicy"] = {"suspend": True}
    body = written(body, decide(body, pods, 10))
    body["spec"]["runPolicy"] = {"suspend": False}
    terminating = [pod(i, deleting=True, deletion_timestamp="2026-01-01T12:02:10Z") for i in range(2)]
    resumed = decide(body, terminating, 12)
    assert resumed.status.restarts == 0 and resumed.status.phase == Phase.PENDING
    assert resumed.create_workers == [] and resumed.delete_workers == []  # waits for the names
    body = written(body, resumed)
    later = decide(body, [], 20)
    assert later.create_workers == [0, 1] and later.status.restarts == 0


def test_exit_code_2_fails_the_job_at_once_without_a_retry() -> None:
    body, _ = running_job(runPolicy={"backoffLimit": 5})
    invalid = [pod(0, phase="Failed", exit_code=2, message="training.lr: must be > 0"), pod(1)]
    result = decide(body, invalid, 10)
    assert result.status.phase == Phase.FAILED and result.status.restarts == 0
    assert condition(result, "Failed")["reason"] == "InvalidSpec"
    assert "training.lr" in result.status.message


def test_a_container_stuck_creating_fails_after_the_scheduling_timeout() -> None:
    fresh = job_body()
    body = written(fresh, decide(fresh, [], 0))
    creating = [pod(0, phase="Pending", waiting="ContainerCreating"), pod(1)]
    first = decide(body, creating, 60)  # stuck since t=60 (first seen: the factory gives no time)
    assert first.status.phase != Phase.FAILED
    body = written(body, first)
    assert decide(body, creating, 601).status.phase != Phase.FAILED
    result = decide(body, creating, 661)
    assert result.status.phase == Phase.FAILED
    assert result.status.last_failure is not None
    assert result.status.last_failure.reason == "ContainerCreating"


def test_ended_attempts_are_kept_in_the_status_with_reason_pod_exit_code_and_gpu_seconds() -> None:
    body, _ = restarting_job()
    history = body["status"]["attempts"]
    assert len(history) == 1
    record = history[0]
    assert (record["attempt"], record["reason"], record["pod"], record["exitCode"]) == (
        0,
        "Error",
        "demo-worker-1",
        1,
    )
    assert record["counted"] is True and record["message"] == "boom"
    assert record["startTime"] == "2026-01-01T12:00:00Z" and record["endTime"] == "2026-01-01T12:00:10Z"
    assert record["gpuSeconds"] == 2 * 1 * 10


def test_control_of_tells_own_children_from_leftovers_and_foreign_objects() -> None:
    def obj(*refs: dict) -> dict:
        return {"metadata": {"ownerReferences": list(refs)}}

    assert control_of(obj({**OWNER, "uid": "uid-1"}), "demo", "uid-1") == Control.OURS
    assert control_of(obj({**OWNER, "uid": "old"}), "demo", "uid-1") == Control.PREVIOUS_JOB
    assert control_of(obj({**OWNER, "uid": "x", "name": "other"}), "demo", "uid-1") == Control.FOREIGN
    assert control_of(obj(), "demo", "uid-1") == Control.FOREIGN
    not_controller = {**OWNER, "uid": "uid-1", "controller": False}
    assert control_of(obj(not_controller), "demo", "uid-1") == Control.FOREIGN
    problem = not_controlled("ConfigMap", "demo-config", obj())
    assert "controller: none" in problem.message and "delete or rename" in problem.message


def test_a_foreign_object_under_a_childs_name_holds_the_job_and_is_reported_once() -> None:
    body, pods = running_job()
    observed = [p for p in (observe_pod(raw) for raw in pods) if p is not None]
    problem = not_controlled("ConfigMap", "demo-config", {"metadata": {}})
    result = decide(body, pods, 20)
    report_children(result, [problem], observed, at(20), 1, OPTIONS)
    # Then the status names the object, a Warning Event says it, no worker uses someone else's object
    ready = condition(result, "ChildrenReady")
    assert ready["status"] == "False" and ready["reason"] == "ChildNotControlled"
    assert "ConfigMap demo-config" in ready["message"]
    assert [e.reason for e in result.events if e.type == "Warning"] == ["ChildNotControlled"]
    assert sorted(result.delete_workers) == ["demo-worker-0", "demo-worker-1"]
    assert result.status.attempt == 1 and result.status.restarts == 0 and result.create_workers == []
    assert result.requeue_after == OPTIONS.child_retry_seconds
    # The next retry, same problem: no new Event
    body = written(body, result)
    again = decide(body, [], 30)
    report_children(again, [problem], [], at(30), 1, OPTIONS)
    assert again.create_workers == [] and not [e for e in again.events if e.type == "Warning"]
    assert again.status.phase == Phase.PENDING and "demo-config" in again.status.message
    # Once it is gone, the workers are created and the condition turns True
    body = written(body, again)
    fixed = decide(body, [], 40)
    report_children(fixed, [], [], at(40), 1, OPTIONS)
    assert fixed.create_workers == [0, 1] and condition(fixed, "ChildrenReady")["status"] == "True"


def test_a_lasting_child_problem_is_retried_less_often_as_it_ages_and_fast_again_once_new() -> None:
    refused = ChildProblem("ConfigMap", "demo-config", ChildProblemReason.CREATE_REFUSED, "exceeded quota")
    body = job_body(nodes=2)
    delays = []
    for second in (0, 10, 60, 400, 1000):
        result = decide(body, [], second)
        report_children(result, [refused], [], at(second), 1, OPTIONS)
        delays.append(result.requeue_after)
        body = written(body, result)
    # 10 s while new, then a quarter of its age since the condition turned False, capped
    assert delays == [10.0, 10.0, 15.0, 100.0, OPTIONS.child_retry_max_seconds]
    # Fixed (the condition turns True), then a new problem: fast retries again
    fixed = decide(body, [], 1010)
    report_children(fixed, [], [], at(1010), 1, OPTIONS)
    assert condition(fixed, "ChildrenReady")["status"] == "True"
    assert retry_seconds(None, at(1020), OPTIONS) == OPTIONS.child_retry_seconds  # (no False condition)


def test_a_refused_child_does_not_stop_the_deadline() -> None:
    body, pods = running_job(runPolicy={"activeDeadlineSeconds": 30})
    refused = ChildProblem("ConfigMap", "demo-config", ChildProblemReason.CREATE_REFUSED, "exceeded quota")
    result = decide(body, pods, 40)
    report_children(result, [refused], [], at(40), 1, OPTIONS)
    assert result.status.phase == Phase.FAILED
    assert condition(result, "Failed")["reason"] == "DeadlineExceeded"
    assert condition(result, "ChildrenReady")["status"] == "False"


def test_a_users_progress_role_binding_is_reported_but_holds_no_worker_back() -> None:
    """The RoleBinding only lets rank 0 write live progress: someone else's object under its name, or a
    refused create, is reported (naming it, the fix, and that progress is not live) and the job goes on."""
    users = not_controlled("RoleBinding", "demo-progress", {"metadata": {}})
    refused = ChildProblem(
        "RoleBinding", "demo-progress", ChildProblemReason.CREATE_REFUSED, "cannot be created: 403 forbidden"
    )
    for problem in (users, refused):
        # A new job: its workers are still created, and it is not held Pending by the binding
        new = decide(job_body(nodes=2), [], 0)
        report_children(new, [problem], [], at(0), 1, OPTIONS)
        assert new.create_workers == [0, 1] and new.status.workers.created == 2
        assert "waiting for the job's children" not in new.status.message
        ready = condition(new, "ChildrenReady")
        assert ready["status"] == "False" and ready["reason"] == problem.reason
        assert "RoleBinding demo-progress" in ready["message"] and "without live progress" in ready["message"]
        warnings = [e for e in new.events if e.type == "Warning"]
        assert [e.reason for e in warnings] == [problem.reason] and "demo-progress" in warnings[0].message
        assert new.requeue_after == OPTIONS.child_retry_seconds  # (retried, in case it is fixed)
        # A running job: its workers are kept, no new attempt
        body, pods = running_job()
        running = decide(body, pods, 20)
        observed = [p for p in (observe_pod(raw) for raw in pods) if p is not None]
        report_children(running, [problem], observed, at(20), 1, OPTIONS)
        assert running.delete_workers == [] and running.status.attempt == 0
        assert running.status.phase == Phase.RUNNING


def test_a_users_progress_role_binding_beside_a_refused_child_does_not_make_the_workers_go() -> None:
    """A refused ConfigMap holds the job (no new workers), but only someone else's object that the workers
    use makes the current workers go: a user's progress RoleBinding beside it must not."""
    body, pods = running_job()
    observed = [p for p in (observe_pod(raw) for raw in pods) if p is not None]
    quota = ChildProblem("ConfigMap", "demo-config", ChildProblemReason.CREATE_REFUSED, "exceeded quota")
    users = not_controlled("RoleBinding", "demo-progress", {"metadata": {}})
    result = decide(body, pods, 20)
    report_children(result, [quota, users], observed, at(20), 1, OPTIONS)
    assert result.delete_workers == [] and result.status.attempt == 0


def test_a_worker_evicted_or_gone_while_a_peer_crashes_is_blamed_and_not_counted() -> None:
    body, _ = running_job(runPolicy={"backoffLimit": 0})
    evicted = pod(1, deleting=True, disrupted=True, disruption_reason="EvictionByEvictionAPI")
    crashed = pod(0, phase="Failed", exit_code=1, message="NCCL error")
    result = decide(body, [crashed, evicted], 10)
    assert result.status.phase == Phase.RESTARTING
    failure = result.status.last_failure
    assert failure is not None and (failure.pod, failure.reason) == ("demo-worker-1", "Evicted")
    assert (result.status.failed_attempts, result.status.disruptions) == (0, 1)
    gone = decide(body, [crashed], 10)  # rank 1 already removed: the crash is still not counted
    assert gone.status.phase == Phase.RESTARTING and gone.status.failed_attempts == 0


def test_a_new_gang_created_by_an_operator_that_died_before_writing_the_status_is_kept_not_recreated() -> (
    None
):
    # Found by the soak (test_soak_cluster.py): an operator killed between creating attempt 1's pods and
    # writing "Pending" left the status at Restarting; the next process took the new gang for old pods,
    # deleted it and created attempt 1 again: two pods for one worker of one attempt.
    body, _ = restarting_job()
    assert body["status"]["attempt"] == 1
    # Given the old gang gone and attempt 1's pods created (running), the status still Restarting
    new_gang = [pod(0, attempt=1), pod(1, attempt=1)]
    result = decide(body, new_gang, 15)
    # Then they are the attempt's gang: nothing deleted, nothing created, and the job runs
    assert result.delete_workers == [] and result.force_delete_workers == [] and result.create_workers == []
    assert result.status.phase == Phase.RUNNING and result.status.attempt == 1
    assert (result.status.restarts, result.status.failed_attempts) == (1, 1)
    # And with a pod of the old gang still terminating beside them, only that one is waited for
    mixed = [pod(1, attempt=0, deleting=True), pod(0, attempt=1)]
    waiting = decide(body, mixed, 15)
    assert waiting.delete_workers == [] and waiting.create_workers == []
    assert (
        waiting.status.phase == Phase.RESTARTING
        and "demo-worker-1 on node node-1 Terminating" in waiting.status.message
    )
