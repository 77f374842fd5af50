"""`kubetune run` end to end: real `kubetune train` processes as simulated nodes, real gloo over loopback.

Given a FineTuneJob for the tiny model, when `kubetune run` runs it as 2 nodes, then it trains as world size 2,
learns, and leaves its reports; when a rank dies the run fails fast naming that node; when it is interrupted it
keeps a checkpoint and a rerun resumes from it. Every shape a pod can have is run: 2 nodes x 1 process (DDP),
1 node x 2 processes (DeepSpeed ZeRO-2) and 1 node x 1 process (one plain process, interrupted and resumed).
Every test also checks that no process of the run is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

from kubetune.events import EventKind
from kubetune_trainer.runner.event_log import read_events
from kubetune_trainer.synthetic import write_job_file

from tests.runner.conftest import TinyAssets
from tests.runner.helpers import processes_of_run, run_kubetune, start_kubetune, wait_for_event, worker_pid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _job(
    folder: Path,
    assets: TinyAssets,
    training: dict[str, object],
    checkpoint_every: int,
    distribution: dict[str, object] | None = None,
) -> Path:
    """A job (2 nodes x 1 process unless `distribution` says otherwise) whose data paths are relative to the
    job file's folder (as in manifests/examples)."""
    data = folder / "data"
    data.mkdir(parents=True)
    shutil.copy(assets.train, data / "train.jsonl")
    shutil.copy(assets.eval, data / "eval.jsonl")
    return write_job_file(
        folder / "job.yaml",
        model=str(assets.model),
        train="data/train.jsonl",
        eval="data/eval.jsonl",
        output="/output",
        name="tiny-sentiment",
        overrides={
            "training": {"loggingSteps": 5, "learningRate": 2e-3, "warmupRatio": 0.1, **training},
            "distribution": distribution or {"nodes": 2, "processesPerNode": 1},
            "checkpointing": {"everySteps": checkpoint_every, "keepLast": 2},
        },
    )


