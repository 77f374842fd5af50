"""Given a model stored in bf16, training keeps fp32 master weights: an update far below bf16's rounding step
is not lost (autocast computes in bf16; the weights the optimizer updates are fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.trainer.helpers import Assets, explain, make_job, train_in_process

pytestmark = pytest.mark.timeout(300)

LEARNING_RATE = 2e-5


def _bf16_copy(source: Path, folder: Path) -> Path:
    model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32)
    # Weights of the size a pretrained model has (std 0.02): bf16's step there (~1e-4) is far above the lr.
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.02)
    model.to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def test_one_small_step_on_a_bf16_stored_model_changes_its_weights(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    model = _bf16_copy(assets.model, tmp_path / "bf16-model")
    stored = load_file(model / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}

    # The control: in pure bf16 most of this very step is lost (only weights near 0 have a fine enough step).
    name = next(n for n, t in stored.items() if n.endswith("attention.self.query.weight"))
    weight = torch.nn.Parameter(stored[name].clone())
    weight.grad = torch.randn_like(weight)
    torch.optim.AdamW([weight], lr=LEARNING_RATE).step()
    lost = (weight.detach() == stored[name]).float().mean().item()
    assert lost > 0.6, f"pure bf16 keeps {lost:.0%} of the weights unchanged"

    job = make_job(
        tmp_path,
        assets,
        model={"name": str(model)},
        training={
            "maxSteps": 1,
            "learningRate": LEARNING_RATE,
            "warmupSteps": 0,
            "lrScheduler": "constant",
            "mixedPrecision": "bf16",
            "evalStrategy": "no",
        },
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == 0, explain(result)

    trained = load_file(tmp_path / "job-out" / "model" / "model.safetensors")
    assert trained[name].dtype == torch.float32, "the saved weights are the fp32 masters"
    changed_fractions = []
    for key, before in stored.items():
        # Embeddings: only the rows of tokens in the batch get a gradient.
        if before.dim() != 2 or "embeddings" in key:
            continue
        delta = (trained[key] - before.float()).abs()
        changed_fractions.append((delta > 0).float().mean().item())
        # AdamW's first step moves every weight with a gradient by lr (times the gradient's sign).
        assert delta.max().item() == pytest.approx(LEARNING_RATE, rel=0.05), key
    print("weights changed by one bf16-autocast step, per matrix:", [round(f, 3) for f in changed_fractions])
    assert min(changed_fractions) > 0.9
