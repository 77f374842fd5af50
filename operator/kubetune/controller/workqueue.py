"""The per-job work queue, on the operator's event loop: like controller-runtime's rate-limited queue.

Requests for one job are coalesced and never run concurrently (a burst of pod events is one or two
reconciles); different jobs run in parallel on a thread pool. Time-based transitions come back through the
reconcile's answer (seconds until the next look, like RequeueAfter); a failing reconcile is retried with
exponential backoff. While kopf's peering has paused this replica nothing runs and no timer is armed:
keys asked for meanwhile are remembered, with their urgency, and looked at on resume (one writer at a time);
a reconcile already running when the pause comes finishes, but does not start again until the resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

logger = logging.getLogger("kubetune.operator")

JobKey = tuple[str, str]  # (namespace, name)
MAX_ERROR_DELAY = 30.0
# How long a running job's reconcile may be held back while new jobs' pods are being created.
FOLLOW_UP_MAX_DELAY = 3.0


@dataclass
class _KeyState:
    running: bool = False
    dirty: bool = False
    timer: asyncio.TimerHandle | None = None
    timer_due: float = 0.0
    errors: int = 0
    task: asyncio.Task[None] | None = None
    urgent: bool = False  # the next reconcile is on the path to pods: no yielding (see `request`)


class WorkQueue:
    """Runs `work(key)` on threads: `request()` from the event loop only.

    `work` returns seconds until the next look (None: only on request; 0: at once) and may raise;
    `is_new(key)` tells a job's first reconcile (it creates the pods: threads of its own, and running jobs'
    reconciles yield to it; so does a reconcile requested `urgent`); `on_error(key, error, attempts,
    retry_in)` hears about every failure.
    """

    def __init__(
        self,
        work: Callable[[JobKey], float | None],
        is_new: Callable[[JobKey], bool],
        on_error: Callable[[JobKey, Exception, int, float], None],
        threads: int = 16,
    ) -> None:
        self.work = work
        self.is_new = is_new
        self.on_error = on_error
        self.threads = threads
        self._states: dict[JobKey, _KeyState] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._first_executor: ThreadPoolExecutor | None = None
        self._new_in_flight = 0  # first reconciles of new jobs queued or running
        self._quiet: asyncio.Event | None = None  # set while _new_in_flight is 0
        self._paused = False
        self._asked_while_paused: set[JobKey] = set()

    def request(self, key: JobKey, delay: float = 0.0, urgent: bool = False) -> None:
        """Reconcile `key` now (coalesced with a running reconcile) or after `delay` seconds. `urgent`: the
        reconcile may create or stop a gang's pods (Kueue admitted or evicted the job), so it runs like a new
        job's first reconcile, on their threads and without yielding to them."""
        state = self._states.setdefault(key, _KeyState())
        # Kept on the key's state even while paused: the resume must still run it urgently.
        state.urgent = state.urgent or urgent
        if self._paused:
            self._asked_while_paused.add(key)
            return
        loop = asyncio.get_running_loop()
        if delay > 0:
            due = loop.time() + delay
            if state.timer is not None and state.timer_due <= due:
                return  # an earlier wake-up is already scheduled
            if state.timer is not None:
                state.timer.cancel()
            state.timer = loop.call_later(delay, self._timer_fired, key)
            state.timer_due = due
            return
        if state.running:
            state.dirty = True
            return
        state.running = True
        state.task = loop.create_task(self._run(key), name=f"reconcile {key[0]}/{key[1]}")

    def pause(self) -> None:
        """Another replica is active: cancel every requeue timer; `request` only remembers keys from now on."""
        self._paused = True
        for key, state in self._states.items():
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
                self._asked_while_paused.add(key)

    def resume(self) -> None:
        """This replica is active again: look at every job asked for (or timed) while paused, urgent ones
        with the urgency they were asked with (`request` kept it on their state)."""
        self._paused = False
        waiting, self._asked_while_paused = self._asked_while_paused, set()
        for key in sorted(waiting):
            self.request(key)

    @property
    def paused(self) -> bool:
        return self._paused

    def _timer_fired(self, key: JobKey) -> None:
        state = self._states.get(key)
        if state is not None:
            state.timer = None
        self.request(key)

    def forget(self, key: JobKey) -> None:
        """The job is gone: drop its timer and state."""
        state = self._states.pop(key, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()
        self._asked_while_paused.discard(key)

    async def _run(self, key: JobKey) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="reconcile")
            # A new job's first reconcile (it creates the pods) must not queue behind the follow-up
            # reconciles of a burst of running jobs: it gets threads of its own.
            self._first_executor = ThreadPoolExecutor(self.threads, thread_name_prefix="first-reconcile")
        state = self._states[key]
        try:
            while True:
                if self._paused:
                    # Paused between the request and this run, or while the last run was in flight with
                    # more asked for: one writer at a time, so the key (and its urgency) waits for the resume.
                    self._asked_while_paused.add(key)
                    return
                state.dirty = False
                first = self.is_new(key) or state.urgent
                state.urgent = False
                if first:
                    self._count_new(+1)
                else:
                    await self._yield_to_new_jobs()
                try:
                    executor = self._first_executor if first else self._executor
                    requeue = await loop.run_in_executor(executor, self.work, key)
                    state.errors = 0
                except Exception as error:  # an API hiccup must not kill the loop: retry with backoff
                    state.errors += 1
                    requeue = min(MAX_ERROR_DELAY, 0.5 * 2 ** (state.errors - 1))
                    logger.warning(
                        "reconcile of %s/%s failed (retry in %.1fs): %s", key[0], key[1], requeue, error
                    )
                    self.on_error(key, error, state.errors, requeue)
                finally:
                    if first:
                        self._count_new(-1)
                if key not in self._states:
                    return  # forgotten (deleted) meanwhile
                if requeue is not None and not state.dirty:
                    if requeue <= 0:
                        state.dirty = True
                    else:
                        self.request(key, requeue)
                if not state.dirty:
                    return
        finally:
            state.running = False

    async def _yield_to_new_jobs(self) -> None:
        """While new jobs' first reconciles are queued or running, hold a running job's reconcile back, for at
        most FOLLOW_UP_MAX_DELAY: its status bookkeeping can wait a moment, and in a burst of new jobs it
        would otherwise share the API server (on a small control plane, saturated) with their pods (the
        effect is measured in benchmarks/README.md)."""
        if self._new_in_flight == 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_new_jobs().wait(), FOLLOW_UP_MAX_DELAY)

    def _no_new_jobs(self) -> asyncio.Event:
        if self._quiet is None:
            self._quiet = asyncio.Event()
        return self._quiet

    def _count_new(self, change: int) -> None:
        self._new_in_flight += change
        if self._new_in_flight == 0:
            self._no_new_jobs().set()
        else:
            self._no_new_jobs().clear()

    def shutdown(self) -> None:
        for executor in (self._executor, self._first_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
