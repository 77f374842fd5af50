"""The GPU check: one command on a GPU machine, one table, no hub access (models from configs, generated data).

    python benchmarks/gpu_check.py            # (the lead's `make gpu-check`) about 4-6 minutes on one H200
    python benchmarks/gpu_check.py --quick    # fewer steps, for a first look

Rows, each a fresh `kubetune train` (the pod's entry point, with the launcher contract and
KUBETUNE_GPUS_PER_NODE, so a job that cannot see its GPUs fails instead of running on CPU) or a fresh
`transformers.Trainer` process, run one after another:

1. bert-base (BertConfig() defaults, random init), bf16, sequence length 128, MRPC-shaped data (3,668 sentence
   pairs, each long enough to fill 128 tokens, binary labels), batch 32: kubetune's trainer on 1 GPU;
2. the same with transformers.Trainer (bf16, tf32, its default fused AdamW, same batch, steps and lr);
3. and 4. kubetune with DeepSpeed ZeRO-2 and ZeRO-3 on one GPU (1 node x 1 process through torchrun);
5. a ~130M-parameter Llama from LlamaConfig (hidden 768, 12 layers, vocabulary 32,000), packed causal-LM
   blocks of 1,024 tokens, batch 8: tokens/s;
6. QLoRA on that Llama (spec.adapter.qlora: the base in 4 bits through bitsandbytes, a LoRA adapter of rank 16
   on every linear layer, the same packed blocks): tokens/s, and that it trains at all (needs `pip install
   bitsandbytes`; the row fails naming it otherwise). MFU is not given: the frozen base has no weight gradients;
7. 1 node x 2 processes over NCCL (bert-base, as row 1), when the machine has 2 GPUs or more.

Figures: samples/s (tokens/s) over each run's training loop, as the runs report them (kubetune: metrics.json's
samples_per_second; Trainer: train_samples_per_second; both include the first, slower steps), and MFU = model
FLOPs per second / (GPUs x the GPU's dense bf16 peak). Model FLOPs per trained token = 6 x N + 12 x L x H x S
(N: parameters outside the embeddings, L layers, H hidden size, S sequence length; forward + backward, the
attention scores included; PaLM's appendix B). The peak comes from the device name (H100/H200 989 TFLOPS,
A100 312, ...) or --peak-tflops. Targets (issue 10): MFU >= 40 % on bert-base, kubetune >= 1.2x Trainer.

Exit codes: 0 every row ran, 1 a row failed (its log tail is printed), 2 no CUDA device (never falls back to CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "L40": 181.0, "A10": 125.0, "L4": 121.0}  # fmt: skip
MRPC_TRAIN_PAIRS = 3668
BERT_SEQUENCE = 128
LLAMA_SEQUENCE = 1024


@dataclass
class Row:
    name: str
    gpus: int
    samples_per_second: float | None = None
    tokens_per_sample: int = 0
    flops_per_token: float = 0.0
    seconds: float = 0.0
    note: str = ""

    def tokens_per_second(self) -> float | None:
        return self.samples_per_second * self.tokens_per_sample if self.samples_per_second else None

    def mfu(self, peak_flops: float | None) -> float | None:
        tokens = self.tokens_per_second()
        if tokens is None or not peak_flops or not self.flops_per_token:
            return None
        return tokens * self.flops_per_token / (peak_flops * self.gpus)


def require_cuda() -> tuple[int, str]:
    """(visible GPUs, name of GPU 0). Exits 2 with the reason when torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer")]
        from kubetune_trainer.devices import why_no_cuda

        print(
            f"gpu_check: no CUDA device is visible ({why_no_cuda()}). This check measures GPUs and never "
            "falls back to CPU: run it on a machine with an NVIDIA GPU and a CUDA build of torch.",
            file=sys.stderr,
        )
        sys.exit(2)
    return torch.cuda.device_count(), torch.cuda.get_device_name(0)


def peak_flops_for(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


def _words(rng: random.Random, vocabulary: list[str], count: int) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(count))


def _vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)]


