"""Given a job that checkpoints, each checkpoint event says how long the save took and how big the checkpoint
is (the operator sizes the grace of the workers it deletes from it; see tests/operator/test_grace.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune.events import EventKind

from tests.trainer.helpers import Assets, explain, make_job, train_in_process

pytestmark = pytest.mark.timeout(300)


def test_checkpoint_events_carry_the_save_time_and_the_folder_size(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    job = make_job(
        tmp_path,
        assets,
        training={"maxSteps": 10, "evalStrategy": "no"},
        checkpointing={"everySteps": 5, "atEpochEnd": False, "keepLast": 2},
        output={"saveModel": False},
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == 0, explain(result)
    reports = [e for e in result.events if e.event == EventKind.CHECKPOINT]
    assert [e.step for e in reports] == [5, 10]
    for event in reports:
        folder = Path(str(event.checkpoint))
        on_disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert event.checkpoint_bytes == on_disk and on_disk > 100_000, "model, optimizer state and RNG"
        assert event.checkpoint_seconds is not None and 0 < event.checkpoint_seconds < 60
        print(f"step {event.step}: {event.checkpoint_bytes} bytes in {event.checkpoint_seconds} s")
