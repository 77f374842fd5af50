"""The end of a run: the final metrics table, the loss-curve PNG and report.md in the output folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.events import JobSummary, ProgressEvent
from kubetune.spec import FineTuneJob
from rich.console import Console
from rich.table import Table

from kubetune_trainer.runner.display import format_duration
from kubetune_trainer.runner.event_log import eval_history, train_curve

LOSS_CURVE = "loss_curve.png"
REPORT = "report.md"
METRICS = "metrics.json"


@dataclass
class RunResult:
    """What happened in one `kubetune run`."""

    job: FineTuneJob  # the resolved job the nodes ran
    source_file: Path
    output_dir: Path
    exit_code: int
    outcome: str  # finished, failed or preempted
    started_at: float  # unix time
    duration_seconds: float
    device: str  # "cpu (gloo)" or "4 GPUs (nccl)"
    summary: JobSummary | None = None
    events: list[ProgressEvent] = field(default_factory=list)
    failed_rank: int | None = None
    message: str | None = None

    @property
    def nodes(self) -> int:
        return self.job.spec.distribution.nodes

    @property
    def procs_per_node(self) -> int:
        return self.job.spec.distribution.processes_per_node


def read_summary(output_dir: Path) -> JobSummary | None:
    """The trainer's metrics.json, or None when it is missing or unreadable (e.g. a crash before the end)."""
    path = output_dir / METRICS
    try:
        return JobSummary.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def plot_loss_curve(events: list[ProgressEvent], path: Path) -> bool:
    """Draw train loss per logged step (and eval metrics per eval step) into a PNG.

    Returns False (and writes nothing) when there is no step with a loss to draw.
    """
    curve = train_curve(events)
    if not curve:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    evals = eval_history(events)
    columns = 2 if evals else 1
    figure, axes = plt.subplots(1, columns, figsize=(6 * columns, 4), squeeze=False)
    loss_axis = axes[0][0]
    loss_axis.plot([s for s, _ in curve], [loss for _, loss in curve], marker=".", label="train loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss")
    loss_axis.set_title("training loss")
    loss_axis.grid(alpha=0.3)
    if evals:
        metric_axis = axes[0][1]
        names = sorted({name for _, metrics in evals for name in metrics})
        for name in names:
            points = [(step, metrics[name]) for step, metrics in evals if name in metrics]
            metric_axis.plot([s for s, _ in points], [v for _, v in points], marker="o", label=name)
        metric_axis.set_xlabel("optimizer step")
        metric_axis.set_title("evaluation")
        metric_axis.grid(alpha=0.3)
        metric_axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _data_description(job: FineTuneJob) -> str:
    data = job.spec.dataset
    if data.files:
        source = f"files: train `{data.files.train}`"
        if data.files.eval:
            source += f", eval `{data.files.eval}`"
    else:
        source = f"hub dataset `{data.name}`" + (f" (config `{data.config}`)" if data.config else "")
    if data.prompt_field:
        fields = f"prompt {data.prompt_field}; completion {data.completion_field}"
    else:
        fields = f"text {', '.join(data.text_fields)}; label {data.label_field}"
    return f"{source}; {fields}; max length {data.max_length} tokens"


def _final_metrics(result: RunResult) -> dict[str, float]:
    if result.summary and result.summary.metrics:
        return result.summary.metrics
    history = eval_history(result.events)
    return history[-1][1] if history else {}


