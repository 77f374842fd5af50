"""LoRA adapters (spec.adapter) on chat data (dataset.messagesField), on a tiny GPT-2 built here.

The base: a tiny GPT-2 whose every weight was first trained (`pretrain_tiny_chat_model`) on conversations where
each animal makes the *next* animal's sound. The fine-tuning data say the true sounds. A LoRA adapter trained on
them must correct the base: before, the base answers held-out questions with the shifted sound; after, the merged
model answers with the true one, then stops.

What the tests show, all real (gloo on loopback, DeepSpeed's real ZeRO-2, peft's real LoRA layers):
- conversations are rendered with the chat template, and only assistant turns (their content and end-of-turn
  EOS) carry loss;
- 2 simulated nodes with ZeRO-2: the loss on completions falls, only adapter weights train, checkpoints hold
  only them (plus the optimizer state), the merged model generates the learned answers, and a run resumed from a
  mid-run checkpoint ends bit-identical to the uninterrupted one;
- the same exact resume under ZeRO-3 (2 processes, the base partitioned too), kept to 20 steps;
- the same exact resume without DeepSpeed (accelerate's save/load hooks do the filtering there);
- QLoRA's 4-bit config is built on CPU, and the job is refused (exit 2) where CUDA is absent;
- bad target layer names stop the job at model load, naming the field and the layers the model has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from kubetune.contract import EXIT_INVALID_SPEC
from kubetune.events import EventKind
from kubetune.spec import parse_spec
from kubetune.spec.adapters import AdapterSpec, QLoraSpec
from kubetune_trainer import adapters, chat
from kubetune_trainer.data import DataError, pack_blocks, prepare_data
from kubetune_trainer.synthetic import (
    ANIMAL_SOUNDS,
    SHIFTED_ANIMAL_SOUNDS,
    build_tiny_model,
    pretrain_tiny_chat_model,
    read_texts,
    write_chat_dataset,
    write_job_file,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.helpers import child_env, explain, run_nodes, train_in_process

pytestmark = pytest.mark.timeout(600)

MAX_LENGTH = 96


@pytest.fixture(scope="module")
def chat_assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(train, eval, base model folder): the true-sound conversations and the shifted-sound tiny chat base."""
    root = tmp_path_factory.mktemp("lora")
    train, evaluation = write_chat_dataset(root / "data", n_train=600, n_eval=60, seed=0)
    base_train, _ = write_chat_dataset(
        root / "base-data", n_train=600, n_eval=1, seed=1, sounds=SHIFTED_ANIMAL_SOUNDS
    )
    folder = build_tiny_model(
        root / "base", read_texts(base_train), task="causal-lm", chat_template=chat.ZEPHYR_TEMPLATE
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        conversations = [json.loads(line)["messages"] for line in base_train.read_text().splitlines()]
        pretrain_tiny_chat_model(folder, conversations)
    finally:
        torch.set_num_threads(threads)
    return train, evaluation, folder


def _spec(train: Path, evaluation: Path, **dataset: Any) -> Any:
    return parse_spec(
        {
            "model": {"name": "tiny-gpt", "task": "causal-lm"},
            "dataset": {
                "files": {"train": str(train), "eval": str(evaluation)},
                "messagesField": "messages",
                "maxLength": MAX_LENGTH,
                **dataset,
            },
            "training": {"metrics": ["perplexity"]},
        }
    )


def _overrides(**adapter: Any) -> dict[str, Any]:
    return {
        "model": {"task": "causal-lm"},
        "dataset": {"labelField": None, "messagesField": "messages", "maxLength": MAX_LENGTH},
        "training": {
            "metrics": ["perplexity"],
            "epochs": 2,
            "learningRate": 1e-2,
            "warmupSteps": 5,
            "lrScheduler": "constant_with_warmup",
            "perDeviceTrainBatchSize": 16,
            "loggingSteps": 5,
            "evalStrategy": "no",
        },
        "checkpointing": {"atEpochEnd": False, "everySteps": 10, "keepLast": 5},
        "adapter": {"rank": 16, "alpha": 32, "targetModules": ["all-linear"], **adapter},
    }


def _answer(model: Any, tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The model's greedy reply to `messages` (rendered with its saved chat template); asserts it stops."""
    ids = chat.render_prompt(tokenizer, messages)
    with torch.no_grad():
        output = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    new = output[0, ids.shape[1] :].tolist()
    assert tokenizer.eos_token_id in new, f"generation did not stop: {tokenizer.decode(new)!r}"
    return str(tokenizer.decode(new[: new.index(tokenizer.eos_token_id)]))


def _held_out(evaluation: Path, count: int = 20) -> list[tuple[list[dict[str, str]], str]]:
    """(system + first user turn, the animal) of held-out conversations."""
    rows = [json.loads(line)["messages"] for line in evaluation.read_text().splitlines()][:count]
    return [
        (messages[:2], messages[1]["content"].split(" what does the ")[1].split()[0]) for messages in rows
    ]


# --- chat data -----------------------------------------------------------------------------------------------


def test_only_assistant_turns_and_their_eos_carry_loss(chat_assets: tuple[Path, Path, Path]) -> None:
    """Given conversations, when they are tokenized, then system and user tokens (and the role markers) are -100,
    and every assistant turn's content with the EOS that ends it is a target, in multi-turn conversations too."""
    train, evaluation, folder = chat_assets
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = tokenizer.eos_token_id
    data = prepare_data(_spec(train, evaluation), tokenizer, None)
    raw = [json.loads(line)["messages"] for line in train.read_text().splitlines()]
    multi_turn = 0
    for index in range(40):
        row, messages = data.train[index], raw[index]
        assert (
            row["input_ids"]
            == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        )
        # The targets, in order, are exactly each assistant reply followed by EOS.
        targets = [token for token in row["labels"] if token != -100]
        expected: list[int] = []
        for message in messages:
            if message["role"] == "assistant":
                expected += tokenizer(message["content"], add_special_tokens=False)["input_ids"] + [eos]
        assert targets == expected
        # Every other token, the system and user turns' EOS included, carries no loss.
        labelled = [i for i, token in enumerate(row["labels"]) if token != -100]
        assert all(row["labels"][i] == row["input_ids"][i] for i in labelled)
        user_end = row["input_ids"].index(eos)  # the system turn's EOS
        assert row["labels"][: user_end + 1] == [-100] * (user_end + 1)
        multi_turn += sum(m["role"] == "assistant" for m in messages) > 1
    assert multi_turn >= 5, "the sample has multi-turn conversations"

    # Packing keeps each conversation's mask (and the first token of each is not a target).
    block = pack_blocks(
        [data.train[i]["input_ids"] for i in range(3)], [data.train[i]["labels"] for i in range(3)], 64
    )
    first = data.train[0]
    assert block["labels"][0][: len(first["labels"])] == [-100, *first["labels"][1:]]

    # assistantOnlyLoss: false trains on every token.
    everything = prepare_data(_spec(train, evaluation, assistantOnlyLoss=False), tokenizer, None)
    assert everything.train[0]["labels"] == everything.train[0]["input_ids"]


def test_chat_templates_are_resolved_or_refused_with_the_field_to_set(
    chat_assets: tuple[Path, Path, Path],
) -> None:
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_training_chat_template

    train, evaluation, folder = chat_assets
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # A tokenizer without a template (a base model) and no dataset.chatTemplate: refused, naming the field.
    tokenizer.chat_template = None
    with pytest.raises(DataError, match=r"has no chat template.*spec\.dataset\.chatTemplate"):
        prepare_data(_spec(train, evaluation), tokenizer, None)
    # The built-in one by name.
    spec = _spec(train, evaluation, chatTemplate="zephyr").dataset
    assert chat.resolve_chat_template(tokenizer, spec, "tiny") == chat.ZEPHYR_TEMPLATE
    # A known template without generation markers (Qwen2.5's) is swapped for TRL's marked training version.
    tokenizer.chat_template = qwen2_5_chat_template
    resolved = chat.resolve_chat_template(tokenizer, _spec(train, evaluation).dataset, "qwen")
    assert resolved == qwen2_5_training_chat_template and chat.has_generation_markers(resolved)
    # An unknown template without markers cannot tell assistant tokens apart: refused, with the ways out.
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(
        DataError, match=r"assistantOnlyLoss is true.*\{% generation %\}.*assistantOnlyLoss: false"
    ):
        chat.resolve_chat_template(tokenizer, _spec(train, evaluation, chatTemplate=plain).dataset, "tiny")
    assert (
        chat.resolve_chat_template(
            tokenizer, _spec(train, evaluation, chatTemplate=plain, assistantOnlyLoss=False).dataset, "tiny"
        )
        == plain
    )
    # A column that is not a list of messages.
    with pytest.raises(DataError, match=r"messagesField is 'messages' but row 0"):
        chat.check_conversations(["hello"], "messages")


# --- LoRA on 2 nodes with ZeRO-2 -----------------------------------------------------------------------------


def test_lora_on_two_nodes_with_zero2_learns_keeps_only_the_adapter_in_checkpoints_and_resumes_exactly(
    tmp_path: Path, chat_assets: tuple[Path, Path, Path]
) -> None:
    """Given a FineTuneJob with spec.adapter on chat data, 2 nodes and ZeRO-2, when it trains, then the completion
    loss falls, only LoRA weights train and are checkpointed, the merged model answers held-out questions with
    the learned (not the base's) sounds, and a run resumed from its step-60 checkpoint ends bit-identical."""
    train, evaluation, base = chat_assets
    env = child_env(tmp_path, KUBETUNE_DEBUG_WEIGHTS_HASH="1")
    overrides = {
        **_overrides(mergeAtEnd=True),
        "distribution": {"nodes": 2, "processesPerNode": 1, "deepspeed": {"zeroStage": 2}},
        # A global batch of 16 as in the single-process runs: 600 conversations, 2 epochs, 76 steps.
        "training": {**_overrides()["training"], "perDeviceTrainBatchSize": 8},
        "checkpointing": {"atEpochEnd": False, "everySteps": 20, "keepLast": 5},
    }

    def job(name: str) -> Path:
        return write_job_file(
            tmp_path / f"{name}.yaml",
            model=str(base),
            train=str(train),
            eval=str(evaluation),
            output=str(tmp_path / f"{name}-out"),
            overrides=overrides,
        )

    results = run_nodes(job("straight"), env, nodes=2, timeout=400)
    assert [r.returncode for r in results] == [0, 0], explain(results)
    losses = [e.loss for e in results[0].events if e.event == EventKind.STEP and e.loss is not None]
    print(
        f"\nLoRA, 2 nodes, ZeRO-2: completion loss {losses[0]:.3f} -> {losses[-1]:.3f} ({len(losses)} logs)"
    )
    assert losses[-1] < 0.6 * losses[0], losses
    output = tmp_path / "straight-out"

    # The checkpoint holds the adapter only: DeepSpeed's module states and ZeRO-2 optimizer shards, no base weights
    # (nor the head, which GPT-2 ties to its frozen embeddings).
    checkpoint = output / "checkpoints" / "step-60" / "pytorch_model"
    module = torch.load(checkpoint / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)[
        "module"
    ]
    assert module and all("lora_" in name for name in module), sorted(module)[:5]
    assert len(sorted(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))) == 2
    base_bytes = (base / "model.safetensors").stat().st_size
    assert sum(t.numel() * t.element_size() for t in module.values()) < base_bytes / 3

    # The adapter (adapter_model.safetensors + adapter_config.json) and the merged full model.
    model_dir = output / "model"
    adapter_weights = load_file(str(model_dir / "adapter" / "adapter_model.safetensors"))
    assert adapter_weights and all("lora_" in name for name in adapter_weights)
    config = json.loads((model_dir / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 16, 32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters()), "merged, not wrapped"
    base_model = AutoModelForCausalLM.from_pretrained(base).eval()
    held_out = _held_out(evaluation)
    learned = sum(
        _answer(merged, tokenizer, m) == f"{ANIMAL_SOUNDS[a]} {ANIMAL_SOUNDS[a]}" for m, a in held_out
    )
    base_answers = [(_answer(base_model, tokenizer, m), a) for m, a in held_out]
    shifted = sum(
        answer == f"{SHIFTED_ANIMAL_SOUNDS[a]} {SHIFTED_ANIMAL_SOUNDS[a]}" for answer, a in base_answers
    )
    already = sum(answer == f"{ANIMAL_SOUNDS[a]} {ANIMAL_SOUNDS[a]}" for answer, a in base_answers)
    print(
        f"held-out answers: the base gives the shifted sound {shifted}/20 and the true one {already}/20; "
        f"the merged model the true one {learned}/20"
    )
    assert shifted >= 10 and already <= 2, "the base believed other sounds: the adapter taught the true ones"
    assert learned >= 18

    # Resume: a new output folder holding only the step-60 checkpoint continues to the same end, bit for bit.
    resumed_output = tmp_path / "resumed-out"
    shutil.copytree(output / "checkpoints" / "step-60", resumed_output / "checkpoints" / "step-60")
    resumed = run_nodes(job("resumed"), env, nodes=2, timeout=400)
    assert [r.returncode for r in resumed] == [0, 0], explain(resumed)
    started = next(e for e in resumed[0].events if e.event == EventKind.STARTED)
    assert started.resumed_from_step == 60

    def hashes(folder: Path) -> list[str]:
        return [p.read_text() for p in sorted((folder / "debug").glob("weights-rank-*.sha256"))]

    assert len(hashes(output)) == 2 and len(set(hashes(output))) == 1, "both ranks hold the same weights"
    assert hashes(resumed_output) == hashes(output), (
        "the resumed run's weights differ from the uninterrupted run's"
    )


def test_lora_with_zero3_resumes_exactly_from_a_checkpoint_of_the_adapter_only(
    tmp_path: Path, chat_assets: tuple[Path, Path, Path]
) -> None:
    """Given spec.adapter with ZeRO-3 on 2 processes (the frozen base and the adapter both partitioned), when a run
    resumes from its step-10 checkpoint, then it ends with the adapter of the uninterrupted 20-step run, bit for
    bit: the weights gathered on every rank and the saved adapter files. Small for CI: 20 steps, no evaluation,
    no merge."""
    train, _evaluation, base = chat_assets
    env = child_env(tmp_path, KUBETUNE_DEBUG_WEIGHTS_HASH="1")
    overrides = {
        **_overrides(),
        "distribution": {"nodes": 1, "processesPerNode": 2, "deepspeed": {"zeroStage": 3}},
        "training": {**_overrides()["training"], "perDeviceTrainBatchSize": 8, "maxSteps": 20},
    }

    def run(name: str) -> list[Any]:
        job = write_job_file(
            tmp_path / f"{name}.yaml",
            model=str(base),
            train=str(train),
            output=str(tmp_path / f"{name}-out"),
            overrides=overrides,
        )
        results = run_nodes(job, env, nodes=1, procs_per_node=2, timeout=400)
        assert [r.returncode for r in results] == [0], explain(results)
        return results

    straight = run("straight")
    losses = [e.loss for e in straight[0].events if e.event == EventKind.STEP and e.loss is not None]
    print(f"\nLoRA, ZeRO-3 on 2 processes: completion loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < losses[0], losses
    output = tmp_path / "straight-out"
    # ZeRO-3 names its module states per rank (zero_pp_rank_<r>_mp_rank_00_model_states.pt).
    checkpoint = output / "checkpoints" / "step-10" / "pytorch_model"
    states = sorted(checkpoint.glob("*model_states.pt"))
    assert states, sorted(p.name for p in checkpoint.iterdir())
    module = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    assert module and all("lora_" in name for name in module), sorted(module)[:5]
    assert len(sorted(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))) == 2

    shutil.copytree(output / "checkpoints" / "step-10", tmp_path / "resumed-out" / "checkpoints" / "step-10")
    resumed = run("resumed")
    assert next(e for e in resumed[0].events if e.event == EventKind.STARTED).resumed_from_step == 10

    def hashes(folder: Path) -> list[str]:
        return [p.read_text() for p in sorted((folder / "debug").glob("weights-rank-*.sha256"))]

    assert len(hashes(output)) == 2 and len(set(hashes(output))) == 1, "both ranks gather the same weights"
    assert hashes(tmp_path / "resumed-out") == hashes(output), "the resumed run's weights differ"
    expected = load_file(str(output / "model" / "adapter_model.safetensors"))
    actual = load_file(str(tmp_path / "resumed-out" / "model" / "adapter_model.safetensors"))
    assert expected and all("lora_" in name for name in expected), sorted(expected)[:5]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected), "the saved adapters differ"


def test_lora_without_deepspeed_checkpoints_only_trainable_weights_and_resumes_exactly(
    tmp_path: Path, chat_assets: tuple[Path, Path, Path], in_process_env: dict[str, str]
) -> None:
    """One process, no DeepSpeed (the DDP path): accelerate's checkpoint holds the adapter only; resuming from
    step 10 ends with the weights of the uninterrupted 20-step run; peft's default targets for GPT-2 (c_attn)."""
    train, _evaluation, base = chat_assets
    env = {**in_process_env, "KUBETUNE_DEBUG_WEIGHTS_HASH": "1"}
    overrides = _overrides(targetModules=None)
    overrides["training"] = {**overrides["training"], "maxSteps": 20}

    def job(name: str) -> Path:
        return write_job_file(
            tmp_path / f"{name}.yaml",
            model=str(base),
            train=str(train),
            output=str(tmp_path / f"{name}-out"),
            overrides=overrides,
        )

    straight = train_in_process(job("straight"), env)
    assert straight.returncode == 0, explain(straight)
    weights = load_file(str(tmp_path / "straight-out" / "checkpoints" / "step-10" / "model.safetensors"))
    assert weights and all("lora_" in name and "c_attn" in name for name in weights), sorted(weights)
    adapter_files = sorted(p.name for p in (tmp_path / "straight-out" / "model").iterdir())
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(adapter_files)
    assert "model.safetensors" not in adapter_files, "no merge asked for: the adapter only"

    shutil.copytree(
        tmp_path / "straight-out" / "checkpoints" / "step-10",
        tmp_path / "resumed-out" / "checkpoints" / "step-10",
    )
    resumed = train_in_process(job("resumed"), env)
    assert resumed.returncode == 0, explain(resumed)
    assert next(e for e in resumed.events if e.event == EventKind.STARTED).resumed_from_step == 10
    digest = "debug/weights-rank-0.sha256"
    assert (tmp_path / "resumed-out" / digest).read_text() == (tmp_path / "straight-out" / digest).read_text()


# --- refusals ------------------------------------------------------------------------------------------------


def test_target_modules_that_match_no_layer_stop_the_job_naming_the_layers_there_are(
    tmp_path: Path, chat_assets: tuple[Path, Path, Path], in_process_env: dict[str, str]
) -> None:
    train, _evaluation, base = chat_assets
    job = write_job_file(
        tmp_path / "job.yaml",
        model=str(base),
        train=str(train),
        output=str(tmp_path / "out"),
        overrides=_overrides(targetModules=["q_proj", "c_attn"]),
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == EXIT_INVALID_SPEC, explain(result)
    assert "spec.adapter.targetModules names ['q_proj']" in result.stderr
    assert "'c_attn'" in result.stderr and "'c_fc'" in result.stderr, "lists the model's linear layers"


def test_qlora_builds_a_4bit_config_and_is_refused_without_cuda(
    tmp_path: Path, chat_assets: tuple[Path, Path, Path], in_process_env: dict[str, str]
) -> None:
    """The QLoRA config path runs on CPU (transformers' BitsAndBytesConfig, no bitsandbytes import); the job itself
    needs CUDA and is refused with exit 2 before anything loads. (This machine has no CUDA: the refusal is real.)"""
    assert not torch.cuda.is_available(), "this test checks the refusal on a machine without CUDA"
    kwargs = adapters.quantization_load_kwargs(QLoraSpec(quant_type="nf4", compute_dtype="bfloat16"), 1)
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("nf4", True)
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and kwargs["device_map"] == {"": 1}

    train, _evaluation, base = chat_assets
    job = write_job_file(
        tmp_path / "job.yaml",
        model=str(base),
        train=str(train),
        output=str(tmp_path / "out"),
        overrides=_overrides(qlora={}),
    )
    result = train_in_process(job, in_process_env)
    assert result.returncode == EXIT_INVALID_SPEC, explain(result)
    assert "spec.adapter.qlora" in result.stderr and "CUDA GPUs only" in result.stderr
    assert not (tmp_path / "out").exists(), "refused before training started"


def test_peft_default_targets_apply_when_target_modules_is_unset(
    chat_assets: tuple[Path, Path, Path],
) -> None:
    _, _, base = chat_assets
    model = AutoModelForCausalLM.from_pretrained(base)
    assert adapters.resolve_targets(AdapterSpec(), model) is None  # peft's table: c_attn for gpt2
    wrapped = adapters.attach_adapter(model, AdapterSpec(rank=4), gradient_checkpointing=False)
    trainable = [name for name, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name and "c_attn" in name for name in trainable)
    model.config.model_type = "no-such-architecture"
    with pytest.raises(adapters.AdapterError, match=r"targetModules is unset and peft has no default"):
        adapters.resolve_targets(AdapterSpec(), model)
