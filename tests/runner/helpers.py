"""Helpers for the runner tests: run `kubetune run` as a real process, read its events, find leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kubetune.events import EventKind, ProgressEvent
from kubetune_trainer.runner.event_log import read_events

REPO = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    """The environment of a `kubetune run` under test: offline, one thread per process, wide plain output."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    return env


def kubetune_run_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kubetune.cli", "run", *args]


def run_kubetune(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `kubetune run ARGS` to the end. Returns the finished process (stdout and stderr captured)."""
    return subprocess.run(
        kubetune_run_command(*args),
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_kubetune(*args: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `kubetune run ARGS` in the background, output to `log`."""
    with log.open("wb") as handle:
        return subprocess.Popen(
            kubetune_run_command(*args), cwd=cwd, env=cli_env(), stdout=handle, stderr=subprocess.STDOUT
        )


def wait_for_event(
    events_file: Path, kind: EventKind, process: subprocess.Popen[bytes], timeout: float = 180
) -> ProgressEvent:
    """The first event of `kind` in the file. Raises AssertionError if the run ends or time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in read_events(events_file) if e.event == kind]
        if found:
            return found[0]
        assert process.poll() is None, f"kubetune run exited ({process.returncode}) before a {kind} event"
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event in {events_file} within {timeout}s")


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return "X"


def processes_of_run(output_dir: Path) -> list[str]:
    """Live processes (pid: command) started for the run writing to `output_dir` (found by their environment)."""
    marker = f"KUBETUNE_EVENTS_FILE={output_dir / 'events.jsonl'}".encode()
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(os.getpid()):
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in environ.split(b"\0") and _state(entry.name) not in ("Z", "X"):
            found.append(f"{entry.name}: {command}")
    return found


def worker_pid(output_dir: Path, rank: int) -> int | None:
    """The pid of the training process with global rank `rank` of the run writing to `output_dir`."""
    marker = f"KUBETUNE_EVENTS_FILE={output_dir / 'events.jsonl'}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ and f"RANK={rank}".encode() in environ and b"kubetune_trainer.worker" in command:
            return int(entry.name)
    return None
