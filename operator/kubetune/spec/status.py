"""The FineTuneJob status: what the operator (and rank 0's progress sink) write back to the resource.

Like the spec, these pydantic models are the single source of truth: the CRD's status schema is generated
from them (`kubetune.crd`), the planner builds them, and `kubectl get` columns read their fields.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class StatusModel(BaseModel):
    """camelCase on the wire like the spec; unknown fields ignored so older operators can read newer status."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Phase(StrEnum):
    PENDING = "Pending"  # accepted; workers created but not all scheduled yet
    STARTING = "Starting"  # all workers scheduled; containers starting (image pull, init)
    RUNNING = "Running"  # every worker is running
    RESTARTING = "Restarting"  # a worker failed: the whole gang is being recreated (after a backoff)
    SUCCEEDED = "Succeeded"  # worker 0 finished successfully (final)
    FAILED = "Failed"  # invalid spec, backoffLimit exhausted, deadline, stuck scheduling (final)
    SUSPENDED = "Suspended"  # spec.suspend: workers removed, status kept
    # Waiting in a Kueue queue for admission (or again after Kueue preempted it): no worker pod exists.
    QUEUED = "Queued"


FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
# Phases in which the spec is locked (the CRD's transition rule repeats this list).
ACTIVE_PHASES = frozenset({Phase.PENDING, Phase.STARTING, Phase.RUNNING, Phase.RESTARTING, Phase.QUEUED})


class ConditionType(StrEnum):
    ACCEPTED = "Accepted"  # the spec passed validation and the children exist
    WORKERS_READY = "WorkersReady"  # every worker of the current attempt is running
    SUSPENDED = "Suspended"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    # False while a child (Service, ConfigMap, RBAC, a worker's name) cannot be created or is someone else's
    # object; absent while nothing was ever wrong.
    CHILDREN_READY = "ChildrenReady"
    # Only for a job sent to a Kueue queue: True while Kueue admits it (its quota is reserved), False with
    # Kueue's reason while it waits (Pending) or after a preemption (Preempted).
    ADMITTED = "Admitted"


class Condition(StatusModel):
    type: str = Field(
        description="Accepted, WorkersReady, Suspended, Restarting, Succeeded, Failed, ChildrenReady or "
        "Admitted (Kueue)."
    )
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason, e.g. BackoffLimitExceeded.")
    message: str = Field(default="", description="What happened, for people.")
    last_transition_time: str | None = Field(default=None, description="When status last changed.")
    observed_generation: int | None = Field(default=None, description="Spec generation it describes.")


class WorkerCounts(StatusModel):
    total: int = Field(default=0, description="Workers of the gang (spec.distribution.nodes).")
    created: int = Field(default=0, description="Worker pods of the current attempt that exist.")
    scheduled: int = Field(default=0, description="Workers bound to a node.")
    ready: int = Field(default=0, description="Workers running (containers ready).")
    succeeded: int = Field(default=0, description="Workers that exited 0.")
    failed: int = Field(default=0, description="Workers that failed in the current attempt.")
    summary: str = Field(default="", description="ready/total, shown by kubectl get.")


class Progress(StatusModel):
    step: int = Field(default=0, description="Optimizer steps done.")
    total_steps: int = Field(default=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, description="Fractional epochs done.")
    percent: float = Field(default=0.0, description="step / totalSteps in percent.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds left.")
    summary: str = Field(default="", description="e.g. '120/500 (24%)', shown by kubectl get.")
    update_time: str | None = Field(default=None, description="When rank 0 last reported.")


class Metrics(StatusModel):
    train_loss: float | None = Field(default=None, description="Latest (or final mean) training loss.")
    samples_per_second: float | None = Field(default=None, description="Training throughput.")
    eval: dict[str, float] = Field(default_factory=dict, description="Latest eval_* metrics.")
    primary: str = Field(default="", description="The primary eval metric, e.g. 'accuracy=0.861'.")
    model_path: str | None = Field(default=None, description="Where the fine-tuned model was saved.")


