"""spec.adapter: train a LoRA adapter (peft) instead of every weight, optionally on a 4-bit base (QLoRA).

Torch-free like the rest of the spec; `kubetune_trainer.adapters` turns these blocks into peft's LoraConfig and
transformers' BitsAndBytesConfig.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kubetune.spec.base import SpecModel

# peft's shorthand for "every linear layer except the output head" (peft.utils.constants).
ALL_LINEAR = "all-linear"
# A module name or dotted suffix (model.layers.0.self_attn.q_proj), as peft matches them.
LayerName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.-]+$")]


class QLoraSpec(SpecModel):
    quant_type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="4-bit data type of the frozen base weights (nf4, as in the QLoRA paper)."
    )
    double_quant: bool = Field(
        default=True, description="Quantize the quantization constants too (saves ~0.4 bits per weight)."
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16",
        description="dtype the 4-bit weights are dequantized to for each matmul (bfloat16 needs Ampere or newer).",
    )


class AdapterSpec(SpecModel):
    rank: int = Field(default=16, ge=1, le=4096, description="LoRA rank r: the inner size of each update.")
    alpha: int = Field(
        default=32, ge=1, le=1_000_000, description="LoRA alpha: the update is scaled by alpha / rank."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[LayerName] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description=(
            "Names (or name suffixes) of the layers that get an adapter, e.g. [q_proj, k_proj, v_proj, o_proj], "
            "or [all-linear] for every linear layer but the output head. Unset: peft's default for the model's "
            "architecture (q_proj and v_proj for Llama, Qwen2 and Mistral; c_attn for GPT-2). A name that matches "
            "no layer stops the job at model load with the layers the model has."
        ),
    )
    bias: Literal["none", "all", "lora_only"] = Field(
        default="none",
        description="Which biases train as well: none, all, or only those of the adapted layers (lora_only).",
    )
    merge_at_end: bool = Field(
        default=False,
        description=(
            "Also merge the trained adapter into the base model at the end and save that full model "
            "(output.path/model, in the base checkpoint's dtype; the adapter then goes to output.path/model/adapter). "
            "Unset, output.path/model holds the adapter only (adapter_model.safetensors, adapter_config.json)."
        ),
    )
    qlora: QLoraSpec | None = Field(
        default=None,
        description=(
            "QLoRA: load the frozen base in 4 bits (bitsandbytes) and train the adapter on top. CUDA GPUs only: "
            "a node without one refuses the job (exit 2). Not with DeepSpeed ZeRO-3."
        ),
    )

    @model_validator(mode="after")
    def _all_linear_alone(self) -> AdapterSpec:
        targets = self.target_modules or []
        if ALL_LINEAR in targets and len(targets) > 1:
            raise ValueError(
                f"adapter.targetModules is {targets}: '{ALL_LINEAR}' already means every linear layer; "
                f"use [{ALL_LINEAR}] alone or list the layers"
            )
        return self
