"""The model card (README.md) saved next to the fine-tuned model: what it is, how it was made, how it scored."""

from __future__ import annotations

from typing import Any

from kubetune.events import JobSummary
from kubetune.spec import FineTuneJob


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def render_model_card(
    job: FineTuneJob,
    summary: JobSummary,
    data_source: str,
    data_sizes: dict[str, int],
    id2label: dict[int, str] | None,
) -> str:
    """Markdown describing the fine-tuned model (YAML front matter for the hub, then sections)."""
    spec = job.spec
    training = spec.training
    deepspeed = spec.distribution.deepspeed
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(summary.metrics.items()))
    hyperparameters = _table(
        [
            ("epochs", training.epochs),
            ("max steps", training.max_steps or "-"),
            ("optimizer steps done", summary.step),
            ("learning rate", training.learning_rate),
            (
                "scheduler",
                f"{training.lr_scheduler} (warmup steps {training.warmup_steps}, ratio {training.warmup_ratio})",
            ),
            ("batch size per device", training.per_device_train_batch_size),
            ("gradient accumulation", training.gradient_accumulation_steps),
            ("world size", summary.world_size),
            ("weight decay", training.weight_decay),
            ("max grad norm", training.max_grad_norm),
            ("mixed precision", training.mixed_precision),
            ("seed", training.seed),
            ("DeepSpeed ZeRO stage", deepspeed.zero_stage if deepspeed.enabled else "off"),
        ]
    )
    sizes = ", ".join(f"{split}: {count} examples" for split, count in data_sizes.items())
    labels = ""
    if id2label:
        labels = "\n\nLabels: " + ", ".join(f"{index} = {name}" for index, name in sorted(id2label.items()))
    train_loss = f"{summary.train_loss:.4f}" if summary.train_loss is not None else "-"
    data = spec.dataset
    columns = (
        f"prompt {data.prompt_field}, completion {data.completion_field} (loss on the completion only)"
        if data.prompt_field
        else f"text fields {', '.join(data.text_fields)}"
    )
    packing = ", packed" if data.packing else ""
    return f"""---
base_model: {spec.model.name}
library_name: transformers
tags:
- kubetune
- {spec.model.task}
---

# {job.metadata.name}

Fine-tuned from `{spec.model.name}` (revision `{spec.model.revision}`) for {spec.model.task} with kubetune.

## Data

{data_source} ({sizes}); {columns}, max length {data.max_length} tokens{packing}.{labels}

## Evaluation

| metric | value |
|---|---|
{metrics or "| (no evaluation data) | |"}

Final training loss: {train_loss}.

## Training hyperparameters

{hyperparameters}
"""
