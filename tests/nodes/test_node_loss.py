"""Node loss: a real node whose kubelet and runtime stop is marked NotReady within a bounded time, its
containers are gone, and it comes back when restarted."""

from __future__ import annotations

import time

import pytest

from tests.kube.harness import NODE_MONITOR_GRACE_PERIOD, LocalCluster, wait_for
from tests.kube.host_cleanup import cgroup_pids

pytestmark = pytest.mark.cluster

# The node controller notices after the grace period, checking every 2 s; leave room for a busy machine.
NOT_READY_WITHIN_SECONDS = int(NODE_MONITOR_GRACE_PERIOD.removesuffix("s")) + 25


def test_stopped_node_becomes_not_ready_then_recovers(real_node_cluster: LocalCluster) -> None:
    node = real_node_cluster.real_node("real-2")
    assert real_node_cluster.node_condition(node.name) == "True"
    began = time.monotonic()
    node.stop()
    assert not cgroup_pids(node.cgroup_root), "containers of the stopped node are still running"
    wait_for(
        lambda: real_node_cluster.node_condition(node.name) in ("Unknown", "False"),
        NOT_READY_WITHIN_SECONDS,
        f"{node.name} to become NotReady",
        interval=1,
    )
    not_ready_after = time.monotonic() - began
    print(f"{node.name} NotReady {not_ready_after:.1f}s after its kubelet and runtime stopped")
    node.start()
    real_node_cluster.wait_for_real_nodes_ready([node.name], timeout=120)
