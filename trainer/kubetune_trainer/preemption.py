"""Graceful stops: SIGTERM/SIGINT ask training to stop at the next optimizer step, on every rank at once.

The handlers are installed only around the training loop: during setup (loading, tokenizing, joining the
process group) a signal keeps its default effect and ends the process, since there is nothing to save yet.
A second signal while stopping ends the process at once.

A signal may reach one pod (a node drain) or every process (Ctrl-C); either way all ranks must stop after the
same step, or the checkpoint would mix steps and the collectives would hang. `agree_to_stop` all-reduces the
local flag once per optimizer step, so one rank's signal stops the whole gang at the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """Remembers whether a stop signal arrived; `install()` hooks SIGTERM and SIGINT."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        """Install the handlers (main thread only). Returns self."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            # A second signal: the user (or kubelet) will not wait for the checkpoint; stop now.
            raise SystemExit(128 + signum)
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def request(self, reason: str = "requested") -> None:
        """Ask for a stop without a signal (tests, or a deadline)."""
        self.signal_name = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


def agree_to_stop(accelerator: Any, local_request: bool) -> bool:
    """True on every rank when any rank asked to stop (one scalar all-reduce; no-op for one process)."""
    if accelerator.num_processes == 1:
        return local_request
    import torch

    flag = torch.tensor([1.0 if local_request else 0.0], device=accelerator.device)
    total = accelerator.reduce(flag, reduction="sum")
    return bool(total.item() > 0)
