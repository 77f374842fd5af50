"""One containerd (with its CRI plugin, runc and the bridge CNI) per real node, in the node's namespace.

Each node's containerd has its own config, socket, state and root under the node's folder, so several
nodes and clusters run side by side without sharing anything. The settings that made it work here
(see ../shared/notes/real-node-facts.md):
- `restrict_oom_score_adj = true`: root here lacks CAP_SYS_RESOURCE; without it runc fails with
  "can't get final child's PID from pipe";
- `SystemdCgroup = false` (the kubelet uses the cgroupfs driver);
- `sandbox_image` = our locally built pause image (none can be pulled);
- `netns_mounts_under_state_dir = true`: pod network namespaces are bind-mounted under the node's folder
  instead of the host's /var/run/netns, so stopping a node finds and removes them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.kube.netns import RealNodeNetwork
from tests.kube.node_binaries import CNI_BIN_DIR

CRI_NAMESPACE = "k8s.io"


class ContainerdError(RuntimeError):
    """ctr failed; the message carries its output."""


def write_containerd_config(node_dir: Path, root: Path, sandbox_image: str) -> Path:
    """Writes the node's containerd config (and its CNI config); returns the config's path."""
    state = node_dir / "containerd-state"
    cni_conf_dir = node_dir / "cni" / "net.d"
    cni_conf_dir.mkdir(parents=True, exist_ok=True)
    config = node_dir / "containerd.toml"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config.write_text(
        f"""version = 2
root = "{root}"
state = "{state}"
# Storage back-ends that do not exist here only log errors at start-up.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket_path(node_dir)}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  max_container_log_line_size = 16384
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"
"""
    )
    return config


def write_cni_config(node_dir: Path, network: RealNodeNetwork) -> Path:
    """Writes the node's pod network: a `cni0` bridge (gateway) with host-local addresses from the node's
    pod CIDR. No masquerade: the hub routes every pod CIDR, so pod addresses are seen as they are."""
    config = {
        "cniVersion": "0.4.0",
        "name": "kubetune-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": network.pod_cidr, "gateway": network.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    # Address leases under the node's folder, not the host's /var/lib/cni.
                    "dataDir": str(node_dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    path = node_dir / "cni" / "net.d" / "10-kubetune.conflist"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def socket_path(node_dir: Path) -> Path:
    """The node's containerd socket."""
    return node_dir / "containerd.sock"


def containerd_argv(config: Path) -> list[str]:
    """The command line that runs containerd with `config`."""
    return ["containerd", f"--config={config}", "--log-level=warn"]


def ctr(node_dir: Path, *args: str, timeout: float = 600) -> str:
    """Runs `ctr` against the node's containerd in the CRI namespace; returns stdout. Raises ContainerdError."""
    argv = ["ctr", f"--address={socket_path(node_dir)}", f"--namespace={CRI_NAMESPACE}", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise ContainerdError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def import_image(node_dir: Path, archive: Path) -> None:
    """Loads a docker-archive or OCI tar into the node's containerd (CRI namespace): what a pull would do.

    Raises ContainerdError.
    """
    # --no-unpack would defer unpacking to the first container start; unpacking now keeps pod start fast.
    ctr(node_dir, "images", "import", "--all-platforms", str(archive))
