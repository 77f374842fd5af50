"""License-free synthetic data and tiny models for tests, examples and benchmarks.

Everything here is generated from a seed, so the same call always writes the same bytes:

- `write_sentiment_dataset` — single-text classification (`text`, `label`): a review made of a subject, filler
  words and sentiment words of one polarity. A tiny randomly initialised BERT beats chance clearly within
  ~100 steps on CPU.
- `write_paraphrase_dataset` — sentence pairs (`sentence1`, `sentence2`, `label`: 1 paraphrase, 0 not), in the
  spirit of MRPC: paraphrases by synonym swaps, reordering and active/passive voice; non-paraphrases share most
  words but change the meaning (swapped roles, an opposite verb, negation, another time or person).
- `write_prompt_completion_dataset` — causal-LM prompt/completion pairs (`prompt`, `completion`): random chatter,
  then "what does the <animal> say ?"; the completion is the animal's sound, twice.
- `write_chat_dataset` — the same task as conversations (`messages`: system, user, assistant turns), for
  dataset.messagesField.
- `build_tiny_model` — trains a tokenizer on a corpus (WordPiece for BERT, byte-level BPE for GPT-2), and
  saves it with a config-initialised tiny model into a folder the Auto classes load.
- `job_document` / `write_job_file` — a FineTuneJob for tests, with overrides deep-merged into `spec`.

Example::

    train, eval_ = write_sentiment_dataset(tmp / "data", n_train=800, n_eval=200, seed=0)
    model = build_tiny_model(tmp / "model", corpus=read_texts(train), num_labels=2)
    write_job_file(tmp / "job.yaml", model=str(model), train=str(train), eval=str(eval_), output=str(tmp / "out"))
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubetune.mappings import deep_merge

# --- sentiment -----------------------------------------------------------------------------------------------

_POSITIVE = [
    "good", "great", "excellent", "wonderful", "lovely", "superb", "amazing", "fantastic", "delightful",
    "brilliant", "charming", "enjoyable",
]  # fmt: skip
_NEGATIVE = [
    "bad", "awful", "terrible", "horrible", "poor", "dreadful", "boring", "disappointing", "mediocre",
    "lousy", "dull", "annoying",
]  # fmt: skip
_SUBJECTS = [
    "the movie", "the film", "this book", "the meal", "the service", "the hotel", "the show", "the album",
    "the game", "the trip", "the concert", "the play",
]  # fmt: skip
_FILLERS = ["really", "quite", "honestly", "overall", "truly", "very", "simply", "rather", "just", "so"]
_CONNECTORS = ["and", "and also", "but mostly", "and frankly", "and even"]

SENTIMENT_LABELS = ("negative", "positive")


def _review(rng: random.Random, label: int) -> str:
    words = _POSITIVE if label == 1 else _NEGATIVE
    first, second = rng.sample(words, 2)
    parts = [rng.choice(_SUBJECTS), "was", rng.choice(_FILLERS), first]
    if rng.random() < 0.7:
        parts += [rng.choice(_CONNECTORS), rng.choice(_FILLERS), second]
    return " ".join(parts)


def write_sentiment_dataset(
    folder: str | Path, n_train: int = 800, n_eval: int = 200, seed: int = 0, string_labels: bool = False
) -> tuple[Path, Path]:
    """Write `train.jsonl` and `eval.jsonl` with `text` and `label` (balanced classes) into `folder`.

    `string_labels` writes "negative"/"positive" instead of 0/1 (to exercise label mapping).
    Returns (train_path, eval_path).
    """
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index in range(count):
            label = index % 2
            out.append(
                {"text": _review(rng, label), "label": SENTIMENT_LABELS[label] if string_labels else label}
            )
        rng.shuffle(out)
        return out

    return _write_jsonl(folder / "train.jsonl", rows(n_train)), _write_jsonl(
        folder / "eval.jsonl", rows(n_eval)
    )


# --- paraphrase ----------------------------------------------------------------------------------------------

# past tense, past participle, base form, synonyms as (past, participle), a verb of different meaning.
_VERBS: list[tuple[str, str, str, list[tuple[str, str]], tuple[str, str, str]]] = [
    ("helped", "helped", "help", [("assisted", "assisted"), ("aided", "aided")], ("ignored", "ignored", "ignore")),
    ("praised", "praised", "praise", [("complimented", "complimented"), ("commended", "commended")],
     ("criticized", "criticized", "criticize")),
    ("called", "called", "call", [("phoned", "phoned"), ("telephoned", "telephoned")],
     ("emailed", "emailed", "email")),
    ("hired", "hired", "hire", [("employed", "employed"), ("recruited", "recruited")], ("fired", "fired", "fire")),
    ("followed", "followed", "follow", [("trailed", "trailed"), ("tracked", "tracked")],
     ("avoided", "avoided", "avoid")),
    ("greeted", "greeted", "greet", [("welcomed", "welcomed"), ("saluted", "saluted")],
     ("insulted", "insulted", "insult")),
    ("paid", "paid", "pay", [("compensated", "compensated"), ("reimbursed", "reimbursed")],
     ("charged", "charged", "charge")),
    ("taught", "taught", "teach", [("instructed", "instructed"), ("tutored", "tutored")],
     ("tested", "tested", "test")),
    ("warned", "warned", "warn", [("cautioned", "cautioned"), ("alerted", "alerted")],
     ("reassured", "reassured", "reassure")),
    ("thanked", "thanked", "thank", [("acknowledged", "acknowledged")], ("blamed", "blamed", "blame")),
]  # fmt: skip
_PEOPLE = [
    "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "the manager", "the teacher",
    "the doctor", "the neighbour", "the coach", "the student", "the driver", "the pilot",
]  # fmt: skip
# time phrase → an equivalent phrase (synonym swap keeps the meaning).
_TIMES = {
    "yesterday": "the day before today",
    "last week": "the previous week",
    "this morning": "earlier today",
    "on monday": "on monday",
    "twice": "two times",
    "at noon": "at midday",
}


def _render(form: str, subject: str, verb: tuple[str, str, str], obj: str, time: str) -> str:
    """One sentence: form is active, fronted (time first), passive or negated."""
    past, participle, base = verb
    if form == "fronted":
        sentence = f"{time}, {subject} {past} {obj}"
    elif form == "passive":
        sentence = f"{obj} was {participle} by {subject} {time}"
    elif form == "negated":
        sentence = f"{subject} did not {base} {obj} {time}"
    else:
        sentence = f"{subject} {past} {obj} {time}"
    return sentence[0].upper() + sentence[1:] + "."


def _paraphrase_pair(rng: random.Random, label: int) -> tuple[str, str]:
    past, participle, base, synonyms, opposite = rng.choice(_VERBS)
    subject, obj = rng.sample(_PEOPLE, 2)
    time = rng.choice(list(_TIMES))
    first = _render(rng.choice(["active", "active", "fronted"]), subject, (past, participle, base), obj, time)
    # Every second sentence is rephrased: a synonym verb, an equivalent time, another word order or voice.
    syn_past, syn_participle = rng.choice([(past, participle), *synonyms])
    same_time = _TIMES[time] if rng.random() < 0.4 else time
    form = rng.choice(["active", "fronted", "passive", "passive"])
    if label == 1:
        second = _render(form, subject, (syn_past, syn_participle, base), obj, same_time)
        return first, second
    # Lexical changes (another verb, a negation, another person) outnumber the subtle ones (swapped roles,
    # another time), as in MRPC, where most non-paraphrases differ in content words.
    change = rng.choice(
        ["swap", "opposite", "opposite", "negate", "negate", "other_person", "other_person", "other_time"]
    )
    verb = (syn_past, syn_participle, base)
    if change == "swap":
        subject, obj = obj, subject
    elif change == "opposite":
        verb = opposite
    elif change == "negate":
        form = "negated"
    elif change == "other_person":
        obj = rng.choice([p for p in _PEOPLE if p not in (subject, obj)])
    else:
        same_time = rng.choice([t for t in _TIMES if t != time])
    return first, _render(form, subject, verb, obj, same_time)


def write_paraphrase_dataset(
    folder: str | Path, n_train: int = 2000, n_eval: int = 400, seed: int = 0
) -> tuple[Path, Path]:
    """Write `train.jsonl` and `eval.jsonl` with `sentence1`, `sentence2`, `label` (1 = paraphrase) into `folder`.

    Classes are balanced. Returns (train_path, eval_path).
    """
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def rows(count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index in range(count):
            label = index % 2
            first, second = _paraphrase_pair(rng, label)
            out.append({"sentence1": first, "sentence2": second, "label": label})
        rng.shuffle(out)
        return out

    return _write_jsonl(folder / "train.jsonl", rows(n_train)), _write_jsonl(
        folder / "eval.jsonl", rows(n_eval)
    )


# --- prompt -> completion ------------------------------------------------------------------------------------

# animal -> the sound it makes: the completion is decided by one word somewhere in a long, random prompt.
ANIMAL_SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "pig": "oink",
    "owl": "hoot", "frog": "croak", "horse": "neigh", "lion": "roar", "mouse": "squeak", "bee": "buzz",
}  # fmt: skip
_CHATTER = [
    "today", "we", "walked", "near", "the", "old", "farm", "and", "saw", "many", "things", "under", "a",
    "bright", "sky", "while", "friends", "talked", "about", "music", "rain", "trains", "and", "bread",
]  # fmt: skip


def animal_sound_pair(
    rng: random.Random, sounds: Mapping[str, str] = ANIMAL_SOUNDS, chatter_words: tuple[int, int] = (6, 14)
) -> dict[str, str]:
    """One prompt/completion pair: random chatter (mostly tokens no completion depends on), then a question
    about an animal; the completion is that animal's sound, twice. A model trained on the prompts as well would
    spend most of its loss on the unpredictable chatter."""
    animal = rng.choice(list(sounds))
    chatter = " ".join(rng.choice(_CHATTER) for _ in range(rng.randint(*chatter_words)))
    sound = sounds[animal]
    return {"prompt": f"{chatter} . what does the {animal} say ?", "completion": f" {sound} {sound}"}


def write_prompt_completion_dataset(
    folder: str | Path, n_train: int = 600, n_eval: int = 100, seed: int = 0
) -> tuple[Path, Path]:
    """Write `train.jsonl` and `eval.jsonl` with `prompt` and `completion` (see `animal_sound_pair`) into
    `folder`. Returns (train_path, eval_path)."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = [animal_sound_pair(rng) for _ in range(n_train)]
    evaluation = [animal_sound_pair(rng) for _ in range(n_eval)]
    return _write_jsonl(folder / "train.jsonl", train), _write_jsonl(folder / "eval.jsonl", evaluation)


