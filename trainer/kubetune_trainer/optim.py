"""Optimizer and learning-rate schedule from spec.training."""

from __future__ import annotations

import math
from typing import Any

import torch
from kubetune.spec.models import DeepSpeedSpec, TrainingSpec


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weights with decay; biases and normalization weights without (the usual BERT recipe)."""
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        is_norm = (
            isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm)
            or "norm" in type(module).__name__.lower()
        )
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param_name == "bias":
                no_decay.add(full)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n not in no_decay]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and n in no_decay]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: torch.nn.Module, training: TrainingSpec, deepspeed: DeepSpeedSpec
) -> torch.optim.Optimizer:
    """torch's AdamW over `parameter_groups` (decoupled weight decay), also under DeepSpeed.

    With ZeRO optimizer offload, accelerate swaps it for DeepSpeedCPUAdam (`map_pytorch_optim_to_deepspeed`),
    and keeps AdamW mode only when handed a `torch.optim.AdamW`: a DeepSpeedCPUAdam built here would be
    rebuilt with adamw_mode=False, i.e. Adam with L2 regularisation. So this always returns torch's AdamW.
    """
    groups = parameter_groups(model, training.weight_decay)
    betas = (training.adam_beta1, training.adam_beta2)
    # The fused kernel updates every parameter in one pass. Without it torch's AdamW on CPU loops over the
    # tensors one by one (113 ms a step for MiniLM on one thread, 16% of the step; fused: 12 ms), and on GPU
    # it launches several kernels per tensor. transformers.Trainer defaults to it too (adamw_torch_fused).
    # DeepSpeed's engine wraps (or, offloading, replaces) the optimizer itself, so it keeps torch's default.
    fused = None if deepspeed.enabled else True
    return torch.optim.AdamW(
        groups, lr=training.learning_rate, betas=betas, eps=training.adam_epsilon, fused=fused
    )


def describe_optimizer(optimizer: Any) -> str:
    """What steps the weights after accelerate/DeepSpeed prepared `optimizer`, for the log, e.g.
    'DeepSpeedCPUAdam (adamw_mode=True)' or 'AdamW (fused=True)'."""
    inner = optimizer
    # accelerate's wrapper -> (DeepSpeed's ZeRO optimizer ->) the optimizer that does the arithmetic.
    for _ in range(3):
        nested = getattr(inner, "optimizer", None)
        if nested is None or nested is inner:
            break
        inner = nested
    name = type(inner).__name__
    if hasattr(inner, "adam_w_mode"):
        return f"{name} (adamw_mode={bool(inner.adam_w_mode)})"
    fused = inner.defaults.get("fused") if hasattr(inner, "defaults") else None
    return f"{name} (fused={fused})" if fused is not None else name


def warmup_steps(training: TrainingSpec, total_steps: int) -> int:
    """warmupSteps when > 0, else warmupRatio of the total (rounded up)."""
    if training.warmup_steps > 0:
        return training.warmup_steps
    return math.ceil(training.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingSpec, total_steps: int) -> Any:
    """The schedule of spec.training.lrScheduler, stepped once per optimizer step."""
    from transformers import get_scheduler

    return get_scheduler(
        str(training.lr_scheduler),
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(training, total_steps),
        num_training_steps=total_steps,
    )