def write_mrpc_shaped(folder: Path, seed: int = 0) -> Path:
    """3,668 sentence pairs of 70-90 words each (more than 128 tokens a pair), labels 0/1. Returns the file."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng)
    path = folder / "mrpc-shaped.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(MRPC_TRAIN_PAIRS):
            row = {
                "sentence1": _words(rng, vocabulary, rng.randint(70, 90)),
                "sentence2": _words(rng, vocabulary, rng.randint(70, 90)),
                "label": rng.randint(0, 1),
            }
            handle.write(json.dumps(row) + "\n")
    return path


def write_documents(folder: Path, documents: int, seed: int = 1) -> Path:
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng)
    path = folder / "documents.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(documents):
            handle.write(json.dumps({"text": _words(rng, vocabulary, rng.randint(60, 140))}) + "\n")
    return path


def build_bert(folder: Path, texts: list[str]) -> Path:
    """bert-base from BertConfig() (random init) with a WordPiece tokenizer trained on `texts`."""
    import transformers
    from kubetune_trainer.synthetic import _wordpiece_tokenizer

    tokenizer = _wordpiece_tokenizer(texts, vocab_size=30522, max_length=512)
    config = transformers.BertConfig(pad_token_id=tokenizer.pad_token_id)  # bert-base: 12 x 768, 110M
    config.num_labels = 2
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_llama(folder: Path, texts: list[str]) -> Path:
    """A ~130M Llama from LlamaConfig (random init) with a byte-level BPE tokenizer trained on `texts`."""
    import transformers
    from kubetune_trainer.synthetic import _byte_bpe_tokenizer

    tokenizer = _byte_bpe_tokenizer(texts, vocab_size=32000, max_length=LLAMA_SEQUENCE)
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=LLAMA_SEQUENCE,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def flops_per_token(model_folder: Path, causal: bool, sequence: int) -> float:
    """6 N + 12 L H S for the model in `model_folder` (N without the embedding matrices)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_folder)
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModelForSequenceClassification
    with torch.device("meta"):
        model = auto.from_config(config)
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    output = model.get_output_embeddings() if causal else None
    if output is not None:
        embeddings.add(id(output.weight))
    parameters = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
    return 6.0 * parameters + 12.0 * config.num_hidden_layers * config.hidden_size * sequence


def job_document(
    model: Path, data: Path, output: Path, steps: int, causal: bool, **extra: Any
) -> dict[str, Any]:
    training: dict[str, Any] = {
        "maxSteps": steps,
        "learningRate": 2e-5,
        "warmupSteps": 0,
        "perDeviceTrainBatchSize": 8 if causal else 32,
        "mixedPrecision": "bf16",
        "evalStrategy": "no",
        "loggingSteps": 50,
        "metrics": ["perplexity"] if causal else ["accuracy"],
        "dataloaderWorkers": 2,
    }
    dataset: dict[str, Any] = {
        "files": {"train": str(data)},
        "evalSplit": None,
        "maxLength": LLAMA_SEQUENCE if causal else BERT_SEQUENCE,
        "tokenizationProcesses": 8,
    }
    if causal:
        dataset.update({"textFields": ["text"], "labelField": None, "packing": True})
    else:
        dataset.update({"textFields": ["sentence1", "sentence2"], "labelField": "label"})
    spec: dict[str, Any] = {
        "model": {"name": str(model), "task": "causal-lm" if causal else "sequence-classification"},
        "dataset": dataset,
        "training": training,
        "distribution": {"nodes": 1, "processesPerNode": 1},
        "checkpointing": {"atEpochEnd": False},
        "output": {"path": str(output), "saveModel": False},
    }
    for block, values in extra.items():
        spec[block] = {**spec.get(block, {}), **values}
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": output.name},
        "spec": spec,
    }


def _child_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "operator"), str(REPO / "trainer"), env.get("PYTHONPATH", "")]
    )
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HOME", str(work / "hf-home"))
    return env


