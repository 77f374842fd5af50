"""Showing a run's progress: a live rich progress bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import time
from typing import Protocol

from kubetune.events import EventKind, ProgressEvent
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn


def format_duration(seconds: float | None) -> str:
    """'1h02m03s', '4m05s' or '12s' ('?' when unknown)."""
    if seconds is None or seconds < 0:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_metrics(metrics: dict[str, float]) -> str:
    """'accuracy 0.9120 · f1 0.9034' (the eval_ prefix dropped)."""
    return " · ".join(f"{name.removeprefix('eval_')} {value:.4f}" for name, value in metrics.items())


def describe_step(event: ProgressEvent) -> str:
    """Loss, learning rate, throughput and ETA of a step event, for one line of output."""
    parts: list[str] = []
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f}")
    if event.learning_rate is not None:
        parts.append(f"lr {event.learning_rate:.2e}")
    if event.samples_per_second is not None:
        parts.append(f"{event.samples_per_second:.1f} samples/s")
    if event.eta_seconds is not None:
        parts.append(f"ETA {format_duration(event.eta_seconds)}")
    return " · ".join(parts)


def describe_event(event: ProgressEvent) -> str:
    """A one-line description of any event (what the plain view prints)."""
    where = f"step {event.step}/{event.total_steps}" if event.total_steps else f"step {event.step}"
    kind = EventKind(event.event)
    if kind == EventKind.STARTED:
        resumed = f", resumed from step {event.resumed_from_step}" if event.resumed_from_step else ""
        world = f" on {event.world_size} processes" if event.world_size else ""
        return f"training started{world}: {event.total_steps} steps{resumed}"
    if kind == EventKind.STEP:
        return f"epoch {event.epoch:.2f} · {where} · {describe_step(event)}"
    if kind == EventKind.EVAL:
        return f"eval at {where}: {format_metrics(event.metrics)}"
    if kind == EventKind.CHECKPOINT:
        return f"checkpoint at {where}: {event.checkpoint or ''}"
    if kind == EventKind.FINISHED:
        return f"training finished at {where}"
    if kind == EventKind.PREEMPTED:
        return f"stopped at {where}; checkpoint saved: rerun to resume"
    if kind == EventKind.WARNING:
        return f"warning at {where}: {event.message or ''}"
    return f"training failed at {where}: {event.message or 'see the node logs'}"


class ProgressView(Protocol):
    """What the supervisor tells the user while nodes run."""

    def start(self, title: str) -> None: ...

    def update(self, event: ProgressEvent) -> None: ...

    def note(self, text: str) -> None: ...

    def stop(self) -> None: ...


class PlainView:
    """Plain lines for logs and CI: every event except steps, and a step line at most every `interval` s."""

    def __init__(self, console: Console, interval_seconds: float = 10.0) -> None:
        self.console = console
        self.interval = interval_seconds
        self._last_step_line = 0.0

    def start(self, title: str) -> None:
        self.console.print(title, highlight=False, markup=False, soft_wrap=True)

    def update(self, event: ProgressEvent) -> None:
        if event.event == EventKind.STEP:
            now = time.monotonic()
            last_step = event.total_steps and event.step >= event.total_steps
            if now - self._last_step_line < self.interval and not last_step:
                return
            self._last_step_line = now
        self.console.print(describe_event(event), highlight=False, markup=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def stop(self) -> None:
        pass


class RichView:
    """A live progress bar (epoch, step/total, loss, lr, samples/s, ETA, last eval); events print above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None
        self._eval = ""

    def start(self, title: str) -> None:
        self.console.print(title, highlight=False, markup=False)
        self.progress.start()
        self._task = self.progress.add_task("starting nodes", total=None, stats="")

    def _set(self, **fields: object) -> None:
        if self._task is not None:
            self.progress.update(self._task, **fields)  # type: ignore[arg-type]

    def update(self, event: ProgressEvent) -> None:
        kind = EventKind(event.event)
        total = event.total_steps or None
        if kind == EventKind.STARTED:
            self.progress.console.print(describe_event(event), highlight=False, markup=False)
            self._set(description="epoch 0.00", total=total, completed=event.step)
        elif kind == EventKind.STEP:
            stats = describe_step(event) + (f" · {self._eval}" if self._eval else "")
            self._set(description=f"epoch {event.epoch:.2f}", total=total, completed=event.step, stats=stats)
        elif kind == EventKind.EVAL:
            self._eval = format_metrics(event.metrics)
            self.progress.console.print(describe_event(event), highlight=False, markup=False)
        else:
            if kind == EventKind.FINISHED:
                self._set(total=total, completed=event.step)
            self.progress.console.print(describe_event(event), highlight=False, markup=False)

    def note(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def stop(self) -> None:
        self.progress.stop()


def make_view(console: Console, plain_interval_seconds: float = 10.0) -> ProgressView:
    """The rich view on an interactive terminal, plain lines otherwise."""
    if console.is_terminal:
        return RichView(console)
    return PlainView(console, plain_interval_seconds)
