"""The harness itself: what it starts listens on loopback only, it is the pinned Kubernetes release,
and helm from the same build runs. The start-up time is printed (run with -s to see it)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tests.kube import harness
from tests.kube.binaries import CLUSTER_HACK_DIR
from tests.kube.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

LISTEN = "0A"


def _pinned(name: str) -> str:
    for line in (CLUSTER_HACK_DIR / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise KeyError(name)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _listening_addresses(inodes: set[str]) -> list[str]:
    """Decodes /proc/net/tcp{,6} rows in LISTEN state whose socket inode is in `inodes`."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != LISTEN or inode not in inodes:
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            # The kernel prints the address as native-endian 32-bit words.
            packed = b"".join(
                struct.pack("<I", struct.unpack(">I", raw[i : i + 4])[0]) for i in range(0, len(raw), 4)
            )
            found.append(f"{socket.inet_ntop(family, packed)}:{int(port_hex, 16)}")
    return found


def test_every_process_listens_on_loopback_only(kube_cluster: LocalCluster) -> None:
    if not isinstance(kube_cluster, LocalCluster):
        pytest.skip("an existing cluster is not ours to inspect")
    kube_cluster.check_running()
    seen = {}
    for process in kube_cluster.processes:
        assert process.pid is not None
        seen[process.name] = _listening_addresses(_socket_inodes(process.pid))
    assert seen["kube-apiserver"] == [kube_cluster.server.removeprefix("https://")]
    assert len(seen["etcd"]) == 2  # client and peer URLs
    loopback = ("127.0.0.1:", "::ffff:127.0.0.1:", "::1:")
    assert all(address.startswith(loopback) for addresses in seen.values() for address in addresses), seen
    if "kwok" in seen:
        assert seen["kwok"] == []


def test_the_cluster_runs_the_pinned_release_and_started_quickly(kube_cluster: LocalCluster) -> None:
    if not isinstance(kube_cluster, LocalCluster):
        pytest.skip("an existing cluster runs whatever release it runs")
    version = kube_cluster.kubectl("version", "-o", "json").stdout
    pinned = _pinned("KUBERNETES_VERSION")
    assert version.count(f'"gitVersion": "{pinned}"') == 2  # client and server
    print(
        f"\nlocal cluster started in {kube_cluster.startup_seconds:.1f}s from {kube_cluster.binaries.bin_dir}"
    )


def test_helm_from_the_same_build_runs(kube_cluster: LocalCluster) -> None:
    if not isinstance(kube_cluster, LocalCluster) or not kube_cluster.binaries.has("helm"):
        pytest.skip("helm is not among these binaries")
    out = subprocess.run(
        [str(kube_cluster.binaries.path("helm")), "version", "--short"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(_pinned("HELM_VERSION"))


def test_a_port_taken_before_the_binary_binds_it_is_retried(
    kube_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replays the race between picking a free port and the binary binding it: the first pick is a
    port someone else listens on (a real socket; only the port choice is steered)."""
    if not isinstance(kube_cluster, LocalCluster):
        pytest.skip("needs the local binaries")
    real_pick = harness.free_loopback_port
    picks: list[int] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        def pick() -> int:
            picks.append(taken.getsockname()[1] if not picks else real_pick())
            return picks[-1]

        monkeypatch.setattr(harness, "free_loopback_port", pick)
        with LocalCluster(kube_cluster.binaries, gpu_nodes=0) as second:
            assert second.kubectl("get", "namespace", "default").returncode == 0
    assert picks[0] not in picks[1:]
