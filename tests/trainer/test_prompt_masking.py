"""Prompt/completion data for causal LMs (dataset.promptField / completionField) on a tiny GPT-2 built locally:
prompt tokens are context and carry no loss, the completion and its closing EOS do; packing keeps that masking
and keeps texts from attending to each other; and a tiny model trained on a generated task learns to answer
held-out prompts (and to stop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from kubetune.spec import parse_spec
from kubetune_trainer.data import build_collator, prepare_data, prompt_completion_example
from kubetune_trainer.synthetic import (
    build_tiny_model,
    read_texts,
    write_job_file,
    write_prompt_completion_dataset,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.helpers import explain, train_in_process

pytestmark = pytest.mark.timeout(600)

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(train, eval, tiny GPT-2 folder) for the animal-sound task."""
    root = tmp_path_factory.mktemp("prompt-completion")
    train, evaluation = write_prompt_completion_dataset(root / "data", n_train=600, n_eval=60, seed=0)
    model = build_tiny_model(root / "gpt", read_texts(train), task="causal-lm", seed=0)
    return train, evaluation, model


def _spec(train: Path, evaluation: Path, **dataset: Any) -> Any:
    return parse_spec(
        {
            "model": {"name": "tiny-gpt", "task": "causal-lm"},
            "dataset": {
                "files": {"train": str(train), "eval": str(evaluation)},
                "labelField": None,
                "promptField": "prompt",
                "completionField": "completion",
                "maxLength": MAX_LENGTH,
                **dataset,
            },
            "training": {"metrics": ["perplexity"]},
        }
    )


def _no_dropout(model: Any) -> Any:
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    return model.eval()


def test_a_pair_is_prompt_then_completion_then_eos_and_only_the_prompt_is_masked() -> None:
    ids, labels = prompt_completion_example([1, 2, 3], [7, 8], eos_id=0, max_length=16)
    assert ids == [1, 2, 3, 7, 8, 0]
    assert labels == [-100, -100, -100, 7, 8, 0]
    # Too long: the prompt loses its start first, then the completion its end (it still closes with EOS).
    assert prompt_completion_example([1, 2, 3, 4], [7, 8], 0, max_length=5) == (
        [3, 4, 7, 8, 0],
        [-100, -100, 7, 8, 0],
    )
    assert prompt_completion_example([1, 2], [7, 8, 9, 10], 0, max_length=3) == ([7, 8, 0], [7, 8, 0])