def render_report(result: RunResult) -> str:
    """report.md: job, model, data, nodes, duration, throughput, metrics, and where the files are."""
    job = result.job
    spec = job.spec
    summary = result.summary
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.started_at))
    deepspeed = (
        f"ZeRO stage {spec.distribution.deepspeed.zero_stage}"
        if spec.distribution.deepspeed.enabled
        else "off"
    )
    lines = [
        f"# kubetune run: {job.metadata.name}",
        "",
        f"**Outcome: {result.outcome}** (exit code {result.exit_code})",
        "",
    ]
    if result.message:
        lines += ["```", result.message.strip(), "```", ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| Job file | `{result.source_file}` |",
        f"| Model | `{spec.model.name}` ({spec.model.task}) |",
        f"| Data | {_data_description(job)} |",
        f"| Nodes | {result.nodes} simulated node(s) x {result.procs_per_node} process(es) "
        f"= world size {result.nodes * result.procs_per_node}, {result.device} |",
        f"| Precision / DeepSpeed | {spec.training.mixed_precision} / {deepspeed} |",
        f"| Hyperparameters | lr {spec.training.learning_rate:g}, batch {spec.training.per_device_train_batch_size} "
        f"per process, {spec.training.epochs:g} epoch(s), scheduler {spec.training.lr_scheduler} |",
        f"| Started | {started} |",
        f"| Duration | {format_duration(result.duration_seconds)} |",
    ]
    if summary:
        lines.append(f"| Steps | {summary.step}/{summary.total_steps} (epoch {summary.epoch:.2f}) |")
        if summary.samples_per_second is not None:
            lines.append(f"| Throughput | {summary.samples_per_second:.1f} samples/s |")
        if summary.train_runtime_seconds is not None:
            lines.append(f"| Training time | {format_duration(summary.train_runtime_seconds)} |")
        if summary.train_loss is not None:
            lines.append(f"| Final train loss | {summary.train_loss:.4f} |")
        if summary.model_path:
            lines.append(f"| Saved model | `{summary.model_path}` |")
    if result.failed_rank is not None:
        lines.append(f"| Failed node | {result.failed_rank} (log: `logs/node-{result.failed_rank}.log`) |")
    metrics = _final_metrics(result)
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    history = eval_history(result.events)
    if len(history) > 1:
        names = sorted({name for _, values in history for name in values})
        lines += ["", "## Evaluations", "", "| step | " + " | ".join(names) + " |"]
        lines.append("|---" * (len(names) + 1) + "|")
        for step, values in history:
            cells = " | ".join(f"{values[n]:.4f}" if n in values else "" for n in names)
            lines.append(f"| {step} | {cells} |")
    files = [
        (METRICS, "the trainer's final summary"),
        ("events.jsonl", "every progress event of rank 0"),
        (LOSS_CURVE, "train loss and eval metrics per step"),
        ("model/", "the fine-tuned model"),
        ("checkpoints/", "checkpoints (a rerun resumes from the newest)"),
        ("logs/", "one log per simulated node"),
    ]
    present = [(name, what) for name, what in files if (result.output_dir / name.rstrip("/")).exists()]
    if present:
        lines += ["", "## Files", ""]
        lines += [f"- `{name}`: {what}" for name, what in present]
    return "\n".join(lines) + "\n"


def write_report(result: RunResult) -> Path:
    """Write report.md into the output folder. Returns its path."""
    path = result.output_dir / REPORT
    path.write_text(render_report(result), encoding="utf-8")
    return path


def metrics_table(result: RunResult) -> Table:
    """The final table printed at the end of a run (from metrics.json, or the events when it is missing)."""
    table = Table(title=result.job.metadata.name, show_header=False)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("outcome", result.outcome)
    summary = result.summary
    last = result.events[-1] if result.events else None
    if summary:
        table.add_row("steps", f"{summary.step}/{summary.total_steps}")
        table.add_row("epochs", f"{summary.epoch:.2f}")
        if summary.train_loss is not None:
            table.add_row("train loss", f"{summary.train_loss:.4f}")
    elif last is not None:
        table.add_row("steps", f"{last.step}/{last.total_steps}")
        table.add_row("epochs", f"{last.epoch:.2f}")
    for name, value in _final_metrics(result).items():
        table.add_row(name, f"{value:.4f}")
    if summary and summary.samples_per_second is not None:
        table.add_row("samples/s", f"{summary.samples_per_second:.1f}")
    table.add_row("world size", str(result.nodes * result.procs_per_node))
    table.add_row("wall time", format_duration(result.duration_seconds))
    return table


def print_final(console: Console, result: RunResult) -> None:
    """The metrics table and where the reports are."""
    console.print(metrics_table(result))
    console.print(f"reports in {result.output_dir}", highlight=False, markup=False)
