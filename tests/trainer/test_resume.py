"""Checkpoints and resume: a stopped run continues at the exact step and ends where an uninterrupted run ends;
SIGTERM to one node stops the whole gang at one step with a complete checkpoint and exit code 75."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from kubetune.contract import EXIT_INVALID_SPEC, EXIT_PREEMPTED
from kubetune.events import EventKind, JobSummary, ProgressEvent
from kubetune_trainer import checkpoints
from kubetune_trainer.checkpoints import MARKER, complete_steps

from tests.trainer.helpers import (
    Assets,
    child_env,
    explain,
    make_job,
    read_summary,
    run_nodes,
    start_nodes,
    train_in_process,
    wait_for_line,
    wait_nodes,
)

pytestmark = pytest.mark.timeout(420)

# constant_with_warmup: the schedule does not depend on maxSteps, so "20 then 20 more" equals "40".
RESUMABLE: dict[str, Any] = {
    "training": {"lrScheduler": "constant_with_warmup", "evalStrategy": "no", "learningRate": 2e-3},
    "checkpointing": {"everySteps": 10, "keepLast": 2},
}


def with_steps(steps: int) -> dict[str, Any]:
    return {**RESUMABLE, "training": {**RESUMABLE["training"], "maxSteps": steps}}


def test_a_run_extended_from_its_checkpoint_ends_exactly_like_an_uninterrupted_run(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    env = {**in_process_env, "KUBETUNE_DEBUG_WEIGHTS_HASH": "1"}
    straight = train_in_process(make_job(tmp_path, assets, "straight", **with_steps(40)), env)
    assert straight.returncode == 0, explain(straight)

    # Same output folder twice: 20 steps (mid-epoch: 25 steps per epoch), then the job extended to 40.
    first = train_in_process(make_job(tmp_path, assets, "resumed", **with_steps(20)), env)
    assert first.returncode == 0, explain(first)
    output = tmp_path / "resumed-out"
    assert complete_steps(output / "checkpoints") == [10, 20]  # keepLast 2
    second = train_in_process(make_job(tmp_path, assets, "resumed", **with_steps(40)), env)
    assert second.returncode == 0, explain(second)

    started = next(e for e in second.events if e.event == EventKind.STARTED)
    assert started.resumed_from_step == 20
    steps = [e.step for e in second.events if e.event == EventKind.STEP]
    assert steps[0] == 25 and steps[-1] == 40, "continues after step 20, repeats nothing"
    assert complete_steps(output / "checkpoints") == [30, 40]

    expected = read_summary(tmp_path / "straight-out")["metrics"]
    actual = read_summary(output)["metrics"]
    print("uninterrupted:", expected, "resumed:", actual)
    assert actual["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-4)
    assert actual["eval_accuracy"] == pytest.approx(expected["eval_accuracy"], abs=1e-3)
    # Same batches, same RNG (dropout), same optimizer state: the weights come out identical.
    straight_hash = (tmp_path / "straight-out" / "debug" / "weights-rank-0.sha256").read_text()
    assert (output / "debug" / "weights-rank-0.sha256").read_text() == straight_hash

    # A job with other batches cannot continue these checkpoints: refused, naming the field; resume: false
    # starts over.
    other = {**with_steps(45), "training": {**with_steps(45)["training"], "perDeviceTrainBatchSize": 8}}
    refused = train_in_process(make_job(tmp_path, assets, "resumed", **other), env)
    assert refused.returncode == EXIT_INVALID_SPEC, explain(refused)
    assert "spec.training.perDeviceTrainBatchSize: checkpoint 16, this job 8" in refused.stderr
    fresh = {**other, "checkpointing": {**other["checkpointing"], "resume": False}}
    restarted = train_in_process(make_job(tmp_path, assets, "resumed", **fresh), env)
    assert restarted.returncode == 0, explain(restarted)
    assert next(e for e in restarted.events if e.event == EventKind.STARTED).resumed_from_step is None
    newest = checkpoints.TrainerState.from_file(output / "checkpoints" / "step-40" / checkpoints.STATE_FILE)
    assert newest.fingerprint["spec.training.perDeviceTrainBatchSize"] == 8, "old checkpoints were replaced"


def test_two_ranks_resumed_in_the_middle_of_epoch_1_end_bit_identical_to_an_uninterrupted_run(
    tmp_path: Path, assets: Assets
) -> None:
    """1 node x 2 processes (DDP over gloo): 20 steps straight, versus 16 steps and then the job extended to 20.

    400 examples in batches of 16 on 2 ranks are 13 steps per epoch, so step 16 is 3 batches into epoch 1: the
    resumed run must skip those 3 batches of epoch 1's order (not epoch 0's) and then see exactly the batches,
    dropout masks and optimizer state the uninterrupted run saw.
    """
    env = child_env(tmp_path, KUBETUNE_DEBUG_WEIGHTS_HASH="1")
    every_8 = {"checkpointing": {"everySteps": 8, "keepLast": 2}}

    def run(name: str, steps: int) -> list[ProgressEvent]:
        overrides = {**with_steps(steps), **every_8, "distribution": {"nodes": 1, "processesPerNode": 2}}
        results = run_nodes(make_job(tmp_path, assets, name, **overrides), env, nodes=1, procs_per_node=2)
        assert results[0].returncode == 0, explain(results)
        return results[0].events

    run("straight", 20)
    run("resumed", 16)
    checkpoint = checkpoints.TrainerState.from_file(
        tmp_path / "resumed-out" / "checkpoints" / "step-16" / checkpoints.STATE_FILE
    )
    assert (checkpoint.epoch, checkpoint.batches_in_epoch) == (1, 3), "interrupted mid-epoch 1"
    events = run("resumed", 20)
    assert next(e for e in events if e.event == EventKind.STARTED).resumed_from_step == 16

    def hashes(name: str) -> list[str]:
        folder = tmp_path / f"{name}-out" / "debug"
        return [path.read_text() for path in sorted(folder.glob("weights-rank-*.sha256"))]

    assert len(hashes("straight")) == 2 and len(set(hashes("straight"))) == 1
    assert hashes("resumed") == hashes("straight"), "resumed weights differ from the uninterrupted run's"


def test_two_nodes_sigterm_to_one_stops_both_at_one_step_with_exit_75_then_the_gang_resumes_and_learns(
    tmp_path: Path, assets: Assets
) -> None:
    events_file = tmp_path / "events.jsonl"
    job = make_job(tmp_path, assets, **{**with_steps(60), "distribution": {"nodes": 2}})
    env = child_env(tmp_path, KUBETUNE_EVENTS_FILE=str(events_file))
    nodes = start_nodes(job, env, nodes=2)
    wait_for_line(events_file, lambda line: '"event":"step"' in line)
    os.kill(nodes[1].pid, signal.SIGTERM)  # like a drained node: only node 1's pod gets the signal
    results = wait_nodes(nodes, timeout=180)
    assert [r.returncode for r in results] == [EXIT_PREEMPTED, EXIT_PREEMPTED], explain(results)

    events = [ProgressEvent.from_json(line) for line in events_file.read_text().splitlines()]
    preempted = events[-1]
    assert preempted.event == EventKind.PREEMPTED, [e.event for e in events]
    assert 0 < preempted.step < 60
    folder = tmp_path / "job-out" / "checkpoints" / f"step-{preempted.step}"
    assert (folder / MARKER).is_file(), "the checkpoint of the stopping step is complete"
    summary = JobSummary.from_termination_message(
        Path(env["KUBETUNE_TERMINATION_LOG"] + "-node0").read_text()
    )
    assert summary is not None and summary.outcome == EventKind.PREEMPTED
    assert not (tmp_path / "job-out" / "metrics.json").exists()

    # The rerun continues over real torch.distributed (world size 2, DDP keeps both ranks' weights equal).
    events_file.unlink()
    resumed = run_nodes(job, {**env, "KUBETUNE_DEBUG_WEIGHTS_HASH": "1"}, nodes=2)
    assert [r.returncode for r in resumed] == [0, 0], explain(resumed)
    started = next(e for e in resumed[0].events if e.event == EventKind.STARTED)
    assert started.resumed_from_step == preempted.step
    assert started.world_size == 2
    assert not resumed[1].events, "only rank 0 reports progress"
    hashes = [p.read_text() for p in sorted((tmp_path / "job-out" / "debug").glob("weights-rank-*.sha256"))]
    assert len(hashes) == 2 and hashes[0] == hashes[1], "DDP ranks must end with identical weights"
    final = json.loads((tmp_path / "job-out" / "metrics.json").read_text())
    print(f"2-node DDP: preempted at step {preempted.step}; after resume:", final["metrics"])
    assert final["step"] == 60 and final["world_size"] == 2
    assert final["metrics"]["eval_accuracy"] >= 0.8  # chance is 0.5
