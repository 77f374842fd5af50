"""Experiment tracking (issue 13): a real MLflow tracking server on loopback receives the run's parameters and
metrics, TensorBoard event files are written next to the outputs and parse, the run's id and URL are reported
for status.tracking, a tracker that cannot be reached does not fail the training, and real wandb in offline mode
records the run's parameters and metrics in its run file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetune.events import EventKind, ProgressEvent
from kubetune.spec.storage import ObjectStorageSpec
from kubetune.status_sink import status_patch_for_event
from kubetune_trainer.storage import ObjectStore

from tests.kube.processes import free_loopback_port
from tests.trainer.helpers import (
    Assets,
    Result,
    child_env,
    explain,
    make_job,
    run_single,
    tensorboard_scalars,
    train_in_process,
)
from tests.trainer.servers import BUCKET, MlflowServer, S3Server
from tests.trainer.wandb_records import config_of, history_of, read_records, run_record

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


def test_wandb_offline_run_holds_the_runs_config_and_metrics_and_reaches_the_bucket(
    tmp_path: Path, assets: Assets
) -> None:
    """Real wandb (the `wandb` extra; wandb-core, the Go service shipped in its wheel, writes the run) in offline
    mode (WANDB_MODE=offline: nothing leaves the machine): a job with spec.tracking.wandb, run as a worker process
    is, writes its W&B run under <output>/wandb (a worker's root filesystem is read-only), reports the run's id,
    and copies the files to the bucket's wandb/ with the rest. The run file in the bucket, read back with wandb's
    own Record class, holds the run (project, the job's name), its parameters and the train/loss and eval/accuracy
    series at their steps."""
    keys = {"AWS_ACCESS_KEY_ID": "kubetune-test", "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret"}
    server = S3Server(tmp_path / "s3", (keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"])).start()
    try:
        job = make_job(
            tmp_path,
            assets,
            "wandb",
            **TRACKED,
            output={
                "path": str(tmp_path / "wandb-out"),
                "objectStorage": {"uri": f"s3://{BUCKET}/wandb-run", "endpoint": server.endpoint},
            },
            tracking={"wandb": {"project": "kubetune-test", "apiKeySecret": {"name": "wandb", "key": "k"}}},
        )
        # wandb's own settings and caches (normally under $HOME) stay in this test's folder too.
        env = child_env(
            tmp_path,
            WANDB_MODE="offline",
            WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
            WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
            WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
            **keys,
        )
        env.pop("WANDB_DIR", None)
        result = run_single(job, env)
        assert result.returncode == 0, explain(result)
        started = next(e for e in result.events if e.event == EventKind.STARTED)
        tracking = started.tracking or {}
        assert tracking["warnings"] == [], tracking
        run_id = tracking["wandbRunId"]
        assert (tmp_path / "wandb-out" / "wandb").is_dir(), "W&B's files next to the outputs"

        store = ObjectStore(
            ObjectStorageSpec.model_validate(
                {"uri": f"s3://{BUCKET}/wandb-run", "endpoint": server.endpoint}
            ),
            keys,
        )
        store.download_folder("wandb", tmp_path / "from-bucket")
    finally:
        server.stop()
    [run_file] = list((tmp_path / "from-bucket").rglob(f"run-{run_id}.wandb"))
    records = read_records(run_file)
    run = run_record(records)
    assert (run.run_id, run.project, run.display_name) == (run_id, "kubetune-test", "synthetic-job")
    config = config_of(records)
    assert config["learning_rate"] == 0.002 and config["max_steps"] == 40 and config["world_size"] == 1
    assert config["model"] == str(assets.model)
    history = history_of(records)
    assert [step for step, _ in history["train/loss"]] == [10, 20, 30, 40]
    accuracy = history["eval/accuracy"]
    print(f"W&B offline run {run_id}: {len(records)} records, eval/accuracy {accuracy}")
    assert [step for step, _ in accuracy] == [20, 40]
    assert accuracy[-1][1] > 0.5  # chance is 0.5; the run learned
    finished = next(e for e in result.events if e.event == EventKind.FINISHED)
    assert accuracy[-1][1] == pytest.approx(finished.metrics["eval_accuracy"], abs=1e-6)


def test_wandb_without_the_wandb_package_is_refused_with_the_fix(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer image without the optional wandb extra. The package is installed here (the test above needs it),
    so its absence is made by hiding it from the import system in this process (sys.modules["wandb"] = None makes
    `import wandb` raise ImportError, as when it is not installed); the rest of the run is real."""
    monkeypatch.setitem(sys.modules, "wandb", None)
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
