"""How the work queue orders work on its event loop (no cluster: these paths never touch the API)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, cast

import pytest
from kubetune.controller import workqueue
from kubetune.controller.kube import Kube
from kubetune.controller.reconciler import Reconciler
from kubetune.controller.wiring import PeeringPauseFollower


def test_a_running_jobs_reconcile_yields_to_new_jobs_but_only_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        reconciler = Reconciler(cast(Kube, object())).queue
        # Nothing new in flight: no wait at all
        await asyncio.wait_for(reconciler._yield_to_new_jobs(), 1.0)

        # A new job's first reconcile in flight: the running job's reconcile waits until it is done
        monkeypatch.setattr(workqueue, "FOLLOW_UP_MAX_DELAY", 30.0)
        reconciler._count_new(+1)
        waiting: Any = asyncio.ensure_future(reconciler._yield_to_new_jobs())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        reconciler._count_new(-1)
        await asyncio.wait_for(waiting, 1.0)

        # One that never ends holds it back no longer than FOLLOW_UP_MAX_DELAY
        monkeypatch.setattr(workqueue, "FOLLOW_UP_MAX_DELAY", 0.05)
        reconciler._count_new(+1)
        await asyncio.wait_for(reconciler._yield_to_new_jobs(), 1.0)

    asyncio.run(scenario())


def test_an_urgent_reconcile_does_not_yield_to_new_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job Kueue just admitted (its Workload's event asks `urgent`) creates its gang at once, however many
    new jobs' first reconciles are in flight; a follow-up reconcile still waits for them."""

    async def scenario() -> None:
        queue = Reconciler(cast(Kube, object())).queue
        monkeypatch.setattr(workqueue, "FOLLOW_UP_MAX_DELAY", 30.0)
        ran: list[tuple[str, str]] = []
        queue.work = lambda key: ran.append(key)  # type: ignore[func-returns-value]
        queue.is_new = lambda key: False
        queue._count_new(+1)  # a new job's first reconcile in flight (for the whole test)
        queue.request(("ns", "follow-up"))
        queue.request(("ns", "admitted"), urgent=True)
        await asyncio.sleep(0.2)
        assert ran == [("ns", "admitted")]
        queue.request(("ns", "admitted"))  # its next, ordinary look yields again
        await asyncio.sleep(0.2)
        assert ran == [("ns", "admitted")]
        queue._count_new(-1)
        await asyncio.sleep(0.2)
        assert sorted(ran) == [("ns", "admitted"), ("ns", "admitted"), ("ns", "follow-up")]
        queue.shutdown()

    asyncio.run(scenario())


def test_a_paused_replica_arms_no_timer_and_reconciles_nothing_until_it_resumes() -> None:
    """Peering single-writer: requeue timers armed before kopf pauses this replica must not keep
    reconciling (no API: the Kube is a bare object, so any reconcile would fail the test)."""

    async def scenario() -> None:
        reconciler = Reconciler(cast(Kube, object()))
        asked: list[tuple[str, str]] = []
        reconciler.queue.work = lambda key: asked.append(key)  # type: ignore[func-returns-value]
        reconciler.request(("ns", "a"), delay=0.05)
        reconciler.pause()
        reconciler.request(("ns", "b"))
        reconciler.request(("ns", "c"), delay=0.01)
        await asyncio.sleep(0.15)
        assert asked == []
        assert all(state.timer is None for state in reconciler.queue._states.values())

        reconciler.resume()
        await asyncio.sleep(0.1)
        assert sorted(asked) == [("ns", "a"), ("ns", "b"), ("ns", "c")]
        reconciler.shutdown()

    asyncio.run(scenario())


def test_an_urgent_request_made_while_paused_runs_urgently_on_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kueue admits a job while another replica holds peering: the Workload's event asks `urgent` into a
    paused queue. On resume the request and its urgency must both survive: the gang is created at once, not
    after FOLLOW_UP_MAX_DELAY behind new jobs' first reconciles (no API: the work only records the key)."""

    async def scenario() -> None:
        queue = Reconciler(cast(Kube, object())).queue
        monkeypatch.setattr(workqueue, "FOLLOW_UP_MAX_DELAY", 30.0)
        ran: list[tuple[str, str]] = []
        queue.work = lambda key: ran.append(key)  # type: ignore[func-returns-value]
        queue.is_new = lambda key: False
        queue._count_new(+1)  # a new job's first reconcile in flight (for the whole test)
        queue.pause()
        queue.request(("ns", "admitted"), urgent=True)
        queue.request(("ns", "follow-up"))
        await asyncio.sleep(0.1)
        assert ran == []
        queue.resume()
        await asyncio.sleep(0.2)
        assert ran == [("ns", "admitted")]  # the urgent one at once; the follow-up still yields
        queue._count_new(-1)
        await asyncio.sleep(0.2)
        assert sorted(ran) == [("ns", "admitted"), ("ns", "follow-up")]
        queue.shutdown()

    asyncio.run(scenario())


def test_a_reconcile_in_flight_at_the_pause_does_not_run_again_until_the_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reconcile is running when the pause comes and an urgent request arrived during it (the key is
    dirty): it finishes, but its follow-up waits for the resume (one writer at a time) and then runs
    urgently, not after the new jobs' first reconciles (no API: the work records the key and blocks)."""

    async def scenario() -> None:
        queue = Reconciler(cast(Kube, object())).queue
        monkeypatch.setattr(workqueue, "FOLLOW_UP_MAX_DELAY", 30.0)
        release = threading.Event()
        ran: list[tuple[str, str]] = []

        def work(key: tuple[str, str]) -> None:
            ran.append(key)
            release.wait(5.0)

        queue.work = work
        queue.is_new = lambda key: False
        queue.request(("ns", "job"))
        await asyncio.sleep(0.05)
        assert ran == [("ns", "job")]
        queue.request(("ns", "job"), urgent=True)  # coalesced with the running reconcile: dirty
        queue._count_new(+1)  # a new job's first reconcile in flight from now on
        queue.pause()
        release.set()
        await asyncio.sleep(0.2)
        assert ran == [("ns", "job")]  # no second run while paused
        queue.resume()
        await asyncio.sleep(0.2)
        assert ran == [("ns", "job"), ("ns", "job")]  # at once: the urgency survived the pause
        queue._count_new(-1)
        queue.shutdown()

    asyncio.run(scenario())


def test_the_reconciler_pauses_and_resumes_with_kopfs_peering_log_records() -> None:
    """kopf has no public pause hook; the follower reads the two records its peering engine writes (the
    same records test_two_replicas_share_the_work_through_kopf_peering waits for in real replicas)."""

    async def scenario() -> None:
        reconciler = Reconciler(cast(Kube, object()))
        follower = PeeringPauseFollower(reconciler, asyncio.get_running_loop())
        follower.install()
        peering = logging.getLogger(PeeringPauseFollower.LOGGER)
        try:
            peering.info("Pausing operations in favour of [Peer(identity='other', priority=1)].")
            await asyncio.sleep(0.01)
            assert reconciler.queue.paused
            peering.info(
                "Resuming operations after the pause. Conflicting operators with the same priority are gone."
            )
            await asyncio.sleep(0.01)
            assert not reconciler.queue.paused
        finally:
            follower.remove()
            reconciler.shutdown()

    asyncio.run(scenario())
