"""Given a FineTuneJob and its worker pods, the pure planner decides what should exist and what the status
says: phases, gang restarts with backoff, backoffLimit, suspend/resume, deadlines, scheduling timeouts, TTL."""

from __future__ import annotations

from typing import Any

from kubetune.controller.observe import observe_pod
from kubetune.controller.plan import ObservedJob, Plan, PlanOptions, backoff_seconds, plan, status_patch
from kubetune.events import EventKind, JobSummary
from kubetune.spec.status import FineTuneJobStatus, Phase

from tests.operator.factories import at, job_body, pod

OPTIONS = PlanOptions(backoff_base_seconds=10, backoff_max_seconds=60, preemption_delay_seconds=1)


def decide(body: dict[str, Any], pods: list[dict[str, Any]], seconds: float) -> Plan:
    observed = [p for p in (observe_pod(raw) for raw in pods) if p is not None]
    return plan(ObservedJob.from_body(body), observed, at(seconds), OPTIONS)


def written(body: dict[str, Any], result: Plan) -> dict[str, Any]:
    """The body after the operator's status patch (what the next reconcile reads)."""
    status = dict(body.get("status") or {})
    for key, value in status_patch(status, result.status).items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return {**body, "status": status}


def condition(result: Plan, kind: str) -> dict[str, str]:
    for item in result.status.conditions:
        if item.type == kind:
            return {"status": item.status, "reason": item.reason, "message": item.message}
    raise AssertionError(f"no condition {kind}")