class CheckpointReport(StatusModel):
    step: int = Field(default=0, description="Optimizer step of the newest checkpoint.")
    save_seconds: float | None = Field(
        default=None, description="How long writing it took, all ranks together (sizes the deletion grace)."
    )
    size_bytes: int | None = Field(default=None, description="Size of its folder as rank 0 sees it.")
    time: str | None = Field(default=None, description="When it was written.")


class FailureReason(StrEnum):
    OOM_KILLED = "OOMKilled"
    ERROR = "Error"
    PREEMPTED = "Preempted"
    EVICTED = "Evicted"
    POD_DELETED = "PodDeleted"
    NODE_LOST = "NodeLost"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL = "ImagePullBackOff"
    CONTAINER_CREATING = "ContainerCreating"
    CONFIG_ERROR = "CreateContainerConfigError"
    INVALID_IMAGE = "InvalidImageName"
    DEADLINE = "DeadlineExceeded"
    BACKOFF_LIMIT = "BackoffLimitExceeded"
    DISRUPTION_LIMIT = "DisruptionLimitExceeded"
    INVALID_SPEC = "InvalidSpec"


class Failure(StatusModel):
    pod: str = Field(default="", description="Worker pod that failed.")
    container: str = Field(default="", description="Container that failed.")
    exit_code: int | None = Field(default=None, description="Container exit code.")
    reason: str = Field(default="", description="OOMKilled, Error, Preempted, Unschedulable, ...")
    message: str = Field(default="", description="Tail of the termination message or scheduler message.")
    attempt: int = Field(default=0, description="Gang attempt in which it happened.")
    time: str | None = Field(default=None, description="When it was observed.")


class WaitingWorker(StatusModel):
    """A worker pod that cannot start yet, and since when: its timeout counts from `since`, not from the
    attempt's start."""

    pod: str = Field(description="The worker pod.")
    reason: str = Field(description="Unschedulable, ImagePullBackOff, ContainerCreating, ...")
    message: str = Field(default="", description="The scheduler's or the kubelet's message.")
    since: str | None = Field(default=None, description="When this pod became stuck for this reason.")


class AttemptRecord(StatusModel):
    attempt: int = Field(default=0, description="Gang attempt number.")
    start_time: str | None = Field(default=None, description="When the attempt began.")
    end_time: str | None = Field(default=None, description="When it ended.")
    reason: str = Field(default="", description="Why it ended: Completed, OOMKilled, Preempted, ...")
    pod: str = Field(default="", description="The worker whose failure ended it (empty: none).")
    exit_code: int | None = Field(default=None, description="That worker's exit code.")
    message: str = Field(default="", description="Tail of that worker's termination message.")
    counted: bool = Field(default=False, description="True when it counted against backoffLimit.")
    gpu_seconds: float = Field(default=0.0, description="GPU-seconds the attempt held (lost, unless it won).")


# --- experiment tracking (issue 13): written by rank 0 like progress ---


class TrackerWarning(StatusModel):
    tracker: str = Field(default="", description="tensorboard, mlflow or wandb.")
    reason: str = Field(default="TrackerUnavailable", description="Why: TrackerUnavailable.")
    message: str = Field(default="", description="What failed; training went on without that tracker.")


class WandbMode(StrEnum):
    ONLINE = "online"  # the run streams to the W&B server; wandbRunUrl is its page
    OFFLINE = "offline"  # WANDB_MODE=offline (air-gapped clusters): the run is only in its files until synced


