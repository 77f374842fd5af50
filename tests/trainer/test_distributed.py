"""Given a FineTuneJob with DeepSpeed, `kubetune train` trains one model over real torch.distributed.

Every node is a separate `kubetune train` process with the launcher contract (node ranks, 127.0.0.1, a free
port), exactly as worker pods run it; the processes talk over gloo. Two nodes with plain DDP are exercised by
test_resume.py (preempted, resumed, identical weights on both ranks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubetune.events import EventKind
from transformers import AutoModelForSequenceClassification

from tests.trainer.helpers import Assets, Result, child_env, explain, make_job, read_summary, run_nodes

pytestmark = pytest.mark.timeout(600)  # 71 s quiet; the ZeRO-2 resume took over 420 s at load 15-20


def weight_hashes(output: Path) -> list[str]:
    return [path.read_text().strip() for path in sorted((output / "debug").glob("weights-rank-*.sha256"))]


def deepspeed_job(
    tmp_path: Path, assets: Assets, stage: int, name: str = "job", training: dict[str, Any] | None = None
) -> Path:
    return make_job(
        tmp_path,
        assets,
        name,
        training={"epochs": 3, **(training or {})},
        distribution={"nodes": 1, "processesPerNode": 2, "deepspeed": {"zeroStage": stage}},
        checkpointing={"everySteps": 10},
    )


def check_deepspeed_output(output: Path, eval_file: Path, stage: int) -> dict[str, float]:
    """DeepSpeed checkpoints were written, the model learned, and the saved (gathered) model reloads."""
    summary = read_summary(output)
    print(f"ZeRO-{stage} metrics:", summary["metrics"])
    assert summary["world_size"] == 2
    assert summary["metrics"]["eval_accuracy"] >= 0.8
    # DeepSpeed (not DDP) trained: its checkpoint format has one ZeRO optimizer shard per rank.
    shards = list((output / "checkpoints").glob("step-*/pytorch_model/*optim_states.pt"))
    assert len(shards) >= 2, [p.name for p in shards]
    model = AutoModelForSequenceClassification.from_pretrained(output / "model")
    accuracy = reloaded_accuracy(model, output / "model", eval_file)
    print(f"ZeRO-{stage} reloaded accuracy:", accuracy)
    assert accuracy == pytest.approx(summary["metrics"]["eval_accuracy"], abs=0.011)
    return dict(summary["metrics"])


def test_deepspeed_zero3_on_two_ranks_saves_a_gathered_model_that_reloads(
    tmp_path: Path, assets: Assets
) -> None:
    results = run_nodes(
        deepspeed_job(tmp_path, assets, stage=3), child_env(tmp_path), nodes=1, procs_per_node=2
    )
    assert results[0].returncode == 0, explain(results)
    assert next(e for e in results[0].events if e.event == EventKind.STARTED).world_size == 2
    check_deepspeed_output(tmp_path / "job-out", assets.eval, stage=3)


def test_deepspeed_zero2_resumes_its_sharded_checkpoint_at_the_exact_step(
    tmp_path: Path, assets: Assets
) -> None:
    """ZeRO-2 on two ranks: 40 steps straight, versus 20 steps (mid-epoch) and then the same job extended to 40."""
    env = child_env(tmp_path, KUBETUNE_DEBUG_WEIGHTS_HASH="1")
    resumable = {"lrScheduler": "constant_with_warmup", "evalStrategy": "no", "learningRate": 2e-3}

    def run(name: str, steps: int) -> list[Result]:
        job = deepspeed_job(tmp_path, assets, 2, name, {"maxSteps": steps, **resumable})
        results = run_nodes(job, env, nodes=1, procs_per_node=2)
        assert results[0].returncode == 0, explain(results)
        return results

    run("straight", 40)
    run("resumed", 20)
    second = run("resumed", 40)
    assert next(e for e in second[0].events if e.event == EventKind.STARTED).resumed_from_step == 20
    expected = check_deepspeed_output(tmp_path / "straight-out", assets.eval, stage=2)
    actual = check_deepspeed_output(tmp_path / "resumed-out", assets.eval, stage=2)
    # Within a tolerance, not bit for bit: DeepSpeed's CPU reductions need not sum in the same order every run.
    assert actual["eval_loss"] == pytest.approx(expected["eval_loss"], abs=1e-4)
    ranks = weight_hashes(tmp_path / "resumed-out")
    assert len(ranks) == 2 and ranks[0] == ranks[1], "both ranks hold the same weights after resuming"


def reloaded_accuracy(model: object, folder: Path, eval_file: Path) -> float:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [json.loads(line) for line in eval_file.read_text().splitlines()]
    batch = tokenizer(
        [r["text"] for r in rows], padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    model.eval()  # type: ignore[attr-defined]
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(dim=-1).tolist()  # type: ignore[operator]
    return sum(int(p == r["label"]) for p, r in zip(predictions, rows, strict=True)) / len(rows)
