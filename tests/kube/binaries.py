"""Finding the binaries of the local test control plane without building them.

Looked for, in this order:
1. `$KUBETUNE_CLUSTER_BIN` (what `.ci/run` exports after `hack/cluster/build.sh`);
2. the cache directory that `hack/cluster/build.sh` would fill for the pinned versions (the path comes
   from `hack/cluster/cache-key.sh`, the very script build.sh uses, so the two cannot disagree);
3. `$KUBEBUILDER_ASSETS` (envtest's etcd + kube-apiserver + kubectl: an API server without
   controllers, scheduler or nodes, so the tests that need those are skipped).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_HACK_DIR = REPO_ROOT / "hack" / "cluster"

API_SERVER = ("etcd", "kube-apiserver")
CONTROLLERS = ("kube-controller-manager", "kube-scheduler")
NODE_SIMULATOR = "kwok"
ALL_BINARIES = (*API_SERVER, *CONTROLLERS, NODE_SIMULATOR, "kubectl", "helm")
BUILD_HINT = "run `bash hack/cluster/build.sh` (the first build takes 20-40 minutes)"


class BinariesNotFound(RuntimeError):
    """No usable set of control-plane binaries was found; the message says where we looked."""


@dataclass(frozen=True)
class ClusterBinaries:
    """A directory of control-plane binaries and what it can run."""

    bin_dir: Path
    origin: str

    def path(self, name: str) -> Path:
        """Returns the path of binary `name`; raises BinariesNotFound when it is not there."""
        candidate = self.bin_dir / name
        if not _is_executable(candidate):
            raise BinariesNotFound(f"{name} is not in {self.bin_dir} ({self.origin}); {BUILD_HINT}")
        return candidate

    def has(self, name: str) -> bool:
        """True when binary `name` is present and executable."""
        return _is_executable(self.bin_dir / name)

    @property
    def has_controllers(self) -> bool:
        """True when kube-controller-manager and kube-scheduler are present."""
        return all(self.has(name) for name in CONTROLLERS)

    @property
    def has_nodes(self) -> bool:
        """True when simulated nodes can run: controllers plus KWOK."""
        return self.has_controllers and self.has(NODE_SIMULATOR)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def cache_root() -> Path:
    """The root of kubetune's caches: `$KUBETUNE_CACHE`, else `~/.cache/kubetune`."""
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune")


def go_part_root(part: str, env: str, not_found: type[RuntimeError]) -> tuple[Path, str]:
    """Where hack/<part>/build.sh left its build: the parent of `$env` (the bin directory build.sh prints),
    else the cache folder named by hack/<part>/cache-key.sh. Returns (root, where it came from, for a
    message). Raises `not_found` when the cache-key script fails."""
    explicit = os.environ.get(env)
    if explicit:
        return Path(explicit).parent, f"${env}={explicit}"
    script = REPO_ROOT / "hack" / part / "cache-key.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise not_found(f"hack/{part}/cache-key.sh failed: {result.stderr.strip()}")
    root = cache_root() / part / result.stdout.strip()
    return root, f"the cache ({root})"


def cache_key() -> str:
    """The cache key of the pinned versions, from hack/cluster/cache-key.sh.

    Raises BinariesNotFound when the script cannot run.
    """
    script = CLUSTER_HACK_DIR / "cache-key.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BinariesNotFound(f"{script} failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def cached_bin_dir() -> Path:
    """The bin directory `hack/cluster/build.sh` builds into for the pinned versions (may not exist)."""
    return cache_root() / "cluster" / cache_key() / "bin"


def find_binaries() -> ClusterBinaries:
    """Returns the first usable set of binaries (see the module docstring for the order).

    Raises BinariesNotFound, naming every place looked at, when none has etcd and kube-apiserver.
    """
    looked: list[str] = []
    explicit = os.environ.get("KUBETUNE_CLUSTER_BIN")
    if explicit:
        found = ClusterBinaries(Path(explicit), "KUBETUNE_CLUSTER_BIN")
        if all(found.has(name) for name in API_SERVER):
            return found
        # An explicit choice that does not work is an error, not a reason to quietly use something else.
        raise BinariesNotFound(f"KUBETUNE_CLUSTER_BIN={explicit} lacks etcd or kube-apiserver; {BUILD_HINT}")
    try:
        cached = ClusterBinaries(cached_bin_dir(), "hack/cluster/build.sh cache")
        if all(cached.has(name) for name in ALL_BINARIES):
            return cached
        looked.append(f"{cached.bin_dir} (not built yet)")
    except BinariesNotFound as error:
        looked.append(str(error))
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        envtest = ClusterBinaries(Path(assets), "KUBEBUILDER_ASSETS")
        if all(envtest.has(name) for name in API_SERVER):
            return envtest
        looked.append(f"KUBEBUILDER_ASSETS={assets} (no etcd/kube-apiserver)")
    else:
        looked.append("KUBEBUILDER_ASSETS (unset)")
    raise BinariesNotFound(f"no control-plane binaries found; looked at: {'; '.join(looked)}; {BUILD_HINT}")
