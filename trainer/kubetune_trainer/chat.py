"""Conversations (dataset.messagesField): render with the chat template, loss on the assistant turns only.

The masking is transformers' own: `apply_chat_template(..., return_assistant_tokens_mask=True)` marks the tokens
a template emits between `{% generation %}` and `{% endgeneration %}`. Most models' templates have no such
markers, so a template without them is swapped for TRL's marked training version of it
(`trl.chat_template_utils.get_training_chat_template`: Qwen2.5/3, Llama 3, Gemma, Phi-3, DeepSeek and more),
rather than kubetune keeping copies of those templates. The training loop stays ours; TRL is only a library of
templates here.
"""

from __future__ import annotations

import re
from typing import Any

from kubetune.spec.models import DatasetSpec

from kubetune_trainer.data import DataError

# kubetune's built-in template (dataset.chatTemplate: zephyr), for tokenizers without one: Zephyr's turn format
# (<|system|>, <|user|>, <|assistant|>, each turn closed by the tokenizer's EOS), with the assistant's content and
# its closing EOS marked for the loss. The EOS ends the turn, so generation stops there with any tokenizer.
ZEPHYR_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{{- '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)
BUILT_IN_TEMPLATES = {"zephyr": ZEPHYR_TEMPLATE}

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str) -> bool:
    """True when `template` marks assistant output with {% generation %} (any whitespace-trim variant)."""
    return _GENERATION_MARKER.search(template) is not None


def resolve_chat_template(tokenizer: Any, spec: DatasetSpec, model_name: str) -> str:
    """The template conversations are rendered with: dataset.chatTemplate (a Jinja text or a built-in name),
    else the tokenizer's; with assistantOnlyLoss, one with generation markers (TRL's training version of a known
    template that has none).

    Raises DataError when there is no template, or when assistant turns cannot be told apart.
    """
    requested = spec.chat_template
    template = BUILT_IN_TEMPLATES.get(requested, requested) if requested else None
    origin = "spec.dataset.chatTemplate"
    if template is None:
        own = getattr(tokenizer, "chat_template", None)
        template = own.get("default") if isinstance(own, dict) else own
        origin = f"the chat template of {model_name}'s tokenizer"
    if not template:
        raise DataError(
            f"spec.dataset.messagesField is '{spec.messages_field}' but the tokenizer of {model_name} has no chat "
            "template (a base model, not an instruct one): set spec.dataset.chatTemplate to a Jinja template, or "
            "to 'zephyr' for kubetune's built-in one"
        )
    if not spec.assistant_only_loss or has_generation_markers(template):
        return template
    patched = _trl_training_template(tokenizer, template)
    if patched is None:
        raise DataError(
            f"spec.dataset.assistantOnlyLoss is true but {origin} does not mark assistant turns with "
            "{% generation %} ... {% endgeneration %}, and TRL has no training version of it: set "
            "spec.dataset.chatTemplate to a copy with those markers around each assistant message (see "
            "transformers' chat-template docs), or 'zephyr', or set assistantOnlyLoss: false to train on every "
            "token"
        )
    return patched


def _trl_training_template(tokenizer: Any, template: str) -> str | None:
    """TRL's generation-marked version of `template`, or None when TRL does not know it."""
    from trl.chat_template_utils import get_training_chat_template

    original = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # "patching is not supported for this template"
        return None
    finally:
        tokenizer.chat_template = original


def check_conversations(conversations: list[Any], field: str) -> None:
    """Raise DataError naming dataset.messagesField when a row is not a list of {role, content} messages."""
    for index, conversation in enumerate(conversations):
        problem = None
        if not isinstance(conversation, list) or not conversation:
            problem = f"is {type(conversation).__name__}, not a non-empty list of messages"
        else:
            for message in conversation:
                if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                    problem = f"has a message without role and content: {str(message)[:120]}"
                    break
        if problem is not None:
            raise DataError(
                f"spec.dataset.messagesField is '{field}' but row {index} of that column {problem}: each row must "
                "be a list such as [{role: user, content: ...}, {role: assistant, content: ...}]"
            )


def encode_conversations(
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    template: str,
    max_length: int,
    assistant_only: bool,
) -> dict[str, list[list[int]]]:
    """input_ids, attention_mask and labels of rendered conversations, cut to `max_length` tokens.

    Labels are the input ids where the template marks assistant output (the content and the end-of-turn token the
    template puts inside the generation block), -100 elsewhere; every token when `assistant_only` is False. A
    conversation longer than `max_length` loses its end (its last assistant turn first).
    """
    # Plain role/content dicts: datasets may hand rows over with extra None-valued keys (a column union).
    messages = [
        [{"role": str(m["role"]), "content": str(m["content"])} for m in conversation]
        for conversation in conversations
    ]
    rendered = tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=assistant_only,
        truncation=True,
        max_length=max_length,
    )
    ids_rows: list[list[int]] = [list(ids) for ids in rendered["input_ids"]]
    if assistant_only:
        masks = rendered["assistant_masks"]
        labels = [
            [token if marked else -100 for token, marked in zip(ids, mask, strict=True)]
            for ids, mask in zip(ids_rows, masks, strict=True)
        ]
    else:
        labels = [list(ids) for ids in ids_rows]
    return {
        "input_ids": ids_rows,
        "attention_mask": [[1] * len(ids) for ids in ids_rows],
        "labels": labels,
    }


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> Any:
    """The input ids (a 1 x n tensor) that ask the model for the next assistant turn after `messages`, rendered
    with the tokenizer's saved chat template (for generation after training)."""
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
