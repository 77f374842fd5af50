"""Tokenizer and model: where they come from (hub, folder, or a package), integrity, and loading.

spec.model.name is a hub id (downloaded at spec.model.revision with HF_TOKEN), a local/PVC folder, or
`pkg://<package>/<folder>` for a model shipped inside an installed Python package.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any

from kubetune.spec.models import ModelSpec, Task

PACKAGE_SCHEME = "pkg://"
WEIGHTS_FILE = "model.safetensors"


class ModelSourceError(ValueError):
    """The model cannot be found or does not match its pinned hash; the message names the spec field."""


def resolve_model_location(name: str) -> str:
    """The folder (for pkg:// and local paths) or hub id the Auto classes should load.

    Raises ModelSourceError when a pkg:// package or folder does not exist.
    """
    if name.startswith(PACKAGE_SCHEME):
        package, _, folder = name.removeprefix(PACKAGE_SCHEME).partition("/")
        if not package or importlib.util.find_spec(package) is None:
            raise ModelSourceError(
                f"spec.model.name is '{name}' but Python package '{package}' is not installed: "
                "install it in the trainer image or use a hub id or folder"
            )
        location = Path(str(importlib.resources.files(package).joinpath(folder)))
        if not location.is_dir():
            raise ModelSourceError(
                f"spec.model.name is '{name}' but package '{package}' has no folder '{folder}' ({location})"
            )
        return str(location)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith(("/", "./", "../", "~")):
        raise ModelSourceError(f"spec.model.name is '{name}', a path, but no such folder exists")
    return name


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_path(location: str, revision: str, token: str | None) -> Path:
    """Local path of model.safetensors for a folder or a hub id (downloaded into the HF cache).

    Raises ModelSourceError when the model has no model.safetensors.
    """
    folder = Path(location)
    if folder.is_dir():
        path = folder / WEIGHTS_FILE
        if not path.is_file():
            raise ModelSourceError(
                f"spec.model.weightsSha256 is set but {folder} has no {WEIGHTS_FILE} to check: "
                "remove weightsSha256 or save the model with safetensors"
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(location, WEIGHTS_FILE, revision=revision, token=token))
    except Exception as error:
        raise ModelSourceError(
            f"spec.model.weightsSha256 is set but {WEIGHTS_FILE} of '{location}'@{revision} "
            f"could not be fetched: {error}"
        ) from error


def verify_weights(spec: ModelSpec, location: str, token: str | None) -> None:
    """Check model.safetensors against spec.model.weightsSha256 (when set). Raises ModelSourceError on a mismatch."""
    if not spec.weights_sha256:
        return
    path = weights_path(location, spec.revision, token)
    actual = sha256_of(path)
    if actual != spec.weights_sha256:
        raise ModelSourceError(
            f"spec.model.weightsSha256 is {spec.weights_sha256} but {path} has sha256 {actual}: "
            "the weights changed (or the pin is wrong); refusing to train on them"
        )


def load_tokenizer(spec: ModelSpec, location: str, token: str | None) -> Any:
    """The fast tokenizer for the model; causal LMs without a pad token pad with eos."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        location, revision=spec.revision, token=token, trust_remote_code=spec.trust_remote_code
    )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: ModelSpec,
    location: str,
    token: str | None,
    tokenizer: Any,
    id2label: dict[int, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    """The model for spec.model.task in fp32, with a classification head sized to `id2label` when given.

    fp32 whatever the checkpoint's dtype: transformers 5 loads with dtype="auto", so a model stored in bf16
    (most causal LMs) would otherwise train in pure bf16, where an update smaller than bf16's rounding step at
    the weight's magnitude (lr 2e-5 against weights near 0.02) is lost. These fp32 weights are the optimizer's
    master weights; mixedPrecision bf16/fp16 computes in low precision under autocast (accelerate), and
    DeepSpeed keeps its own low-precision copy beside its fp32 partitions. `extra` adds from_pretrained
    arguments (a 4-bit quantization config for QLoRA, see kubetune_trainer.adapters).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    common: dict[str, Any] = {
        "revision": spec.revision,
        "token": token,
        "trust_remote_code": spec.trust_remote_code,
        "dtype": torch.float32,
    }
    common.update(extra or {})
    if spec.attn_implementation != "auto":
        common["attn_implementation"] = str(spec.attn_implementation)
    if spec.task == Task.CAUSAL_LM:
        model = AutoModelForCausalLM.from_pretrained(location, **common)
    else:
        labels: dict[str, Any] = {}
        if id2label is not None:
            labels = {
                "num_labels": len(id2label),
                "id2label": dict(id2label),
                "label2id": {name: index for index, name in id2label.items()},
            }
        # A checkpoint with a head of another size (or none, e.g. a sentence encoder) gets a fresh head.
        model = AutoModelForSequenceClassification.from_pretrained(
            location, ignore_mismatched_sizes=True, **labels, **common
        )
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