def running_job(nodes: int = 2, **spec: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    body = job_body(nodes=nodes, **spec)
    body = written(body, decide(body, [], 0))
    pods = [pod(i) for i in range(nodes)]
    body = written(body, decide(body, pods, 1))
    assert body["status"]["phase"] == "Running"
    return body, pods


def test_a_new_job_creates_its_children_and_every_worker_and_is_pending() -> None:
    result = decide(job_body(nodes=3), [], 0)
    assert result.ensure_children
    assert result.create_workers == [0, 1, 2]
    assert result.status.phase == Phase.PENDING
    assert result.status.workers.total == 3 and result.status.workers.created == 3
    assert result.status.attempt == 0 and result.status.start_time == "2026-01-01T12:00:00Z"
    assert condition(result, "Accepted")["status"] == "True"
    assert [e.reason for e in result.events] == ["Pending"]


def test_phase_follows_the_workers_pending_starting_running() -> None:
    body = written(job_body(), decide(job_body(), [], 0))
    unscheduled = [pod(0, phase="Pending"), pod(1, phase="Pending")]
    assert decide(body, unscheduled, 1).status.phase == Phase.PENDING
    creating = [pod(0, phase="Pending", waiting="ContainerCreating"), pod(1)]
    starting = decide(body, creating, 1)
    assert starting.status.phase == Phase.STARTING
    assert starting.create_workers == []
    running = decide(body, [pod(0), pod(1)], 2)
    assert running.status.phase == Phase.RUNNING
    assert running.status.workers.summary == "2/2"
    assert condition(running, "WorkersReady")["status"] == "True"


def test_planning_twice_on_the_same_observation_writes_nothing_the_second_time() -> None:
    body, pods = running_job()
    again = decide(body, pods, 5)
    assert status_patch(body["status"], again.status) == {}
    assert again.create_workers == [] and again.delete_workers == [] and again.events == []


def test_worker_zero_succeeding_ends_the_job_with_the_metrics_of_its_termination_message() -> None:
    body, _ = running_job()
    summary = JobSummary(
        outcome=EventKind.FINISHED,
        step=120,
        total_steps=120,
        epoch=3.0,
        train_loss=0.21,
        metrics={"eval_accuracy": 0.875, "eval_loss": 0.3},
        samples_per_second=55.5,
        model_path="/output/model",
    )
    pods = [pod(0, phase="Succeeded", exit_code=0, message=summary.to_termination_message()), pod(1)]
    result = decide(body, pods, 30)
    assert result.status.phase == Phase.SUCCEEDED
    assert result.status.completion_time == "2026-01-01T12:00:30Z"
    assert result.status.metrics is not None and result.status.progress is not None
    assert result.status.metrics.primary == "accuracy=0.875"
    assert result.status.metrics.eval["eval_accuracy"] == 0.875
    assert result.status.metrics.train_loss == 0.21
    assert result.status.progress.summary == "120/120 (100%)"
    assert result.delete_workers == ["demo-worker-1"]  # still running: free its GPUs; worker 0 kept for logs
    assert condition(result, "Succeeded")["status"] == "True"


def test_a_failed_worker_restarts_the_whole_gang_after_a_backoff() -> None:
    body, _ = running_job()
    pods = [pod(0), pod(1, phase="Failed", exit_code=137, reason="OOMKilled", message="out of memory")]
    result = decide(body, pods, 10)
    status = result.status
    assert status.phase == Phase.RESTARTING
    assert (status.restarts, status.failed_attempts, status.attempt) == (1, 1, 1)
    assert sorted(result.delete_workers) == ["demo-worker-0", "demo-worker-1"]
    assert status.last_failure is not None
    assert (status.last_failure.pod, status.last_failure.reason, status.last_failure.exit_code) == (
        "demo-worker-1",
        "OOMKilled",
        137,
    )
    assert result.requeue_after == 10
    assert "GangRestart" in [e.reason for e in result.events]
    body = written(body, result)
    # Old pods still terminating: wait, create nothing.
    waiting = decide(body, [pod(0, deleting=True), pod(1, phase="Failed", exit_code=137, deleting=True)], 12)
    assert waiting.create_workers == [] and waiting.status.phase == Phase.RESTARTING
    # Gone, but the backoff (10 s from t=10) has not passed.
    early = decide(body, [], 15)
    assert early.create_workers == [] and early.requeue_after == 5
    # Backoff over: attempt 1 is created, labelled with the new attempt.
    later = decide(body, [], 21)
    assert later.create_workers == [0, 1]
    assert later.status.phase == Phase.PENDING and later.status.attempt == 1
    body = written(body, later)
    rerun = decide(body, [pod(0, attempt=1), pod(1, attempt=1)], 22)
    assert rerun.status.phase == Phase.RUNNING and rerun.status.restarts == 1


def test_the_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n, OPTIONS) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_more_failures_than_backoff_limit_fail_the_job_for_good() -> None:
    body, _ = running_job(runPolicy={"backoffLimit": 1})
    failed = [pod(0, phase="Failed", exit_code=1, message="Traceback ... RuntimeError: boom"), pod(1)]
    first = decide(body, failed, 10)
    assert first.status.phase == Phase.RESTARTING
    body = written(body, first)
    body = written(body, decide(body, [], 30))
    body = written(body, decide(body, [pod(0, attempt=1), pod(1, attempt=1)], 31))
    second = decide(
        body, [pod(0, attempt=1, phase="Failed", exit_code=1, message="boom again"), pod(1, attempt=1)], 40
    )
    assert second.status.phase == Phase.FAILED
    assert condition(second, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "backoffLimit (1)" in second.status.message and "boom again" in second.status.message
    assert second.delete_workers == ["demo-worker-1"]  # the failed pod stays for its logs
    body = written(body, second)
    # Final: nothing is ever recreated, whatever the pods do.
    final = decide(body, [], 1000)
    assert final.create_workers == [] and final.status.phase == Phase.FAILED and not final.ensure_children


def test_a_preempted_worker_restarts_the_gang_without_using_up_the_backoff_limit() -> None:
    body, _ = running_job(runPolicy={"backoffLimit": 0})
    preempted = [pod(0), pod(1, phase="Failed", exit_code=75, message="preempted")]
    result = decide(body, preempted, 10)
    assert result.status.phase == Phase.RESTARTING
    assert (result.status.restarts, result.status.failed_attempts) == (1, 0)
    assert result.status.last_failure is not None and result.status.last_failure.reason == "Preempted"
    assert result.requeue_after == 1


def test_a_worker_deleted_from_under_a_running_gang_restarts_it() -> None:
    body, _ = running_job()
    gone = decide(body, [pod(0)], 10)
    assert gone.status.phase == Phase.RESTARTING
    assert gone.status.last_failure is not None and gone.status.last_failure.reason == "PodDeleted"
    assert gone.status.failed_attempts == 0
    draining = decide(body, [pod(0), pod(1, deleting=True, disrupted=True)], 10)
    assert draining.status.phase == Phase.RESTARTING


def test_a_spec_that_passes_the_schema_but_not_pydantic_fails_with_the_field_named() -> None:
    body = job_body(dataset={"name": "glue", "labelField": ""})
    result = decide(body, [], 0)
    assert result.status.phase == Phase.FAILED
    assert not result.ensure_children and result.create_workers == []
    assert condition(result, "Accepted")["reason"] == "InvalidSpec"
    assert "dataset.labelField" in result.status.message
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "InvalidSpec")]


