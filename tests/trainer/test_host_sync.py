"""No host sync every optimizer step: the trainer reads tensor values into Python only when it logs (or
evaluates, checkpoints, finishes), and the gang's stop agreement reads each step's sum one step late.

Deferring the reads must not change a figure: the loss logged every 5 steps is the mean of the 5 losses logged
one step at a time, from the same seed.
"""

from __future__ import annotations

import socket
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubetune_trainer
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from kubetune.events import EventKind

from tests.trainer.helpers import Assets, explain, make_job, train_in_process

pytestmark = pytest.mark.timeout(300)

TRAINER_PACKAGE = str(Path(kubetune_trainer.__file__ or "").parent)
READS = ("item", "tolist", "__float__", "__int__", "__bool__")


def _run(tmp_path: Path, assets: Assets, env: dict[str, str], name: str, logging_steps: int) -> Any:
    job = make_job(
        tmp_path,
        assets,
        name=name,
        training={"maxSteps": 20, "loggingSteps": logging_steps, "evalStrategy": "no"},
        checkpointing={"atEpochEnd": False},
        output={"saveModel": False},
    )
    result = train_in_process(job, env)
    assert result.returncode == 0, explain(result)
    return result


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the reads of a tensor's value into Python (each one waits for the device on a GPU) made by the
    trainer's own code, by the trainer function that made them (the model's own code is not counted)."""
    counts: Counter[str] = Counter()

    def counting(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(TRAINER_PACKAGE):
                counts[frame.f_code.co_name] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    yield counts


def test_the_loop_reads_tensors_only_when_it_logs_and_the_figures_stay_those_of_every_step(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str], host_reads: Counter[str]
) -> None:
    every = _run(tmp_path, assets, in_process_env, "every", logging_steps=1)
    host_reads.clear()
    deferred = _run(tmp_path, assets, in_process_env, "deferred", logging_steps=5)
    print("host reads by trainer function over 20 steps, logging every 5:", dict(host_reads))

    # Nothing in the step itself (the loop, the stop agreement) reads a value. Logging reads its 2 sums, 4 times;
    # the final evaluation reads its results; the sampler reads its shuffled order once per epoch.
    assert set(host_reads) <= {"_log_step", "evaluate_model", "order"}, host_reads
    assert host_reads["_log_step"] == 2 * 4, host_reads
    assert host_reads["order"] <= 2, host_reads

    steps = {e.step: e for e in every.events if e.event == EventKind.STEP}
    logged = [e for e in deferred.events if e.event == EventKind.STEP]
    assert [e.step for e in logged] == [5, 10, 15, 20]
    for event in logged:
        window = [steps[step].loss for step in range(event.step - 4, event.step + 1)]
        assert event.loss == pytest.approx(sum(window) / 5, rel=1e-6), (event.step, window)
        assert event.learning_rate == steps[event.step].learning_rate


# --- the stop agreement, on a real 2-process gloo group ----------------------------------------------------


class _GlooGang:
    """What StopAgreement uses of an Accelerator, over a real torch.distributed gloo group (no Accelerator:
    the collective is the real one; only the object carrying it is smaller)."""

    num_processes = 2
    device = torch.device("cpu")

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        total = tensor.clone()
        dist.all_reduce(total)
        return total


def _agree(rank: int, port: int, folder: str) -> None:
    from kubetune_trainer.preemption import StopAgreement

    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        agreement = StopAgreement(_GlooGang())
        # Rank 1 alone is signalled before its third poll (a node drain reaches one pod).
        answers = [agreement.poll(rank == 1 and index >= 2) for index in range(5)]
        Path(folder, f"rank-{rank}").write_text(" ".join(str(a) for a in answers))
        dist.destroy_process_group()
    except BaseException:
        Path(folder, f"rank-{rank}").write_text(traceback.format_exc())
        raise


def test_one_ranks_stop_is_agreed_by_both_after_the_same_step_one_step_late(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_agree, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    answers = [(tmp_path / f"rank-{rank}").read_text() for rank in range(2)]
    assert answers == ["False False False True True"] * 2, answers
