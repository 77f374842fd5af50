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

import fcntl
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

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
    # Generous: a multi-GB trainer image takes minutes on a busy 2-core machine.
    ctr(node_dir, "images", "import", "--all-platforms", str(archive), timeout=1800)


def purge_leftover_workloads(node_dir: Path, root: Path, spawn_prefix: list[str]) -> None:
    """Empties a reused containerd root of the containers and sandboxes of an earlier run, keeping images.

    A node whose root persists in a cache (so that big images are imported once) finds there the
    records of the pods that ran when it last stopped; their processes and state are long gone. They are
    deleted through a containerd started WITHOUT the CRI plugin (which would load them and hand them to
    the kubelet as pods to recover). Raises ContainerdError.
    """
    if not (root / "io.containerd.metadata.v1.bolt" / "meta.db").exists():
        return
    config = node_dir / "containerd-purge.toml"
    state = node_dir / "containerd-purge-state"
    config.write_text(
        f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{socket_path(node_dir)}"
"""
    )
    log = (node_dir / "logs" / "containerd-purge.log").open("ab")
    process = subprocess.Popen([*spawn_prefix, *containerd_argv(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ctr(node_dir, "version", timeout=5)
                break
            except (ContainerdError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise ContainerdError(f"containerd (purge run) did not start; see {log.name}") from None
                time.sleep(0.2)
        leftovers = ctr(node_dir, "containers", "list", "--quiet").split()
        if leftovers:
            ctr(node_dir, "containers", "delete", *leftovers)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        config.unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
        socket_path(node_dir).unlink(missing_ok=True)
    # The CRI plugin's own per-sandbox/container files (hostname, resolv.conf, logs) of those records.
    shutil.rmtree(root / "io.containerd.grpc.v1.cri", ignore_errors=True)


class CachedRoot:
    """A containerd root in $KUBETUNE_CACHE/nodes/containerd/<node>-<k> that persists across test runs.

    Images imported into it stay for the next run, which then skips the import (`ctr images import`
    of a multi-GB trainer image takes minutes). A slot is held with an exclusive flock for as long as
    this object lives (the lock dies with the process), so clusters running side by side take
    different slots. `release()` gives it back.
    """

    SLOTS = 4

    def __init__(self, cache_dir: Path, node_name: str):
        cache_dir.mkdir(parents=True, exist_ok=True)
        for slot in range(self.SLOTS):
            lock = (cache_dir / f"{node_name}-{slot}.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue
            self._lock: IO[str] | None = lock
            self.path = cache_dir / f"{node_name}-{slot}"
            return
        raise ContainerdError(
            f"all {self.SLOTS} cached containerd roots for {node_name} in {cache_dir} are in use"
        )

    def release(self) -> None:
        """Unlocks the slot (another cluster may take it from now on)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
