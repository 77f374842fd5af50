"""Given output.objectStorage, the model, the reports, the TensorBoard files and the checkpoints go to an
S3-compatible bucket, and a gang whose nodes share no disk resumes from the bucket (issue 13). A run that is
preempted or fails mid-run still sends its TensorBoard files there.

The bucket is a real S3 server on loopback (gofakes3, tests/trainer/servers.py), spoken to over HTTP by the
trainer's pyarrow S3 client; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetune.contract import EXIT_FAILED, EXIT_PREEMPTED
from kubetune.events import EventKind, ProgressEvent
from kubetune.spec.storage import ObjectStorageSpec
from kubetune_trainer.checkpoint_store import remote_complete_steps
from kubetune_trainer.checkpoints import MARKER
from kubetune_trainer.storage import ObjectStore, ObjectStoreError

from tests.trainer.helpers import (
    Assets,
    child_env,
    explain,
    kill_node,
    make_job,
    start_nodes,
    tensorboard_scalars,
    train_in_process,
    wait_for_line,
    wait_nodes,
)
from tests.trainer.servers import BUCKET, S3Server

pytestmark = pytest.mark.timeout(420)

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kubetune-test", "AWS_SECRET_ACCESS_KEY": "kubetune-test-secret"}
RESUMABLE: dict[str, Any] = {
    "training": {"lrScheduler": "constant_with_warmup", "evalStrategy": "no", "learningRate": 2e-3},
    "checkpointing": {"everySteps": 10, "keepLast": 2},
}


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """A real S3 server (gofakes3) on a free loopback port, its data in tmp_path; fails if it cannot start."""
    server = S3Server(tmp_path / "s3").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def credentials_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """CREDENTIALS in this process's environment: an in-process run's object store reads them there, where a
    worker process has them (the `env` given to train_in_process reaches the run settings, not the store)."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def storage_spec(s3: S3Server, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"uri": f"s3://{BUCKET}/{prefix}", "endpoint": s3.endpoint, **extra}


def store_for(s3: S3Server, prefix: str) -> ObjectStore:
    return ObjectStore(ObjectStorageSpec.model_validate(storage_spec(s3, prefix)), CREDENTIALS)


