"""LoRA adapters (spec.adapter) through peft, QLoRA's 4-bit base through bitsandbytes, and what they change in
checkpoints and in the saved model.

- `attach_adapter` wraps the loaded model in a peft model: only the adapter's weights (and biases, by
  adapter.bias) train. Target layers come from adapter.targetModules, else from peft's table of defaults per
  architecture (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); a name that matches no layer stops the job
  (exit 2) with the layer names the model has.
- `quantization_load_kwargs` is what from_pretrained needs for a 4-bit base (a BitsAndBytesConfig; built without
  importing bitsandbytes, so its path is tested on CPU). `check_qlora_device` refuses QLoRA where CUDA is absent.
- Checkpoints hold only trainable weights plus the optimizer state: while a checkpoint is written,
  `trainable_state_only` makes the model's state_dict() leave every frozen tensor out (what DeepSpeed and
  accelerate both save: DeepSpeed's own exclude_frozen_parameters misses a head tied to frozen embeddings);
  `checkpoint_kwargs` lets DeepSpeed load such a module state, and `install_checkpoint_hooks` loads it without
  DeepSpeed, checking that every trainable weight came back.
- `merge_into_base` writes the merged full model at the end (adapter.mergeAtEnd).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.spec.adapters import ALL_LINEAR, AdapterSpec
from kubetune.spec.models import FineTuneJobSpec, ModelSpec

if TYPE_CHECKING:
    from kubetune_trainer.devices import CudaProbe

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
ADAPTER_FOLDER = "adapter"


class AdapterError(ValueError):
    """spec.adapter does not fit the model (or the machine); the message names the field and the fix."""


# --- QLoRA ---------------------------------------------------------------------------------------------------


def quantization_load_kwargs(qlora: Any, device_index: int) -> dict[str, Any]:
    """from_pretrained arguments that load the base in 4 bits on CUDA device `device_index` (spec.adapter.qlora).

    The BitsAndBytesConfig is transformers' own object; bitsandbytes itself is imported only when the model loads.
    """
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qlora.quant_type,
        bnb_4bit_use_double_quant=qlora.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, qlora.compute_dtype),
    )
    # One process, one GPU: the whole quantized model on this process's device (as peft's QLoRA examples do).
    return {"quantization_config": config, "device_map": {"": device_index}}


def qlora_problem(spec: FineTuneJobSpec, probe: Callable[[], CudaProbe]) -> str | None:
    """Why this machine cannot run the job's QLoRA (no CUDA device as `probe` reports it, no bitsandbytes
    installed), or None when it can or the job does not use QLoRA. Imports neither torch nor bitsandbytes."""
    if spec.adapter is None or spec.adapter.qlora is None:
        return None
    import importlib.util

    cuda = probe()
    if not cuda.available:
        return (
            "spec.adapter.qlora loads the base model in 4 bits with bitsandbytes, which runs on CUDA GPUs only, "
            f"and no CUDA device is visible ({cuda.why_not}): run on a GPU node, or remove adapter.qlora to "
            "train the LoRA adapter on a full-precision base"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        return (
            "spec.adapter.qlora needs the bitsandbytes package, which this image lacks: install it "
            "(pip install bitsandbytes) in the trainer image, or remove adapter.qlora"
        )
    return None


# --- attaching the adapter -----------------------------------------------------------------------------------


def linear_layer_names(model: Any) -> list[str]:
    """The distinct last names of the model's linear layers (what targetModules may list), sorted."""
    import torch

    names = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        # torch Linear, GPT-2's Conv1D, bitsandbytes' Linear4bit
        if name and (isinstance(module, torch.nn.Linear) or kind == "Conv1D" or "Linear" in kind):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(adapter: AdapterSpec, model: Any) -> list[str] | str | None:
    """The target_modules for peft's LoraConfig: the spec's names, "all-linear", or None (peft's default for the
    architecture).

    Raises AdapterError when a name matches no layer, or when the spec names none and peft has no default.
    """
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(model.config, "model_type", None)
    available = linear_layer_names(model)
    if adapter.target_modules is None:
        if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            return None
        raise AdapterError(
            f"spec.adapter.targetModules is unset and peft has no default for model type '{model_type}': list "
            f"the layers to adapt, e.g. targetModules: [{ALL_LINEAR}], or some of {available}"
        )
    if adapter.target_modules == [ALL_LINEAR]:
        return ALL_LINEAR
    module_names = [name for name, _ in model.named_modules() if name]
    unknown = [
        target
        for target in adapter.target_modules
        if not any(name == target or name.endswith("." + target) for name in module_names)
    ]
    if unknown:
        raise AdapterError(
            f"spec.adapter.targetModules names {unknown}, which match no layer of this {model_type} model: its "
            f"linear layers are {available}; use some of those, or [{ALL_LINEAR}], or leave targetModules unset "
            "for peft's default"
        )
    return list(adapter.target_modules)