# --- conversations -------------------------------------------------------------------------------------------

ANIMAL_SYSTEM_PROMPT = "you name the sound of the animal ."


# Every animal with the next one's sound: what the tiny "pretrained" chat base believes before LoRA corrects it.
SHIFTED_ANIMAL_SOUNDS = dict(
    zip(ANIMAL_SOUNDS, [*list(ANIMAL_SOUNDS.values())[1:], *list(ANIMAL_SOUNDS.values())[:1]], strict=True)
)


def animal_sound_conversation(
    rng: random.Random, sounds: Mapping[str, str] = ANIMAL_SOUNDS
) -> dict[str, list[dict[str, str]]]:
    """One conversation in the messages format: a system prompt, then one or two user questions (random chatter,
    then "what does the <animal> say ?"), each answered by the assistant with the animal's sound, twice. Only the
    answers are predictable: a model trained on the whole conversation would spend its loss on the chatter."""
    messages = [{"role": "system", "content": ANIMAL_SYSTEM_PROMPT}]
    for _ in range(1 if rng.random() < 0.7 else 2):
        pair = animal_sound_pair(rng, sounds, chatter_words=(2, 6))
        messages.append({"role": "user", "content": pair["prompt"]})
        messages.append({"role": "assistant", "content": pair["completion"].strip()})
    return {"messages": messages}


