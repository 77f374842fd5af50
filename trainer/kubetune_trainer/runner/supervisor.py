"""Watching the nodes of a local run: progress, a failed rank, Ctrl-C, and a watchdog that never lets it hang."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from kubetune.contract import EXIT_INVALID_SPEC, EXIT_PREEMPTED
from kubetune.events import ProgressEvent

from kubetune_trainer.runner.display import ProgressView, format_duration
from kubetune_trainer.runner.event_log import EventTail
from kubetune_trainer.runner.processes import NodeGroup, NodeProcess, describe_exit


@dataclass(frozen=True)
class WatchdogLimits:
    """When the supervisor gives up on a run instead of waiting forever (None: no limit)."""

    deadline_seconds: float | None = None  # the whole run
    stall_seconds: float | None = 1800.0  # no new log output and no new event for this long
    straggler_seconds: float = 120.0  # others still running this long after node 0 finished cleanly
    stop_grace_seconds: float = 120.0  # SIGTERM → SIGKILL (the trainer saves a checkpoint meanwhile)
    settle_seconds: float = 3.0  # after a node fails, wait this long for its peers' exits to find the cause


@dataclass
class Outcome:
    """How the nodes ended, as the supervisor saw it."""

    kind: str  # finished, failed or preempted
    exit_code: int
    failed_rank: int | None = None
    message: str | None = None
    events: list[ProgressEvent] = field(default_factory=list)


class Interrupts:
    """Counts SIGINT/SIGTERM while installed: the first asks for a graceful stop, a second forces it."""

    def __init__(self) -> None:
        self.count = 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.count > 0

    @property
    def forced(self) -> bool:
        return self.count > 1

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Catch SIGINT and SIGTERM for the duration (only possible in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class ActivityClock:
    """The last time any node wrote to its log or rank 0 wrote an event (for the stall watchdog)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.last_change = time.monotonic()
        self._sizes = self._measure()

    def _measure(self) -> list[int]:
        return [path.stat().st_size if path.exists() else 0 for path in self.paths]

    def idle_seconds(self) -> float:
        sizes = self._measure()
        if sizes != self._sizes:
            self._sizes = sizes
            self.last_change = time.monotonic()
        return time.monotonic() - self.last_change


# When one rank dies, its peers fail a moment later in their next collective with errors like these. They are
# symptoms: the node whose log does not show one is the root cause.
COLLATERAL_ERRORS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "DistNetworkError",
    "DistBackendError",
    "recvBytes",
    "sendBytes",
    "NCCL communicator was aborted",
    "Socket Timeout",
    "Connection refused",
)


def _log_end(path: Path, size: int = 32 * 1024) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def root_cause(failed: list[NodeProcess]) -> NodeProcess:
    """The node whose failure caused the others: the first to fail among those whose log shows no
    collateral communication error (or simply the first to fail when every log shows one)."""
    ordered = sorted(failed, key=lambda node: (node.exited_at or 0.0, node.rank))
    for node in ordered:
        tail = _log_end(node.log_path)
        if not any(marker in tail for marker in COLLATERAL_ERRORS):
            return node
    return ordered[0]


def _failure_code(node: NodeProcess) -> int:
    # The trainer exits 2 when the data or model does not fit the spec (e.g. a missing column).
    return EXIT_INVALID_SPEC if node.exit_code == EXIT_INVALID_SPEC else 1


def supervise(
    group: NodeGroup,
    tail: EventTail,
    view: ProgressView,
    limits: WatchdogLimits,
    interrupts: Interrupts,
    activity: ActivityClock,
    poll_seconds: float = 0.2,
) -> Outcome:
    """Feed events to the view until every node has ended, stopping all nodes early when one fails,
    on Ctrl-C, or when a watchdog limit is hit. Returns how the run ended (never raises for node failures).
    """
    started = time.monotonic()
    events: list[ProgressEvent] = []

    def pump() -> None:
        for event in tail.read_new():
            events.append(event)
            view.update(event)

    def stop_all(reason: str) -> None:
        running = len(group.running)
        if running:
            view.note(
                f"{reason}: stopping {running} node(s) (SIGTERM, SIGKILL after "
                f"{format_duration(limits.stop_grace_seconds)}; Ctrl-C again to kill now)"
            )
        group.stop(limits.stop_grace_seconds, force_now=lambda: interrupts.forced, on_tick=pump)
        pump()

    while True:
        pump()
        for node in group.poll():
            if node.exit_code == 0:
                view.note(f"node {node.rank} finished")
                continue
            if interrupts.requested:
                continue  # an exit code caused by our own stop request is not a failure
            if node.exit_code == EXIT_PREEMPTED:
                stop_all(f"node {node.rank} was preempted")
                return Outcome(
                    "preempted", EXIT_PREEMPTED, message="a node was stopped by SIGTERM", events=events
                )
            cause = root_cause(_settle(group, node, limits.settle_seconds, pump))
            stop_all(f"node {cause.rank} failed ({describe_exit(cause.exit_code or 0)})")
            return Outcome(
                "failed",
                _failure_code(cause),
                failed_rank=cause.rank,
                message=f"node {cause.rank} failed with {describe_exit(cause.exit_code or 0)}",
                events=events,
            )
        if not group.running:
            break
        if interrupts.requested:
            stop_all("interrupted")
            if all(node.exit_code == 0 for node in group.nodes):
                break  # it finished while we were stopping it
            return Outcome(
                "preempted",
                EXIT_PREEMPTED,
                message="interrupted: the last checkpoint is kept; run the same command again to resume",
                events=events,
            )
        now = time.monotonic()
        problem = _watchdog_problem(group, limits, activity, now - started, now)
        if problem:
            stop_all(problem)
            return Outcome("failed", 1, message=problem, events=events)
        time.sleep(poll_seconds)
    pump()
    return Outcome("finished", 0, events=events)


def _settle(
    group: NodeGroup, first: NodeProcess, settle_seconds: float, on_tick: Callable[[], None]
) -> list[NodeProcess]:
    """Every node that failed within `settle_seconds` of `first` (first included)."""
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and group.running:
        group.poll()
        on_tick()
        time.sleep(0.1)
    return [n for n in group.nodes if n.exit_code not in (None, 0, EXIT_PREEMPTED) or n is first]


def _watchdog_problem(
    group: NodeGroup, limits: WatchdogLimits, activity: ActivityClock, elapsed: float, now: float
) -> str | None:
    """Why the run must be stopped now, or None while it may go on."""
    if limits.deadline_seconds is not None and elapsed > limits.deadline_seconds:
        return f"the run exceeded its deadline of {format_duration(limits.deadline_seconds)}"
    # Only node 0 counts: it holds rank 0, which saves the model last, so other nodes may finish long before it
    # does (minutes, for a big model); once node 0 is done, every other node should end within moments.
    main = group.nodes[0]
    if main.exit_code == 0 and main.exited_at is not None and group.running:
        waited = now - main.exited_at
        if waited > limits.straggler_seconds:
            ranks = ", ".join(str(node.rank) for node in group.running)
            return (
                f"node(s) {ranks} still running {format_duration(waited)} after node 0 "
                "finished: they are stuck"
            )
    if limits.stall_seconds is not None:
        idle = activity.idle_seconds()
        if idle > limits.stall_seconds:
            return f"no output from any node for {format_duration(idle)}: the run looks hung"
    return None
