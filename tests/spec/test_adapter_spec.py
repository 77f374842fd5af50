"""spec.adapter (LoRA/QLoRA) and chat data (dataset.messagesField): what `kubetune validate` accepts and how it
names what it refuses. The CRD carries a CEL twin of each rule (tests/operator/test_crd.py counts them; the spec
fuzz checks the API server agrees)."""

from __future__ import annotations

from typing import Any

import pytest
from kubetune.crd import CEL_RULES
from kubetune.spec import SpecError, parse_job
from kubetune.spec.adapters import AdapterSpec

CAUSAL: dict[str, Any] = {"model": {"name": "Qwen/Qwen2.5-1.5B-Instruct", "task": "causal-lm"}}
CHAT: dict[str, Any] = {
    "name": "HuggingFaceH4/ultrachat_200k",
    "messagesField": "messages",
    "trainSplit": "train_sft",
}


def job(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**CAUSAL, "dataset": CHAT, "training": {"metrics": ["perplexity"]}}
    body.update(spec)
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "t"},
        "spec": body,
    }


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_job(document)
    return [str(p) for p in caught.value.problems]


def test_an_adapter_block_gets_documented_defaults() -> None:
    adapter = parse_job(job(adapter={})).spec.adapter
    assert adapter == AdapterSpec()
    assert (adapter.rank, adapter.alpha, adapter.dropout, adapter.bias) == (16, 32, 0.05, "none")
    assert adapter.target_modules is None and not adapter.merge_at_end and adapter.qlora is None
    assert parse_job(job()).spec.adapter is None, "no adapter: full fine-tuning"
    qlora = parse_job(job(adapter={"qlora": {}})).spec.adapter
    assert qlora is not None and qlora.qlora is not None
    assert (qlora.qlora.quant_type, qlora.qlora.double_quant, qlora.qlora.compute_dtype) == (
        "nf4",
        True,
        "bfloat16",
    )


def test_adapter_refusals_name_the_field_and_the_fix() -> None:
    (found,) = problems(
        job(model={"name": "bert-base-uncased"}, dataset={"name": "glue"}, training={}, adapter={})
    )
    assert "adapter is set but model.task is sequence-classification" in found and "causal-lm" in found
    (found,) = problems(job(adapter={"targetModules": ["all-linear", "q_proj"]}))
    assert "'all-linear' already means every linear layer" in found
    (found,) = problems(job(adapter={"targetModules": ["q proj"]}))
    assert "targetModules" in found
    (found,) = problems(job(adapter={"qlora": {}}, distribution={"deepspeed": {"zeroStage": 3}}))
    assert "adapter.qlora" in found and "zeroStage 0 (DDP) or 2" in found
    (found,) = problems(job(adapter={"rank": 0}))
    assert "adapter.rank" in found


def test_chat_data_refusals_name_the_field_and_the_fix() -> None:
    both = {**CHAT, "promptField": "prompt", "completionField": "completion"}
    (found,) = problems(job(dataset=both))
    assert "dataset.messagesField is 'messages' and dataset.promptField is 'prompt'" in found
    (found,) = problems(job(dataset={"name": "x", "chatTemplate": "zephyr"}))
    assert "dataset.chatTemplate is set but dataset.messagesField is unset" in found
    (found,) = problems(job(model={"name": "bert-base-uncased"}, training={}))
    assert "dataset.messagesField is 'messages' but model.task is sequence-classification" in found
    parsed = parse_job(
        job(dataset={**CHAT, "chatTemplate": "zephyr", "assistantOnlyLoss": False, "packing": True})
    )
    assert parsed.spec.dataset.chat_template == "zephyr" and not parsed.spec.dataset.assistant_only_loss


def test_every_new_rule_has_a_cel_twin() -> None:
    rules = [rule["message"] for rules in CEL_RULES.values() for rule in rules]
    for phrase in (
        "'all-linear' already means every linear layer",
        "LoRA adapters are supported for causal-lm only",
        "adapter.qlora cannot run with distribution.deepspeed.zeroStage 3",
        "dataset.messagesField and dataset.promptField are both set",
        "dataset.chatTemplate is set but dataset.messagesField is unset",
        "dataset.messagesField applies to causal-lm only",
    ):
        assert any(phrase in message for message in rules), phrase
