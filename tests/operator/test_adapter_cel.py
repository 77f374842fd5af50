"""spec.adapter and chat data on a cluster: the CRD's CEL rules refuse what `kubetune validate` refuses (an adapter
on a classification job, all-linear with other names, QLoRA under ZeRO-3, conversations with prompt/completion
fields, a chat template without conversations, conversations for classification) and accept the rest, naming the
field (server-side dry-run creates against the real API server)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubetune.spec import SpecError, parse_job
from kubetune.spec.models import API_GROUP, API_VERSION, PLURAL

CHAT = {"name": "HuggingFaceH4/ultrachat_200k", "messagesField": "messages", "labelField": None}


def document(model: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model or {"name": "Qwen/Qwen2.5-0.5B-Instruct", "task": "causal-lm"},
        "dataset": CHAT,
        "training": {"metrics": ["perplexity"]},
    }
    body.update(spec)
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "lora"},
        "spec": body,
    }


BERT = {"name": "bert-base-uncased"}
GLUE = {"name": "glue", "config": "sst2", "textFields": ["sentence"]}
# name -> (document, accepted?, the field the refusal names)
CASES: dict[str, tuple[dict[str, Any], bool, str]] = {
    "lora on chat data": (
        document(adapter={"targetModules": ["q_proj", "v_proj"], "mergeAtEnd": True}),
        True,
        "",
    ),
    "qlora on zero-2": (
        document(adapter={"qlora": {}}, distribution={"deepspeed": {"zeroStage": 2}}),
        True,
        "",
    ),
    "adapter on classification": (
        document(model=BERT, dataset=GLUE, training={}, adapter={}),
        False,
        "spec.adapter",
    ),
    "all-linear and more": (
        document(adapter={"targetModules": ["all-linear", "q_proj"]}),
        False,
        "spec.adapter.targetModules",
    ),
    "qlora on zero-3": (
        document(adapter={"qlora": {}}, distribution={"deepspeed": {"zeroStage": 3}}),
        False,
        "spec.adapter.qlora",
    ),
    "messages and prompt": (
        document(dataset={**CHAT, "promptField": "p", "completionField": "c"}),
        False,
        "spec.dataset.messagesField",
    ),
    "template without messages": (
        document(dataset={"name": "x", "labelField": None, "chatTemplate": "zephyr"}),
        False,
        "spec.dataset.chatTemplate",
    ),
    "messages for classification": (
        document(model=BERT, training={}, dataset={**GLUE, "messagesField": "m"}),
        False,
        "spec.dataset.messagesField",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kubetune_validate_decides_each_case(name: str) -> None:
    doc, accepted, _ = CASES[name]
    if accepted:
        parse_job(doc, for_cluster=True)
    else:
        with pytest.raises(SpecError):
            parse_job(doc, for_cluster=True)


@pytest.mark.cluster
def test_the_api_server_decides_the_same(
    kube_cluster: Any, kube_namespace: str, finetunejob_crd: None
) -> None:
    api = client.CustomObjectsApi(kube_cluster.api_client())
    for name, (doc, accepted, field) in CASES.items():
        try:
            api.create_namespaced_custom_object(
                API_GROUP, API_VERSION, kube_namespace, PLURAL, doc, dry_run="All"
            )
            verdict = True
        except ApiException as error:
            assert error.status == 422, (name, error.body)
            assert field in (error.body or ""), (name, error.body)
            verdict = False
        assert verdict == accepted, name
