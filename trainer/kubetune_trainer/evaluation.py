"""Evaluation: eval_loss plus the spec's metrics, computed over every rank's share of the eval set.

Metrics are local `evaluate` modules (kubetune_trainer/metrics/<name>/<name>.py): the hub's metric scripts
cannot be downloaded in offline clusters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from kubetune.spec.models import Metric, Task

METRICS_DIR = Path(__file__).parent / "metrics"


def metric_script(name: str) -> Path:
    """Path of the local metric module for `name`. Raises ValueError for an unknown metric."""
    path = METRICS_DIR / name / f"{name}.py"
    if not path.is_file():
        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"training.metrics: no metric module '{name}' (have {known})")
    return path


def load_metric(name: str) -> Any:
    """An `evaluate` module for `name`, loaded by path (works offline)."""
    import evaluate

    return evaluate.load(str(metric_script(name)))


def _classification_batch(
    model: Any, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    outputs = model(**batch)
    logits = outputs.logits.float()
    labels = batch["labels"]
    losses = F.cross_entropy(logits, labels, reduction="none")
    return logits.argmax(dim=-1), labels, losses


# Evaluation materialises logits for at most this many (token x vocabulary) elements at a time: 256 MiB in
# fp32. Full logits of a batch of 32 x 2048 tokens over a 128k vocabulary would be 34 GB per fp32 copy.
LOGIT_CHUNK_ELEMENTS = 64 * 2**20

# Config fields of models whose logits are transformed after the output projection (soft-capping, scaling):
# for them the chunked head would not be exact, so their logits come from the model's own forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _chunked_token_losses(
    hidden: torch.Tensor, targets: torch.Tensor, head: Any, vocabulary: int
) -> torch.Tensor:
    """Cross-entropy of each row of `hidden` ([N, H]) projected by `head` to `vocabulary` logits against
    `targets` ([N]), computed LOGIT_CHUNK_ELEMENTS at a time. Returns fp32 losses [N]."""
    rows = max(1, LOGIT_CHUNK_ELEMENTS // vocabulary)
    losses = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], rows):
        logits = head(hidden[start : start + rows]).float()
        losses[start : start + rows] = F.cross_entropy(
            logits, targets[start : start + rows], reduction="none"
        )
    return losses


def _causal_batch(accelerator: Any, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token loss and target count per sequence, without the full logits of the batch.

    The backbone gives hidden states; the output head runs on the target positions only, a chunk at a time.
    Models with a logit transform (or no separable head) fall back to their own logits, still upcast in chunks.
    """
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    unwrapped = accelerator.unwrap_model(model)
    if hasattr(unwrapped, "peft_config"):
        # A LoRA model (spec.adapter) wraps the transformers model whose layers now carry the adapters.
        unwrapped = unwrapped.get_base_model()
    head = unwrapped.get_output_embeddings()
    backbone = getattr(unwrapped, "base_model", None)
    transforms = any(
        getattr(unwrapped.config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS
    )
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with accelerator.autocast():
        if head is not None and backbone is not None and backbone is not unwrapped and not transforms:
            hidden = backbone(**inputs).last_hidden_state[:, :-1]
            # (under ZeRO-3 the head's weight is a partition here: its full shape is ds_shape)
            vocabulary = int(getattr(head.weight, "ds_shape", head.weight.shape)[0])
            token_losses = _chunked_token_losses(hidden[mask], targets[mask], head, vocabulary)
        else:
            logits = model(**inputs).logits[:, :-1]
            vocabulary = int(logits.shape[-1])
            token_losses = _chunked_token_losses(logits[mask], targets[mask], torch.nn.Identity(), vocabulary)
    per_token = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    per_token[mask] = token_losses
    return per_token.sum(dim=1), mask.sum(dim=1).long()


@torch.no_grad()
def evaluate_model(
    accelerator: Any, model: Any, loader: Any, task: str, metrics: dict[str, Any], num_labels: int | None
) -> dict[str, float]:
    """Run the eval loader on every rank; returns {"eval_loss": ..., "eval_<metric>": ...} (same on all ranks).

    `metrics` maps metric names to modules from `load_metric` (loaded once, before training).
    """
    model.eval()
    predictions: list[torch.Tensor] = []
    references: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    for batch in loader:
        if task == Task.CAUSAL_LM:
            nll, tokens = _causal_batch(accelerator, model, batch)
            nll, tokens = accelerator.gather_for_metrics((nll, tokens))
            predictions.append(nll.cpu())
            references.append(tokens.cpu())
        else:
            predicted, labels, example_losses = _classification_batch(model, batch)
            predicted, labels, example_losses = accelerator.gather_for_metrics(
                (predicted, labels, example_losses)
            )
            predictions.append(predicted.cpu())
            references.append(labels.cpu())
            losses.append(example_losses.cpu())
    model.train()
    if not predictions:
        return {}
    predicted_all = torch.cat(predictions)
    reference_all = torch.cat(references)
    results: dict[str, float] = {}
    if task == Task.CAUSAL_LM:
        token_count = int(reference_all.sum())
        results["eval_loss"] = float(predicted_all.sum()) / token_count if token_count else math.nan
    else:
        results["eval_loss"] = float(torch.cat(losses).mean())
    for name, metric in metrics.items():
        kwargs: dict[str, Any] = {}
        if name in (Metric.F1, Metric.PRECISION, Metric.RECALL):
            kwargs["average"] = "binary" if (num_labels or 2) == 2 else "macro"
        value = metric.compute(
            predictions=predicted_all.tolist(), references=reference_all.tolist(), **kwargs
        )
        results[f"eval_{name}"] = float(value[name])
    return results
