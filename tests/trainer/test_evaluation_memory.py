"""Causal-LM evaluation never materialises the logits of a whole batch: the output head runs a bounded chunk
of target tokens at a time, so memory does not grow with vocabulary x tokens, and eval_loss stays exact.

A real tiny GPT-2 with a large vocabulary (50k) evaluated through a real (single-process) Accelerator; a forward
hook on the output head records the largest logits tensor it produced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from kubetune_trainer import evaluation
from kubetune_trainer.data import CausalLMCollator


@pytest.fixture
def accelerator() -> Iterator[Any]:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_causal_eval_loss_is_exact_with_logits_bounded_by_the_chunk(
    accelerator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocabulary, eos = 50_000, 0
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocabulary,
            n_embd=16,
            n_layer=1,
            n_head=2,
            n_positions=64,
            eos_token_id=eos,
            bos_token_id=eos,
        )
    ).eval()
    lengths = [48, 40, 33, 48, 12, 47, 48, 30]
    features = [{"input_ids": torch.randint(1, vocabulary, (n,)).tolist()} for n in lengths]
    collate = CausalLMCollator(pad_token_id=eos)
    batches = [collate(features[i : i + 4]) for i in range(0, len(features), 4)]

    # The reference: the model's own mean loss per batch (full logits), weighted by each batch's targets.
    with torch.no_grad():
        total = sum(float(model(**b).loss) * int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    expected = total / sum(n - 1 for n in lengths)

    limit = 2**20
    monkeypatch.setattr(evaluation, "LOGIT_CHUNK_ELEMENTS", limit)
    largest = [0]
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: largest.__setitem__(0, max(largest[0], output.numel()))
    )
    prepared = accelerator.prepare(model)
    metrics = evaluation.evaluate_model(accelerator, prepared, batches, "causal-lm", {}, None)

    full = 4 * 47 * vocabulary  # one batch's shifted logits
    print(f"largest logits tensor: {largest[0]} elements (limit {limit}; a batch's full logits: {full})")
    assert 0 < largest[0] <= limit < full
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
