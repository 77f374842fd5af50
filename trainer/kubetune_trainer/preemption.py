"""Graceful stops: SIGTERM/SIGINT ask training to stop at the next optimizer step, on every rank at once.

The handlers are installed only around the training loop: during setup (loading, tokenizing, joining the
process group) a signal keeps its default effect and ends the process, since there is nothing to save yet.
A second signal while stopping ends the process at once.

A signal may reach one pod (a node drain) or every process (Ctrl-C); either way all ranks must stop after the
same step, or the checkpoint would mix steps and the collectives would hang. `StopAgreement` all-reduces the
local flag once per optimizer step, so one rank's signal stops the whole gang at the same step, and reads the
result one step late, so that the host never waits for the device in the middle of training.
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


class StopAgreement:
    """Whether any rank asked to stop, agreed by all ranks after the same optimizer step.

    Each `poll` posts this rank's flag in a sum all-reduce and returns the sum posted by the previous `poll`.
    Reading the current step's sum at once (`.item()`) would make the host wait for the whole step's kernels
    before it could queue the next step's: a host sync every optimizer step. One step later that sum is long
    computed: on a GPU it is copied into pinned host memory asynchronously, and the host waits only on an event
    recorded right after that copy, never on later kernels. The price: a stop is acted on one step after it was
    requested, on every rank alike. One process needs no agreement and answers at once.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self._posted: tuple[Any, Any] | None = (
            None  # (the sum on the host once `event` is done, event or None)
        )

    def poll(self, local_request: bool) -> bool:
        """Post this rank's flag; True on every rank alike when some rank had asked by the previous poll."""
        if self.accelerator.num_processes == 1:
            return local_request
        import torch

        device = self.accelerator.device
        # torch.full, not torch.tensor([...]): a copy from pageable host memory would synchronise the stream.
        flag = torch.full((1,), 1.0 if local_request else 0.0, device=device)
        total = self.accelerator.reduce(flag, reduction="sum")
        previous = self._posted
        if device.type == "cuda":
            event = torch.cuda.Event()
            self._posted = (total.to("cpu", non_blocking=True), event)
            event.record()
        else:
            self._posted = (total, None)
        if previous is None:
            return False
        host, event = previous
        if event is not None:
            event.synchronize()
        return bool(host.item() > 0)
