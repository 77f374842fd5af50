"""`kubetune run`: a FineTuneJob on this machine, as several simulated nodes over loopback."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from kubetune.contract import EXIT_INVALID_SPEC
from kubetune.events import JobSummary
from kubetune.spec import FineTuneJob, SpecError, load_job
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from kubetune_trainer.runner.display import make_view
from kubetune_trainer.runner.event_log import EventTail, read_events
from kubetune_trainer.runner.plan import (
    LocalRunPlan,
    UnsafeOutputError,
    clear_output,
    cpu_count,
    default_output_dir,
    free_port,
    prepare_output,
    resolve_job,
    usable_gpus,
)
from kubetune_trainer.runner.processes import TRAIN_COMMAND, NodeGroup
from kubetune_trainer.runner.report import (
    LOSS_CURVE,
    RunResult,
    plot_loss_curve,
    print_final,
    read_summary,
    write_report,
)
from kubetune_trainer.runner.supervisor import ActivityClock, Interrupts, Outcome, WatchdogLimits, supervise

LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class RunOptions:
    """What `kubetune run` was asked to do."""

    job_file: Path
    nodes: int | None = None
    procs_per_node: int | None = None
    output_dir: Path | None = None
    fresh: bool = False
    limits: WatchdogLimits = field(default_factory=WatchdogLimits)
    node_command: tuple[str, ...] = TRAIN_COMMAND
    plain_interval_seconds: float = 10.0


def plan_run(options: RunOptions, cwd: Path, env: dict[str, str]) -> LocalRunPlan:
    """Validate the job and decide the output folder, port and devices. Writes nothing.

    Raises SpecError when the file or an override is invalid.
    """
    job = load_job(options.job_file)
    output_dir = (cwd / options.output_dir).resolve() if options.output_dir else default_output_dir(job, cwd)
    port = free_port()
    resolved = resolve_job(
        job, options.job_file, output_dir, options.nodes, options.procs_per_node, main_port=port
    )
    world = resolved.spec.distribution.world_size
    return LocalRunPlan(resolved, options.job_file, output_dir, port, usable_gpus(world, env))


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a node log ('' when there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def termination_summary(path: Path) -> JobSummary | None:
    """The JobSummary a node wrote to its termination log, if any."""
    try:
        return JobSummary.from_termination_message(path.read_text(encoding="utf-8"))
    except OSError:
        return None


def _device_description(plan: LocalRunPlan) -> str:
    if plan.gpus:
        return f"{len(plan.gpus)} GPU(s), nccl"
    return "CPU, gloo"


def _show_failure(console: Console, plan: LocalRunPlan, outcome: Outcome) -> str:
    """Print the failed node's log tail (and its own error message). Returns the text for report.md."""
    text = outcome.message or "the run failed"
    if outcome.failed_rank is None:
        console.print(Text(f"✗ {text}", style="bold red"), soft_wrap=True)
        return text
    rank = outcome.failed_rank
    summary = termination_summary(plan.termination_log(rank))
    if summary and summary.message:
        text += f"\n{summary.message}"
    tail = log_tail(plan.log_file(rank))
    console.print(
        Panel(
            Text(tail or "(the node wrote no output)"),
            title=f"node {rank}: last lines of {plan.log_file(rank)}",
            border_style="red",
        )
    )
    console.print(Text(f"✗ {text}", style="bold red"), soft_wrap=True)
    return text + ("\n\n" + "\n".join(tail.splitlines()[-20:]) if tail else "")


def _report(plan: LocalRunPlan, outcome: Outcome, started_at: float, elapsed: float) -> RunResult:
    events = read_events(plan.events_file)  # every attempt's events, for the curve and the report
    result = RunResult(
        job=plan.job,
        source_file=plan.source_file.resolve(),
        output_dir=plan.output_dir,
        exit_code=outcome.exit_code,
        outcome=outcome.kind,
        started_at=started_at,
        duration_seconds=elapsed,
        device=_device_description(plan),
        summary=read_summary(plan.output_dir),
        events=events,
        failed_rank=outcome.failed_rank,
        message=outcome.message,
    )
    plot_loss_curve(events, plan.output_dir / LOSS_CURVE)
    write_report(result)
    return result


def run_local(options: RunOptions, console: Console | None = None, errors: Console | None = None) -> int:
    """Run the job to the end. Returns the exit code: 0 done, 2 invalid spec, 75 interrupted (resumable),
    1 failed. Problems are printed, not raised.
    """
    console = console or Console()
    errors = errors or Console(stderr=True)
    cwd = Path.cwd()
    try:
        plan = plan_run(options, cwd, dict(os.environ))
    except SpecError as error:
        errors.print(f"✗ {error}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_INVALID_SPEC
    try:
        if options.fresh:
            clear_output(plan.output_dir, cwd)
    except UnsafeOutputError as error:
        errors.print(f"✗ {error}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_INVALID_SPEC
    resuming = (plan.output_dir / "checkpoints").is_dir() and any((plan.output_dir / "checkpoints").iterdir())
    prepare_output(plan)

    job: FineTuneJob = plan.job
    cores = cpu_count()
    envs = [plan.node_env(rank, dict(os.environ), cores) for rank in range(plan.nodes)]
    view = make_view(console, options.plain_interval_seconds)
    limits = options.limits
    if limits.deadline_seconds is None and job.spec.run_policy.active_deadline_seconds:
        limits = replace(limits, deadline_seconds=float(job.spec.run_policy.active_deadline_seconds))
    title = (
        f"kubetune run {job.metadata.name}: {plan.nodes} node(s) x {plan.procs_per_node} process(es) "
        f"on {_device_description(plan)}, {envs[0]['OMP_NUM_THREADS']} thread(s) per process, "
        f"rendezvous 127.0.0.1:{plan.main_port}\noutput: {plan.output_dir}"
        + ("\nresuming from the checkpoints there (--fresh starts over)" if resuming else "")
    )
    tail = EventTail(plan.events_file, from_end=True)
    log_paths = [plan.log_file(rank) for rank in range(plan.nodes)]
    activity = ActivityClock([*log_paths, plan.events_file])
    started_at, started = time.time(), time.monotonic()
    interrupts = Interrupts()
    with interrupts.installed():
        view.start(title)
        group = NodeGroup.start(options.node_command, envs, log_paths, cwd=cwd)
        try:
            outcome = supervise(group, tail, view, limits, interrupts, activity)
        finally:
            group.clean_up()
            view.stop()
    elapsed = time.monotonic() - started
    failure_text = _show_failure(errors, plan, outcome) if outcome.kind == "failed" else None
    if failure_text:
        outcome.message = failure_text
    result = _report(plan, outcome, started_at, elapsed)
    print_final(console, result)
    if outcome.kind == "preempted":
        console.print(
            f"stopped: checkpoint kept in {plan.output_dir / 'checkpoints'}; run the same command again to resume",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    return outcome.exit_code