def test_prompt_tokens_carry_no_loss_and_the_closing_eos_does(pairs: tuple[Path, Path, Path]) -> None:
    train, evaluation, folder = pairs
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = tokenizer.eos_token_id
    data = prepare_data(_spec(train, evaluation), tokenizer, None)
    raw = train.read_text().splitlines()[:8]
    rows = [data.train[i] for i in range(8)]
    for row, line in zip(rows, raw, strict=True):
        pair = json.loads(line)
        prompt = tokenizer(pair["prompt"])["input_ids"]
        completion = tokenizer(pair["completion"], add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == prompt + completion + [eos]
        assert row["labels"] == [-100] * len(prompt) + completion + [eos]

    batch = build_collator("causal-lm", tokenizer)(rows)
    model = _no_dropout(AutoModelForCausalLM.from_pretrained(folder))
    with torch.no_grad():
        loss = model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # The mean next-token loss over completion tokens and EOS only, by hand: what the model's loss must be.
    token_losses, closing_eos = [], []
    for index, row in enumerate(rows):
        prompt_length = row["labels"].count(-100)
        length = len(row["input_ids"])
        for position in range(prompt_length, length):  # predicted from the token before
            token_losses.append(
                F.cross_entropy(logits[index, position - 1], batch["input_ids"][index, position])
            )
        closing_eos.append(batch["labels"][index, length - 1].item())
    assert closing_eos == [eos] * len(rows), "the EOS closing each completion is a target"
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all(), "padding (= eos) is not"
    assert loss.item() == pytest.approx(torch.stack(token_losses).mean().item(), rel=1e-5)


def test_packing_keeps_the_prompt_mask_and_texts_do_not_attend_to_each_other(
    pairs: tuple[Path, Path, Path],
) -> None:
    train, evaluation, folder = pairs
    tokenizer = AutoTokenizer.from_pretrained(folder)
    unpacked = prepare_data(_spec(train, evaluation), tokenizer, None)
    packed = prepare_data(_spec(train, evaluation, packing=True), tokenizer, None)
    block = packed.train[0]
    assert len(block["input_ids"]) == MAX_LENGTH

    # The first block holds the first texts in order; walk them and compare with the unpacked rows.
    model = _no_dropout(AutoModelForCausalLM.from_pretrained(folder))
    model.config.use_cache = False  # as the trainer runs it
    batch = build_collator("causal-lm", tokenizer)([packed.train[0], packed.train[1]])
    assert "attention_mask" not in batch, "packed batches are delimited by position ids"
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    start, complete = 0, 0
    for index in range(len(unpacked.train)):
        row = unpacked.train[index]
        end = start + len(row["input_ids"])
        if end > MAX_LENGTH:
            break
        assert block["input_ids"][start:end] == row["input_ids"]
        assert block["position_ids"][start:end] == list(range(len(row["input_ids"])))
        # The prompt mask survives; the first token of a text is never a target (nothing before it in its text).
        assert block["labels"][start:end] == [-100, *row["labels"][1:]]
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        # Identical logits: nothing outside the text is attended to, and positions restart at 0.
        torch.testing.assert_close(packed_logits[start:end], alone, rtol=1e-4, atol=1e-4)
        start, complete = end, complete + 1
    assert complete >= 1, "at least one text fits in the first block"
    assert (batch["labels"] != -100).sum() > 0


def _generate(model: Any, tokenizer: Any, prompt: str) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert tokenizer.eos_token_id in new, f"generation did not stop: {tokenizer.decode(new)!r}"
    return str(tokenizer.decode(new[: new.index(tokenizer.eos_token_id)]))


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_a_tiny_causal_lm_learns_to_complete_held_out_prompts(
    tmp_path: Path, pairs: tuple[Path, Path, Path], in_process_env: dict[str, str], packing: bool
) -> None:
    """Given a FineTuneJob on prompt/completion pairs, when a tiny GPT-2 is trained on them, then its loss on
    completions falls far below where it started and it answers held-out prompts word for word, then stops."""
    train, evaluation, folder = pairs
    job = write_job_file(
        tmp_path / "job.yaml",
        model=str(folder),
        train=str(train),
        eval=str(evaluation),
        output=str(tmp_path / "out"),
        overrides={
            "model": {"task": "causal-lm"},
            "dataset": {
                "labelField": None,
                "promptField": "prompt",
                "completionField": "completion",
                "maxLength": MAX_LENGTH,
                "packing": packing,
            },
            "training": {
                "metrics": ["perplexity"],
                "epochs": 4,
                "learningRate": 3e-3,
                "warmupSteps": 5,
                # A packed block of 48 tokens holds about two pairs: half the blocks per step, as many pairs.
                "perDeviceTrainBatchSize": 8 if packing else 16,
                "loggingSteps": 5,
            },
            "checkpointing": {"atEpochEnd": False},
        },
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == 0, explain(result)
    losses = [event.loss for event in result.events if event.event == "step" and event.loss is not None]
    print(f"packing={packing}: completion loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} logs")
    assert losses[-1] < 0.25 * losses[0], losses

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model").eval()
    held_out = [json.loads(line) for line in evaluation.read_text().splitlines()][:20]
    right = sum(_generate(model, tokenizer, pair["prompt"]) == pair["completion"] for pair in held_out)
    print(f"packing={packing}: {right}/{len(held_out)} held-out completions exact")
    assert right >= 18
