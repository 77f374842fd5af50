"""benchmarks/gpu_check.py on a machine without a GPU: it refuses at once (exit 2, the reason named) instead of
measuring the CPU. What it would run is checked here too: its jobs are valid FineTuneJobs and its FLOPs count
matches bert-base's known size. The figures themselves need a GPU (not available to this test suite)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from kubetune.spec import parse_job

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"

pytestmark = pytest.mark.timeout(120)


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_refuses_with_the_reason_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU this machine may have
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "gpu_check: no CUDA device is visible (CUDA_VISIBLE_DEVICES is ''" in done.stderr
    assert "never falls back to CPU" in done.stderr
    assert not (tmp_path / "work").exists(), "nothing was built or measured"


def test_its_jobs_are_valid_and_its_flops_count_is_bert_bases(tmp_path: Path) -> None:
    from transformers import BertConfig

    gpu_check = _module()
    model, data = tmp_path / "bert", tmp_path / "pairs.jsonl"
    for name, causal, extra in [
        ("bert", False, {}),
        ("zero3", False, {"distribution": {"deepspeed": {"zeroStage": 3}}}),
        ("llama", True, {}),
    ]:
        document = gpu_check.job_document(model, data, tmp_path / name, 10, causal, **extra)
        job = parse_job(document, name)
        assert job.spec.training.mixed_precision == "bf16"
        assert job.spec.dataset.packing is causal
    qlora = parse_job(gpu_check.qlora_job_document(model, data, tmp_path / "qlora", 10), "qlora").spec
    assert qlora.adapter is not None and qlora.adapter.qlora is not None and qlora.dataset.packing
    assert qlora.adapter.target_modules == ["all-linear"] and qlora.training.learning_rate == 2e-4
    BertConfig().save_pretrained(model)
    per_token = gpu_check.flops_per_token(model, causal=False, sequence=128)
    # bert-base: 85.6M parameters outside the embeddings (12 layers of 7.1M, pooler, classifier).
    assert 6 * 85.0e6 < per_token - 12 * 12 * 768 * 128 < 6 * 86.5e6
