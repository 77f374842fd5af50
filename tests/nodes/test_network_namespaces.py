"""The cluster network's namespaces, forwarder and clean-up, without a cluster (fast; needs root and iproute2)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.kube.forwarder import NamespaceForwarder
from tests.kube.netns import NETNS_DIR, ClusterNetwork, in_namespace, remove_stale_namespaces

pytestmark = pytest.mark.cluster


def _namespaces() -> set[str]:
    return {p.name for p in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()


def test_nodes_reach_the_hub_and_the_host_only_through_the_forwarder() -> None:
    network = ClusterNetwork()
    network.create()
    try:
        node = network.add_node()
        assert {network.hub, node.namespace} <= _namespaces()
        server = subprocess.Popen(
            in_namespace(
                network.hub, [sys.executable, "-m", "http.server", "--bind", network.hub_ip, "8000"]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        forwarder = NamespaceForwarder(network.hub, network.hub_ip, 8000)
        forwarder.start()
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{forwarder.port}/", timeout=2) as response:
                        assert response.status == 200
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the forwarder never reached the hub"
                    time.sleep(0.2)
            probe = (
                f"import urllib.request; urllib.request.urlopen('http://{network.hub_ip}:8000/', timeout=5)"
            )
            subprocess.run(
                in_namespace(node.namespace, [sys.executable, "-c", probe]), check=True, timeout=30
            )
            # The host namespace got no address, link or route for the cluster network.
            host_routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
            assert "172.31.0." not in host_routes and "10.245." not in host_routes
        finally:
            forwarder.close()
            server.kill()
            server.wait()
    finally:
        network.delete()
    assert not {network.hub, node.namespace} & _namespaces()


def test_namespaces_of_a_dead_owner_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"kt-{dead.pid}-abcdef-hub"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in remove_stale_namespaces()
        assert name not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
