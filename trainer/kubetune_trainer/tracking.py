"""Experiment tracking through accelerate's tracker API (issue 13): TensorBoard always, MLflow, W&B.

`Tracking` builds accelerate's tracker objects for rank 0 (TensorBoard into `<output>/tensorboard`, MLflow
when spec.tracking.mlflow is set, W&B when spec.tracking.wandb is, its local files in `<output>/wandb` unless
WANDB_DIR says otherwise), each wrapped in a `GuardedTracker`:
an exception from a tracker (an unreachable server at start or mid-run) switches that tracker off, is
reported as a warning (reason TrackerUnavailable) and never fails the training. The loop hands them to
`Accelerator(log_with=...)`, calls `accelerator.init_trackers` and logs with `accelerator.log`.

`Tracking.status()` is what goes into status.tracking: the TensorBoard folder, the MLflow run id and URL, the
W&B run id and URL, and the warnings. `Tracking.local_folders()` are the folders of the trackers' files next to
the outputs, which the trainer copies to the object store (at the end, and when the run fails or is preempted).
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
from kubetune.spec.tracking import TRACKER_UNAVAILABLE

log = logging.getLogger(__name__)

TENSORBOARD_FOLDER = "tensorboard"
# W&B's files (the run's record, its config, its console log; in offline mode all there is of the run, for
# `wandb sync`) go to <output>/wandb: a worker's root filesystem is read-only, and the output is what reaches the
# bucket. wandb makes the `wandb` folder itself inside the `dir` it is given.
WANDB_FOLDER = "wandb"
WANDB_DIR_ENV = "WANDB_DIR"
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
    ) -> None:
        self.spec = spec
        self.run_name = run_name
        self.tensorboard_dir = tensorboard_dir
        self.tensorboard_location = tensorboard_location
        self.warnings: list[dict[str, str]] = []
        self.on_warning: Callable[[str], object] = lambda message: None
        self.accelerator: Any = None
        self.trackers: list[GuardedTracker] = []
        if is_main:
            self.trackers = self._plan(os.environ if env is None else env)

    def _failed(self, tracker: str, message: str) -> None:
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

    def _live(self, name: str) -> GuardedTracker | None:
        return next((t for t in self.trackers if t.name == name and not t.failed), None)

    def status(self) -> dict[str, Any]:
        """status.tracking (camelCase), as rank 0 reports it."""
        status: dict[str, Any] = {"tensorboardDir": self.tensorboard_location}
        mlflow_tracker = self._live("mlflow")
        run = getattr(mlflow_tracker.inner, "active_run", None) if mlflow_tracker else None
        if run is not None and self.spec.tracking.mlflow is not None:
            status["mlflowRunId"] = run.info.run_id
            status["mlflowRunUrl"] = (
                f"{self.spec.tracking.mlflow.tracking_uri}/#/experiments/{run.info.experiment_id}"
                f"/runs/{run.info.run_id}"
            )
        wandb_tracker = self._live("wandb")
        wandb_run = getattr(wandb_tracker.inner, "run", None) if wandb_tracker else None
        if wandb_run is not None:
            status["wandbRunId"] = wandb_run.id
            url = getattr(wandb_run, "url", None)
            if url:
                status["wandbRunUrl"] = url
        status["warnings"] = list(self.warnings)
        return status
