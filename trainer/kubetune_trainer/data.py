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
    if spec.messages_field is not None:
        if spec.messages_field not in available:
            raise DataError(
                f"spec.dataset.messagesField is '{spec.messages_field}' but the {split} data has columns "
                f"{available}: set messagesField to the column holding the conversations"
            )
        return
    if spec.prompt_field is not None and spec.completion_field is not None:
        for field_name, name in (
            ("promptField", spec.prompt_field),
            ("completionField", spec.completion_field),
        ):
            if name not in available:
                raise DataError(
                    f"spec.dataset.{field_name} is '{name}' but the {split} data has columns {available}: "
                    f"set {field_name} to the column holding the {field_name.removesuffix('Field')}"
                )
        return
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
    prompt_field, completion_field = dataset_spec.prompt_field, dataset_spec.completion_field
    # Other ranks wait (in a barrier) while the node's first process tokenizes: use the node's cores.
    processes = dataset_spec.tokenization_processes
    messages_field = dataset_spec.messages_field
    chat_template = None
    if task == Task.CAUSAL_LM and messages_field is not None:
        from kubetune_trainer import chat

        chat_template = chat.resolve_chat_template(tokenizer, dataset_spec, spec.model.name)
        # Saved with the model and used for generation: the template the model was trained on.
        tokenizer.chat_template = chat_template
        for dataset in splits.values():
            chat.check_conversations(list(dataset[:100][messages_field]), messages_field)

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        encoded: Any  # a tokenizer's BatchEncoding, or the same columns built by hand
        if task == Task.CAUSAL_LM and messages_field is not None and chat_template is not None:
            from kubetune_trainer.chat import encode_conversations

            encoded = encode_conversations(
                tokenizer, batch[messages_field], chat_template, max_length, dataset_spec.assistant_only_loss
            )
        elif task == Task.CAUSAL_LM and prompt_field is not None and completion_field is not None:
            # Apart, so that the prompt ends on a token boundary: generation starts from the prompt's tokens.
            prompts = tokenizer([str(t) for t in batch[prompt_field]])["input_ids"]
            completions = tokenizer([str(t) for t in batch[completion_field]], add_special_tokens=False)
            pairs = [
                prompt_completion_example(prompt, completion, eos_id, max_length)
                for prompt, completion in zip(prompts, completions["input_ids"], strict=True)
            ]
            encoded = {
                "input_ids": [ids for ids, _ in pairs],
                "attention_mask": [[1] * len(ids) for ids, _ in pairs],
                "labels": [labels for _, labels in pairs],
            }
        elif task == Task.CAUSAL_LM:
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
            # Every token of a plain text is a target (the collator masks the padding).
            encoded["labels"] = [list(ids) for ids in encoded["input_ids"]]
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
                # A row must have a target after its first token (a conversation cut before its first
                # assistant turn has none: it would teach nothing, and a step of such rows has no tokens to
                # divide by).
                lambda row: row["length"] > 1 and any(label != -100 for label in row["labels"][1:]),
                num_proc=processes,
                desc=f"dropping {split} texts without targets",
            )
            if dataset_spec.packing:
                mapped = mapped.map(
                    lambda batch: pack_blocks(batch["input_ids"], batch["labels"], max_length),
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


def prompt_completion_example(
    prompt: list[int], completion: list[int], eos_id: int | None, max_length: int
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one prompt/completion pair: prompt + completion + EOS, labels -100 on the prompt.

    The EOS is a target, so the model learns to stop after the completion. A pair longer than `max_length`
    loses the start of its prompt first (the end is what the completion follows), then the end of its
    completion (which still closes with EOS, as a truncated text does).
    """
    closing = [eos_id] if eos_id is not None else []
    target = completion[: max_length - len(closing)] + closing
    room = max_length - len(target)
    context = prompt[max(0, len(prompt) - room) :]
    return context + target, [-100] * len(context) + target


def pack_blocks(texts: list[list[int]], labels: list[list[int]], block_size: int) -> dict[str, list[Any]]:
    """Concatenate tokenized texts and cut them into full blocks of `block_size` (the remainder is dropped).

    Returns input_ids, labels and position_ids per block. The labels keep each text's own masking (prompt tokens
    stay -100), and the first token of every text is not a target: attention does not cross texts, so nothing
    before it predicts it (as transformers' DataCollatorWithFlattening marks it). Position ids count from 0 in
    every text, which is what makes transformers keep attention within a text (`find_packed_sequence_indices`)
    when the batch has no attention mask.
    """
    ids_stream: list[int] = []
    label_stream: list[int] = []
    position_stream: list[int] = []
    for ids, text_labels in zip(texts, labels, strict=True):
        ids_stream += ids
        label_stream += [-100, *text_labels[1:]]
        position_stream += range(len(ids))
    usable = len(ids_stream) // block_size * block_size
    starts = range(0, usable, block_size)
    return {
        "input_ids": [ids_stream[start : start + block_size] for start in starts],
        "labels": [label_stream[start : start + block_size] for start in starts],
        "position_ids": [position_stream[start : start + block_size] for start in starts],
        "length": [block_size] * len(starts),
    }


@dataclass
class CausalLMCollator:
    """Right-pads a batch of causal-LM examples; labels come from the examples and are -100 at padding.

    Padding is told apart by length, not by the token id: with pad = eos (most causal LMs), masking every pad-id
    position would also mask the EOS that ends each text, and the model would never learn to stop. The model
    shifts the labels itself. Packed blocks carry position ids instead of an attention mask (see `pack_blocks`);
    padding those, each pad token gets position 0, so it forms a sequence of its own that no text attends to.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in features[0]
        shape = (len(features), longest)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.as_tensor(
                feature.get("labels", feature["input_ids"]), dtype=torch.long
            )
            attention_mask[row, :length] = 1
            if packed:
                position_ids[row, :length] = torch.as_tensor(feature["position_ids"], dtype=torch.long)
        if packed:
            return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
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
