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


def _causal_batch(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = model(**batch)
    logits = outputs.logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    token_losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=-100)
    mask = (targets != -100).to(token_losses.dtype)
    return (token_losses * mask).sum(dim=1), mask.sum(dim=1).long()


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
            nll, tokens = _causal_batch(model, batch)
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
