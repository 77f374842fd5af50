"""ZeRO-2 with the optimizer offloaded to the CPU keeps AdamW's decoupled weight decay.

accelerate swaps the optimizer for DeepSpeedCPUAdam when offloading and keeps AdamW mode only when handed
torch's AdamW. Two real 1 node x 1 process DeepSpeed runs (torchrun, ZeRO-2, gloo) of the same job, one with
`offloadOptimizer: cpu` (DeepSpeedCPUAdam steps the weights) and one without (torch's AdamW steps them), must
end with the same weights. With a large weight decay, Adam with L2 regularisation (adamw_mode=False) would end
orders of magnitude further apart than the two implementations' rounding.

The first run compiles DeepSpeed's cpu_adam op (cached in TORCH_EXTENSIONS_DIR, about a minute).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.helpers import Assets, child_env, explain, make_job, run_nodes

pytestmark = pytest.mark.timeout(600)


def _run(tmp_path: Path, assets: Assets, name: str, offload: str) -> tuple[dict[str, torch.Tensor], str]:
    job = make_job(
        tmp_path,
        assets,
        name,
        training={
            "maxSteps": 6,
            "learningRate": 1e-3,
            "warmupSteps": 0,
            "lrScheduler": "linear",  # the schedule must reach the offloaded optimizer too
            "weightDecay": 0.5,
            "evalStrategy": "no",
        },
        distribution={
            "nodes": 1,
            "processesPerNode": 1,
            "deepspeed": {"zeroStage": 2, "offloadOptimizer": offload},
        },
        checkpointing={"atEpochEnd": False},
    )
    (result,) = run_nodes(job, child_env(tmp_path), nodes=1, procs_per_node=1, timeout=540)
    assert result.returncode == 0, explain(result)
    return load_file(tmp_path / f"{name}-out" / "model" / "model.safetensors"), result.stderr


def test_zero2_cpu_offload_steps_with_adamw_semantics(tmp_path: Path, assets: Assets) -> None:
    initial = load_file(assets.model / "model.safetensors")
    offloaded, offloaded_log = _run(tmp_path, assets, "offload", "cpu")
    assert "optimizer: DeepSpeedCPUAdam (adamw_mode=True)" in offloaded_log, offloaded_log[-3000:]
    on_device, device_log = _run(tmp_path, assets, "device", "none")
    assert "optimizer: AdamW" in device_log, device_log[-3000:]

    moved = max((on_device[k] - initial[k].float()).abs().max().item() for k in initial if k in on_device)
    apart = max((offloaded[k] - on_device[k]).abs().max().item() for k in on_device)
    print(f"largest weight change in 6 steps: {moved:.2e}; offloaded vs on-device AdamW: {apart:.2e}")
    assert moved > 1e-3, "the runs trained"
    assert apart < 1e-5, "DeepSpeedCPUAdam must step like torch's AdamW (decoupled weight decay)"
