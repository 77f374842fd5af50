"""Progress reporting: rank 0's `ProgressEvent`s and the final `JobSummary`, fanned out to sinks.

A sink is anything with `emit(event)` and `close(summary)` (the `Sink` protocol). Built in:

- `StdoutSink` — always on: one line per event, `kubetune.events.STDOUT_PREFIX` + JSON.
- `JsonLinesFileSink` — when KUBETUNE_EVENTS_FILE is set (the local runner tails it).
- `TerminationMessageSink` — the summary to KUBETUNE_TERMINATION_LOG (default /dev/termination-log) when that
  file exists or its folder is writable, so `kubectl get` and the operator see the outcome.

Adding a sink (the operator's status reporter does this): write a factory
`def make_sink(context: NodeContext, job: FineTuneJob) -> Sink | None` (return None when it does not apply,
e.g. no KUBETUNE_JOB_NAME), then either

- declare it as an entry point in the group `kubetune.sinks` (pyproject: `[project.entry-points."kubetune.sinks"]
  status = "kubetune.status_sink:make_sink"`), which every worker picks up, or
- call `register_sink_factory(make_sink)` before training starts (in-process use, tests).

Sinks run on rank 0 only. A failing sink is logged once and then skipped: reporting never stops training.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable

from kubetune.contract import NodeContext
from kubetune.events import STDOUT_PREFIX, JobSummary, ProgressEvent
from kubetune.spec import FineTuneJob

log = logging.getLogger(__name__)

SINK_ENTRY_POINT_GROUP = "kubetune.sinks"


@runtime_checkable
class Sink(Protocol):
    """Receives rank 0's progress events and, once, the final summary."""

    def emit(self, event: ProgressEvent) -> None: ...

    def close(self, summary: JobSummary) -> None: ...


SinkFactory = Callable[[NodeContext, FineTuneJob], "Sink | None"]
_registered_factories: list[SinkFactory] = []


def register_sink_factory(factory: SinkFactory) -> None:
    """Add a sink factory used by every later `default_sinks` call in this process."""
    if factory not in _registered_factories:
        _registered_factories.append(factory)


class StdoutSink:
    """Prefixed JSON lines on stdout (launchers pick them out of interleaved logs)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(STDOUT_PREFIX + line + "\n")
        stream.flush()

    def emit(self, event: ProgressEvent) -> None:
        self._write(event.to_json())

    def close(self, summary: JobSummary) -> None:
        pass  # the closing finished/failed/preempted event already went out


class JsonLinesFileSink:
    """Appends each event as one JSON line to a file (flushed per line, so readers can tail it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8")

    def emit(self, event: ProgressEvent) -> None:
        self._handle.write(event.to_json() + "\n")
        self._handle.flush()

    def close(self, summary: JobSummary) -> None:
        self._handle.close()


class TerminationMessageSink:
    """Writes the compact summary to the termination-message file at the end."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @staticmethod
    def usable(path: str | Path) -> bool:
        """True when `path` exists and is writable, or can be created."""
        target = Path(path)
        if target.exists():
            return os.access(target, os.W_OK)
        return target.parent.is_dir() and os.access(target.parent, os.W_OK)

    def emit(self, event: ProgressEvent) -> None:
        pass

    def close(self, summary: JobSummary) -> None:
        self.path.write_text(summary.to_termination_message(), encoding="utf-8")


def _entry_point_factories() -> list[SinkFactory]:
    factories: list[SinkFactory] = []
    for entry in entry_points(group=SINK_ENTRY_POINT_GROUP):
        try:
            factories.append(entry.load())
        except Exception as error:  # a broken plugin must not stop training
            log.warning("progress sink %s could not be loaded: %s", entry.name, error)
    return factories


def default_sinks(context: NodeContext, job: FineTuneJob, extra: Iterable[Sink] = ()) -> list[Sink]:
    """Stdout, plus the events file and termination message when configured, plus registered and `extra` sinks."""
    sinks: list[Sink] = [StdoutSink()]
    if context.events_file:
        sinks.append(JsonLinesFileSink(context.events_file))
    if TerminationMessageSink.usable(context.termination_log):
        sinks.append(TerminationMessageSink(context.termination_log))
    for factory in [*_registered_factories, *_entry_point_factories()]:
        try:
            sink = factory(context, job)
        except Exception as error:
            log.warning("progress sink factory %r failed: %s", factory, error)
            continue
        if sink is not None:
            sinks.append(sink)
    sinks.extend(extra)
    return sinks


class Reporter:
    """Fans events out to sinks on the reporting rank; a no-op elsewhere."""

    def __init__(self, sinks: Iterable[Sink], enabled: bool = True) -> None:
        self._sinks = list(sinks) if enabled else []
        self._broken: set[int] = set()

    def _each(self, action: Callable[[Sink], None]) -> None:
        for index, sink in enumerate(self._sinks):
            if index in self._broken:
                continue
            try:
                action(sink)
            except Exception as error:
                self._broken.add(index)
                log.warning("progress sink %s failed and is now skipped: %s", type(sink).__name__, error)

    def emit(self, event: ProgressEvent) -> None:
        self._each(lambda sink: sink.emit(event))

    def close(self, summary: JobSummary) -> None:
        self._each(lambda sink: sink.close(summary))
        self._sinks = []
