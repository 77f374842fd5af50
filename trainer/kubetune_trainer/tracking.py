"""Experiment tracking through accelerate's tracker API (issue 13): TensorBoard always, MLflow, W&B.

`Tracking` builds accelerate's tracker objects for rank 0 (TensorBoard into `<output>/tensorboard`, MLflow
when spec.tracking.mlflow is set, W&B when spec.tracking.wandb is, its local files in `<output>/wandb` unless
WANDB_DIR says otherwise), each wrapped in a `GuardedTracker`:
an exception from a tracker (an unreachable server at start or mid-run) switches that tracker off, is
reported as a warning (reason TrackerUnavailable) and never fails the training. The loop hands them to
`Accelerator(log_with=...)`, calls `accelerator.init_trackers` and logs with `accelerator.log`.

`Tracking.status()` is what goes into status.tracking (a `TrackingStatus`): the TensorBoard folder, the MLflow
run id and URL, the W&B run id, and where the W&B run is: its URL online; offline (WANDB_MODE=offline, e.g. an
air-gapped cluster) its folder, that folder's copy in the object store and the `wandb sync` command that uploads
it later. `Tracking.local_folders()` are the folders of the trackers' files next to the outputs, which the trainer
copies to the object store (at the end, and when the run fails or is preempted).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker
from kubetune.events import EventKind, ProgressEvent
from kubetune.spec.models import FineTuneJobSpec
from kubetune.spec.status import TrackerWarning, TrackingStatus, WandbMode
from kubetune.spec.tracking import TRACKER_UNAVAILABLE

log = logging.getLogger(__name__)

TENSORBOARD_FOLDER = "tensorboard"
# W&B's files (the run's record, its config, its console log; in offline mode all there is of the run, for
# `wandb sync`) go to <output>/wandb: a worker's root filesystem is read-only, and the output is what reaches the
# bucket. wandb makes the `wandb` folder itself inside the `dir` it is given.
WANDB_FOLDER = "wandb"
WANDB_DIR_ENV = "WANDB_DIR"
WANDB_MODE_ENV = "WANDB_MODE"
WANDB_OFFLINE_MODES = ("offline", "dryrun")
# An online W&B run that cannot start is lost (TensorBoard's files remain); an offline one needs no network.
WANDB_OFFLINE_HINT = (
    "; on a cluster without network to W&B, set WANDB_MODE: offline in spec.kubernetes.env: the run is then "
    "written next to the outputs and status.tracking.wandbSyncCommand uploads it later"
)
# MLflow's client retries a refused request 7 times with exponential backoff (minutes); a tracker that cannot
# be reached must cost the training seconds, not minutes. Values the user set in the environment are kept.
_MLFLOW_CLIENT_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


class TrackerConfigError(RuntimeError):
    """A tracker the spec asks for cannot exist in this image (e.g. W&B without the wandb package)."""


class GuardedTracker(GeneralTracker):
    """Runs `inner`'s start/store_init_configuration/log/finish; the first exception switches it off and is
    passed to `on_failure(tracker name, message)` instead of propagating."""

    def __init__(self, inner: GeneralTracker, on_failure: Callable[[str, str], None]) -> None:
        super().__init__(_blank=True)
        self.inner = inner
        self.name = inner.name
        self.requires_logging_directory = inner.requires_logging_directory
        self.main_process_only = getattr(inner, "main_process_only", True)
        self.failed = False
        self._on_failure = on_failure

    @property
    def tracker(self) -> Any:
        return self.inner.tracker

    def _guard(self, what: str, call: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            call()
        except Exception as error:
            self.failed = True
            self._on_failure(self.name, f"{self.name} {what} failed: {type(error).__name__}: {error}")

    def start(self) -> None:
        self._guard("start", self.inner.start)

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        self._guard("logging the parameters", lambda: self.inner.store_init_configuration(values))

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        self._guard("logging", lambda: self.inner.log(values, step=step, **kwargs))

    def finish(self) -> None:
        self._guard("finish", self.inner.finish)


def _wandb_tracker(spec: FineTuneJobSpec, run_name: str, files_dir: Path | None) -> GeneralTracker:
    """accelerate's WandBTracker for spec.tracking.wandb: the run `run_name` in its project (and entity), its local
    files under `files_dir` (None: wandb's own choice, WANDB_DIR). Raises TrackerConfigError without wandb."""
    wandb = spec.tracking.wandb
    assert wandb is not None
    try:
        import wandb as _  # noqa: F401
    except ImportError:
        raise TrackerConfigError(
            "spec.tracking.wandb is set but this trainer image has no wandb package: install kubetune with "
            "the wandb extra (pip install 'kubetune[train,wandb]') or unset spec.tracking.wandb"
        ) from None
    from accelerate.tracking import WandBTracker

    # WandBTracker's first argument is the project: it calls wandb.init(project=<it>, **options).
    options: dict[str, Any] = {"name": run_name}
    if wandb.entity:
        options["entity"] = wandb.entity
    if files_dir is not None:
        options["dir"] = str(files_dir)
    return WandBTracker(wandb.project, **options)


def run_params(spec: FineTuneJobSpec, world_size: int) -> dict[str, Any]:
    """The run's parameters as flat scalars (what MLflow, TensorBoard's hparams and W&B all take)."""
    training = spec.training
    return {
        "model": spec.model.name,
        "task": str(spec.model.task),
        "dataset": spec.dataset.name or "files",
        "epochs": training.epochs,
        "max_steps": training.max_steps or 0,
        "learning_rate": training.learning_rate,
        "per_device_train_batch_size": training.per_device_train_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "weight_decay": training.weight_decay,
        "warmup_ratio": training.warmup_ratio,
        "seed": training.seed,
        "mixed_precision": str(training.mixed_precision),
        "world_size": world_size,
        "zero_stage": spec.distribution.deepspeed.zero_stage if spec.distribution.deepspeed.enabled else 0,
    }


def event_values(event: ProgressEvent) -> dict[str, float]:
    """The metrics of a step or eval event, named for the trackers (train/loss, eval/accuracy, ...)."""
    values: dict[str, float] = {}
    if event.event == EventKind.STEP:
        for name, value in (
            ("train/loss", event.loss),
            ("train/learning_rate", event.learning_rate),
            ("train/samples_per_second", event.samples_per_second),
        ):
            if value is not None:
                values[name] = float(value)
    elif event.event == EventKind.EVAL:
        values = {f"eval/{name.removeprefix('eval_')}": float(value) for name, value in event.metrics.items()}
    return values


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page on an http(s) tracking server; None for databricks URIs (no host in them)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def wandb_run_status(run: Any, files_dir: Path, files_location: str | None) -> TrackingStatus:
    """Where the W&B `run` is: its id and mode; online its URL; its folder (`run.sync_dir`, what `wandb sync`
    takes), that folder's copy under `files_location` when the folder is inside `files_dir` (the folder the
    trainer copies there) and, offline, the `wandb sync` command that uploads it: beside a copy of the folder
    when there is one (wandb tells offline from online runs by the folder's name, so the copy keeps it), else
    at the folder itself."""
    offline = bool(run.offline)
    run_dir = Path(run.sync_dir)
    location = None
    if files_location is not None and run_dir.is_relative_to(files_dir):
        location = f"{files_location}/{run_dir.relative_to(files_dir).as_posix()}"
    sync_command = None
    if offline:
        sync_command = f"wandb sync {run_dir.name if location else run_dir}"
    return TrackingStatus(
        wandb_run_id=run.id,
        wandb_mode=WandbMode.OFFLINE if offline else WandbMode.ONLINE,
        wandb_run_url=None if offline else (run.url or None),
        wandb_run_dir=str(run_dir),
        wandb_run_location=location,
        wandb_sync_command=sync_command,
    )


class Tracking:
    """The trackers of one run, their status and their warnings. Only rank 0 has trackers."""

    def __init__(
        self,
        spec: FineTuneJobSpec,
        run_name: str,
        tensorboard_dir: Path,
        tensorboard_location: str,
        is_main: bool,
        env: Mapping[str, str] | None = None,
        wandb_location: str | None = None,
    ) -> None:
        """`tensorboard_location` is where status.tracking says the TensorBoard files are; `wandb_location` is
        where the trainer copies `<output>/wandb` (the object store's wandb/ folder; None without one)."""
        self.spec = spec
        self.run_name = run_name
        self.tensorboard_dir = tensorboard_dir
        self.tensorboard_location = tensorboard_location
        self.wandb_location = wandb_location
        self.runs = TrackingStatus()  # where the trackers' runs are, once they started
        self.warnings: list[dict[str, str]] = []
        self.on_warning: Callable[[str], object] = lambda message: None
        self.accelerator: Any = None
        self.trackers: list[GuardedTracker] = []
        env = os.environ if env is None else env
        self.wandb_offline = env.get(WANDB_MODE_ENV) in WANDB_OFFLINE_MODES
        if is_main:
            self.trackers = self._plan(env)

    def _failed(self, tracker: str, message: str) -> None:
        if tracker == "wandb" and not self.wandb_offline:
            message += WANDB_OFFLINE_HINT
        log.warning("%s; training goes on without it", message)
        self.warnings.append({"tracker": tracker, "reason": TRACKER_UNAVAILABLE, "message": message[-900:]})
        self.on_warning(message)

    def _plan(self, env: Mapping[str, str]) -> list[GuardedTracker]:
        inner: list[GeneralTracker] = [TensorBoardTracker(self.run_name, str(self.tensorboard_dir))]
        mlflow_spec = self.spec.tracking.mlflow
        if mlflow_spec is not None:
            for name, value in _MLFLOW_CLIENT_SETTINGS.items():
                os.environ.setdefault(name, env.get(name, value))
            import mlflow

            mlflow.set_tracking_uri(mlflow_spec.tracking_uri)
            inner.append(
                MLflowTracker(
                    experiment_name=mlflow_spec.experiment_name,
                    run_name=self.run_name,
                    tags={"kubetune.job": self.run_name},
                )
            )
        if self.spec.tracking.wandb is not None:
            files_dir = None
            if not env.get(WANDB_DIR_ENV):
                files_dir = self.wandb_dir.parent
                files_dir.mkdir(parents=True, exist_ok=True)
            inner.append(_wandb_tracker(self.spec, self.run_name, files_dir))
        return [GuardedTracker(tracker, self._failed) for tracker in inner]

    @property
    def wandb_dir(self) -> Path:
        """<output>/wandb, where W&B's files go unless WANDB_DIR is set (the TensorBoard folder's sibling)."""
        return self.tensorboard_dir.parent / WANDB_FOLDER

    def local_folders(self) -> list[tuple[Path, str]]:
        """(local folder, folder in the object store) of the trackers' files next to the outputs that exist:
        TensorBoard's, and W&B's when it writes there. Empty on ranks without trackers."""
        if not self.trackers:
            return []
        folders = [(self.tensorboard_dir, TENSORBOARD_FOLDER)]
        if any(t.name == "wandb" for t in self.trackers):
            folders.append((self.wandb_dir, WANDB_FOLDER))
        return [(local, remote) for local, remote in folders if local.is_dir()]

    def start(self, accelerator: Any, world_size: int) -> None:
        """init_trackers with the run's parameters (a tracker that fails is switched off and warned about)."""
        self.accelerator = accelerator
        accelerator.init_trackers(self.run_name, config=run_params(self.spec, world_size))
        try:
            self.runs = self._locate_runs()
        except Exception as error:  # a tracker's odd run object must not fail the training
            self._failed("tracking", f"could not read where the trackers' runs are: {error!r}")

    def log_event(self, event: ProgressEvent) -> None:
        """Log a step's or an eval's metrics at the event's step."""
        values = event_values(event)
        if values and self.accelerator is not None:
            self.accelerator.log(values, step=event.step)

    def finish(self) -> None:
        """End the runs (MLflow marks its run finished; TensorBoard flushes and closes its file)."""
        if self.accelerator is not None:
            # The trackers' part of accelerator.end_training(), which would also destroy the process group
            # that the rest of the run (saving, the last barriers) still uses.
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator = None

    def _started(self, name: str) -> GuardedTracker | None:
        return next((t for t in self.trackers if t.name == name), None)

    def _locate_runs(self) -> TrackingStatus:
        """Where the MLflow and W&B runs that started are (read once: a tracker that fails later switches off,
        but its run, with what was logged until then, stays where it is)."""
        found: dict[str, Any] = {}
        mlflow_tracker = self._started("mlflow")
        run = getattr(mlflow_tracker.inner, "active_run", None) if mlflow_tracker else None
        mlflow_spec = self.spec.tracking.mlflow
        if run is not None and mlflow_spec is not None:
            found["mlflow_run_id"] = run.info.run_id
            found["mlflow_run_url"] = mlflow_run_url(
                mlflow_spec.tracking_uri, run.info.experiment_id, run.info.run_id
            )
        wandb_tracker = self._started("wandb")
        if wandb_tracker is not None and not wandb_tracker.failed:
            wandb_run = getattr(wandb_tracker.inner, "run", None)
            # WANDB_MODE=disabled gives a no-op run: nothing goes online nor to a folder, so there is no run to name.
            if wandb_run is not None and not getattr(wandb_run, "disabled", False):
                located = wandb_run_status(wandb_run, self.wandb_dir, self.wandb_location)
                found.update(located.model_dump(exclude_none=True))
        return TrackingStatus(**found)

    def status(self) -> dict[str, Any]:
        """status.tracking (camelCase), as rank 0 reports it: `TrackingStatus`'s fields that are set."""
        status = self.runs.model_copy(
            update={
                "tensorboard_dir": self.tensorboard_location,
                "warnings": [TrackerWarning.model_validate(w) for w in self.warnings],
            }
        )
        return status.model_dump(by_alias=True, exclude_none=True, mode="json")
