"""The DeepSpeed configuration a FineTuneJob asks for.

Every batch-size field is an explicit number derived from spec.training and spec.distribution, so the file the
operator shows users is the file DeepSpeed runs with. spec.distribution.deepspeed.config (raw JSON) is
deep-merged over the generated config and wins, except where it would contradict the spec's batch sizes,
accumulation or clipping: the trainer's data loader uses the spec's numbers, so a disagreement is an error.
"""

from __future__ import annotations

from typing import Any

from kubetune.mappings import deep_merge
from kubetune.spec.models import FineTuneJobSpec, MixedPrecision, OffloadDevice

# DeepSpeed prints its own throughput line every `steps_per_print` steps; our progress events replace it.
_QUIET_STEPS_PER_PRINT = 1_000_000_000


class LaunchConfigError(ValueError):
    """The spec asks for a launch configuration that cannot work; the message names the field and the fix."""


def _offload(device: str, nvme_path: str | None) -> dict[str, Any]:
    section: dict[str, Any] = {"device": device}
    if device == OffloadDevice.NVME:
        section["nvme_path"] = nvme_path
    return section


def _zero_section(spec: FineTuneJobSpec) -> dict[str, Any]:
    deepspeed = spec.distribution.deepspeed
    zero: dict[str, Any] = {"stage": deepspeed.zero_stage}
    if deepspeed.zero_stage >= 1:
        zero["contiguous_gradients"] = True
    if deepspeed.zero_stage >= 2:
        # Overlap the gradient reduction with the backward pass (as transformers' ZeRO-2/3 example configs do).
        # The bucket sizes depend on the model's hidden size; the trainer fills them in once it has the model.
        zero["overlap_comm"] = True
    if deepspeed.offload_optimizer != OffloadDevice.NONE:
        zero["offload_optimizer"] = _offload(deepspeed.offload_optimizer, deepspeed.nvme_path)
    if deepspeed.zero_stage == 3:
        if deepspeed.offload_parameters != OffloadDevice.NONE:
            zero["offload_param"] = _offload(deepspeed.offload_parameters, deepspeed.nvme_path)
        # Without this, save_pretrained under ZeRO-3 writes empty placeholder tensors.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return zero


# Raw-config keys whose value the trainer also uses itself, with the spec field that sets them.
_MUST_AGREE = {
    "train_micro_batch_size_per_gpu": "training.perDeviceTrainBatchSize",
    "gradient_accumulation_steps": "training.gradientAccumulationSteps",
    "train_batch_size": "training.perDeviceTrainBatchSize * gradientAccumulationSteps * world size",
    "gradient_clipping": "training.maxGradNorm",
}


def deepspeed_config(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The DeepSpeed JSON (as a dict) for `spec`, raw config merged over it.

    Raises LaunchConfigError when the raw config contradicts the spec's batch size, accumulation or clipping.
    """
    training = spec.training
    world_size = spec.distribution.world_size
    micro_batch = training.per_device_train_batch_size
    accumulation = training.gradient_accumulation_steps
    precision = training.mixed_precision
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world_size,
        # DeepSpeed reads 0 as "no clipping".
        "gradient_clipping": float(training.max_grad_norm or 0.0),
        "zero_optimization": _zero_section(spec),
        "bf16": {"enabled": precision == MixedPrecision.BF16},
        "fp16": {"enabled": precision == MixedPrecision.FP16},
        # The trainer builds a torch AdamW (or DeepSpeedCPUAdam when offloading), not a DeepSpeed optimizer.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": _QUIET_STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
    if precision == MixedPrecision.FP16:
        generated["fp16"].update(
            {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2}
        )
    raw = spec.distribution.deepspeed.config or {}
    for key, field in _MUST_AGREE.items():
        if key in raw and raw[key] != generated[key]:
            raise LaunchConfigError(
                f"spec.distribution.deepspeed.config.{key} is {raw[key]!r} but the spec gives "
                f"{generated[key]!r} ({field}): remove {key} from the raw config and set {field} instead"
            )
    return deep_merge(generated, raw)
