"""Reading rank 0's progress events from the JSON-lines events file, whole or as it grows."""

from __future__ import annotations

from pathlib import Path

from kubetune.events import EventKind, ProgressEvent


def parse_event(line: str) -> ProgressEvent | None:
    """One event from one line, or None for a blank or foreign line (a half-written line is never passed)."""
    line = line.strip()
    if not line:
        return None
    try:
        return ProgressEvent.from_json(line)
    except ValueError:
        return None


def read_events(path: Path) -> list[ProgressEvent]:
    """Every event in the file, in order ([] when the file does not exist)."""
    if not path.exists():
        return []
    events = (parse_event(line) for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [event for event in events if event is not None]


class EventTail:
    """Follows an events file that another process appends to, yielding only complete new lines."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        """`from_end` skips what is already there (a previous attempt's events when resuming)."""
        self.path = path
        self.offset = path.stat().st_size if from_end and path.exists() else 0
        self._partial = b""

    def read_new(self) -> list[ProgressEvent]:
        """Events appended since the last call."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        events = (parse_event(line.decode("utf-8", errors="replace")) for line in lines)
        return [event for event in events if event is not None]


def train_curve(events: list[ProgressEvent]) -> list[tuple[int, float]]:
    """(step, loss) of every step report; a step reported again after a resume keeps its latest value."""
    by_step = {e.step: e.loss for e in events if e.event == EventKind.STEP and e.loss is not None}
    return sorted((step, loss) for step, loss in by_step.items() if loss is not None)


def eval_history(events: list[ProgressEvent]) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) of every evaluation, latest value per step, in step order."""
    by_step = {e.step: e.metrics for e in events if e.event == EventKind.EVAL and e.metrics}
    return sorted(by_step.items())