def _run(command: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
    with log.open("w") as handle:
        try:
            return subprocess.run(
                command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            return 124


def run_kubetune(row: Row, document: dict[str, Any], work: Path, processes: int, timeout: float) -> Row:
    """`kubetune train` with the launcher contract for 1 node x `processes`; fills row from metrics.json."""
    import yaml

    document["spec"]["distribution"]["processesPerNode"] = processes
    name = document["metadata"]["name"]
    job = work / f"{name}.yaml"
    job.write_text(yaml.safe_dump(document))
    env = _child_env(work)
    env.update(
        KUBETUNE_JOB_FILE=str(job),
        KUBETUNE_NODE_RANK="0",
        KUBETUNE_NUM_NODES="1",
        KUBETUNE_PROCS_PER_NODE=str(processes),
        KUBETUNE_MAIN_ADDR="127.0.0.1",
        KUBETUNE_MAIN_PORT=str(29500 + random.randint(0, 2000)),
        KUBETUNE_GPUS_PER_NODE=str(
            processes
        ),  # refuse, rather than train on CPU, if the GPUs are not visible
        KUBETUNE_TERMINATION_LOG=str(work / f"{name}.termination-log"),
        OMP_NUM_THREADS="4",
    )
    started = time.monotonic()
    code = _run([sys.executable, "-m", "kubetune.cli", "train"], env, work / f"{name}.log", timeout)
    row.seconds = time.monotonic() - started
    metrics = Path(document["spec"]["output"]["path"]) / "metrics.json"
    if code != 0 or not metrics.exists():
        row.note = f"FAILED (exit {code}): see {work / f'{name}.log'}"
        return row
    summary = json.loads(metrics.read_text())
    row.samples_per_second = summary.get("samples_per_second")
    row.note = f"{summary['step']} steps"
    return row


def hf_trainer_child(config_file: str) -> None:
    """Child process: transformers.Trainer on the same model, data and hyperparameters; prints a JSON line."""
    import datasets
    import transformers

    config = json.loads(Path(config_file).read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(config["model"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(config["model"], dtype="float32")
    data = datasets.load_dataset("json", data_files=config["data"])["train"]
    data = data.map(
        lambda batch: tokenizer(
            batch["sentence1"], batch["sentence2"], truncation=True, max_length=BERT_SEQUENCE
        ),
        batched=True,
        num_proc=8,
        remove_columns=["sentence1", "sentence2"],
    )
    arguments = transformers.TrainingArguments(
        output_dir=config["output"],
        per_device_train_batch_size=32,
        max_steps=config["steps"],
        learning_rate=2e-5,
        bf16=True,
        tf32=True,
        dataloader_num_workers=2,
        logging_steps=50,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        seed=42,
    )
    trainer = transformers.Trainer(
        model=model, args=arguments, train_dataset=data, processing_class=tokenizer
    )
    metrics = trainer.train().metrics
    print("GPU_CHECK_RESULT " + json.dumps({"samples_per_second": metrics["train_samples_per_second"]}))


def run_hf_trainer(row: Row, model: Path, data: Path, work: Path, steps: int, timeout: float) -> Row:
    config = work / "hf-trainer.json"
    config.write_text(
        json.dumps({"model": str(model), "data": str(data), "output": str(work / "hf-out"), "steps": steps})
    )
    log = work / "hf-trainer.log"
    env = _child_env(work)
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[
        0
    ]  # one GPU, no DataParallel
    started = time.monotonic()
    code = _run([sys.executable, __file__, "--hf-trainer-child", str(config)], env, log, timeout)
    row.seconds = time.monotonic() - started
    results = [line for line in log.read_text().splitlines() if line.startswith("GPU_CHECK_RESULT ")]
    if code != 0 or not results:
        row.note = f"FAILED (exit {code}): see {log}"
        return row
    row.samples_per_second = json.loads(results[-1].split(" ", 1)[1])["samples_per_second"]
    row.note = f"{steps} steps"
    return row


def render(rows: list[Row], device: str, gpus: int, peak: float | None) -> str:
    peak_text = f"{peak / 1e12:.0f} TFLOPS bf16 dense" if peak else "unknown peak (pass --peak-tflops)"
    lines = [
        f"GPU check on {gpus} x {device} ({peak_text})",
        f"{'run':44} {'GPUs':>4} {'samples/s':>10} {'tokens/s':>10} {'MFU':>6} {'wall s':>7}  note",
    ]
    for row in rows:
        samples = f"{row.samples_per_second:10.1f}" if row.samples_per_second else f"{'-':>10}"
        tokens = row.tokens_per_second()
        mfu = row.mfu(peak)
        lines.append(
            f"{row.name:44} {row.gpus:>4} {samples} {f'{tokens:10.0f}' if tokens else f'{chr(45):>10}'} "
            f"{f'{mfu:6.1%}' if mfu is not None else f'{chr(45):>6}'} {row.seconds:7.0f}  {row.note}"
        )
    ours = next((r for r in rows if r.name.startswith("bert-base kubetune") and r.samples_per_second), None)
    theirs = next(
        (r for r in rows if r.name.startswith("bert-base transformers") and r.samples_per_second), None
    )
    if ours and theirs and ours.samples_per_second and theirs.samples_per_second:
        ratio = ours.samples_per_second / theirs.samples_per_second
        lines.append(
            f"kubetune / Trainer samples/s on bert-base: {ratio:.2f}x (target >= 1.2x; MFU target >= 40 %)"
        )
    return "\n".join(lines)


# The QLoRA row's adapter (spec.adapter): rank 16 on every linear layer of a 4-bit NF4 base, bf16 compute.
QLORA_ADAPTER: dict[str, Any] = {
    "rank": 16,
    "alpha": 32,
    "targetModules": ["all-linear"],
    "qlora": {"quantType": "nf4", "computeDtype": "bfloat16"},
}


def qlora_job_document(model: Path, data: Path, output: Path, steps: int) -> dict[str, Any]:
    """The Llama row's job with a QLoRA adapter (LoRA learning rates are ~100x full fine-tuning's)."""
    return job_document(
        model, data, output, steps, causal=True, adapter=QLORA_ADAPTER, training={"learningRate": 2e-4}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps per row (a first look)")
    parser.add_argument(
        "--peak-tflops", type=float, help="the GPU's dense bf16 peak, when its name is not known"
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--work", type=Path, help="folder for data, models and logs (default: a temporary one)"
    )
    parser.add_argument("--hf-trainer-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hf_trainer_child:
        hf_trainer_child(args.hf_trainer_child)
        return 0
    gpus, device = require_cuda()
    peak = peak_flops_for(device, args.peak_tflops)
    sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer")]
    from kubetune_trainer.synthetic import read_texts

    work = args.work or Path(tempfile.mkdtemp(prefix="kubetune-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    bert_steps, llama_steps, timeout = (100, 40, 300.0) if args.quick else (300, 150, 420.0)
    print(f"gpu_check: building models and data in {work}", flush=True)
    pairs = write_mrpc_shaped(work)
    documents = write_documents(work, documents=4000 if args.quick else 12000)
    bert = build_bert(work / "bert-base", read_texts(pairs)[:20000])
    llama = build_llama(work / "llama-130m", read_texts(documents)[:20000])
    bert_flops = flops_per_token(bert, causal=False, sequence=BERT_SEQUENCE)
    llama_flops = flops_per_token(llama, causal=True, sequence=LLAMA_SEQUENCE)

    def bert_job(name: str, **extra: Any) -> dict[str, Any]:
        return job_document(bert, pairs, work / name, bert_steps, causal=False, **extra)

    def bert_row(name: str, count: int = 1) -> Row:
        return Row(name, count, tokens_per_sample=BERT_SEQUENCE, flops_per_token=bert_flops)

    rows: list[Row] = []

    def done(row: Row) -> None:
        rows.append(row)
        print(
            f"  {row.name}: {row.samples_per_second or '-'} samples/s ({row.seconds:.0f} s) {row.note}",
            flush=True,
        )

    done(run_kubetune(bert_row("bert-base kubetune (1 process)"), bert_job("bert"), work, 1, timeout))
    done(run_hf_trainer(bert_row("bert-base transformers.Trainer"), bert, pairs, work, bert_steps, timeout))
    for stage in (2, 3):
        job = bert_job(f"bert-zero{stage}", distribution={"deepspeed": {"zeroStage": stage}})
        done(run_kubetune(bert_row(f"bert-base kubetune DeepSpeed ZeRO-{stage}"), job, work, 1, timeout))
    llama_job = job_document(llama, documents, work / "llama", llama_steps, causal=True)
    llama_row = Row(
        "llama ~130M kubetune, seq 1024 packed",
        1,
        tokens_per_sample=LLAMA_SEQUENCE,
        flops_per_token=llama_flops,
    )
    done(run_kubetune(llama_row, llama_job, work, 1, timeout))
    qlora_row = Row("llama ~130M kubetune QLoRA (4-bit base, LoRA r16)", 1, tokens_per_sample=LLAMA_SEQUENCE)
    done(
        run_kubetune(
            qlora_row, qlora_job_document(llama, documents, work / "qlora", llama_steps), work, 1, timeout
        )
    )
    if gpus >= 2:
        done(
            run_kubetune(
                bert_row("bert-base kubetune 2 processes NCCL", 2), bert_job("bert-nccl"), work, 2, timeout
            )
        )
    else:
        rows.append(Row("bert-base kubetune 2 processes NCCL", 2, note="skipped: only 1 GPU visible"))
    table = render(rows, device, gpus, peak)
    print("\n" + table)
    if args.json:
        args.json.write_text(json.dumps([{**row.__dict__, "mfu": row.mfu(peak)} for row in rows], indent=2))
    failed = [row for row in rows if row.note.startswith("FAILED")]
    for row in failed:
        log = row.note.rsplit("see ", 1)[-1]
        print(
            f"\n--- {row.name}: last lines of {log}\n" + "\n".join(Path(log).read_text().splitlines()[-30:])
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