def write_chat_dataset(
    folder: str | Path,
    n_train: int = 600,
    n_eval: int = 60,
    seed: int = 0,
    sounds: Mapping[str, str] = ANIMAL_SOUNDS,
) -> tuple[Path, Path]:
    """Write `train.jsonl` and `eval.jsonl` with a `messages` column (see `animal_sound_conversation`, with
    `sounds` as the animals' sounds) into `folder`. Returns (train_path, eval_path)."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train = [animal_sound_conversation(rng, sounds) for _ in range(n_train)]
    evaluation = [animal_sound_conversation(rng, sounds) for _ in range(n_eval)]
    return _write_jsonl(folder / "train.jsonl", train), _write_jsonl(folder / "eval.jsonl", evaluation)


# --- files ---------------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def read_texts(
    path: str | Path,
    fields: Iterable[str] = ("text", "sentence1", "sentence2", "prompt", "completion"),
) -> list[str]:
    """Every value of the given text fields in a JSON-lines file (a corpus for `build_tiny_model`)."""
    wanted = tuple(fields)
    texts: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts.extend(str(row[name]) for name in wanted if name in row)
        # Conversations as the built-in chat template renders them, so that its role markers become tokens.
        texts.extend(f"<|{m['role']}|>\n{m['content']}" for m in row.get("messages", []))
    return texts


# --- tiny models ---------------------------------------------------------------------------------------------


def build_tiny_model(
    folder: str | Path,
    corpus: Iterable[str],
    num_labels: int = 2,
    task: str = "sequence-classification",
    *,
    vocab_size: int = 600,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 128,
    seed: int = 0,
    chat_template: str | None = None,
) -> Path:
    """Train a tokenizer on `corpus` and save it with a freshly initialised tiny model into `folder`.

    task "sequence-classification" gives a BERT (WordPiece tokenizer, token_type_ids for sentence pairs);
    "causal-lm" gives a GPT-2 (byte-level BPE, pad = eos). The folder loads with AutoTokenizer and
    AutoModelForSequenceClassification / AutoModelForCausalLM; `chat_template` is saved with the tokenizer
    (e.g. kubetune_trainer.chat.ZEPHYR_TEMPLATE for a tiny chat model). Returns the folder.
    Raises ValueError for an unknown task.
    """
    import torch  # heavy imports only when a model is built
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = list(corpus)
    torch.manual_seed(seed)
    if task == "sequence-classification":
        tokenizer = _wordpiece_tokenizer(texts, vocab_size, max_positions)
        config = transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden_size * 4,
            max_position_embeddings=max_positions,
            pad_token_id=tokenizer.pad_token_id,
        )
        config.num_labels = num_labels  # a property in transformers 5: also builds id2label/label2id
        model: Any = transformers.BertForSequenceClassification(config)
    elif task == "causal-lm":
        tokenizer = _byte_bpe_tokenizer(texts, vocab_size, max_positions)
        eos = tokenizer.eos_token_id
        gpt_config = transformers.GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max_positions,
            n_embd=hidden_size,
            n_layer=layers,
            n_head=heads,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        model = transformers.GPT2LMHeadModel(gpt_config)
    else:
        raise ValueError(f"task {task!r} is not supported: use sequence-classification or causal-lm")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def pretrain_tiny_chat_model(
    folder: str | Path,
    conversations: Iterable[list[dict[str, str]]],
    *,
    epochs: int = 6,
    learning_rate: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> Path:
    """Train every weight of the tiny causal LM in `folder` on `conversations` (rendered with its chat template,
    loss on the assistant turns) and save it back: a small stand-in for a pretrained chat model, which LoRA then adapts.
    A plain torch loop (no kubetune: this builds a test asset). Returns the folder.

    A LoRA adapter on a randomly initialised model learns little: its frozen embeddings and head cannot express
    confident predictions, and nothing in it attends to the words that matter yet.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.chat import encode_conversations

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    encoded = encode_conversations(tokenizer, list(conversations), tokenizer.chat_template, 512, True)
    rows = list(zip(encoded["input_ids"], encoded["labels"], strict=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    order = random.Random(seed)
    model.train()
    for _ in range(epochs):
        order.shuffle(rows)
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            longest = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), longest), tokenizer.pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), longest), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for index, (row, row_labels) in enumerate(batch):
                ids[index, : len(row)] = torch.tensor(row)
                labels[index, : len(row)] = torch.tensor(row_labels)
                mask[index, : len(row)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def _wordpiece_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    )
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    backend.decoder = decoders.WordPiece()
    # transformers 5 drops token_type_ids unless model_input_names lists them; BERT needs them for pairs.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _byte_bpe_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=eos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