def bucket_scalars(store: ObjectStore, scratch: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalar series of the TensorBoard files in the bucket's tensorboard/, downloaded into `scratch`."""
    store.download_folder("tensorboard", scratch)
    return tensorboard_scalars(scratch)


def job_with_storage(
    tmp_path: Path, assets: Assets, name: str, s3: S3Server, steps: int, **overrides: Any
) -> Path:
    output = {"path": str(tmp_path / f"{name}-out"), "objectStorage": storage_spec(s3, f"runs/{name}")}
    training = {**RESUMABLE["training"], "maxSteps": steps}
    return make_job(
        tmp_path, assets, name, **{**RESUMABLE, "training": training, "output": output, **overrides}
    )


def test_a_run_extended_from_checkpoints_in_the_bucket_ends_exactly_like_an_uninterrupted_run(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str], s3: S3Server, credentials_here: None
) -> None:
    """Each run's local output is deleted before the next (a new pod's empty disk): only the bucket carries
    the checkpoint. An incomplete checkpoint in the bucket (no COMPLETE marker: a crash mid-upload) is never
    resumed from."""
    env = {**in_process_env, "KUBETUNE_DEBUG_WEIGHTS_HASH": "1"}
    straight = train_in_process(job_with_storage(tmp_path, assets, "straight", s3, 20), env)
    assert straight.returncode == 0, explain(straight)

    first = train_in_process(job_with_storage(tmp_path, assets, "resumed", s3, 10), env)
    assert first.returncode == 0, explain(first)
    store = store_for(s3, "runs/resumed")
    assert remote_complete_steps(store) == [10]
    checkpoint = next(e for e in first.events if e.event == EventKind.CHECKPOINT)
    assert checkpoint.checkpoint == f"s3://{BUCKET}/runs/resumed/checkpoints/step-10"
    # A later step whose upload never finished: its files are there, its marker is not.
    store.write_text("checkpoints/step-15/trainer_state.json", "{}")
    store.write_text("checkpoints/step-15/model.safetensors", "partial")
    shutil.rmtree(tmp_path / "resumed-out")

    second = train_in_process(job_with_storage(tmp_path, assets, "resumed", s3, 20), env)
    assert second.returncode == 0, explain(second)
    started = next(e for e in second.events if e.event == EventKind.STARTED)
    assert started.resumed_from_step == 10
    assert remote_complete_steps(store) == [10, 20]
    assert "step-15" not in store.children("checkpoints"), "the incomplete checkpoint was pruned"

    straight_hash = (tmp_path / "straight-out" / "debug" / "weights-rank-0.sha256").read_text()
    assert (tmp_path / "resumed-out" / "debug" / "weights-rank-0.sha256").read_text() == straight_hash

    # The model, metrics.json and the TensorBoard files are in the bucket, and the summary says where.
    summary = json.loads(store.read_text("metrics.json"))
    assert summary["model_path"] == f"s3://{BUCKET}/runs/resumed/model"
    model_files = set(store.children("model"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= model_files, model_files
    assert any("tfevents" in path for path in store.fs.find(store.key("tensorboard")))


def test_two_nodes_without_a_shared_disk_stop_mid_run_and_the_gang_resumes_from_the_bucket(
    tmp_path: Path, assets: Assets, s3: S3Server
) -> None:
    """2 nodes over gloo, each with an output folder of its own (as two pods with emptyDirs): SIGTERM to node 1
    stops the gang with a checkpoint in the bucket; both folders are deleted (new pods), and the gang resumes
    from the bucket, learns, and delivers the model there."""
    events_file = tmp_path / "events.jsonl"
    job = job_with_storage(tmp_path, assets, "gang", s3, 60, distribution={"nodes": 2})
    node1_job = job_with_storage(tmp_path, assets, "gang-node1", s3, 60, distribution={"nodes": 2})
    # Node 1 writes to its own disk but the same bucket prefix as node 0.
    node1_text = node1_job.read_text().replace("runs/gang-node1", "runs/gang")
    node1_job.write_text(node1_text)
    env = child_env(tmp_path, KUBETUNE_EVENTS_FILE=str(events_file), **CREDENTIALS)

    nodes = start_nodes(job, env, nodes=2, per_node_jobs={1: node1_job})
    wait_for_line(events_file, lambda line: '"event":"checkpoint"' in line, timeout=240)
    os.kill(nodes[1].pid, signal.SIGTERM)
    results = wait_nodes(nodes, timeout=240)
    assert [r.returncode for r in results] == [EXIT_PREEMPTED, EXIT_PREEMPTED], explain(results)
    preempted = ProgressEvent.from_json(events_file.read_text().splitlines()[-1])
    assert preempted.event == EventKind.PREEMPTED and 10 <= preempted.step < 60
    store = store_for(s3, "runs/gang")
    assert remote_complete_steps(store)[-1] == preempted.step
    assert store.exists(f"checkpoints/step-{preempted.step}/{MARKER}")
    # The preempted attempt's TensorBoard curve, up to the step it stopped at, outlives its pod.
    logged = [step for step, _ in bucket_scalars(store, tmp_path / "preempted-tb")["train/loss"]]
    assert 10 in logged and logged == sorted(logged) and logged[-1] == preempted.step, logged

    shutil.rmtree(tmp_path / "gang-out")
    shutil.rmtree(tmp_path / "gang-node1-out")
    events_file.unlink()
    resumed = wait_nodes(
        start_nodes(job, {**env, "KUBETUNE_DEBUG_WEIGHTS_HASH": "1"}, nodes=2, per_node_jobs={1: node1_job}),
        timeout=300,
    )
    assert [r.returncode for r in resumed] == [0, 0], explain(resumed)
    started = next(e for e in resumed[0].events if e.event == EventKind.STARTED)
    assert started.resumed_from_step == preempted.step and started.world_size == 2
    hashes = [
        (tmp_path / folder / "debug" / f"weights-rank-{rank}.sha256").read_text()
        for rank, folder in ((0, "gang-out"), (1, "gang-node1-out"))
    ]
    assert hashes[0] == hashes[1], "DDP ranks must end with identical weights"
    summary = json.loads(store.read_text("metrics.json"))
    print(f"2 nodes, bucket only: preempted at step {preempted.step}; after resume:", summary["metrics"])
    assert summary["step"] == 60 and summary["model_path"] == f"s3://{BUCKET}/runs/gang/model"
    assert summary["metrics"]["eval_accuracy"] >= 0.8  # chance is 0.5
    assert "model.safetensors" in store.children("model")


def test_a_run_that_fails_mid_run_still_sends_its_tensorboard_files_to_the_bucket(
    tmp_path: Path, assets: Assets, s3: S3Server
) -> None:
    """2 nodes over gloo; node 1 is killed (SIGKILL: a lost node, nothing of it runs) after the first checkpoint.
    Rank 0 fails at its next collective; before it exits, its TensorBoard curve up to that step is in the bucket
    (the pod's disk goes with the pod), and the node still exits with the failure's code."""
    events_file = tmp_path / "events.jsonl"
    job = job_with_storage(tmp_path, assets, "lost", s3, 100, distribution={"nodes": 2})
    env = child_env(tmp_path, KUBETUNE_EVENTS_FILE=str(events_file), **CREDENTIALS)

    nodes = start_nodes(job, env, nodes=2)
    wait_for_line(events_file, lambda line: '"event":"checkpoint"' in line, timeout=240)
    kill_node(nodes[1])
    results = wait_nodes(nodes, timeout=180)
    assert results[0].returncode == EXIT_FAILED, explain(results)
    failed = ProgressEvent.from_json(events_file.read_text().splitlines()[-1])
    assert failed.event == EventKind.FAILED and 10 <= failed.step < 100, failed

    store = store_for(s3, "runs/lost")
    assert not store.exists("model") and not store.exists("metrics.json"), "a failed run delivers no model"
    logged = [step for step, _ in bucket_scalars(store, tmp_path / "failed-tb")["train/loss"]]
    print(f"failed at step {failed.step}; train/loss in the bucket at steps {logged}")
    assert 10 in logged and logged == sorted(logged) and logged[-1] <= failed.step, logged


def test_a_bucket_that_cannot_be_written_fails_the_run_before_training_naming_the_field(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str], s3: S3Server, credentials_here: None
) -> None:
    output = {
        "path": str(tmp_path / "out"),
        "objectStorage": {"uri": "s3://no-such-bucket/run", "endpoint": s3.endpoint},
    }
    result = train_in_process(make_job(tmp_path, assets, "nobucket", output=output), in_process_env)
    assert result.returncode != 0
    assert "output.objectStorage" in result.stderr + result.stdout
    assert "s3://no-such-bucket/run" in result.stderr + result.stdout


def test_the_bucket_gets_the_keys_of_the_credentials_secret_and_a_wrong_secret_is_refused_at_the_start(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """This S3 server refuses every request not signed (AWS Signature V4) with CREDENTIALS, so what it lets in
    shows which keys the trainer really signs with: those of AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, which the
    operator maps from output.objectStorage.credentialsSecret. The right key id with a wrong secret is refused
    before training, naming the field; the right pair trains, checkpoints and delivers to the bucket. (The runs
    are in this process, so the keys go into its environment, where a worker process has them.)"""
    server = S3Server(
        tmp_path / "s3", (CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    ).start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["AWS_ACCESS_KEY_ID"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        refused = train_in_process(job_with_storage(tmp_path, assets, "wrong", server, 10), in_process_env)
        assert refused.returncode != 0, explain(refused)
        output = refused.stderr + refused.stdout
        assert "the server refused the credentials" in output, explain(refused)
        assert "output.objectStorage.credentialsSecret" in output, explain(refused)
        assert "SignatureDoesNotMatch" in server.log(), server.log()
        assert not any(e.event == EventKind.STARTED for e in refused.events), "refused before training"

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        accepted = train_in_process(job_with_storage(tmp_path, assets, "right", server, 10), in_process_env)
        assert accepted.returncode == 0, explain(accepted)
        store = ObjectStore(ObjectStorageSpec.model_validate(storage_spec(server, "runs/right")), CREDENTIALS)
        assert remote_complete_steps(store) == [10]
        assert "model.safetensors" in store.children("model")
    finally:
        server.stop()


def test_refused_credentials_name_the_secret_and_the_keys_it_was_told_to_read(tmp_path: Path) -> None:
    """output.objectStorage.credentialsSecret may rename the Secret's keys (accessKeyIdKey, secretAccessKeyKey):
    when the server refuses the signature, the message names that Secret and those keys, the ones to check, not
    the environment variables they are mapped to. The server is the real signing S3 server on loopback."""
    server = S3Server(
        tmp_path / "s3", (CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    ).start()
    try:
        secret = {"name": "team-s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"}
        spec = ObjectStorageSpec.model_validate(
            storage_spec(server, "runs/renamed", credentialsSecret=secret)
        )
        wrong = {**CREDENTIALS, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        with pytest.raises(ObjectStoreError) as refused:
            ObjectStore(spec, wrong).check_access()
    finally:
        server.stop()
    message = str(refused.value)
    assert "the server refused the credentials" in message, message
    assert "the keys id and secret of Secret team-s3 (output.objectStorage.credentialsSecret)" in message, (
        message
    )
