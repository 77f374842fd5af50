"""Training data: load (hub or files), check columns, map labels, tokenize, and build data loaders.

Errors name the spec field and list what is available, because a wrong column name is the most common
mistake in a new job.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.spec.models import DatasetSpec, FineTuneJobSpec, Task

_BUILDERS = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
TRAIN, EVAL = "train", "eval"


class DataError(ValueError):
    """The dataset does not fit the spec; the message names the field, what was found, and the fix."""


@dataclass
class PreparedData:
    """Tokenized splits (columns the model takes, plus `labels` for classification) and what we learned."""

    train: Any
    eval: Any | None
    id2label: dict[int, str] | None
    train_lengths: list[int]
    source: str
    raw_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def num_labels(self) -> int | None:
        return len(self.id2label) if self.id2label is not None else None


def file_format(spec: DatasetSpec) -> str:
    """The `datasets` builder for spec.dataset.files (explicit format, else the train file's extension).

    Raises DataError for an unknown extension.
    """
    assert spec.files is not None
    if spec.files.format:
        return _BUILDERS[str(spec.files.format)]
    suffixes = [s.lower().lstrip(".") for s in Path(spec.files.train).suffixes]
    for suffix in reversed(suffixes):
        if suffix in _BUILDERS:
            return _BUILDERS[suffix]
    raise DataError(
        f"spec.dataset.files.train is '{spec.files.train}': cannot tell the format from its extension; "
        "set spec.dataset.files.format to csv, json, jsonl or parquet"
    )


def describe_source(spec: DatasetSpec) -> str:
    """A one-line description of where the data comes from (for the model card)."""
    if spec.files is not None:
        evaluation = f", eval {spec.files.eval}" if spec.files.eval else ""
        return f"files: train {spec.files.train}{evaluation}"
    config = f"/{spec.config}" if spec.config else ""
    revision = f"@{spec.revision}" if spec.revision else ""
    return f"hub dataset {spec.name}{config}{revision} (train split '{spec.train_split}', eval '{spec.eval_split}')"


def load_raw(spec: DatasetSpec, token: str | None) -> dict[str, Any]:
    """{"train": Dataset, "eval": Dataset (when configured)} straight from the source.

    Raises DataError when a file or split is missing.
    """
    import datasets

    if spec.files is not None:
        files = {TRAIN: spec.files.train}
        if spec.files.eval and spec.eval_split is not None:  # evalSplit: null turns evaluation off here too
            files[EVAL] = spec.files.eval
        for split, pattern in files.items():
            if not glob.glob(pattern):
                raise DataError(f"spec.dataset.files.{split} is '{pattern}': no such file")
        loaded = datasets.load_dataset(file_format(spec), data_files=files)
        return {split: loaded[split] for split in files}
    assert spec.name is not None
    loaded = datasets.load_dataset(spec.name, spec.config, revision=spec.revision, token=token)
    splits = {TRAIN: spec.train_split}
    if spec.eval_split:
        splits[EVAL] = spec.eval_split
    result = {}
    for role, split in splits.items():
        if split not in loaded:
            field_name = "trainSplit" if role == TRAIN else "evalSplit"
            raise DataError(
                f"spec.dataset.{field_name} is '{split}' but {spec.name} has splits {sorted(loaded)}: "
                "use one of them"
            )
        result[role] = loaded[split]
    return result


def check_columns(dataset: Any, spec: DatasetSpec, task: str, split: str) -> None:
    """Raise DataError naming the spec field when a text or label column is missing from `dataset`."""
    available = list(dataset.column_names)
    for name in spec.text_fields:
        if name not in available:
            raise DataError(
                f"spec.dataset.textFields names column '{name}' but the {split} data has columns "
                f"{available}: set textFields to the column(s) holding the text"
            )
    if task == Task.SEQUENCE_CLASSIFICATION and spec.label_field not in available:
        raise DataError(
            f"spec.dataset.labelField is '{spec.label_field}' but the {split} data has columns {available}: "
            "set labelField to the column holding the class"
        )


def _cap(dataset: Any, limit: int | None, seed: int) -> Any:
    if limit is None or limit >= len(dataset):
        return dataset
    # A seeded sample rather than the first rows: hub datasets are often sorted by label.
    return dataset.shuffle(seed=seed).select(range(limit))


def label_names(splits: dict[str, Any], label_field: str, num_labels: int | None) -> dict[int, str]:
    """id → name for the classes; string labels get sorted ids, integer labels keep theirs.

    Raises DataError for labels that are neither, out of range, or (eval) unseen in training.
    """
    train = splits[TRAIN]
    feature = train.features[label_field]
    names = getattr(feature, "names", None)
    if names:  # a datasets ClassLabel already maps ids to names
        return dict(enumerate(names))
    values = {split: list(dataset[label_field]) for split, dataset in splits.items()}
    kinds = {type(v) for column in values.values() for v in column}
    if kinds <= {str}:
        found = sorted(set(values[TRAIN]))
        unseen = sorted(set(values.get(EVAL, [])) - set(found))
        if unseen:
            raise DataError(
                f"spec.dataset.labelField '{label_field}': eval labels {unseen} never occur in training "
                f"(training has {found})"
            )
        if num_labels is not None and num_labels != len(found):
            raise DataError(
                f"spec.model.numLabels is {num_labels} but column '{label_field}' has {len(found)} "
                f"classes {found}: set numLabels: {len(found)} or leave it unset"
            )
        return dict(enumerate(found))
    if kinds <= {int, bool}:
        all_values = [int(v) for column in values.values() for v in column]
        low, high = min(all_values), max(all_values)
        count = num_labels if num_labels is not None else high + 1
        if low < 0 or high >= count:
            raise DataError(
                f"spec.dataset.labelField '{label_field}' holds ids {low}..{high}, outside 0..{count - 1} "
                f"for {count} classes (spec.model.numLabels): fix the labels or numLabels"
            )
        return {index: f"LABEL_{index}" for index in range(max(count, 2))}
    shown = sorted(k.__name__ for k in kinds)
    raise DataError(
        f"spec.dataset.labelField '{label_field}' holds {shown} values: classification needs integer "
        "ids or strings"
    )


def prepare_data(spec: FineTuneJobSpec, tokenizer: Any, token: str | None) -> PreparedData:
    """Load, check, cap and tokenize the data for spec.model.task. Raises DataError on a mismatch."""
    dataset_spec = spec.dataset
    task = spec.model.task
    splits = load_raw(dataset_spec, token)
    for split, dataset in splits.items():
        check_columns(dataset, dataset_spec, task, split)
    raw_sizes = {split: len(dataset) for split, dataset in splits.items()}
    splits[TRAIN] = _cap(splits[TRAIN], dataset_spec.max_train_samples, spec.training.seed)
    if EVAL in splits:
        splits[EVAL] = _cap(splits[EVAL], dataset_spec.max_eval_samples, spec.training.seed)

    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    if task == Task.SEQUENCE_CLASSIFICATION:
        assert dataset_spec.label_field is not None
        id2label = label_names(splits, dataset_spec.label_field, spec.model.num_labels)
        if getattr(splits[TRAIN].features[dataset_spec.label_field], "dtype", None) == "string":
            label2id = {name: index for index, name in id2label.items()}

    text_fields = list(dataset_spec.text_fields)
    label_field = dataset_spec.label_field
    max_length = dataset_spec.max_length

    eos_id = tokenizer.eos_token_id
    # Other ranks wait (in a barrier) while the node's first process tokenizes: use the node's cores.
    processes = dataset_spec.tokenization_processes

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        if task == Task.CAUSAL_LM:
            texts = [
                "\n".join(str(t) for t in parts)
                for parts in zip(*(batch[f] for f in text_fields), strict=True)
            ]
            # One token short of maxLength, for the EOS that ends every text: the model must learn to stop.
            encoded = tokenizer(texts, truncation=True, max_length=max_length - 1)
            if eos_id is not None:
                for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True):
                    if not ids or ids[-1] != eos_id:
                        ids.append(eos_id)
                        mask.append(1)
        else:
            columns = [[str(t) for t in batch[f]] for f in text_fields]
            encoded = tokenizer(*columns, truncation=True, max_length=max_length)
            labels = batch[str(label_field)]
            encoded["labels"] = [label2id[v] for v in labels] if label2id else [int(v) for v in labels]
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return dict(encoded)

    tokenized: dict[str, Any] = {}
    for split, dataset in splits.items():
        mapped = dataset.map(
            encode,
            batched=True,
            num_proc=processes,
            remove_columns=list(dataset.column_names),
            desc=f"tokenizing {split}",
        )
        if task == Task.CAUSAL_LM:
            mapped = mapped.filter(
                lambda row: row["length"] > 1, num_proc=processes, desc=f"dropping empty {split} texts"
            )
            if dataset_spec.packing:
                mapped = mapped.map(
                    lambda batch: pack_blocks(batch["input_ids"], max_length),
                    batched=True,
                    batch_size=PACKING_GROUP,
                    remove_columns=list(mapped.column_names),
                    desc=f"packing {split} into blocks of {max_length} tokens",
                )
        tokenized[split] = mapped
    lengths = list(tokenized[TRAIN]["length"])
    if not lengths:
        raise DataError("the training data is empty after tokenization: check spec.dataset.files.train")
    for split in tokenized:
        tokenized[split] = tokenized[split].remove_columns("length")
    return PreparedData(
        train=tokenized[TRAIN],
        eval=tokenized.get(EVAL),
        id2label=id2label,
        train_lengths=lengths,
        source=describe_source(dataset_spec),
        raw_sizes=raw_sizes,
    )


PACKING_GROUP = 1000  # texts concatenated at a time when packing (datasets' map batch size, as in run_clm)


def pack_blocks(texts: list[list[int]], block_size: int) -> dict[str, list[Any]]:
    """Concatenate token lists and cut them into full blocks of `block_size` (the remainder is dropped)."""
    stream = [token for ids in texts for token in ids]
    usable = len(stream) // block_size * block_size
    blocks = [stream[start : start + block_size] for start in range(0, usable, block_size)]
    return {
        "input_ids": blocks,
        "attention_mask": [[1] * block_size for _ in blocks],
        "length": [block_size] * len(blocks),
    }


@dataclass
class CausalLMCollator:
    """Right-pads a batch and sets labels = input ids at real tokens, -100 at padding only.

    Padding is told apart by the attention mask, not by the token id: with pad = eos (most causal LMs), masking
    every pad-id position would also mask the EOS that ends each text, and the model would never learn to stop.
    The model shifts the labels itself.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        for row, feature in enumerate(features):
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            mask = torch.as_tensor(feature.get("attention_mask", [1] * len(ids)), dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = mask
            labels[row, : len(ids)] = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_collator(task: str, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
    """Dynamic padding per batch (to a multiple of `pad_to_multiple_of` when given, for tensor cores); for
    causal LMs, labels = input ids with only the padding masked out (`CausalLMCollator`)."""
    from transformers import DataCollatorWithPadding

    if task == Task.CAUSAL_LM:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return CausalLMCollator(int(pad_id or 0), pad_to_multiple_of)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)


def batches_per_process(num_samples: int, batch_size: int, num_processes: int) -> int:
    """Batches each process sees per epoch once Accelerate deals them out (even_batches pads the last round)."""
    return math.ceil(math.ceil(num_samples / batch_size) / num_processes)