def test_correcting_an_invalid_spec_starts_the_job_and_an_invalid_one_still_honours_its_ttl() -> None:
    body = job_body(dataset={"name": "glue", "labelField": ""}, runPolicy={"ttlSecondsAfterFinished": 30})
    body = written(body, decide(body, [], 0))
    assert body["status"]["phase"] == "Failed"
    assert decide(body, [], 10).requeue_after == 20
    assert decide(body, [], 31).delete_job
    body["spec"]["dataset"] = {"name": "glue"}
    body["metadata"]["generation"] = 2
    fixed = decide(body, [], 12)
    assert fixed.status.phase == Phase.PENDING and fixed.create_workers == [0, 1]
    assert condition(fixed, "Accepted")["status"] == "True" and fixed.status.last_failure is None


def test_a_name_too_long_for_worker_hostnames_fails_the_job() -> None:
    result = decide(job_body(name="a" * 60), [], 0)
    assert result.status.phase == Phase.FAILED and "metadata.name" in result.status.message


def test_suspend_removes_the_workers_and_resume_recreates_them() -> None:
    body, pods = running_job()
    body["spec"]["runPolicy"] = {"suspend": True}
    suspended = decide(body, pods, 10)
    assert suspended.status.phase == Phase.SUSPENDED
    assert sorted(suspended.delete_workers) == ["demo-worker-0", "demo-worker-1"]
    assert suspended.status.start_time is None
    assert condition(suspended, "Suspended")["status"] == "True"
    body = written(body, suspended)
    assert decide(body, [], 20).create_workers == []
    body["spec"]["runPolicy"] = {"suspend": False}
    resumed = decide(body, [], 30)
    assert resumed.create_workers == [0, 1] and resumed.status.phase == Phase.PENDING
    assert resumed.status.start_time == "2026-01-01T12:00:30Z"
    # (a fresh attempt number, not a restart: see test_plan_faults)
    assert resumed.status.attempt == 1 and resumed.status.restarts == 0
    assert condition(resumed, "Suspended")["reason"] == "Resumed"


def test_a_job_created_suspended_creates_no_workers() -> None:
    result = decide(job_body(runPolicy={"suspend": True}), [], 0)
    assert result.status.phase == Phase.SUSPENDED and result.create_workers == []


def test_the_active_deadline_fails_a_job_that_runs_too_long() -> None:
    body, pods = running_job(runPolicy={"activeDeadlineSeconds": 100})
    assert decide(body, pods, 50).requeue_after == 50
    late = decide(body, pods, 101)
    assert late.status.phase == Phase.FAILED
    assert condition(late, "Failed")["reason"] == "DeadlineExceeded"
    assert sorted(late.delete_workers) == ["demo-worker-0", "demo-worker-1"]


def test_workers_stuck_unschedulable_or_pulling_fail_the_job_a_scheduling_timeout_after_they_got_stuck() -> (
    None
):
    body = job_body(runPolicy={"schedulingTimeoutSeconds": 60})
    body = written(body, decide(body, [], 0))
    stuck = [pod(0, phase="Pending", unschedulable=True), pod(1)]
    # Stuck from t=30 (first seen; the factory's condition has no transition time): the clock starts there.
    early = decide(body, stuck, 30)
    assert early.status.phase == Phase.PENDING and early.requeue_after == 60
    assert "Unschedulable" in early.status.message
    assert [(w.pod, w.reason, w.since) for w in early.status.waiting] == [
        ("demo-worker-0", "Unschedulable", "2026-01-01T12:00:30Z")
    ]
    assert [e.reason for e in early.events] == ["WorkerWaiting"]
    body = written(body, early)
    assert decide(body, stuck, 61).status.phase == Phase.PENDING  # 61 s after the attempt, 31 s stuck
    late = decide(body, stuck, 91)
    assert late.status.phase == Phase.FAILED
    assert late.status.last_failure is not None and late.status.last_failure.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in late.status.message and "after 61s" in late.status.message
    pulling = [pod(0, phase="Pending", waiting="ImagePullBackOff"), pod(1)]
    # A pull error appears when the attempt is long old: its own clock starts now, and does not fail it.
    first = decide(body, pulling, 500)
    assert first.status.phase == Phase.STARTING and first.status.waiting[0].reason == "ImagePullBackOff"
    body = written(body, first)
    assert decide(body, pulling, 559).status.phase == Phase.STARTING
    failed = decide(body, pulling, 561)
    assert failed.status.phase == Phase.FAILED and condition(failed, "Failed")["reason"] == "ImagePullBackOff"
    invalid = decide(body, [pod(0, phase="Pending", waiting="InvalidImageName"), pod(1)], 1)
    assert invalid.status.phase == Phase.FAILED  # never recovers: no need to wait


