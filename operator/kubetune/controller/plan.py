"""The reconcile decision, as a pure function: FineTuneJob + its worker pods + the time → what to do.

`plan()` never talks to the API. The kopf handlers read the job and its pods (fresh, not from a cache;
a brand-new job is planned from its watch event with no pods),
call it, and carry out the `Plan`: create/delete pods, ensure the job-level children, patch the status
fields that changed, post Events, and come back after `requeue_after` seconds for time-based transitions
(backoff, deadlines, TTL, scheduling timeouts).

The state machine of the gang (one attempt = one set of worker pods labelled with the attempt number):

    Pending ─▶ Starting ─▶ Running ─▶ Succeeded            (worker 0 exits 0)
       │          │           │
       └──────────┴───────────┴──▶ Restarting ─▶ Pending   (a worker failed: delete the whole gang, wait
                                        │                    until it is gone and a backoff passed, then
                                        └──▶ Failed          create attempt+1), or Failed past backoffLimit
    any active phase ─▶ Suspended ─▶ Pending               (suspend: workers deleted, status kept)
    any active phase ─▶ Failed                             (deadline, a worker stuck scheduling / pulling
                                                            its image for schedulingTimeoutSeconds since it
                                                            became stuck)
    Queued ─▶ Pending                                      (Kueue admitted the job's Workload: see queueing)
    any active phase ─▶ Queued                             (Kueue preempted it: workers deleted, uncounted)

Every decision is derived from observed state (attempt labels, status counters), never from "what the last
reconcile did", so running it twice on the same observation does the same thing once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetune.controller import names
from kubetune.controller.children import DEFAULT_IMAGE, JobRef, config_files
from kubetune.controller.failures import (
    close_attempt,
    deleted_failure,
    exhausted_limit,
    failure_of,
    stuck_terminating,
    terminating_summary,
)
from kubetune.controller.observe import WorkerPod, format_time, parse_time, tail
from kubetune.controller.pod_groups import wants_pod_group
from kubetune.controller.queueing import Admission, Placement, QueueState, observe_admission, queue_name
from kubetune.crd import MAX_JOB_NAME_LENGTH
from kubetune.events import JobSummary
from kubetune.launch import LaunchConfigError, deepspeed_config
from kubetune.spec.loading import SpecError, parse_spec
from kubetune.spec.models import FineTuneJobSpec, queue_label_problem
from kubetune.spec.status import (
    FINAL_PHASES,
    Condition,
    ConditionType,
    Failure,
    FailureReason,
    FineTuneJobStatus,
    Metrics,
    Phase,
    Progress,
    WaitingWorker,
)

# How soon to look again while waiting for something that produces no watch event of ours.
POLL_SECONDS = 5.0


@dataclass(frozen=True)
class PlanOptions:
    """Operator-wide settings the planner needs."""

    default_image: str = DEFAULT_IMAGE
    backoff_base_seconds: float = 10.0  # first gang-restart delay after a failure; doubles each time
    backoff_max_seconds: float = 360.0
    preemption_delay_seconds: float = 1.0  # restart after a preemption/disruption: no growing backoff
    # How long a deleted worker may stay Terminating past its grace period (a lost node, a finalizer nobody
    # removes) before it is force-deleted (grace 0) so that the next attempt can use its name.
    terminating_timeout_seconds: float = 300.0
    child_retry_seconds: float = 10.0  # how soon to retry a child that could not be created
    # A child problem that lasts (a progress RoleBinding someone else owns can last the whole run) is retried
    # less often as it ages: after a quarter of its age, up to this long (see `child_report.retry_seconds`).
    child_retry_max_seconds: float = 120.0
    kueue: bool = False  # the Kueue integration is on (jobs may name a queue): `kubetune operator --kueue`
    # The coscheduling integration is on (jobs may ask for a PodGroup): `kubetune operator --coscheduling`.
    coscheduling: bool = False


@dataclass(frozen=True)
class ObservedJob:
    """The FineTuneJob as read from the API server."""

    name: str
    namespace: str
    uid: str
    generation: int
    creation_time: datetime
    spec: dict[str, Any]
    status: FineTuneJobStatus
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ObservedJob:
        """From the resource's JSON. Raises KeyError when metadata.name/namespace/uid are missing."""
        metadata = body["metadata"]
        created = parse_time(metadata.get("creationTimestamp"))
        return cls(
            name=metadata["name"],
            namespace=metadata["namespace"],
            uid=metadata["uid"],
            generation=int(metadata.get("generation") or 1),
            creation_time=created or datetime.fromtimestamp(0).astimezone(),
            spec=dict(body.get("spec") or {}),
            status=FineTuneJobStatus.model_validate(body.get("status") or {}),
            labels=dict(metadata.get("labels") or {}),
        )