def attach_adapter(model: Any, adapter: AdapterSpec, gradient_checkpointing: bool) -> Any:
    """`model` wrapped in a peft LoRA model: base weights frozen, adapter weights trainable. Returns the
    PeftModel. Raises AdapterError for targets that fit no layer."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    targets = resolve_targets(adapter, model)
    if adapter.qlora is not None:
        # Norms and the head in fp32, input gradients on (for checkpointing through frozen 4-bit layers).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        bias=adapter.bias,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info(
        "LoRA adapter on %s: %d of %d parameters trainable (%.3f%%)",
        sorted(getattr(peft_model.peft_config["default"], "target_modules", None) or []),
        trainable,
        total,
        100 * trainable / max(total, 1),
    )
    return peft_model


# --- checkpoints ---------------------------------------------------------------------------------------------


def checkpoint_kwargs(deepspeed: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(save_state kwargs, load_state kwargs) for checkpoints without frozen weights.

    DeepSpeed takes them in save_checkpoint/load_checkpoint (a module state without the frozen base loads
    non-strictly); without DeepSpeed the hook of `install_checkpoint_hooks` loads it, and accelerate takes no
    extra arguments.
    """
    if deepspeed:
        return {"exclude_frozen_parameters": True}, {"load_module_strict": False}
    return {}, {}


def _trainable_names(model: Any) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@contextlib.contextmanager
def trainable_state_only(model: Any) -> Iterator[None]:
    """While open, `model.state_dict()` (also when called through a DDP or DeepSpeed wrapper, under a prefix) holds
    its trainable parameters only: the frozen base is in spec.model.name already, and a copy of it per checkpoint
    would be the model's size. A head tied to frozen embeddings is left out too."""
    keep = _trainable_names(model)

    def drop_frozen(module: Any, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
        for key in [k for k in state if k.startswith(prefix) and k[len(prefix) :] not in keep]:
            del state[key]

    handle = model.register_state_dict_post_hook(drop_frozen)
    try:
        yield
    finally:
        handle.remove()


def load_trainable(models: list[Any], input_dir: str) -> None:
    """accelerate load-state pre-hook: load each model's trainable weights from the checkpoint ourselves (the
    file lacks the frozen ones, which accelerate's strict load would refuse), then take the models off the list
    so accelerate does not load them again.

    Raises AdapterError when the checkpoint lacks a trainable weight or holds one this model does not have.
    """
    from accelerate.utils import SAFE_MODEL_NAME
    from safetensors.torch import load_file

    for index, model in enumerate(models):
        ending = f"_{index}" if index > 0 else ""
        path = Path(input_dir) / f"{SAFE_MODEL_NAME}{ending}.safetensors"
        state = load_file(str(path), device=str(next(model.parameters()).device))
        missing = sorted(_trainable_names(model) - set(state))
        unexpected = sorted(set(state) - {name for name, _ in model.named_parameters()})
        if missing or unexpected:
            raise AdapterError(
                f"checkpoint {input_dir} does not fit this job's adapter (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}): spec.adapter changed since it was written; use a new spec.output.path or set "
                "spec.checkpointing.resume: false"
            )
        model.load_state_dict(state, strict=False)
    models.clear()


def install_checkpoint_hooks(accelerator: Any) -> None:
    """Make accelerate's load_state (without DeepSpeed) restore a checkpoint of trainable weights only."""
    accelerator.register_load_state_pre_hook(load_trainable)


# --- the end -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def without_deepspeed_init(accelerator: Any) -> Iterator[None]:
    """While open, transformers and peft load models whole, not through ZeRO-3's partitioned init (which they do
    whenever a DeepSpeed config of stage 3 is registered, and which is a collective of every rank)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()  # registers the job's DeepSpeed config again


def merge_into_base(
    folder: Path, model_spec: ModelSpec, location: str, token: str | None, use_cache: bool | None
) -> Path:
    """Move the adapter saved in `folder` to folder/adapter, then write the base model with the adapter merged
    in (peft's merge_and_unload) into `folder`, in the base checkpoint's dtype. Returns the adapter folder.

    The base is loaded again, unquantized, on the CPU of this (the main) process: a QLoRA adapter is merged into
    the full-precision weights, not the 4-bit ones.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_folder = folder / ADAPTER_FOLDER
    adapter_folder.mkdir(exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.move(str(folder / name), str(adapter_folder / name))
    base = AutoModelForCausalLM.from_pretrained(
        location,
        revision=model_spec.revision,
        token=token,
        trust_remote_code=model_spec.trust_remote_code,
        dtype="auto",
    )
    merged = PeftModel.from_pretrained(base, str(adapter_folder)).merge_and_unload()
    if use_cache is not None:
        merged.config.use_cache = use_cache
    merged.save_pretrained(folder, safe_serialization=True)
    return adapter_folder
