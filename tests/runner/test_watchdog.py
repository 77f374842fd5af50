"""The supervisor never waits forever: a node stuck after its peer finished, or a run that goes silent.

These use tests/runner/stand_in_trainer.py instead of `kubetune train` (a mock of the trainer side of the
contract): the real trainer cannot be made to hang on demand. The runner side is real: real processes, real
process groups, real signals.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from kubetune_trainer.runner import RunOptions, WatchdogLimits, run_local
from rich.console import Console

from tests.runner.helpers import processes_of_run

STAND_IN = (sys.executable, str(Path(__file__).with_name("stand_in_trainer.py")))
JOB = """
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: stand-in}
spec:
  model: {name: stand-in-model}
  dataset: {files: {train: train.jsonl}, evalSplit: null}
  distribution: {nodes: 2}
"""


def _run(tmp_path: Path, limits: WatchdogLimits) -> tuple[int, str, float]:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    console = Console(record=True, width=200)
    started = time.monotonic()
    code = run_local(
        RunOptions(job_file=job, output_dir=tmp_path / "out", node_command=STAND_IN, limits=limits),
        console=console,
        errors=console,
    )
    return code, console.export_text(), time.monotonic() - started


def test_a_node_stuck_after_its_peer_finished_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_HANG_RANK", "1")
    code, text, seconds = _run(tmp_path, WatchdogLimits(straggler_seconds=2, stop_grace_seconds=2))
    assert code == 1
    assert "node(s) 1 still running" in text and "after node 0 finished: they are stuck" in text
    assert seconds < 30
    assert processes_of_run(tmp_path / "out") == []


def test_a_silent_run_is_stopped_by_the_stall_watchdog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_HANG_RANK", "0")
    monkeypatch.setenv("STAND_IN_STEPS", "100000")
    monkeypatch.setenv("STAND_IN_STEP_SECONDS", "60")  # node 1 is alive but says nothing either
    code, text, seconds = _run(tmp_path, WatchdogLimits(stall_seconds=3, stop_grace_seconds=2))
    assert code == 1
    assert "no output from any node for" in text and "the run looks hung" in text
    assert seconds < 30
    assert "**Outcome: failed**" in (tmp_path / "out" / "report.md").read_text()
    assert processes_of_run(tmp_path / "out") == []


def test_the_deadline_ends_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAND_IN_STEPS", "100000")
    code, text, seconds = _run(tmp_path, WatchdogLimits(deadline_seconds=3, stop_grace_seconds=5))
    assert code == 1
    assert "the run exceeded its deadline of 3s" in text
    assert seconds < 30
    assert processes_of_run(tmp_path / "out") == []