@dataclass(frozen=True)
class JobEvent:
    """A Kubernetes Event to post on the FineTuneJob."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What the handler must do for one FineTuneJob."""

    status: FineTuneJobStatus
    spec: FineTuneJobSpec | None = None
    ensure_children: bool = False  # Service, ConfigMap, progress RBAC
    create_workers: list[int] = field(default_factory=list)  # indices, for attempt status.attempt
    delete_workers: list[str] = field(default_factory=list)  # pod names
    force_delete_workers: list[str] = field(default_factory=list)  # stuck Terminating: grace 0
    delete_job: bool = False  # ttlSecondsAfterFinished passed
    # Kueue (jobs with a queue label only): create the Workload when missing; hand an evicted one back to its
    # queue (its workers are gone); delete it (finished or suspended: release the quota).
    ensure_workload: bool = False
    requeue_workload: bool = False
    delete_workload: bool = False
    placement: Placement | None = None  # the admission's flavors, for the workers created now
    events: list[JobEvent] = field(default_factory=list)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        """Ask to be called again in `seconds` (the earliest request wins)."""
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def backoff_seconds(failures: int, options: PlanOptions) -> float:
    """Delay before gang attempt after the `failures`-th failure: base · 2^(failures-1), capped."""
    exponent = max(0, failures - 1)
    return float(min(options.backoff_max_seconds, options.backoff_base_seconds * (2**exponent)))


