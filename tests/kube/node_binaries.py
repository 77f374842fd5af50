"""Finding the real nodes' binaries (kubelet, kube-proxy, coredns) that hack/nodes/build.sh builds.

Looked for in `$KUBETUNE_NODES_BIN` (what CI exports after the build), else in the cache directory that
build.sh fills for the pinned versions (its path comes from hack/nodes/cache-key.sh, the script build.sh
uses). The system tools (containerd, runc, the CNI plugins, iptables, ...) come from Debian's packages,
installed by hack/nodes/install-packages.sh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.kube.binaries import REPO_ROOT, cache_root

NODES_HACK_DIR = REPO_ROOT / "hack" / "nodes"
NODE_BINARIES = ("kubelet", "kube-proxy", "coredns")
SYSTEM_TOOLS = (
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "ip",
    "nsenter",
    "iptables",
    "conntrack",
)
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
BUILD_HINT = "run `bash hack/nodes/install-packages.sh && bash hack/nodes/build.sh`"


class NodeBinariesNotFound(RuntimeError):
    """A binary or system tool the real nodes need is missing; the message names it and the fix."""


def node_cache_key() -> str:
    """The cache key from hack/nodes/cache-key.sh. Raises NodeBinariesNotFound when it cannot run."""
    script = NODES_HACK_DIR / "cache-key.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeBinariesNotFound(f"{script} failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def find_node_bin_dir() -> Path:
    """Returns the directory holding kubelet, kube-proxy and coredns, after checking the system tools.

    Raises NodeBinariesNotFound naming everything missing and how to get it.
    """
    explicit = os.environ.get("KUBETUNE_NODES_BIN")
    bin_dir = Path(explicit) if explicit else cache_root() / "nodes" / node_cache_key() / "bin"
    missing = [name for name in NODE_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    missing += [name for name in SYSTEM_TOOLS if shutil.which(name) is None]
    missing += [f"{CNI_BIN_DIR}/{name}" for name in CNI_PLUGINS if not (CNI_BIN_DIR / name).is_file()]
    if missing:
        raise NodeBinariesNotFound(
            f"real nodes need {', '.join(missing)} (looked in {bin_dir}); {BUILD_HINT}"
        )
    return bin_dir
