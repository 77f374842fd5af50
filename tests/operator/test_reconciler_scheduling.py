"""How the Reconciler orders work on its event loop (no cluster: these paths never touch the API)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from kubetune.controller import handlers
from kubetune.controller.handlers import Reconciler
from kubetune.controller.kube import Kube


def test_a_running_jobs_reconcile_yields_to_new_jobs_but_only_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        reconciler = Reconciler(cast(Kube, object()))
        # Nothing new in flight: no wait at all
        await asyncio.wait_for(reconciler._yield_to_new_jobs(), 1.0)

        # A new job's first reconcile in flight: the running job's reconcile waits until it is done
        monkeypatch.setattr(handlers, "FOLLOW_UP_MAX_DELAY", 30.0)
        reconciler._count_new(+1)
        waiting: Any = asyncio.ensure_future(reconciler._yield_to_new_jobs())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        reconciler._count_new(-1)
        await asyncio.wait_for(waiting, 1.0)

        # One that never ends holds it back no longer than FOLLOW_UP_MAX_DELAY
        monkeypatch.setattr(handlers, "FOLLOW_UP_MAX_DELAY", 0.05)
        reconciler._count_new(+1)
        await asyncio.wait_for(reconciler._yield_to_new_jobs(), 1.0)

    asyncio.run(scenario())