def test_two_nodes_train_the_tiny_model_and_write_the_reports(
    tmp_path: Path, tiny_assets: TinyAssets
) -> None:
    job = _job(tmp_path / "job", tiny_assets, {"epochs": 4}, checkpoint_every=50)
    output = tmp_path / "out"
    # Run from another folder: the relative data paths must resolve against the job file's folder.
    result = run_kubetune(str(job), "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    events = read_events(output / "events.jsonl")
    started = next(e for e in events if e.event == EventKind.STARTED)
    assert started.world_size == 2  # a real 2-process torch.distributed gang
    assert events[-1].event == EventKind.FINISHED
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["outcome"] == "finished" and summary["world_size"] == 2
    assert summary["metrics"]["eval_accuracy"] > 0.7, summary  # chance is 0.5: it learned

    assert (output / "loss_curve.png").read_bytes().startswith(PNG_MAGIC)
    report = (output / "report.md").read_text()
    assert "**Outcome: finished** (exit code 0)" in report
    assert "2 simulated node(s) x 1 process(es) = world size 2, CPU, gloo" in report
    assert f"| eval_accuracy | {summary['metrics']['eval_accuracy']:.4f} |" in report
    assert (output / "model" / "config.json").exists()
    for rank in (0, 1):
        assert (output / "logs" / f"node-{rank}.log").stat().st_size > 0
    # Not a terminal: plain progress lines, then the final table.
    assert "training started on 2 processes" in result.stdout
    assert "eval at step" in result.stdout and "eval_accuracy" in result.stdout
    assert processes_of_run(output) == []


def test_a_dead_rank_fails_the_run_fast_with_that_nodes_error(
    tmp_path: Path, tiny_assets: TinyAssets
) -> None:
    """Rank 1's training process is SIGKILLed (as the OOM killer would) once training runs."""
    job = _job(tmp_path / "job", tiny_assets, {"maxSteps": 100000}, checkpoint_every=100000)
    output = tmp_path / "out"
    run = start_kubetune(str(job), "--output", str(output), cwd=tmp_path, log=tmp_path / "run.log")
    try:
        wait_for_event(output / "events.jsonl", EventKind.STEP, run)
        pid = worker_pid(output, rank=1)
        assert pid is not None, processes_of_run(output)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        code = run.wait(timeout=120)
        failed_within = time.monotonic() - killed_at
    finally:
        if run.poll() is None:
            run.kill()
    text = (tmp_path / "run.log").read_text()
    assert code == 1, text
    assert failed_within < 60, f"took {failed_within:.0f}s to notice the dead rank"
    assert "node 1: last lines of" in text and "✗ node 1 failed" in text, text
    assert "**Outcome: failed**" in (output / "report.md").read_text()
    assert processes_of_run(output) == []


def test_one_node_with_two_deepspeed_zero2_processes_learns(tmp_path: Path, tiny_assets: TinyAssets) -> None:
    """1 node x 2 processes, chosen on the command line over the spec's 2 x 1, under DeepSpeed ZeRO-2."""
    job = _job(
        tmp_path / "job",
        tiny_assets,
        {"epochs": 2},
        checkpoint_every=1000,
        distribution={"nodes": 2, "processesPerNode": 1, "deepspeed": {"zeroStage": 2}},
    )
    output = tmp_path / "out"
    result = run_kubetune(
        str(job), "--nodes", "1", "--processes-per-node", "2", "--output", str(output), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 node(s) x 2 process(es)" in result.stdout
    summary = json.loads((output / "metrics.json").read_text())
    print("1 x 2 ZeRO-2:", summary["metrics"])
    assert summary["world_size"] == 2
    assert summary["metrics"]["eval_accuracy"] > 0.7, summary  # chance is 0.5
    # DeepSpeed (not DDP) trained: its checkpoints hold one ZeRO optimizer shard per rank.
    newest = sorted((output / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    shards = list(newest.glob("pytorch_model/*optim_states.pt"))
    assert len(shards) == 2, [p.name for p in shards]
    assert processes_of_run(output) == []


def test_one_node_one_process_ctrl_c_keeps_a_checkpoint_and_a_rerun_resumes_and_learns(
    tmp_path: Path, tiny_assets: TinyAssets
) -> None:
    """The one-GPU shape (1 x 1) runs as one plain process (accelerate's simple launcher, no torchrun), and
    still stops on Ctrl-C at a step with a checkpoint and exit 75, and resumes."""
    job = _job(
        tmp_path / "job",
        tiny_assets,
        {"maxSteps": 150},
        checkpoint_every=10,
        distribution={"nodes": 1, "processesPerNode": 1},
    )
    output = tmp_path / "out"
    run = start_kubetune(str(job), "--output", str(output), cwd=tmp_path, log=tmp_path / "first.log")
    try:
        wait_for_event(output / "events.jsonl", EventKind.CHECKPOINT, run)
        run.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the foreground process
        code = run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    first = (tmp_path / "first.log").read_text()
    assert code == 75, first
    assert processes_of_run(output) == []
    assert "CalledProcessError" not in (output / "logs" / "node-0.log").read_text()
    checkpoints = sorted((output / "checkpoints").iterdir())
    assert checkpoints, "the interrupted run kept no checkpoint"
    events = read_events(output / "events.jsonl")
    assert next(e for e in events if e.event == EventKind.STARTED).world_size == 1
    assert events[-1].event == EventKind.PREEMPTED, [e.event for e in events]
    stopped_at = max(e.step for e in events if e.event == EventKind.CHECKPOINT)
    assert stopped_at == events[-1].step < 150, "the checkpoint is of the step it stopped at"

    result = run_kubetune(str(job), "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming from the checkpoints there" in result.stdout
    resumed = [e for e in read_events(output / "events.jsonl") if e.event == EventKind.STARTED][-1]
    assert resumed.resumed_from_step == stopped_at
    summary = json.loads((output / "metrics.json").read_text())
    print(f"1 x 1: stopped at step {stopped_at}, after resuming:", summary["metrics"])
    assert summary["step"] == 150 and summary["world_size"] == 1
    assert summary["metrics"]["eval_accuracy"] > 0.7, summary  # chance is 0.5
    assert processes_of_run(output) == []


def test_nodes_do_not_outlive_a_killed_runner(tmp_path: Path, tiny_assets: TinyAssets) -> None:
    """Even `kill -9` of `kubetune run` (no chance to clean up) stops its nodes: they get SIGTERM on its death."""
    job = _job(tmp_path / "job", tiny_assets, {"maxSteps": 100000}, checkpoint_every=100000)
    output = tmp_path / "out"
    run = start_kubetune(str(job), "--output", str(output), cwd=tmp_path, log=tmp_path / "run.log")
    try:
        wait_for_event(output / "events.jsonl", EventKind.STEP, run)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 90
        while processes_of_run(output) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        if run.poll() is None:
            run.kill()
    assert processes_of_run(output) == []
    assert any(e.event == EventKind.PREEMPTED for e in read_events(output / "events.jsonl"))
