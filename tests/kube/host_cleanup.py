"""Undoing what real nodes leave on the host outside their work directory: mounts and cgroups.

The kubelet and containerd mount pod volumes, container root filesystems and pod network namespaces
under the node's folder, and put pods into cgroups under the node's own cgroup root. Stopping a node
kills the processes in those cgroups, unmounts everything under the folder (deepest first) and removes
the cgroups, so that the folder can be deleted and nothing outlives the cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path

CGROUP_V1_ROOT = Path("/sys/fs/cgroup")
# The v1 hierarchies the kubelet and runc use; each gets the node's cgroup root.
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "systemd")
# Hybrid mode: the kubelet and runc also make the cgroups in the v2 hierarchy mounted here.
CGROUP_V2_HYBRID = "unified"
_MNT_DETACH = 2


def create_cgroup_root(name: str) -> None:
    """Creates /<name> in every v1 hierarchy present (the kubelet refuses a cgroupRoot that is missing)."""
    for controller in CGROUP_CONTROLLERS:
        hierarchy = CGROUP_V1_ROOT / controller
        if not hierarchy.is_dir():
            continue
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        if controller == "cpuset":
            # A v1 cpuset starts with no CPUs or memory nodes; copy the parent's so tasks may join.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((hierarchy / knob).read_text())


def cgroup_pids(name: str) -> set[int]:
    """Returns the pids of every process in /<name> and below (read from the pids hierarchy)."""
    pids: set[int] = set()
    for controller in ("pids", "memory"):
        root = CGROUP_V1_ROOT / controller / name
        if not root.is_dir():
            continue
        for procs in root.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
    return pids


def kill_cgroup(name: str, timeout: float = 10.0) -> None:
    """SIGKILLs every process in cgroup root /<name> until none is left (or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    while (pids := cgroup_pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def cgroup_roots(pattern: str) -> set[str]:
    """Returns the names of the top-level cgroups matching glob `pattern` in any hierarchy."""
    return {path.name for path in CGROUP_V1_ROOT.glob(f"*/{pattern}") if path.is_dir()}


def remove_cgroup_root(name: str) -> None:
    """Removes /<name> and its children from every hierarchy (empty cgroups only; errors are ignored)."""
    for controller in (*CGROUP_CONTROLLERS, CGROUP_V2_HYBRID):
        root = CGROUP_V1_ROOT / controller / name
        if not root.is_dir():
            continue
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def kill_processes_with_argument(argument: str) -> None:
    """SIGKILLs the processes whose command line contains `argument` exactly as one of its words.

    Used for containerd's shims, which leave containerd's process group: they are found by their
    `-address <our socket>` argument, which is unique to one node.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in words:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def unmount_under(directory: Path) -> None:
    """Lazily unmounts every mount point at or below `directory`, deepest first."""
    prefix = str(directory.resolve())
    for _ in range(3):  # a mount can hide another one at the same path
        points = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].encode().decode("unicode_escape")
                if point == prefix or point.startswith(prefix + "/"):
                    points.append(point)
        if not points:
            return
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        for point in sorted(set(points), key=len, reverse=True):
            libc.umount2(point.encode(), _MNT_DETACH)


def kill_processes_with_argument_under(directory: Path) -> None:
    """SIGKILLs the processes that have an argument naming a path inside `directory` (e.g. the containerd
    shims of a crashed cluster, found by their `-address <directory>/nodes/<node>/containerd.sock`)."""
    prefix = str(directory.resolve()) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(word.decode(errors="replace").startswith(prefix) for word in words):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