class TrackingStatus(StatusModel):
    """Where each tracker has this run: a page to open, or (W&B offline) the files and the command that
    uploads them. Rank 0 writes it whole; the status sink keeps only these fields."""

    tensorboard_dir: str | None = Field(default=None, description="Where the TensorBoard event files are.")
    mlflow_run_id: str | None = Field(
        default=None,
        description="The MLflow run of this job (kept after the server became unreachable mid-run: the run "
        "holds what was logged until then).",
    )
    mlflow_run_url: str | None = Field(
        default=None, description="The MLflow run's page (an http(s) tracking server; none for databricks)."
    )
    wandb_run_id: str | None = Field(default=None, description="The W&B run of this job.")
    wandb_mode: WandbMode | None = Field(
        default=None, description="online or offline (WANDB_MODE=offline: nothing leaves the pod)."
    )
    wandb_run_url: str | None = Field(default=None, description="The W&B run's page (online only).")
    wandb_run_dir: str | None = Field(
        default=None,
        description="The W&B run's folder in rank 0's pod (its run-<id>.wandb log and files), on the output "
        "volume unless WANDB_DIR is set.",
    )
    wandb_run_location: str | None = Field(
        default=None,
        description="Where that folder is copied to outlive the pod: the object store's wandb/ folder (at the "
        "end, and when the run fails or is preempted); none without output.objectStorage.",
    )
    wandb_sync_command: str | None = Field(
        default=None,
        description="Offline: the command that uploads the run to W&B later; run it in the folder you copied "
        "wandbRunLocation into (the copy keeps its name) or, without an object store, where wandbRunDir can be "
        "read (it names that folder).",
    )
    warnings: list[TrackerWarning] = Field(
        default_factory=list,
        description="Trackers that could not be reached (training went on without them).",
    )


MAX_ATTEMPT_HISTORY = 20


class FineTuneJobStatus(StatusModel):
    phase: Phase | None = Field(
        default=None, description="Queued, Pending, Starting, Running, Restarting, Suspended, ..."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations.")
    observed_generation: int | None = Field(default=None, description="Spec generation last acted on.")
    workers: WorkerCounts = Field(default_factory=WorkerCounts, description="Worker pods by state.")
    attempt: int = Field(default=0, description="Current gang attempt (KUBETUNE_ATTEMPT of the workers).")
    restarts: int = Field(default=0, description="Gang restarts so far (failures and preemptions).")
    failed_attempts: int = Field(
        default=0, description="Restarts caused by failures; the job fails when it exceeds backoffLimit."
    )
    disruptions: int = Field(
        default=0,
        description="Restarts caused by disruptions (preemption, eviction, node loss, a deleted worker); the "
        "job fails when it exceeds runPolicy.disruptionLimit.",
    )
    attempts: list[AttemptRecord] = Field(
        default_factory=list,
        description=f"The last {MAX_ATTEMPT_HISTORY} attempts that ended, oldest first (diagnosis).",
    )
    start_time: str | None = Field(default=None, description="When the job (re)started running.")
    attempt_start_time: str | None = Field(default=None, description="When the current attempt began.")
    next_attempt_time: str | None = Field(
        default=None, description="While Restarting: when the gang is recreated (exponential backoff)."
    )
    completion_time: str | None = Field(default=None, description="When the job succeeded or failed.")
    progress: Progress | None = Field(default=None, description="Live progress reported by rank 0.")
    metrics: Metrics | None = Field(default=None, description="Latest training and eval metrics.")
    last_failure: Failure | None = Field(default=None, description="The most recent worker failure.")
    last_checkpoint: CheckpointReport | None = Field(
        default=None,
        description="The newest checkpoint rank 0 reported; its save time sets how long deleted workers get to "
        "write the next one (see kubernetes.terminationGracePeriodSeconds).",
    )
    message: str = Field(default="", description="One line on the current phase.")
    waiting: list[WaitingWorker] = Field(
        default_factory=list,
        description="Workers of the current attempt that cannot start yet, why, and since when.",
    )
    queue: str | None = Field(
        default=None, description="The Kueue LocalQueue the job waits in (label kueue.x-k8s.io/queue-name)."
    )
    tracking: TrackingStatus | None = Field(
        default=None, description="Where this run's experiment tracking is (TensorBoard, MLflow, W&B)."
    )
