"""The knobs a GPU user expects (TF32, torch.compile, attention kernel, pinned memory, tokenisation processes,
rendezvous timeout, DeepSpeed bucket sizes) have sane defaults, reach the trainer, and a job that sets them
still trains on CPU. Their GPU effects are measured by benchmarks/gpu_check.py on a GPU machine."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from kubetune.spec import parse_spec
from kubetune_trainer.loop import FEW_STEPS, Plan, fill_deepspeed_buckets, warn_about_few_steps

from tests.trainer.helpers import Assets, explain, make_job, read_summary, train_in_process

pytestmark = pytest.mark.timeout(300)


def _spec(**blocks: object) -> object:
    return parse_spec({"model": {"name": "m"}, "dataset": {"name": "glue", "config": "mrpc"}, **blocks})


def test_defaults() -> None:
    spec = _spec()
    assert spec.training.tf32 is True and spec.training.torch_compile is False  # type: ignore[attr-defined]
    assert spec.training.dataloader_pin_memory is True  # type: ignore[attr-defined]
    assert spec.model.attn_implementation == "auto"  # type: ignore[attr-defined]
    assert spec.dataset.tokenization_processes is None  # type: ignore[attr-defined]
    assert spec.kubernetes.termination_grace_period_seconds is None  # type: ignore[attr-defined]


def test_deepspeed_buckets_follow_the_hidden_size_like_trainers_auto_values() -> None:
    config = {"zero_optimization": {"stage": 3, "reduce_bucket_size": 1234}}
    fill_deepspeed_buckets(config, SimpleNamespace(hidden_size=768))
    zero = config["zero_optimization"]
    assert zero["reduce_bucket_size"] == 1234  # the raw config's value wins
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 768 * 768)
    assert zero["stage3_param_persistence_threshold"] == 7680
    stage2 = {"zero_optimization": {"stage": 2}}
    fill_deepspeed_buckets(stage2, SimpleNamespace(n_embd=64))  # GPT-2 names it n_embd
    assert stage2["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 4096}


def test_a_run_of_few_steps_is_warned_about_with_its_global_batch(caplog: pytest.LogCaptureFixture) -> None:
    """The README's old headline: MRPC (3,668 pairs) on 2 x 8 GPUs at 32 per device."""
    spec = _spec(training={"perDeviceTrainBatchSize": 32, "epochs": 3})
    plan = Plan.for_spec(spec, 3668, 16)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        warn_about_few_steps(spec, 3668, 16, plan)  # type: ignore[arg-type]
    assert plan.total_steps < FEW_STEPS
    assert f"only {plan.total_steps} optimizer steps" in caplog.text and "global batch 512" in caplog.text
    caplog.clear()
    small = _spec(training={"perDeviceTrainBatchSize": 16, "epochs": 3})
    warn_about_few_steps(small, 3668, 2, Plan.for_spec(small, 3668, 2))  # type: ignore[arg-type]
    assert caplog.text == ""  # 345 steps


def test_a_job_that_sets_the_gpu_knobs_trains_on_cpu(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    job = make_job(
        tmp_path,
        assets,
        model={"attnImplementation": "eager"},
        dataset={"tokenizationProcesses": 2},
        training={"epochs": 2, "tf32": False, "torchCompile": False, "dataloaderPinMemory": True},
        distribution={"rendezvousTimeoutSeconds": 600},
        kubernetes={"terminationGracePeriodSeconds": 900},
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == 0, explain(result)
    assert read_summary(tmp_path / "job-out")["metrics"]["eval_accuracy"] >= 0.8  # chance is 0.5
