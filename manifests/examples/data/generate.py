"""Regenerate the offline examples' data (deterministic): `python manifests/examples/data/generate.py`.

The files are committed so that manifests/examples/offline.yaml and offline-lora.yaml point at real files; a
test checks that the data are exactly what this script writes.

- paraphrase/: sentence pairs for offline.yaml;
- chat/: conversations in the messages format for offline-lora.yaml, and tiny-chat-gpt/, the small causal LM
  that example adapts: a tiny GPT-2 (byte-level BPE, ~150K parameters) whose every weight was trained on
  conversations in which each animal makes the next animal's sound. The LoRA example teaches it the true ones.
  Its weights are reproducible on one machine and torch version, not byte-for-byte across them.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubetune_trainer.chat import ZEPHYR_TEMPLATE
from kubetune_trainer.synthetic import (
    SHIFTED_ANIMAL_SOUNDS,
    build_tiny_model,
    pretrain_tiny_chat_model,
    read_texts,
    write_chat_dataset,
    write_paraphrase_dataset,
)

FOLDER = Path(__file__).resolve().parent / "paraphrase"
CHAT_FOLDER = Path(__file__).resolve().parent / "chat"
CHAT_MODEL = Path(__file__).resolve().parent / "tiny-chat-gpt"
# Sized for a few minutes on 2 CPU cores while still reaching ≥ 0.9 eval accuracy with all-MiniLM-L6-v2.
SIZES = {"n_train": 1200, "n_eval": 400, "seed": 0}
CHAT_SIZES = {"n_train": 600, "n_eval": 60, "seed": 0}


def generate(folder: Path = FOLDER) -> tuple[Path, Path]:
    """Write train.jsonl and eval.jsonl into `folder`. Returns their paths."""
    return write_paraphrase_dataset(folder, **SIZES)


def generate_chat(folder: Path = CHAT_FOLDER) -> tuple[Path, Path]:
    """Write the conversations (train.jsonl, eval.jsonl) into `folder`. Returns their paths."""
    return write_chat_dataset(folder, **CHAT_SIZES)


def generate_chat_model(folder: Path = CHAT_MODEL, scratch: Path | None = None) -> Path:
    """Build and pretrain the tiny chat base into `folder` (the shifted-sound data go to `scratch`, default
    folder/../.base-data, and are removed). Returns the folder."""
    import shutil

    scratch = scratch or folder.parent / ".base-data"
    base_train, _ = write_chat_dataset(scratch, n_train=600, n_eval=1, seed=1, sounds=SHIFTED_ANIMAL_SOUNDS)
    build_tiny_model(folder, read_texts(base_train), task="causal-lm", chat_template=ZEPHYR_TEMPLATE)
    conversations = [json.loads(line)["messages"] for line in base_train.read_text().splitlines()]
    pretrain_tiny_chat_model(folder, conversations)
    shutil.rmtree(scratch)
    return folder


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # reproducible sums
    for path in (*generate(), *generate_chat(), generate_chat_model()):
        print(path)
