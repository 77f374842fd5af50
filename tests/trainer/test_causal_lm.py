"""Causal-LM data on a tiny GPT-2 built locally (pad = eos, as in most causal LMs): every text ends with an EOS
that is a training target, only padding is masked, and packing fills blocks without padding (see also
test_prompt_masking.py for prompt/completion pairs and attention within packed texts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune.spec import parse_spec
from kubetune_trainer.data import build_collator, prepare_data
from kubetune_trainer.synthetic import build_tiny_model, read_texts, write_job_file
from transformers import AutoTokenizer

from tests.trainer.helpers import Assets, explain, train_in_process

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def gpt2_tokenizer(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> object:
    folder = build_tiny_model(
        tmp_path_factory.mktemp("gpt") / "gpt", read_texts(assets.train), task="causal-lm"
    )
    return AutoTokenizer.from_pretrained(folder)


def _spec(assets: Assets, **dataset: object) -> object:
    return parse_spec(
        {
            "model": {"name": "tiny-gpt", "task": "causal-lm"},
            "dataset": {
                "files": {"train": str(assets.train), "eval": str(assets.eval)},
                "labelField": None,
                "maxLength": 32,
                **dataset,
            },
            "training": {"metrics": ["perplexity"]},
        }
    )


def test_every_text_ends_with_an_eos_that_is_a_target_and_only_padding_is_masked(
    assets: Assets, gpt2_tokenizer: object
) -> None:
    tokenizer: object = gpt2_tokenizer
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    assert tokenizer.pad_token_id == eos  # type: ignore[attr-defined]
    data = prepare_data(_spec(assets), tokenizer, None)  # type: ignore[arg-type]
    rows = [data.train[i] for i in range(8)]
    assert all(row["input_ids"][-1] == eos for row in rows)
    assert len({len(row["input_ids"]) for row in rows}) > 1, "texts of different lengths, so the batch pads"

    batch = build_collator("causal-lm", tokenizer)(rows)
    for row, (ids, labels, mask) in enumerate(
        zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)
    ):
        length = len(rows[row]["input_ids"])
        assert labels[length - 1] == eos, "the closing EOS is a target"
        assert (labels[length:] == -100).all() and (ids[length:] == eos).all(), "padding (= eos) is masked"
        assert (labels[:length] == ids[:length]).all() and mask[:length].all()

    padded = build_collator("causal-lm", tokenizer, pad_to_multiple_of=8)(rows)
    assert padded["input_ids"].shape[1] % 8 == 0


def test_packing_fills_blocks_of_max_length_with_eos_between_texts(
    assets: Assets, gpt2_tokenizer: object
) -> None:
    tokenizer: object = gpt2_tokenizer
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    unpacked = prepare_data(_spec(assets), tokenizer, None)  # type: ignore[arg-type]
    packed = prepare_data(_spec(assets, packing=True), tokenizer, None)  # type: ignore[arg-type]
    tokens = sum(unpacked.train_lengths)
    assert len(packed.train) == tokens // 32, "every token kept but the last partial block"
    assert set(packed.train_lengths) == {32}
    first = packed.train[0]["input_ids"]
    assert first.count(eos) >= 2, "several texts per block, each closed by EOS"
    batch = build_collator("causal-lm", tokenizer)([packed.train[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 32)
    assert "attention_mask" not in batch, "no padding; position ids delimit the texts"
    starts = batch["position_ids"] == 0
    assert starts.sum() >= 8, "several texts per block, positions restarting at each"
    assert (batch["labels"][starts] == -100).all(), "a text's first token has nothing before it to predict it"
    assert (batch["labels"][~starts] == batch["input_ids"][~starts]).all(), "every other token is a target"


def test_packing_is_refused_for_classification() -> None:
    from kubetune.spec import SpecError

    with pytest.raises((SpecError, ValueError), match="packing applies to causal-lm only"):
        parse_spec({"model": {"name": "m"}, "dataset": {"name": "glue", "packing": True}})


def test_accumulating_two_micro_batches_of_8_equals_one_batch_of_16_per_token(
    tmp_path: Path, assets: Assets, in_process_env: dict[str, str]
) -> None:
    """The loss of a causal LM is the mean over the step's target tokens (transformers' num_items_in_batch),
    not the mean of per-micro-batch means: texts of different lengths weigh by their tokens either way."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    source = build_tiny_model(tmp_path / "gpt", read_texts(assets.train), task="causal-lm")
    model = AutoModelForCausalLM.from_pretrained(source)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = (
        0.0  # same masks either way
    )
    model.save_pretrained(tmp_path / "gpt-no-dropout")
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / "gpt-no-dropout")

    def run(name: str, batch: int, accumulation: int) -> dict[str, torch.Tensor]:
        job = write_job_file(
            tmp_path / f"{name}.yaml",
            model=str(tmp_path / "gpt-no-dropout"),
            train=str(assets.train),
            output=str(tmp_path / name),
            overrides={
                "model": {"task": "causal-lm"},
                "dataset": {"labelField": None},
                "training": {
                    "metrics": ["perplexity"],
                    "maxSteps": 4,
                    "learningRate": 1e-3,
                    "warmupSteps": 0,
                    "perDeviceTrainBatchSize": batch,
                    "gradientAccumulationSteps": accumulation,
                },
            },
        )
        result = train_in_process(job, in_process_env)
        assert result.returncode == 0, explain(result)
        return load_file(tmp_path / name / "model" / "model.safetensors")

    accumulated = run("accumulated", 8, 2)
    whole = run("whole", 16, 1)
    initial = load_file(tmp_path / "gpt-no-dropout" / "model.safetensors")
    moved = max((whole[k] - initial[k]).abs().max().item() for k in whole)
    apart = max((accumulated[k] - whole[k]).abs().max().item() for k in whole)
    print(f"4 steps moved weights by up to {moved:.2e}; 2 x 8 vs 16: {apart:.2e}")
    assert moved > 1e-3
    assert apart < 1e-5
