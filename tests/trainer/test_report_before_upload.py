"""Given a run that fails or is preempted, its failure or preemption is reported (the termination message, which the
operator reads when the container ends, and the last event) before the trackers' files are sent to the object
store: that upload may outlast the pod's grace period, and a SIGKILL during it must cost curves, not the report.

The run is real (the tiny model, in this process); the training loop is replaced by one that fails or stops at
once, and the upload by a probe that records what was reported when it started (what it would send is tested with
a real S3 server in test_object_storage.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune.contract import EXIT_FAILED, EXIT_PREEMPTED
from kubetune.events import EventKind
from kubetune_trainer.loop import Trainer

from tests.trainer.helpers import Assets, explain, make_job, train_in_process

pytestmark = pytest.mark.timeout(300)


def _fail(_: Trainer) -> bool:
    raise RuntimeError("a collective timed out")


def _stop(_: Trainer) -> bool:
    return True  # an agreed stop (SIGTERM): the loop returns True


@pytest.mark.parametrize(
    ("train", "code", "reported"),
    [(_fail, EXIT_FAILED, EventKind.FAILED), (_stop, EXIT_PREEMPTED, EventKind.PREEMPTED)],
    ids=["failed", "preempted"],
)
def test_the_report_is_written_before_the_tracker_files_are_uploaded(
    tmp_path: Path,
    assets: Assets,
    in_process_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    train: object,
    code: int,
    reported: EventKind,
) -> None:
    termination_log = Path(in_process_env["KUBETUNE_TERMINATION_LOG"])
    at_upload: list[str | None] = []

    def probe(_: Trainer) -> None:
        at_upload.append(termination_log.read_text() if termination_log.exists() else None)

    monkeypatch.setattr(Trainer, "_train", train)
    monkeypatch.setattr(Trainer, "_upload_tracking_files", probe)
    result = train_in_process(make_job(tmp_path, assets, "stopped"), in_process_env)

    assert result.returncode == code, explain(result)
    assert result.events[-1].event == reported, explain(result)
    assert len(at_upload) == 1, "the tracker files are sent once"
    assert at_upload[0] is not None and at_upload[0] == termination_log.read_text(), (
        "the termination message must be written before the upload starts"
    )
