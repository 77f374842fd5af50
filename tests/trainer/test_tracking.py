"""Experiment tracking (issue 13): a real MLflow tracking server on loopback receives the run's parameters and
metrics, TensorBoard event files are written next to the outputs and parse, the run's id and URL are reported
for status.tracking, and a tracker that cannot be reached does not fail the training."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetune.events import EventKind, ProgressEvent
from kubetune.status_sink import status_patch_for_event

from tests.kube.processes import free_loopback_port
from tests.trainer.helpers import (
    Assets,
    Result,
    explain,
    make_job,
    tensorboard_scalars,
    train_in_process,
)
from tests.trainer.servers import MlflowServer

pytestmark = pytest.mark.timeout(300)

TRACKED: dict[str, Any] = {
    "training": {
        "maxSteps": 40,
        "learningRate": 2e-3,
        "lrScheduler": "constant_with_warmup",
        "loggingSteps": 10,
        "evalStrategy": "steps",
        "evalSteps": 20,
    },
    "checkpointing": {"everySteps": 40},
}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` (SQLite store) on a free loopback port; fails with the reason if it cannot start."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.stop()


def tracked_run(tmp_path: Path, assets: Assets, env: dict[str, str], name: str, uri: str) -> Result:
    job = make_job(tmp_path, assets, name, **TRACKED, tracking={"mlflow": {"trackingUri": uri}})
    return train_in_process(job, env)


def test_mlflow_receives_the_runs_parameters_and_metrics_and_tensorboard_files_parse(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str], mlflow_server: MlflowServer
) -> None:
    from mlflow.tracking import MlflowClient

    result = tracked_run(tmp_path, assets, in_process_env, "tracked", mlflow_server.url)
    assert result.returncode == 0, explain(result)
    started = next(e for e in result.events if e.event == EventKind.STARTED)
    tracking = started.tracking or {}
    run_id = tracking["mlflowRunId"]
    assert tracking["mlflowRunUrl"].startswith(f"{mlflow_server.url}/#/experiments/")
    assert tracking["mlflowRunUrl"].endswith(f"/runs/{run_id}")
    assert tracking["tensorboardDir"] == str(tmp_path / "tracked-out" / "tensorboard")
    assert tracking["warnings"] == []
    # What rank 0's status sink writes: status.tracking.
    assert status_patch_for_event(started, "accuracy")["tracking"]["mlflowRunId"] == run_id

    # The server, asked through its REST API, has the run with its parameters and metrics.
    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == "0.002"
    assert run.data.params["max_steps"] == "40" and run.data.params["world_size"] == "1"
    assert run.data.tags["kubetune.job"] == "synthetic-job"  # the job's metadata.name
    losses = client.get_metric_history(run_id, "train/loss")
    assert [m.step for m in losses] == [10, 20, 30, 40]
    accuracy = client.get_metric_history(run_id, "eval/accuracy")
    assert [m.step for m in accuracy] == [20, 40]
    assert accuracy[-1].value > 0.5  # chance is 0.5; the run learned

    # TensorBoard: the same series, in event files TensorBoard's reader parses.
    series = tensorboard_scalars(tmp_path / "tracked-out" / "tensorboard")
    assert [step for step, _ in series["train/loss"]] == [10, 20, 30, 40]
    assert [round(v, 5) for _, v in series["eval/accuracy"]] == [round(m.value, 5) for m in accuracy]


def test_an_unreachable_tracker_does_not_fail_training_and_is_reported_as_a_warning(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    """The MLflow URI names a loopback port nothing listens on. What is asserted is what the trainer emits: a
    `warning` progress event with reason TrackerUnavailable, and status.tracking.warnings in the status patch
    rank 0's sink would write. (Posting a Kubernetes Event from it is not done by the workers: their Role may
    only patch the job's status.)"""
    closed = f"http://127.0.0.1:{free_loopback_port()}"
    result = tracked_run(tmp_path, assets, in_process_env, "untracked", closed)
    assert result.returncode == 0, explain(result)
    warnings: list[ProgressEvent] = [e for e in result.events if e.event == EventKind.WARNING]
    assert len(warnings) == 1, [e.event for e in result.events]
    assert "mlflow" in (warnings[0].message or "")
    patch = status_patch_for_event(warnings[0], "accuracy")
    [warning] = patch["tracking"]["warnings"]
    assert warning["tracker"] == "mlflow" and warning["reason"] == "TrackerUnavailable"
    assert "mlflowRunId" not in patch["tracking"]
    finished = next(e for e in result.events if e.event == EventKind.FINISHED)
    assert finished.metrics["eval_accuracy"] > 0.5
    # TensorBoard went on.
    series = tensorboard_scalars(tmp_path / "untracked-out" / "tensorboard")
    assert [step for step, _ in series["train/loss"]] == [10, 20, 30, 40]


def test_wandb_without_the_wandb_package_is_refused_with_the_fix(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    """The project's venv does not install the optional wandb extra, so this is the refusal path; W&B logging
    itself is not exercised here."""
    job = make_job(
        tmp_path,
        assets,
        "wandb",
        **TRACKED,
        tracking={"wandb": {"project": "p", "apiKeySecret": {"name": "wandb", "key": "api-key"}}},
    )
    result = train_in_process(job, {**in_process_env, "WANDB_MODE": "offline"})
    assert result.returncode != 0
    assert (
        "spec.tracking.wandb is set but this trainer image has no wandb package"
        in result.stderr + result.stdout
    )
