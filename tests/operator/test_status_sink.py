"""Rank 0's status sink turns progress events into merge patches of status.progress/metrics, writes urgent
events at once and step events at most once per interval, flushes the summary on close, and never raises.
(The patcher here is a list-appending function: the real API write is covered by the cluster test.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubetune.contract import NodeContext
from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune.spec import parse_job
from kubetune.spec.status import FineTuneJobStatus, WandbMode
from kubetune.status_sink import StatusSink, make_sink, status_patch_for_event, status_patch_for_summary


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.patches: list[dict[str, Any]] = []
        self.fail = fail
        self.written = threading.Event()

    def __call__(self, patch: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("API server unreachable")
        self.patches.append(patch)
        self.written.set()


def test_a_step_event_becomes_progress_and_metrics() -> None:
    event = ProgressEvent(
        event=EventKind.STEP,
        step=30,
        total_steps=120,
        epoch=0.75,
        loss=0.5,
        samples_per_second=12.0,
        eta_seconds=90,
    )
    patch = status_patch_for_event(event, "accuracy")
    progress = patch["progress"]
    assert (progress["step"], progress["totalSteps"], progress["percent"], progress["summary"]) == (
        30,
        120,
        25.0,
        "30/120 (25%)",
    )
    assert progress["etaSeconds"] == 90
    assert patch["metrics"] == {"trainLoss": 0.5, "samplesPerSecond": 12.0}


def test_eval_metrics_set_the_primary_column_and_nan_is_dropped() -> None:
    event = ProgressEvent(
        event=EventKind.EVAL,
        step=60,
        total_steps=120,
        metrics={"eval_accuracy": 0.8125, "eval_loss": float("nan")},
    )
    metrics = status_patch_for_event(event, "accuracy")["metrics"]
    assert metrics == {"eval": {"eval_accuracy": 0.8125}, "primary": "accuracy=0.8125"}
    summary = JobSummary(
        outcome=EventKind.FINISHED,
        step=120,
        total_steps=120,
        metrics={"eval_accuracy": 0.9},
        model_path="/output/model",
    )
    final = status_patch_for_summary(summary, "accuracy")
    assert final["progress"]["percent"] == 100.0 and final["metrics"]["modelPath"] == "/output/model"


def test_steps_are_rate_limited_urgent_events_are_not_and_close_flushes() -> None:
    recorder = Recorder()
    sink = StatusSink(recorder, min_interval=60.0)
    sink.emit(ProgressEvent(event=EventKind.STARTED, total_steps=100))
    assert recorder.written.wait(5)
    for step in range(1, 50):
        sink.emit(ProgressEvent(event=EventKind.STEP, step=step, total_steps=100, loss=1.0 / step))
    time.sleep(0.3)
    assert len(recorder.patches) == 1  # the steps wait for the interval, coalesced
    sink.close(JobSummary(outcome=EventKind.FINISHED, step=100, total_steps=100, train_loss=0.1))
    assert len(recorder.patches) == 2
    assert recorder.patches[-1]["progress"]["step"] == 100
    assert recorder.patches[-1]["metrics"]["trainLoss"] == 0.1
    assert sink.writes == 2


def test_a_failing_api_never_reaches_the_training_loop() -> None:
    sink = StatusSink(Recorder(fail=True), min_interval=0.0)
    for step in range(5):
        sink.emit(ProgressEvent(event=EventKind.STEP, step=step, total_steps=5))
    sink.close(JobSummary(outcome=EventKind.FAILED, message="boom"))
    assert sink.writes == 0


def test_make_sink_applies_only_to_operator_run_jobs_that_report_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    job = parse_job({"kind": "FineTuneJob", "spec": {"model": {"name": "m"}, "dataset": {"name": "glue"}}})
    local = NodeContext(
        job_file="job.yaml", node_rank=0, num_nodes=1, procs_per_node=1, main_addr="x", main_port=1
    )
    on_cluster = NodeContext(
        job_file="job.yaml", node_rank=0, num_nodes=1, procs_per_node=1, main_addr="x", main_port=1,
        job_name="bert", job_namespace="team",
    )  # fmt: skip
    assert make_sink(local, job) is None
    quiet = job.model_copy(deep=True)
    quiet.spec.run_policy.report_progress = False
    assert make_sink(on_cluster, quiet) is None
    sink = make_sink(on_cluster, job)
    assert isinstance(sink, StatusSink)
    sink.close(JobSummary(outcome=EventKind.FINISHED))  # the unreachable server is logged, not raised


OFFLINE_RUN = "offline-run-20261202_050948-piw7xwfg"
# status.tracking of an offline W&B run, as rank 0 reports it (the cluster test of status.tracking uses it too).
OFFLINE = {
    "tensorboardDir": "s3://bucket/job/tensorboard",
    "wandbRunId": "piw7xwfg",
    "wandbMode": "offline",
    "wandbRunDir": f"/output/wandb/{OFFLINE_RUN}",
    "wandbRunLocation": f"s3://bucket/job/wandb/{OFFLINE_RUN}",
    "wandbSyncCommand": f"wandb sync {OFFLINE_RUN}",
    "warnings": [],
}


def test_an_offline_wandb_run_reaches_status_tracking_typed_and_nothing_else_does() -> None:
    """What rank 0 reports for an offline W&B run (e.g. on an air-gapped cluster) goes into status.tracking
    through the status model: its id, mode, folder, that folder's copy in the bucket and the sync command; a key
    the model does not declare is dropped."""
    reported = {**OFFLINE, "apiKey": "must-not-reach-the-status"}
    event = ProgressEvent(event=EventKind.STARTED, step=0, total_steps=40, tracking=reported)
    tracking = status_patch_for_event(event, "accuracy")["tracking"]
    assert {k: v for k, v in tracking.items() if v is not None} == {
        k: v for k, v in reported.items() if k != "apiKey"
    }
    # what the report did not set is an explicit null: the merge patch removes an earlier attempt's value
    assert "wandbRunUrl" in tracking and tracking["wandbRunUrl"] is None
    assert "mlflowRunId" in tracking and tracking["mlflowRunId"] is None
    status = FineTuneJobStatus.model_validate({"tracking": tracking})
    assert status.tracking is not None
    assert status.tracking.wandb_mode == WandbMode.OFFLINE and status.tracking.wandb_run_url is None
    assert status.tracking.wandb_sync_command == f"wandb sync {OFFLINE_RUN}"


def test_a_malformed_tracking_report_is_left_out_of_the_patch_without_raising() -> None:
    event = ProgressEvent(
        event=EventKind.WARNING, tracking={"wandbMode": "sideways", "warnings": "not a list"}
    )
    patch = status_patch_for_event(event, "accuracy")
    assert "tracking" not in patch and "progress" in patch