def set_condition(
    status: FineTuneJobStatus,
    kind: ConditionType,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> None:
    """Add or update a condition; lastTransitionTime moves only when its True/False value changes."""
    text = "True" if value else "False"
    for condition in status.conditions:
        if condition.type == kind:
            if condition.status != text:
                condition.last_transition_time = format_time(now)
            condition.status, condition.reason, condition.message = text, reason, message
            condition.observed_generation = generation
            return
    status.conditions.append(
        Condition(
            type=kind,
            status=text,
            reason=reason,
            message=message,
            last_transition_time=format_time(now),
            observed_generation=generation,
        )
    )


def _name_problem(name: str) -> str | None:
    if len(name) > MAX_JOB_NAME_LENGTH or not name[:1].isalpha():
        return (
            f"metadata.name '{name}' must start with a letter and be at most {MAX_JOB_NAME_LENGTH} "
            "characters (it names the Service and worker hostnames): rename the job"
        )
    return None


# The API server's bound on a ConfigMap's data, and the spec size (JSON) below which the job's files (the spec
# as YAML, the accelerate and DeepSpeed configs) are far from it, so that only a huge spec costs a dump here.
CONFIG_MAP_MAX_BYTES = 1024 * 1024
_SMALL_SPEC_BYTES = 128 * 1024


def _config_map_problem(job: ObservedJob, spec: FineTuneJobSpec) -> str | None:
    """Why the job's ConfigMap (`children.config_files`) would be too large for the API server, or None.

    A FineTuneJob may hold up to etcd's 1.5 MiB, a ConfigMap 1 MiB: a spec with megabytes of environment
    values is accepted at `kubectl apply`, and its ConfigMap would be refused at every reconcile.
    """
    if len(json.dumps(job.spec)) < _SMALL_SPEC_BYTES:
        return None
    files = config_files(JobRef(job.name, job.namespace, job.uid), spec)
    size = sum(len(key) + len(text.encode()) for key, text in files.items())
    if size <= CONFIG_MAP_MAX_BYTES:
        return None
    return (
        f"spec: the job's files (the spec as YAML and its launch configs, ConfigMap {names.config_map_name(job.name)}) take "
        f"{size} bytes, and a ConfigMap holds at most {CONFIG_MAP_MAX_BYTES}: move large values out of the spec "
        "(spec.kubernetes.env into a Secret of your own, read with kubernetes.envFromSecrets or secretEnv)"
    )


def _primary_metric(spec: FineTuneJobSpec | None, metrics: dict[str, float]) -> str:
    """'accuracy=0.8610' for the spec's primary metric (eval_-prefixed or not), '' when absent."""
    if not metrics:
        return ""
    wanted = spec.primary_metric if spec is not None else None
    candidates = [f"eval_{wanted}", wanted] if wanted else []
    for key in candidates:
        if key in metrics:
            return f"{wanted}={metrics[key]:.4g}"
    key, value = sorted(metrics.items())[0]
    return f"{key.removeprefix('eval_')}={value:.4g}"


def progress_summary(step: int, total: int) -> str:
    if total <= 0:
        return f"{step}" if step else ""
    return f"{step}/{total} ({100.0 * step / total:.0f}%)"


def apply_summary(status: FineTuneJobStatus, summary: JobSummary, spec: FineTuneJobSpec | None) -> None:
    """Fold rank 0's final JobSummary (from its termination message) into progress and metrics."""
    total = summary.total_steps or summary.step
    status.progress = Progress(
        step=summary.step,
        total_steps=total,
        epoch=summary.epoch,
        percent=round(100.0 * summary.step / total, 2) if total else 0.0,
        eta_seconds=0.0 if summary.outcome == "finished" else None,
        summary=progress_summary(summary.step, total),
        update_time=(status.progress.update_time if status.progress else None),
    )
    previous = status.metrics or Metrics()
    evals = {**previous.eval, **summary.metrics}
    status.metrics = Metrics(
        train_loss=summary.train_loss if summary.train_loss is not None else previous.train_loss,
        samples_per_second=(
            summary.samples_per_second
            if summary.samples_per_second is not None
            else previous.samples_per_second
        ),
        eval=evals,
        primary=_primary_metric(spec, evals),
        model_path=summary.model_path or previous.model_path,
    )


class _Planner:
    def __init__(
        self,
        job: ObservedJob,
        pods: list[WorkerPod],
        now: datetime,
        options: PlanOptions,
        admission: Admission | None = None,
    ) -> None:
        self.job = job
        self.queue = queue_name(job.labels)
        self.admission = admission
        self.pods = pods
        self.now = now
        self.options = options
        self.previous = job.status
        self.plan = Plan(status=job.status.model_copy(deep=True))
        self.status = self.plan.status
        self.status.observed_generation = job.generation

    # --- helpers ------------------------------------------------------------------------------------------------

    def condition(self, kind: ConditionType, value: bool, reason: str, message: str) -> None:
        set_condition(self.status, kind, value, reason, message, self.now, self.job.generation)

    def delete_live_workers(self, keep_finished: bool = True) -> None:
        """Delete every worker not already being deleted (finished ones stay for their logs if asked)."""
        for pod in self.pods:
            if pod.deleting or (keep_finished and pod.finished):
                continue
            self.plan.delete_workers.append(pod.name)

    def finish(self, phase: Phase, reason: str, message: str, failure: Failure | None = None) -> Plan:
        self.close_attempt(reason, failure, counted=False)
        self.status.phase = phase
        self.status.message = message
        self.status.completion_time = format_time(self.now)
        self.status.next_attempt_time = None
        succeeded = phase == Phase.SUCCEEDED
        self.condition(ConditionType.SUCCEEDED if succeeded else ConditionType.FAILED, True, reason, message)
        self.condition(ConditionType.WORKERS_READY, False, reason, "the job has finished")
        self.condition(ConditionType.RESTARTING, False, reason, "")
        self.delete_live_workers()
        self.status.waiting = []
        self.release_quota()
        self._ttl()
        return self.plan

    def release_quota(self) -> None:
        """A job that is done with its Workload (finished, suspended) deletes it, which gives its quota back to
        the queue, but only once no worker holds a node's resources any more: a worker still terminating (its
        grace period: the checkpoint) keeps its GPUs, and the next admitted gang would find them taken."""
        if self.queue is None:
            return
        if all(pod.finished for pod in self.pods):
            self.plan.delete_workload = True
        else:
            self.plan.requeue(POLL_SECONDS)

    def _ttl(self) -> None:
        completed = parse_time(self.status.completion_time)
        if self.plan.spec is not None:
            ttl = self.plan.spec.run_policy.ttl_seconds_after_finished
        else:  # an invalid spec: its TTL still applies when it is a number
            raw = (self.job.spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished")
            ttl = raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None
        if completed is None or ttl is None:
            return
        # (in seconds, not datetimes: a TTL of centuries is valid and must not overflow the date)
        left = ttl - (self.now - completed).total_seconds()
        if left <= 0:
            self.plan.delete_job = True
        else:
            self.plan.requeue(left)

    def close_attempt(self, reason: str, failure: Failure | None, counted: bool) -> None:
        close_attempt(self.status, self.plan.spec, self.now, reason, failure, counted)

    def record_failure(self, pod: WorkerPod) -> Failure:
        self.status.last_failure = failure_of(pod, self.now)
        return self.status.last_failure

    # --- the decision -------------------------------------------------------------------------------------------

    def run(self) -> Plan:
        if self.fixed_invalid_spec():
            # Nothing was ever created for the invalid spec: start over as a new job.
            self.plan.status = self.status = FineTuneJobStatus(observed_generation=self.job.generation)
            self.previous = FineTuneJobStatus()
        elif self.previous.phase in FINAL_PHASES:
            return self.final()
        spec = self.validate()
        if spec is None:
            return self.plan
        self.plan.spec = spec
        self.status.workers.total = spec.distribution.nodes
        if spec.suspended:
            return self.suspend()
        if self.previous.phase == Phase.SUSPENDED:
            self.condition(ConditionType.SUSPENDED, False, "Resumed", "spec.suspend is false")
            self.plan.events.append(JobEvent("Normal", "Resumed", "recreating the workers"))
            self.status.attempt_start_time = None
            # A fresh attempt number: pods of the suspended attempt still terminating are then stale (waited
            # for before their names are reused), not workers that vanished (which would be a restart).
            self.status.attempt += 1
            self.status.workers.created = 0
        self.plan.ensure_children = True
        if self.queue is not None:
            admission = self.admission or observe_admission(self.queue, None)
            self.status.queue = self.queue
            self.plan.ensure_workload = True
            if admission.state != QueueState.ADMITTED:
                return self.wait_in_queue(admission)
            self.condition(ConditionType.ADMITTED, True, "Admitted", admission.message)
            self.plan.placement = admission.placement
        if self.status.start_time is None:
            self.status.start_time = format_time(self.now)
        deadline = self.check_deadline(spec)
        if deadline is not None:
            return deadline
        current = [p for p in self.pods if p.attempt == self.status.attempt]
        stale = [p for p in self.pods if p.attempt != self.status.attempt]
        self.plan.delete_workers.extend(p.name for p in stale if not p.deleting)
        self.force_delete_stuck()
        if self.previous.phase == Phase.RESTARTING and not self.restart_due(spec):
            return self.plan
        if self.status.attempt_start_time is None:
            # (set here, not when pods are created: a reconcile may have created them and then failed)
            self.status.attempt_start_time = format_time(self.now)
        outcome = self.check_outcome(spec, current)
        if outcome is not None:
            return outcome
        self.create_missing(spec, current)
        self.count_and_phase(spec, current)
        return self.plan

    def fixed_invalid_spec(self) -> bool:
        """True when a job that failed validation has a newer spec (the user corrected it)."""
        failure = self.previous.last_failure
        return (
            self.previous.phase == Phase.FAILED
            and failure is not None
            and failure.reason == FailureReason.INVALID_SPEC
            and self.previous.observed_generation is not None
            and self.job.generation > self.previous.observed_generation
        )

    def final(self) -> Plan:
        """Succeeded and Failed are final: only clean up running workers and honour the TTL."""
        try:
            self.plan.spec = parse_spec(self.job.spec)
        except SpecError:
            self.plan.spec = None
        self.delete_live_workers()
        self.release_quota()
        self._ttl()
        return self.plan

    def validate(self) -> FineTuneJobSpec | None:
        """The parsed spec, or None after failing the job with every problem named (nothing is created)."""
        problems: list[str] = []
        name_problem = _name_problem(self.job.name)
        if name_problem:
            problems.append(name_problem)
        spec = None
        try:
            spec = parse_spec(self.job.spec)
        except SpecError as error:
            problems.extend(str(p) for p in error.problems)
        queue_problem = queue_label_problem(self.queue) if self.queue is not None else None
        if queue_problem:
            # (the API server cannot check a label's meaning, and Kueue's schema would refuse the Workload)
            problems.append(queue_problem)
        elif self.queue is not None and not self.options.kueue:
            problems.append(
                f"metadata.labels[kueue.x-k8s.io/queue-name] is '{self.queue}' but this operator runs without "
                "the Kueue integration: enable it (Helm value kueue.enabled=true, operator flag --kueue) or "
                "remove the label"
            )
        if spec is not None and wants_pod_group(spec) and not self.options.coscheduling:
            problems.append(
                "spec.kubernetes.podGroupPolicy.coscheduling is set but this operator runs without the "
                "coscheduling integration (it may not create PodGroups): enable it (Helm value "
                "coscheduling.enabled=true, operator flag --coscheduling) or remove podGroupPolicy"
            )
        if spec is not None and spec.distribution.deepspeed.enabled:
            try:
                deepspeed_config(spec)
            except LaunchConfigError as error:
                problems.append(f"spec.distribution.deepspeed.config: {error}")
        if spec is not None and not problems:
            files_problem = _config_map_problem(self.job, spec)
            if files_problem:
                problems.append(files_problem)
        if not problems:
            self.condition(ConditionType.ACCEPTED, True, "Valid", "the spec is valid")
            return spec
        message = "invalid spec: " + "; ".join(problems)
        self.status.phase = Phase.FAILED
        self.status.message = tail(message)
        self.status.completion_time = format_time(self.now)
        self.status.last_failure = Failure(reason=FailureReason.INVALID_SPEC, message=tail(message))
        self.condition(ConditionType.ACCEPTED, False, FailureReason.INVALID_SPEC, tail(message))
        self.condition(ConditionType.FAILED, True, FailureReason.INVALID_SPEC, tail(message))
        self.plan.events.append(JobEvent("Warning", FailureReason.INVALID_SPEC, tail(message)))
        self.delete_live_workers()
        return None

    def suspend(self) -> Plan:
        """Workers deleted, status kept; the active deadline restarts on resume (as for a batch/v1 Job)."""
        self.delete_live_workers(keep_finished=False)
        if self.previous.phase != Phase.SUSPENDED:
            self.plan.events.append(JobEvent("Normal", "Suspended", "spec.suspend is true: workers removed"))
        # A suspended job holds no quota: its Workload goes, and a new one queues when it resumes.
        self.release_quota()
        self.status.waiting = []
        self.status.phase = Phase.SUSPENDED
        field_name = "spec.suspend" if spec_suspend(self.job.spec) else "spec.runPolicy.suspend"
        self.status.message = f"suspended: set {field_name} to false to resume"
        self.status.start_time = None
        self.status.attempt_start_time = None
        self.status.next_attempt_time = None
        alive = sum(1 for p in self.pods if not p.deleting) - len(self.plan.delete_workers)
        self.status.workers.created = max(0, alive)
        self.status.workers.ready = self.status.workers.scheduled = 0
        self.status.workers.summary = f"0/{self.status.workers.total}"
        self.condition(ConditionType.SUSPENDED, True, "Suspended", f"{field_name} is true")
        self.condition(ConditionType.WORKERS_READY, False, "Suspended", "workers removed while suspended")
        return self.plan

    def check_deadline(self, spec: FineTuneJobSpec) -> Plan | None:
        limit = spec.run_policy.active_deadline_seconds
        started = parse_time(self.status.start_time)
        if limit is None or started is None:
            return None
        left = limit - (self.now - started).total_seconds()  # (a deadline of centuries overflows a datetime)
        if left > 0:
            self.plan.requeue(left)
            return None
        message = f"the job ran longer than runPolicy.activeDeadlineSeconds ({limit}s)"
        self.plan.events.append(JobEvent("Warning", FailureReason.DEADLINE, message))
        return self.finish(Phase.FAILED, FailureReason.DEADLINE, message)

    def restart_due(self, spec: FineTuneJobSpec) -> bool:
        """While Restarting: True once the old gang is gone and the backoff has passed, or once pods of the
        new attempt exist (a process that created them died before it could write so: they are the new
        gang, not old pods to delete)."""
        old = [p for p in self.pods if p.attempt != self.status.attempt]
        if old:
            # (run() has asked to delete them)
            self.status.workers.created = 0
            self.status.message = tail(
                f"restarting as attempt {self.status.attempt}: waiting for {self.terminating_summary(old)}",
                600,
            )
            self.plan.requeue(POLL_SECONDS)
            return False
        due = parse_time(self.status.next_attempt_time)
        if due is not None and self.now < due and not self.pods:
            self.plan.requeue((due - self.now).total_seconds())
            return False
        self.status.next_attempt_time = None
        self.status.attempt_start_time = None
        self.status.workers.created = 0
        self.condition(
            ConditionType.RESTARTING, False, "Recreated", f"attempt {self.status.attempt} starting"
        )
        return True

    def force_delete_stuck(self) -> None:
        """Force-delete (grace 0) every worker still Terminating terminatingTimeout past its deletion time."""
        stuck, next_due = stuck_terminating(self.pods, self.now, self.options.terminating_timeout_seconds)
        self.plan.force_delete_workers.extend(stuck)
        if next_due is not None:
            self.plan.requeue(next_due)

    def terminating_summary(self, pods: list[WorkerPod]) -> str:
        forced = self.plan.force_delete_workers
        return terminating_summary(pods, forced, self.options.terminating_timeout_seconds)

    def check_outcome(self, spec: FineTuneJobSpec, current: list[WorkerPod]) -> Plan | None:
        """Succeeded, a gang restart, or Failed; None while the attempt is still going."""
        by_index = {p.index: p for p in current}
        leader = by_index.get(0)
        if leader is not None and leader.succeeded:
            summary = JobSummary.from_termination_message(
                leader.termination.message if leader.termination else ""
            )
            if summary is not None:
                apply_summary(self.status, summary, spec)
            message = "training finished"
            if self.status.metrics and self.status.metrics.primary:
                message += f": {self.status.metrics.primary}"
            self.count_workers(spec, current)
            return self.finish(Phase.SUCCEEDED, "Completed", message)
        broken = [p for p in current if p.failed]
        invalid = [p for p in broken if p.invalid_spec and not p.preempted]
        if invalid:
            # Exit code 2: the trainer found the spec unusable. Retrying cannot help: fail at once.
            failure = self.record_failure(sorted(invalid, key=lambda p: p.index)[0])
            failure.reason = FailureReason.INVALID_SPEC
            message = tail(f"{failure.pod} exited 2 (the job spec cannot work): {failure.message}")
            self.plan.events.append(JobEvent("Warning", FailureReason.INVALID_SPEC, tail(message, 900)))
            self.count_workers(spec, current)
            return self.finish(Phase.FAILED, FailureReason.INVALID_SPEC, message, failure)
        # A worker of this attempt being deleted by someone else (drain, kubectl delete), or gone after it
        # existed, breaks the world as surely as a crash.
        vanished = self.status.workers.created > len(current) and self.previous.phase != Phase.RESTARTING
        disrupted = [p for p in current if p.deleting and not p.finished]
        if broken or disrupted or vanished:
            return self.gang_restart(spec, current, broken, disrupted, vanished)
        return self.check_stuck(spec, current)

    def gang_restart(
        self,
        spec: FineTuneJobSpec,
        current: list[WorkerPod],
        broken: list[WorkerPod],
        disrupted: list[WorkerPod],
        vanished: bool = False,
    ) -> Plan:
        preempted = [p for p in broken if p.preempted]
        if preempted:
            # A disruption seen together with crashes: the crashes are its consequence (a peer that loses a
            # rank fails in its next collective), so the disrupted rank is blamed, and it is not counted.
            failure = self.record_failure(sorted(preempted, key=lambda p: p.index)[0])
            counts = False
        elif (disrupted or vanished) and broken:
            # A worker deleted or evicted from outside (drain, kubectl delete), or gone, while others
            # crashed: the same.
            failure = self.deleted_failure(disrupted)
            counts = False
        elif broken:
            failure = self.record_failure(sorted(broken, key=lambda p: p.index)[0])
            counts = True
        else:
            failure = self.deleted_failure(disrupted)
            counts = False
        if counts:
            self.status.failed_attempts += 1
        else:
            self.status.disruptions += 1
        limit = exhausted_limit(spec.run_policy, self.status, failure, counts)
        if limit is not None:
            reason, message = limit
            self.plan.events.append(JobEvent("Warning", reason, tail(message, 900)))
            self.count_workers(spec, current)
            self.close_attempt(reason, failure, counted=counts)
            return self.finish(Phase.FAILED, reason, tail(message), failure)
        self.close_attempt(str(failure.reason), failure, counted=counts)
        delay = (
            backoff_seconds(self.status.failed_attempts, self.options)
            if counts
            else self.options.preemption_delay_seconds
        )
        self.status.restarts += 1
        self.status.attempt += 1
        self.status.next_attempt_time = format_time(self.now + timedelta(seconds=delay))
        self.status.phase = Phase.RESTARTING
        self.status.message = (
            f"{failure.pod or 'a worker'} failed ({failure.reason}): restarting the whole gang as attempt "
            f"{self.status.attempt} once the old pods are gone, not before {delay:.0f}s (failures "
            f"{self.status.failed_attempts}/{spec.run_policy.backoff_limit}, disruptions "
            f"{self.status.disruptions}/{spec.run_policy.disruption_limit})"
        )
        self.condition(ConditionType.RESTARTING, True, str(failure.reason), self.status.message)
        self.condition(ConditionType.WORKERS_READY, False, "GangRestart", "the gang is being recreated")
        self.plan.events.append(JobEvent("Warning", "GangRestart", tail(self.status.message, 900)))
        self.delete_live_workers(keep_finished=False)
        self.count_workers(spec, current)
        self.status.workers.created = 0
        self.plan.requeue(delay)
        return self.plan

    def deleted_failure(self, disrupted: list[WorkerPod]) -> Failure:
        self.status.last_failure = deleted_failure(disrupted, self.status.attempt, self.now)
        return self.status.last_failure

    def check_stuck(self, spec: FineTuneJobSpec, current: list[WorkerPod]) -> Plan | None:
        """Fail when a worker cannot be scheduled or its image pulled for schedulingTimeoutSeconds."""
        stuck = sorted(
            (p for p in current if p.stuck_reason is not None and not p.deleting), key=lambda p: p.index
        )
        self.track_waiting(stuck)
        if not stuck:
            return None
        since = {entry.pod: parse_time(entry.since) or self.now for entry in self.status.waiting}
        timeout = spec.run_policy.scheduling_timeout_seconds
        expired = None
        for candidate in stuck:
            left = timeout - (self.now - since[candidate.name]).total_seconds()
            if candidate.stuck_reason == FailureReason.INVALID_IMAGE or left <= 0:
                expired = candidate
                break
            self.plan.requeue(left)
        if expired is None:
            return None
        pod = expired
        reason = str(pod.stuck_reason)
        waited = int((self.now - since[pod.name]).total_seconds())
        message = f"{pod.name} cannot start ({reason}) after {waited}s: {pod.stuck_message}"
        self.status.last_failure = Failure(
            pod=pod.name,
            container="trainer",
            reason=reason,
            message=pod.stuck_message,
            attempt=pod.attempt,
            time=format_time(self.now),
        )
        self.plan.events.append(JobEvent("Warning", reason, tail(message, 900)))
        self.count_workers(spec, current)
        return self.finish(Phase.FAILED, reason, tail(message), self.status.last_failure)

    def track_waiting(self, stuck: list[WorkerPod]) -> None:
        """status.waiting: each stuck worker, why, and since when. A pod keeps the time it first became stuck
        for that reason (for Unschedulable, its PodScheduled=False transition time), so its timeout counts
        from there, not from the attempt's start; a pod that recovers drops out and starts afresh."""
        earlier = {(entry.pod, entry.reason): entry.since for entry in self.previous.waiting}
        waiting = []
        for pod in stuck:
            reason = str(pod.stuck_reason)
            since = earlier.get((pod.name, reason))
            if since is None:
                stuck_at = pod.stuck_since if pod.stuck_since and pod.stuck_since <= self.now else self.now
                since = format_time(stuck_at)
                self.plan.events.append(
                    JobEvent(
                        "Warning", "WorkerWaiting", tail(f"{pod.name}: {reason}: {pod.stuck_message}", 900)
                    )
                )
            waiting.append(WaitingWorker(pod=pod.name, reason=reason, message=pod.stuck_message, since=since))
        self.status.waiting = waiting

    def wait_in_queue(self, admission: Admission) -> Plan:
        """Not admitted by Kueue (yet, or any more): no worker may exist. A gang that ran was preempted: its
        workers are deleted (SIGTERM: they checkpoint and exit 75), the attempt ends uncounted, and once they
        are gone the Workload goes back to its queue. Waiting here never fails the job."""
        had_attempt = self.previous.phase in (Phase.PENDING, Phase.STARTING, Phase.RUNNING, Phase.RESTARTING)
        if had_attempt:
            message = f"preempted by Kueue ({admission.describe()}): {admission.message}".strip()
            self.plan.events.append(JobEvent("Warning", "Preempted", tail(message, 900)))
            if self.previous.phase != Phase.RESTARTING:  # (a restarting gang's attempt is closed already)
                self.status.last_failure = Failure(
                    reason=FailureReason.PREEMPTED,
                    message=tail(message),
                    attempt=self.status.attempt,
                    time=format_time(self.now),
                )
                self.close_attempt(FailureReason.PREEMPTED, self.status.last_failure, counted=False)
                # A fresh attempt number: the old workers still terminating are then stale, waited for.
                self.status.attempt += 1
            self.status.start_time = None
            self.status.attempt_start_time = None
            self.status.next_attempt_time = None
            self.condition(ConditionType.RESTARTING, False, "Queued", "")
        self.delete_live_workers(keep_finished=False)
        remaining = list(self.pods)
        if admission.state == QueueState.EVICTED:
            if remaining:
                self.plan.requeue(POLL_SECONDS)
                waiting_for = f"stopping {len(remaining)} worker(s) before it queues again"
            else:
                self.plan.requeue_workload = True
                waiting_for = "queued again"
            self.status.message = tail(f"preempted by Kueue ({admission.describe()}): {waiting_for}", 600)
        else:
            self.status.message = tail(f"queued in LocalQueue {admission.queue}: {admission.message}", 600)
        self.status.phase = Phase.QUEUED
        self.status.waiting = []
        workers = self.status.workers
        workers.created = workers.scheduled = workers.ready = 0
        workers.summary = f"0/{workers.total}"
        self.condition(
            ConditionType.ADMITTED, False, admission.reason or "Pending", tail(admission.message, 600)
        )
        self.condition(ConditionType.WORKERS_READY, False, "Queued", "waiting for admission by Kueue")
        return self.plan

    def create_missing(self, spec: FineTuneJobSpec, current: list[WorkerPod]) -> None:
        present = {p.index for p in current}
        # A pod of another attempt may still hold a name (being deleted): wait for it.
        taken = {p.index for p in self.pods}
        missing = [i for i in range(spec.distribution.nodes) if i not in present]
        blocked = [i for i in missing if i in taken]
        self.plan.create_workers = [i for i in missing if i not in taken]
        if blocked:
            self.plan.requeue(POLL_SECONDS)

    def count_workers(self, spec: FineTuneJobSpec, current: list[WorkerPod]) -> None:
        workers = self.status.workers
        workers.total = spec.distribution.nodes
        workers.created = len(current) + len(self.plan.create_workers)
        workers.scheduled = sum(1 for p in current if p.scheduled)
        workers.ready = sum(1 for p in current if p.ready)
        workers.succeeded = sum(1 for p in current if p.succeeded)
        workers.failed = sum(1 for p in current if p.failed)
        workers.summary = f"{workers.ready}/{workers.total}"

    def count_and_phase(self, spec: FineTuneJobSpec, current: list[WorkerPod]) -> None:
        self.count_workers(spec, current)
        workers = self.status.workers
        total = workers.total
        if workers.created < total or workers.scheduled < total:
            phase, message = Phase.PENDING, f"{workers.scheduled}/{total} workers scheduled"
            stuck = [p for p in current if p.stuck_reason is not None]
            if stuck:
                message += f"; {stuck[0].name}: {stuck[0].stuck_reason} {stuck[0].stuck_message}"
        elif workers.ready < total:
            phase, message = Phase.STARTING, f"{workers.ready}/{total} workers running"
        else:
            phase, message = Phase.RUNNING, f"all {total} workers running (attempt {self.status.attempt})"
        self.status.phase = phase
        self.status.message = tail(message, 300)
        running = phase == Phase.RUNNING
        self.condition(
            ConditionType.WORKERS_READY,
            running,
            "AllWorkersRunning" if running else "WorkersStarting",
            message if not running else f"{total}/{total} workers running",
        )


def spec_suspend(raw_spec: dict[str, Any]) -> bool:
    """True when the job is suspended through spec.suspend (rather than the older spec.runPolicy.suspend)."""
    return bool(raw_spec.get("suspend"))


def plan(
    job: ObservedJob,
    pods: list[WorkerPod],
    now: datetime,
    options: PlanOptions | None = None,
    admission: Admission | None = None,
) -> Plan:
    """Decide what should exist for `job` given its worker `pods` at time `now` and, for a job sent to a Kueue
    queue, Kueue's `admission` (None: its Workload does not exist yet).

    Returns the Plan (new status, pods to create/delete, events, when to look again). Never raises for a bad
    spec: that becomes phase Failed with the problems named.
    """
    result = _Planner(job, pods, now, options or PlanOptions(), admission).run()
    if result.status.phase != job.status.phase and result.status.phase is not None:
        kind = "Warning" if result.status.phase in (Phase.FAILED, Phase.RESTARTING) else "Normal"
        # An explicit event (GangRestart, BackoffLimitExceeded, ...) says more; WorkerWaiting is about a pod.
        if all(event.reason == "WorkerWaiting" for event in result.events):
            result.events.append(JobEvent(kind, str(result.status.phase), result.status.message or ""))
    return result


def status_patch(old: dict[str, Any], new: FineTuneJobStatus) -> dict[str, Any]:
    """The JSON merge patch turning status `old` into `new`: only changed top-level fields (empty: nothing to
    write). Fields the operator does not own (live progress written by rank 0) are kept unless `new` changed
    them relative to what was read."""
    wanted = new.model_dump(mode="json", by_alias=True, exclude_none=True)
    patch: dict[str, Any] = {}
    for key, value in wanted.items():
        if old.get(key) != value:
            patch[key] = value
    owned = {info.alias or name for name, info in FineTuneJobStatus.model_fields.items()}
    for key in old:
        if key not in wanted and key in owned:
            patch[key] = None
    return patch
