"""The simulated nodes: one `kubetune train` process (and its own process group) per node.

Each node runs in a session (and process group) of its own, so a Ctrl-C in the terminal reaches only
`kubetune run`, which then stops the nodes in order: SIGTERM to each node's `kubetune train` (it forwards the
signal to its workers, which agree on a step, save a checkpoint and exit; the node exits 75), then SIGKILL to
each node's whole process group for whatever is still there after the grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent() -> None:
    """In the child before exec: get SIGTERM when `kubetune run` dies, even by SIGKILL, so no node outlives it
    (the node then saves a checkpoint and exits as on Ctrl-C). Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# `python -m kubetune.cli train` rather than the console script: works in any venv, even when not on PATH.
TRAIN_COMMAND: tuple[str, ...] = (sys.executable, "-m", "kubetune.cli", "train")


@dataclass
class NodeProcess:
    """One running (or finished) simulated node."""

    rank: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_handle: IO[bytes]
    exit_code: int | None = None
    exited_at: float | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def poll(self) -> bool:
        """Check whether the node's main process ended. Returns True exactly once, when it did."""
        if self.exit_code is not None:
            return False
        code = self.popen.poll()
        if code is None:
            return False
        self.exit_code = code
        self.exited_at = time.monotonic()
        self.log_handle.close()
        return True

    def signal_group(self, signum: int) -> bool:
        """Send `signum` to every process in the node's group. Returns False when the group is gone."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:  # the group id was reused by someone else's process: not ours to signal
            return False
        return True

    def request_stop(self) -> None:
        """Ask the node to stop gracefully: SIGTERM to `kubetune train`, which forwards it to its workers
        (not to torchrun, whose own 30 s shutdown timer could cut a checkpoint short). When the node's main
        process is gone already, its leftover workers get the SIGTERM directly."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
        else:
            self.signal_group(signal.SIGTERM)

    def group_alive(self) -> bool:
        """Whether any process of the node's group (e.g. an accelerate worker) still runs."""
        return _group_has_live_members(self.pid)


def _group_has_live_members(pgid: int) -> bool:
    """True when a non-zombie process with this process group id exists (Linux /proc scan)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def describe_exit(code: int) -> str:
    """A person-readable exit status: 'exit code 1' or 'killed by SIGKILL'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class NodeGroup:
    """All nodes of one local run."""

    nodes: list[NodeProcess] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        command: Sequence[str],
        envs: Sequence[dict[str, str]],
        log_paths: Sequence[Path],
        cwd: Path | None = None,
    ) -> NodeGroup:
        """Start one process per node (rank = index in `envs`), output appended to its log file."""
        group = cls()
        try:
            for rank, (env, log_path) in enumerate(zip(envs, log_paths, strict=True)):
                log_handle = log_path.open("ab")
                log_handle.write(f"=== kubetune run: starting node {rank}: {' '.join(command)}\n".encode())
                log_handle.flush()
                popen = subprocess.Popen(
                    list(command),
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: terminal signals skip it, killpg reaches all
                    preexec_fn=_stop_with_parent,
                )
                group.nodes.append(NodeProcess(rank, popen, log_path, log_handle))
        except BaseException:
            group.stop(grace_seconds=5)
            raise
        return group

    def poll(self) -> list[NodeProcess]:
        """The nodes whose main process ended since the last poll."""
        return [node for node in self.nodes if node.poll()]

    @property
    def running(self) -> list[NodeProcess]:
        return [node for node in self.nodes if node.running]

    def stop(
        self,
        grace_seconds: float,
        force_now: Callable[[], bool] = lambda: False,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        """Ask every node to stop (SIGTERM), wait up to `grace_seconds`, then SIGKILL what is left.

        `force_now` (e.g. a second Ctrl-C) skips the rest of the wait; `on_tick` runs while waiting (to keep
        the display fed). Returns when every node's main process has been reaped and no group member runs.
        """
        for node in self.nodes:
            node.request_stop()
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and not force_now():
            self.poll()
            if not any(node.running or node.group_alive() for node in self.nodes):
                return
            on_tick()
            time.sleep(0.2)
        self.kill()

    def kill(self) -> None:
        """SIGKILL every node's group and reap the main processes."""
        for node in self.nodes:
            node.signal_group(signal.SIGKILL)
        for node in self.nodes:
            if node.running:
                # A process stuck in the kernel (D state) may outlive SIGKILL; nothing more to do then.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.popen.wait(timeout=10)
                node.poll()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(node.group_alive() for node in self.nodes):
            time.sleep(0.1)

    def clean_up(self, grace_seconds: float = 10) -> None:
        """After the main processes ended: stop any stragglers left in the nodes' groups (orphaned workers)."""
        self.poll()
        if any(node.running or node.group_alive() for node in self.nodes):
            self.stop(grace_seconds)
        for node in self.nodes:
            if not node.log_handle.closed:
                node.log_handle.close()
