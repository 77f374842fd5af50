"""The private network of a cluster with real nodes: Linux network namespaces that the harness creates.

Nothing here touches the host's own network namespace. The topology (addresses are the same in every
cluster, since each cluster's namespaces are its own world):

    host netns            127.0.0.1:<free port>  --(userspace forwarder, tests/kube/forwarder.py)--+
                                                                                                    |
    kt-<pid>-<id>-hub     bridge `br0` 172.31.0.1/24  <- etcd, kube-apiserver (:6443), controllers,
                          routes 10.245.<i>.0/24 via node i      KWOK, CoreDNS (:53) all run here
                            |  veth n<i> <-> eth0
    kt-<pid>-<id>-n<i>    eth0 172.31.0.<10+i>/24, default route via the hub; kubelet, containerd,
                          kube-proxy run here; the bridge CNI makes `cni0` 10.245.<i>.1/24 for pods

The namespace names carry the owning Python process's pid, so `remove_stale_namespaces` can delete those
whose owner died without cleaning up (SIGKILL), like `remove_stale_workdirs` does for directories.
Processes enter a namespace with `nsenter --net=` (network namespace only: `ip netns exec` would also
remount /sys, which hides the cgroup mounts the kubelet needs).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import secrets
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.kube import host_cleanup

NETNS_DIR = Path("/var/run/netns")
NAME_PREFIX = "kt-"
_NAME_PATTERN = re.compile(r"^kt-(\d+)-[0-9a-f]+-(hub|n\d+)$")
NODE_NETWORK = ipaddress.ip_network("172.31.0.0/24")
HUB_IP = "172.31.0.1"
# Pods of real node i get 10.245.i.0/24. KWOK's fake pods use 10.244.0.0/16 (harness.POD_CIDR).
REAL_POD_CIDR = "10.245.0.0/16"
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class NetworkError(RuntimeError):
    """A namespace, link or route could not be made; the message carries the failing command."""


def _ip(*args: str) -> None:
    """Runs `ip`; raises NetworkError with its stderr when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")


def _sysctl(namespace: str, key: str, value: str) -> None:
    """Sets a per-namespace sysctl inside `namespace` (the host's value is not touched)."""
    result = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / namespace}", "sysctl", "-q", "-w", f"{key}={value}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise NetworkError(f"sysctl {key}={value} in {namespace} failed: {result.stderr.strip()}")


def in_namespace(namespace: str, argv: list[str]) -> list[str]:
    """Returns `argv` prefixed so that it runs inside network namespace `namespace` (and nothing else)."""
    return ["nsenter", f"--net={NETNS_DIR / namespace}", *argv]


@dataclass(frozen=True)
class RealNodeNetwork:
    """Addresses of one real node inside the cluster network."""

    index: int
    namespace: str
    ip: str
    pod_cidr: str
    pod_gateway: str


class ClusterNetwork:
    """The hub and node namespaces of one cluster; `create()` builds them, `delete()` removes them all."""

    def __init__(self) -> None:
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.hub = f"{self.prefix}-hub"
        self.hub_ip = HUB_IP
        self.nodes: list[RealNodeNetwork] = []

    def create(self) -> None:
        """Creates the hub namespace with its bridge. Raises NetworkError."""
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "addr", "add", f"{HUB_IP}/{NODE_NETWORK.prefixlen}", "dev", "br0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        # The hub routes between the nodes' pod networks.
        _sysctl(self.hub, "net.ipv4.ip_forward", "1")

    def add_node(self) -> RealNodeNetwork:
        """Creates the next node namespace, wires it to the hub and routes its pod CIDR. Raises NetworkError."""
        index = len(self.nodes) + 1
        namespace = f"{self.prefix}-n{index}"
        node_ip = str(NODE_NETWORK.network_address + 10 + index)
        pod_network = ipaddress.ip_network(f"10.245.{index}.0/24")
        node = RealNodeNetwork(
            index=index,
            namespace=namespace,
            ip=node_ip,
            pod_cidr=str(pod_network),
            pod_gateway=str(pod_network.network_address + 1),
        )
        _ip("netns", "add", namespace)
        self.nodes.append(node)
        _ip("-n", namespace, "link", "set", "lo", "up")
        # Both ends are created directly inside our namespaces: the host never sees the pair.
        _ip(
            "link", "add", f"n{index}", "netns", self.hub, "type", "veth",
            "peer", "name", "eth0", "netns", namespace,
        )  # fmt: skip
        _ip("-n", self.hub, "link", "set", f"n{index}", "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{node_ip}/{NODE_NETWORK.prefixlen}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "route", "add", "default", "via", HUB_IP)
        _ip("-n", self.hub, "route", "add", node.pod_cidr, "via", node_ip)
        # The node forwards between its pods (cni0) and the hub (eth0); kube-proxy's rules need the
        # bridge's traffic to pass iptables (br_netfilter's per-namespace switch).
        _sysctl(namespace, "net.ipv4.ip_forward", "1")
        _sysctl(namespace, "net.bridge.bridge-nf-call-iptables", "1")
        return node

    def delete(self) -> None:
        """Deletes every namespace of this cluster (their links and routes go with them); never raises."""
        for namespace in [*(node.namespace for node in self.nodes), self.hub]:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
        self.nodes.clear()


def _owner_is_gone(name: str) -> bool:
    """True when `name` is one of ours (kt-<pid>-<id>-...) and process <pid> no longer exists."""
    match = _NAME_PATTERN.match(name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def remove_stale_namespaces() -> list[str]:
    """Deletes the `kt-<pid>-...` namespaces whose owning process is gone, and the cgroups of their nodes'
    pods (named like the node's namespace, see RealNode.cgroup_root); returns the names removed."""
    names = {entry.name for entry in NETNS_DIR.glob(f"{NAME_PREFIX}*")} if NETNS_DIR.is_dir() else set()
    names |= host_cleanup.cgroup_roots(f"{NAME_PREFIX}*")
    removed = []
    for name in sorted(names):
        if not _owner_is_gone(name):
            continue
        host_cleanup.kill_cgroup(name)
        host_cleanup.remove_cgroup_root(name)
        if (NETNS_DIR / name).exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        removed.append(name)
    return removed


def enter_namespace(namespace: str) -> None:
    """Moves the CALLING THREAD into network namespace `namespace` (setns(2); Python 3.11 has no os.setns).

    Sockets the thread creates afterwards live in that namespace. Raises OSError.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def call_in_namespace(namespace: str, function: Callable[[], T]) -> T:
    """Runs `function` in a fresh thread that has entered network namespace `namespace`; returns its
    result or raises its exception. For probes of ports that listen inside our namespaces."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            enter_namespace(namespace)
            outcome["result"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"in-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["result"]
    return result
