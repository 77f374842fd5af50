"""Experiment tracking (issue 13): a real MLflow tracking server on loopback receives the run's parameters and
metrics, TensorBoard event files are written next to the outputs and parse, the run's id and URL are reported
for status.tracking, a tracker that cannot be reached does not fail the training, and real wandb in offline mode
records the run's parameters and metrics in its run file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetune.events import EventKind, ProgressEvent
from kubetune.spec.loading import load_job
from kubetune.spec.status import FineTuneJobStatus, WandbMode
from kubetune.spec.storage import ObjectStorageSpec
from kubetune.status_sink import status_patch_for_event
from kubetune_trainer.storage import ObjectStore
from kubetune_trainer.tracking import Tracking, mlflow_run_url, wandb_run_status

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
    # No run id: the patch sends it as null, which removes an earlier attempt's from the status.
    assert patch["tracking"].get("mlflowRunId") is None
    finished = next(e for e in result.events if e.event == EventKind.FINISHED)
    assert finished.metrics["eval_accuracy"] > 0.5
    # TensorBoard went on.
    series = tensorboard_scalars(tmp_path / "untracked-out" / "tensorboard")
    assert [step for step, _ in series["train/loss"]] == [10, 20, 30, 40]


def test_an_mlflow_server_lost_mid_run_keeps_its_run_in_status_tracking(
    tmp_path: Path, assets: Assets
) -> None:
    """Rank 0's trackers as the loop drives them (accelerate's Accelerator with our trackers, in this process) and a
    real MLflow server that goes away after the run started: logging fails, the tracker is switched off with a
    TrackerUnavailable warning, and status.tracking still names the run on the server (it holds what was logged
    before), so the user can find it."""
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        job = load_job(
            make_job(tmp_path, assets, "lost", **TRACKED, tracking={"mlflow": {"trackingUri": server.url}})
        )
        tensorboard = tmp_path / "lost-out" / "tensorboard"
        tracking = Tracking(job.spec, job.metadata.name, tensorboard, str(tensorboard), is_main=True, env={})
        from accelerate import Accelerator

        accelerator = Accelerator(log_with=list(tracking.trackers), cpu=True)
        tracking.start(accelerator, 1)
        started = tracking.status()
        run_id = started["mlflowRunId"]
        accelerator.log({"train/loss": 0.7}, step=10)
    finally:
        server.stop()
    accelerator.log({"train/loss": 0.6}, step=20)
    tracking.finish()
    lost = tracking.status()
    [warning] = lost["warnings"]
    assert warning["tracker"] == "mlflow" and warning["reason"] == "TrackerUnavailable", warning
    assert (lost["mlflowRunId"], lost["mlflowRunUrl"]) == (run_id, started["mlflowRunUrl"])
    assert started["mlflowRunUrl"].startswith(f"{server.url}/#/experiments/")
    tracking_status = FineTuneJobStatus.model_validate({"tracking": lost}).tracking
    assert tracking_status is not None and tracking_status.mlflow_run_id == run_id


def test_wandb_offline_run_holds_the_runs_config_and_metrics_and_reaches_the_bucket(
    tmp_path: Path, assets: Assets
) -> None:
    """Real wandb (the `wandb` extra; wandb-core, the Go service shipped in its wheel, writes the run) in offline
    mode (WANDB_MODE=offline: nothing leaves the machine, as on an air-gapped cluster): a job with
    spec.tracking.wandb, run as a worker process is, writes its W&B run under <output>/wandb (a worker's root
    filesystem is read-only) and copies the files to the bucket's wandb/ with the rest. status.tracking tells
    where the run is: its id, mode offline and no URL, its folder, that folder's copy in the bucket and the
    `wandb sync` command; real `wandb sync --dry-run`, run as that command says beside a copy of the folder
    downloaded from that location, finds the run to upload. The run file there, read back with wandb's own
    Record class, holds the run (project, the job's name), its parameters and the train/loss and eval/accuracy
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
        # Where the run is, as status.tracking says (what rank 0's status sink writes, through the status model).
        run_dir = Path(tracking["wandbRunDir"])
        assert run_dir.parent == tmp_path / "wandb-out" / "wandb", "W&B's files next to the outputs"
        assert run_dir.name.startswith("offline-run-") and run_dir.name.endswith(f"-{run_id}"), run_dir
        assert (run_dir / f"run-{run_id}.wandb").is_file()
        assert tracking["wandbMode"] == "offline" and "wandbRunUrl" not in tracking, tracking
        assert tracking["wandbRunLocation"] == f"s3://{BUCKET}/wandb-run/wandb/{run_dir.name}"
        assert tracking["wandbSyncCommand"] == f"wandb sync {run_dir.name}"
        status = FineTuneJobStatus.model_validate(status_patch_for_event(started, "accuracy"))
        assert status.tracking is not None
        assert status.tracking.model_dump(by_alias=True, exclude_none=True, mode="json") == tracking

        store = ObjectStore(
            ObjectStorageSpec.model_validate(
                {"uri": f"s3://{BUCKET}/wandb-run", "endpoint": server.endpoint}
            ),
            keys,
        )
        # The folder at wandbRunLocation, copied down under its own name, as the sync command expects.
        inside = tracking["wandbRunLocation"].removeprefix(store.uri()).strip("/")
        store.download_folder(inside, tmp_path / "from-bucket" / run_dir.name)
    finally:
        server.stop()
    sync = subprocess.run(
        [sys.executable, "-m", *tracking["wandbSyncCommand"].split(), "--dry-run"],
        cwd=tmp_path / "from-bucket",
        env={k: v for k, v in env.items() if k != "WANDB_MODE"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0, sync.stdout + sync.stderr
    said = sync.stdout + sync.stderr
    assert "Would sync 1 run(s)" in said and f"{run_dir.name}/run-{run_id}.wandb" in said, said
    [run_file] = list((tmp_path / "from-bucket" / run_dir.name).glob(f"run-{run_id}.wandb"))
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


def test_an_offline_wandb_run_without_an_object_store_is_synced_from_its_own_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real wandb in offline mode, started in this process (as the trainer's tracker starts it): without an
    object store the run has no copy (no wandbRunLocation) and the sync command names the run's own folder,
    which real `wandb sync --dry-run` finds from anywhere; a run whose folder is not inside the folder the trainer
    copies (WANDB_DIR set elsewhere) has no location even with a store."""
    import wandb

    settings = {
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    output = tmp_path / "out"
    output.mkdir()
    run = wandb.init(project="kubetune-test", name="no-store", dir=str(output))
    run_id = run.id
    try:
        run.log({"train/loss": 0.5}, step=1)
        alone = wandb_run_status(run, output / "wandb", None)
        elsewhere = wandb_run_status(run, tmp_path / "elsewhere" / "wandb", "s3://bucket/job/wandb")
    finally:
        run.finish()
        wandb.teardown()  # wandb's process-wide setup read this test's environment: the next run reads its own
    [run_dir] = (output / "wandb").glob(f"offline-run-*-{run_id}")
    assert (alone.wandb_run_id, alone.wandb_mode, alone.wandb_run_dir) == (
        run_id,
        WandbMode.OFFLINE,
        str(run_dir),
    )
    assert alone.wandb_run_url is None and alone.wandb_run_location is None
    assert alone.wandb_sync_command == f"wandb sync {run_dir}"
    assert elsewhere.wandb_run_location is None and elsewhere.wandb_sync_command == f"wandb sync {run_dir}"
    sync = subprocess.run(
        [sys.executable, "-m", *alone.wandb_sync_command.split(), "--dry-run"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "WANDB_MODE"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0 and "Would sync 1 run(s)" in sync.stdout + sync.stderr, (
        sync.stdout + sync.stderr
    )


def _wandb_run_in_process(tmp_path: Path, assets: Assets, name: str) -> tuple[dict[str, Any], Path]:
    """Starts job `name`'s trackers (W&B with the environment the caller set, and TensorBoard) in this process,
    logs one step and finishes; returns status.tracking as rank 0 reports it and the TensorBoard folder."""
    job = load_job(
        make_job(
            tmp_path,
            assets,
            name,
            **TRACKED,
            tracking={"wandb": {"project": "kubetune-test", "apiKeySecret": {"name": "wandb", "key": "k"}}},
        )
    )
    tensorboard = tmp_path / f"{name}-out" / "tensorboard"
    tracking = Tracking(job.spec, job.metadata.name, tensorboard, str(tensorboard), is_main=True)
    import wandb
    from accelerate import Accelerator

    wandb.teardown()  # a wandb setup left in this process by another test would keep that test's settings
    accelerator = Accelerator(log_with=list(tracking.trackers), cpu=True)
    try:
        tracking.start(accelerator, 1)
        accelerator.log({"train/loss": 0.7}, step=10)
        tracking.finish()
    finally:
        wandb.teardown()
    return tracking.status(), tensorboard


def test_an_online_wandb_run_that_cannot_start_is_a_warning_that_says_to_go_offline(
    tmp_path: Path, assets: Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real wandb online (WANDB_MODE unset) with its server a loopback port nothing listens on, as on a cluster
    without network to W&B: wandb.init gives up (init timeout 10 s here), the tracker is switched off with a
    TrackerUnavailable warning that says to set WANDB_MODE offline, status.tracking names no W&B run, and
    TensorBoard's tracker goes on."""
    settings = {
        "WANDB_BASE_URL": f"http://127.0.0.1:{free_loopback_port()}",
        "WANDB_API_KEY": "a" * 40,
        "WANDB_INIT_TIMEOUT": "10",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    status, tensorboard = _wandb_run_in_process(tmp_path, assets, "online")
    [warning] = status["warnings"]
    assert warning["tracker"] == "wandb" and warning["reason"] == "TrackerUnavailable", warning
    assert "set WANDB_MODE: offline in spec.kubernetes.env" in warning["message"], warning
    assert not any(key.startswith("wandb") for key in status), status
    assert [step for step, _ in tensorboard_scalars(tensorboard)["train/loss"]] == [10]


def test_the_mlflow_run_url_is_given_for_tracking_servers_only() -> None:
    """A databricks URI has no host in it: no URL is made up (the run id is still reported)."""
    assert (
        mlflow_run_url("http://mlflow.mlops:5000/", "3", "abc")
        == "http://mlflow.mlops:5000/#/experiments/3/runs/abc"
    )
    assert mlflow_run_url("https://mlflow.example.com/root", "0", "r1") == (
        "https://mlflow.example.com/root/#/experiments/0/runs/r1"
    )
    assert mlflow_run_url("databricks", "3", "abc") is None


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


def test_a_disabled_wandb_run_is_not_reported_as_an_online_run(
    tmp_path: Path, assets: Assets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real wandb with WANDB_MODE=disabled (how a user switches W&B off without editing the spec): wandb.init gives
    a no-op run that goes nowhere and writes nothing, so status.tracking names no W&B run (no 'online' mode, no
    folder that does not exist), gives no warning, and TensorBoard's tracker goes on."""
    for name in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb-{name.lower()}"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    status, tensorboard = _wandb_run_in_process(tmp_path, assets, "disabled")
    assert status["warnings"] == [], status
    assert not any(key.startswith("wandb") for key in status), status
    assert [step for step, _ in tensorboard_scalars(tensorboard)["train/loss"]] == [10]