def test_a_worker_that_recovers_from_a_pull_error_starts_a_fresh_clock_if_it_gets_stuck_again() -> None:
    body = job_body(runPolicy={"schedulingTimeoutSeconds": 60})
    body = written(body, decide(body, [], 0))
    pulling = [pod(0, phase="Pending", waiting="ErrImagePull"), pod(1)]
    body = written(body, decide(body, pulling, 700))
    recovered = decide(body, [pod(0), pod(1)], 750)
    assert recovered.status.phase == Phase.RUNNING and recovered.status.waiting == []
    body = written(body, recovered)
    again = decide(body, pulling, 800)
    assert again.status.phase == Phase.STARTING and again.status.waiting[0].since == "2026-01-01T12:13:20Z"


def test_an_unschedulable_worker_counts_from_its_podscheduled_transition_time() -> None:
    body = job_body(runPolicy={"schedulingTimeoutSeconds": 60})
    body = written(body, decide(body, [], 0))
    stuck = pod(0, phase="Pending", unschedulable=True)
    stuck["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T12:00:10Z"
    result = decide(body, [stuck, pod(1)], 40)
    assert result.status.waiting[0].since == "2026-01-01T12:00:10Z" and result.requeue_after == 30
    assert decide(written(body, result), [stuck, pod(1)], 71).status.phase == Phase.FAILED


def test_a_finished_job_is_deleted_after_its_ttl() -> None:
    body, _ = running_job(runPolicy={"ttlSecondsAfterFinished": 60})
    done = decide(body, [pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0)], 10)
    assert done.status.phase == Phase.SUCCEEDED and done.requeue_after == 60 and not done.delete_job
    body = written(body, done)
    assert not decide(body, [], 50).delete_job
    assert decide(body, [], 71).delete_job


def test_a_pod_left_from_an_older_attempt_is_deleted_and_its_name_reused_once_gone() -> None:
    body = job_body()
    body["status"] = {"phase": "Pending", "attempt": 2, "workers": {"created": 1}}
    stale = [pod(0, attempt=2), pod(1, attempt=1, phase="Failed", exit_code=1)]
    result = decide(body, stale, 5)
    assert result.delete_workers == ["demo-worker-1"]
    assert result.create_workers == [] and result.requeue_after is not None  # wait for the name
    assert result.status.phase == Phase.PENDING  # an old attempt's failure is not a new failure
    assert decide(body, [pod(0, attempt=2)], 6).create_workers == [1]


def test_status_patch_contains_only_what_changed() -> None:
    old = FineTuneJobStatus(phase=Phase.RUNNING, restarts=1).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    old["progress"] = {"step": 5, "totalSteps": 10}  # written by rank 0: not touched
    new = FineTuneJobStatus.model_validate(old)
    new.phase = Phase.RESTARTING
    new.progress = None
    patch = status_patch(old, new)
    assert patch == {"phase": "Restarting", "progress": None}


def test_the_scheduling_clock_starts_even_when_the_pods_were_created_by_a_failed_reconcile() -> None:
    body = job_body(runPolicy={"schedulingTimeoutSeconds": 60})  # no status written yet
    stuck = [pod(0, phase="Pending", unschedulable=True), pod(1, phase="Pending", unschedulable=True)]
    first = decide(body, stuck, 0)
    assert first.create_workers == [] and first.status.attempt_start_time == "2026-01-01T12:00:00Z"
    body = written(body, first)
    assert decide(body, stuck, 61).status.phase == Phase.FAILED


def test_deadlines_and_ttls_of_centuries_do_not_overflow_the_planner() -> None:
    """Found by the spec fuzz: activeDeadlineSeconds/ttlSecondsAfterFinished near int64 crashed plan()."""
    huge = 2**62
    result = decide(job_body(runPolicy={"activeDeadlineSeconds": huge}), [], 0)
    assert result.status.phase == Phase.PENDING and result.requeue_after is not None
    body = job_body(
        runPolicy={"ttlSecondsAfterFinished": huge},
        status={"phase": "Succeeded", "completionTime": "2026-01-01T12:00:00Z"},
    )
    result = decide(body, [], 10)
    assert not result.delete_job and result.requeue_after is not None