# --- job files -----------------------------------------------------------------------------------------------


def job_document(
    *,
    model: str,
    train: str,
    eval: str | None = None,
    output: str,
    name: str = "synthetic-job",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A FineTuneJob document (camelCase, as YAML has it) sized for quick CPU runs.

    Defaults: one epoch, batch 16, learning rate 3e-3 with 5 warmup steps (a tiny random-init BERT leaves its
    initial plateau within ~30 steps), maxLength 64,
    logging every 5 steps. `overrides` is deep-merged into `spec` (e.g. {"training": {"maxSteps": 20}});
    a None value there replaces the default with null.
    """
    spec: dict[str, Any] = {
        "model": {"name": model},
        "dataset": {"files": {"train": train}, "maxLength": 64},
        "training": {
            "epochs": 1,
            "learningRate": 3e-3,
            "warmupSteps": 5,
            "perDeviceTrainBatchSize": 16,
            "perDeviceEvalBatchSize": 64,
            "loggingSteps": 5,
        },
        "output": {"path": output},
    }
    if eval is not None:
        spec["dataset"]["files"]["eval"] = eval
    else:
        spec["dataset"]["evalSplit"] = None
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": deep_merge(spec, overrides or {}),
    }


def write_job_file(
    path: str | Path,
    *,
    model: str,
    train: str,
    eval: str | None = None,
    output: str,
    name: str = "synthetic-job",
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write `job_document(...)` as YAML to `path`. Returns the path."""
    document = job_document(
        model=model, train=train, eval=eval, output=output, name=name, overrides=overrides
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
