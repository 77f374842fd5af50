"""Starting, watching and stopping the processes of a local cluster.

Every process is started in its own process group with its output in a log file, and with the Linux
parent-death signal set, so that it is killed even when the Python process that started it dies
without a chance to clean up (SIGKILL, a crashed CI runner). That signal is SIGKILL rather than SIGTERM:
with its clients and etcd gone at the same moment, kube-apiserver's graceful shutdown would wait ~10s
for nothing, and a test cluster has no state worth a graceful end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
LOG_TAIL_BYTES = 4000


def free_loopback_port() -> int:
    """Returns a TCP port that was free on 127.0.0.1 a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: asks the kernel for SIGKILL when the parent dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux/glibc: the normal stop() path still applies


class ProcessFailed(RuntimeError):
    """A cluster process exited or did not become ready; the message carries the end of its log."""


class ManagedProcess:
    """One long-running process of the cluster (etcd, kube-apiserver, ...), logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while started, else None."""
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Starts the process; its stdout and stderr go to `log_path`."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                # Own process group: a Ctrl-C in the terminal reaches only the harness, which then
                # stops the cluster in order instead of every process dying at once.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def running(self) -> bool:
        """True while the process has been started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        """Returns the last few KB of the process log, for error messages."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - LOG_TAIL_BYTES))
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def check_running(self) -> None:
        """Raises ProcessFailed (with the end of the log) when the process has exited."""
        if not self.running():
            code = self._process.returncode if self._process else None
            raise ProcessFailed(f"{self.name} exited with {code}; end of {self.log_path}:\n{self.log_tail()}")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Polls `ready` until it returns True.

        Raises ProcessFailed when the process exits first or `timeout` seconds pass.
        """
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            self.check_running()
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"{self.name} not {what} after {timeout:.0f}s; end of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Sends SIGTERM to the process group, then SIGKILL after `grace_seconds`; waits for the exit."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_seconds)


def https_get_ok(url: str, context: ssl.SSLContext, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200 with the body `ok` (the /healthz and /readyz convention)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return bool(response.status == 200 and response.read().strip() == b"ok")
    except (urllib.error.URLError, OSError):
        return False


def http_get_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200 (etcd's /health)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
