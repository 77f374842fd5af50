"""One real Kubernetes node: containerd + kubelet + kube-proxy inside the node's network namespace.

    node = RealNode("real-1", node_dir, network, bin_dir, pki, server, sandbox_image)
    node.start()                  # registers as Node `real-1`, Ready once the kubelet reports it
    node.load_image(archive)      # `ctr images import`: what a pull would do, without a registry
    node.stop()                   # node loss: kubelet, kube-proxy, containers and containerd are killed;
                                  # the Node object stays and the node controller marks it NotReady
    node.start()                  # and it comes back

Every file lives under `node_dir`; the pods' cgroups live under the node's own cgroup root; stop()
unmounts and removes whatever the kubelet and containerd left on the host (tests/kube/host_cleanup.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from tests.kube import host_cleanup
from tests.kube.containerd import (
    ContainerdError,
    containerd_argv,
    ctr,
    import_image,
    purge_leftover_workloads,
    socket_path,
    write_cni_config,
    write_containerd_config,
)
from tests.kube.coredns import CLUSTER_DNS_IP
from tests.kube.kubeconfig import write_kubeconfig
from tests.kube.kubelet import (
    KUBELET_HEALTHZ_PORT,
    kube_proxy_argv,
    kubelet_argv,
    write_kube_proxy_config,
    write_kubelet_config,
)
from tests.kube.netns import RealNodeNetwork, call_in_namespace, in_namespace
from tests.kube.node_images import ImageArchive
from tests.kube.pki import ClusterPKI, create_client_pair, create_serving_pair
from tests.kube.processes import ManagedProcess, http_get_ok

# Labels each imported image with the archive it came from (see RealNode.load_image).
ARCHIVE_LABEL = "kubetune.test/archive"

CONTAINERD_START_SECONDS = 30.0
KUBELET_HEALTHY_SECONDS = 60.0


class RealNode:
    """A real node of a LocalCluster; see the module docstring."""

    def __init__(
        self,
        name: str,
        node_dir: Path,
        network: RealNodeNetwork,
        bin_dir: Path,
        pki: ClusterPKI,
        server: str,
        sandbox_image: ImageArchive,
        containerd_root: Path | None = None,
    ):
        self.name = name
        self.node_dir = node_dir
        self.network = network
        self.bin_dir = bin_dir
        self.server = server
        self.sandbox_image = sandbox_image
        # Persistent image store when given (e.g. a cache slot), else a fresh one under the node's folder.
        self.containerd_root = containerd_root or node_dir / "containerd-root"
        self._root_is_cached = containerd_root is not None
        self.cgroup_root = network.namespace  # unique per cluster and node: kt-<pid>-<id>-n<i>
        self._pki = pki
        self.processes: list[ManagedProcess] = []
        self.log_dir = node_dir / "logs"

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the node's processes run (after start(), before stop())."""
        return bool(self.processes) and all(p.running() for p in self.processes)

    def start(self) -> None:
        """Starts containerd, loads the sandbox image, then starts the kubelet and kube-proxy.

        Returns once the kubelet answers its health check (the Node's Ready condition follows within a
        few seconds: see LocalCluster.wait_for_real_nodes_ready). Raises ProcessFailed (with the failing
        process's log tail) or ContainerdError; whatever was started is stopped again first.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        kubeconfigs = self._write_credentials()
        host_cleanup.create_cgroup_root(self.cgroup_root)
        if self._root_is_cached:
            purge_leftover_workloads(
                self.node_dir, self.containerd_root, in_namespace(self.network.namespace, [])
            )
        containerd_config = write_containerd_config(
            self.node_dir, self.containerd_root, self.sandbox_image.ref
        )
        write_cni_config(self.node_dir, self.network)
        containerd = self._spawn("containerd", containerd_argv(containerd_config))
        containerd.wait_until(self._containerd_answers, CONTAINERD_START_SECONDS, "serving its socket")
        if self.sandbox_image.ref not in self.image_refs():
            import_image(self.node_dir, self.sandbox_image.path)
        pki_dir = self.node_dir / "pki"
        kubelet_config = write_kubelet_config(
            self.node_dir,
            self.network,
            cgroup_root=self.cgroup_root,
            containerd_socket=socket_path(self.node_dir),
            ca_cert=self._pki.ca.cert,
            serving_cert=pki_dir / "kubelet-serving.crt",
            serving_key=pki_dir / "kubelet-serving.key",
            cluster_dns=CLUSTER_DNS_IP,
        )
        kubelet = self._spawn(
            "kubelet",
            kubelet_argv(
                self.bin_dir / "kubelet",
                self.node_dir,
                self.name,
                self.network,
                kubelet_config,
                kubeconfigs[0],
            ),
        )
        proxy_config = write_kube_proxy_config(self.node_dir, self.name, self.network, kubeconfigs[1])
        self._spawn("kube-proxy", kube_proxy_argv(self.bin_dir / "kube-proxy", proxy_config))
        kubelet.wait_until(self._kubelet_healthy, KUBELET_HEALTHY_SECONDS, "healthy")

    def stop(self) -> None:
        """Kills the node (kubelet, kube-proxy, every container, containerd) and undoes its host state.

        The Node object is left alone, as when a machine disappears. Never raises.
        """
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop(grace_seconds=0.5)
        self.processes.clear()
        with contextlib.suppress(Exception):
            host_cleanup.kill_cgroup(self.cgroup_root)
        with contextlib.suppress(Exception):
            # containerd's shims leave its process group; each carries our socket path.
            host_cleanup.kill_processes_with_argument(str(socket_path(self.node_dir)))
        with contextlib.suppress(Exception):
            host_cleanup.unmount_under(self.node_dir)
            if self._root_is_cached:
                host_cleanup.unmount_under(self.containerd_root)
        with contextlib.suppress(Exception):
            host_cleanup.remove_cgroup_root(self.cgroup_root)
        # Runtime state (sockets, pod sandboxes) does not survive a node's loss; images (root) do.
        shutil.rmtree(self.node_dir / "containerd-state", ignore_errors=True)

    # -- images ----------------------------------------------------------------------------------

    def load_image(self, archive: Path, ref: str | None = None) -> float:
        """Imports an image archive (docker-archive or OCI tar) into this node's runtime; returns the seconds it
        took (0 when the node already had this very archive).

        With `ref` (the archive's `name:tag`):
        - The image is labelled with the archive it came from, and a node whose label differs imports again: a
          rebuilt image keeps its tag but not its contents, and a cached containerd root may hold an older one.
        - Once unpacked, the layer blobs are removed from the content store: only a push or an export needs
          them (containerd 1.7's `discard_unpacked_layers`; 1.6's `ctr images import` has no such option).
          That halves the disk an image takes per node (7 GB instead of 14 GB for the trainer).
        - Other tags of the same repository are removed, and so is every image-ID reference (`sha256:...`, which
          the CRI plugin adds beside each tag) whose image no tag names any more; containerd's collector then
          frees their layers. A rebuilt image keeps its tag: the older build's ID reference alone would keep it
          on disk for good (6.6 GB per node for the trainer).
        - A node that holds an older build of `ref` removes it before the import: a rebuilt trainer shares no
          layer with it, and importing beside it would hold both on disk at once.
        Raises ContainerdError.
        """
        started = time.monotonic()
        if ref is None:
            import_image(self.node_dir, archive)
            return time.monotonic() - started
        wanted = normalized_image_ref(ref)
        source = f"{archive.name}.{archive.stat().st_size}"
        if self._image_labels(wanted).get(ARCHIVE_LABEL) != source:
            self._remove_unwanted_images(_repository(wanted), keep=None)
            self._check_room_for(archive)
            import_image(self.node_dir, archive)
            if wanted not in self.image_refs():
                raise ContainerdError(f"importing {archive} did not create {wanted}")
            self._discard_layer_blobs(wanted)
            ctr(self.node_dir, "images", "label", wanted, f"{ARCHIVE_LABEL}={source}")
        self._remove_unwanted_images(_repository(wanted), keep=wanted)
        return time.monotonic() - started

    def image_refs(self) -> list[str]:
        """Returns the references of the images in this node's runtime."""
        return ctr(self.node_dir, "images", "list", "--quiet").split()

    # -- helpers ---------------------------------------------------------------------------------

    def _check_room_for(self, archive: Path) -> None:
        """Raises ContainerdError, naming the sizes, when the disk cannot take `archive`'s import: its layer
        blobs and their unpacked snapshots exist at once until the blobs are discarded (twice the archive)."""
        need = 2 * archive.stat().st_size + (1 << 30)
        free = shutil.disk_usage(self.containerd_root).free
        if free < need:
            raise ContainerdError(
                f"not enough disk on {self.name} to import {archive.name}: {need / 2**30:.1f} GB needed (twice"
                f" the archive), {free / 2**30:.1f} GB free under {self.containerd_root}; free some space"
                " (`du -sh $KUBETUNE_CACHE/*` shows what the cache holds)"
            )

    def _remove_unwanted_images(self, repository: str, keep: str | None) -> None:
        """Removes the tags of `repository` other than `keep` (all of them when None), then every image-ID
        reference whose image no remaining tag names."""
        listing = self._image_digests()
        doomed = [
            r for r in listing if r != keep and not r.startswith("sha256:") and _repository(r) == repository
        ]
        named = {digest for r, digest in listing.items() if not r.startswith("sha256:") and r not in doomed}
        doomed += [r for r, digest in listing.items() if r.startswith("sha256:") and digest not in named]
        if doomed:
            ctr(self.node_dir, "images", "remove", *doomed)

    def _image_digests(self) -> dict[str, str]:
        """Each image reference in this node's containerd -> the digest of the manifest it points at."""
        rows = [line.split() for line in ctr(self.node_dir, "images", "list").splitlines()[1:]]
        return {fields[0]: fields[2] for fields in rows if len(fields) > 2}

    def _image_labels(self, ref: str) -> dict[str, str]:
        """The labels of image `ref` in this node's containerd ({} when it has none or no such image)."""
        for line in ctr(self.node_dir, "images", "list").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == ref:
                labels = fields[-1] if "=" in fields[-1] else ""
                return dict(item.split("=", 1) for item in labels.split(",") if "=" in item)
        return {}

    def _discard_layer_blobs(self, ref: str) -> int:
        """Removes the layer blobs of `ref` (unpacked already) from the content store; returns how many."""
        manifest_digest = self._image_digests()[ref]
        manifest = json.loads(ctr(self.node_dir, "content", "get", manifest_digest))
        layers = [layer["digest"] for layer in manifest.get("layers", [])]
        present = set(ctr(self.node_dir, "content", "list", "--quiet").split())
        doomed = [digest for digest in layers if digest in present]
        if doomed:
            ctr(self.node_dir, "content", "rm", *doomed)
        return len(doomed)

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(
            f"{self.name}-{name}", in_namespace(self.network.namespace, argv), self.log_dir
        )
        self.processes.append(process)
        process.start()
        return process

    def _write_credentials(self) -> tuple[Path, Path]:
        """Writes (once) the kubelet's and kube-proxy's client certificates, the kubelet's serving
        certificate and both kubeconfigs; returns the kubeconfig paths (kubelet, kube-proxy)."""
        pki_dir = self.node_dir / "pki"
        kubelet_kubeconfig = self.node_dir / "kubelet.kubeconfig"
        proxy_kubeconfig = self.node_dir / "kube-proxy.kubeconfig"
        if kubelet_kubeconfig.exists():
            return kubelet_kubeconfig, proxy_kubeconfig
        pki_dir.mkdir(parents=True, exist_ok=True)
        ca = self._pki.ca
        # The Node authorizer ties a kubelet to its own Node object through this identity.
        kubelet_user = f"system:node:{self.name}"
        kubelet_client = create_client_pair(pki_dir, "kubelet-client", ca, kubelet_user, "system:nodes")
        create_serving_pair(pki_dir, "kubelet-serving", ca, kubelet_user, [self.name], [self.network.ip])
        proxy_client = create_client_pair(pki_dir, "kube-proxy-client", ca, "system:kube-proxy")
        for path, user, pair in (
            (kubelet_kubeconfig, kubelet_user, kubelet_client),
            (proxy_kubeconfig, "system:kube-proxy", proxy_client),
        ):
            write_kubeconfig(
                path,
                server=self.server,
                ca_cert=ca.cert,
                user=user,
                client_cert=pair.cert,
                client_key=pair.key,
            )
        return kubelet_kubeconfig, proxy_kubeconfig

    def _containerd_answers(self) -> bool:
        if not socket_path(self.node_dir).exists():
            return False
        ctr(self.node_dir, "version", timeout=5)
        return True

    def _kubelet_healthy(self) -> bool:
        # The health endpoint listens on the node namespace's loopback: ask from inside it.
        url = f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"
        return call_in_namespace(self.network.namespace, lambda: http_get_ok(url))


def normalized_image_ref(ref: str) -> str:
    """Returns `ref` as containerd stores it: `kubetune/trainer:x` -> `docker.io/kubetune/trainer:x`,
    `busybox:1` -> `docker.io/library/busybox:1`; references with a registry host stay as they are."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def _repository(ref: str) -> str:
    """`docker.io/kubetune/trainer:abc` -> `docker.io/kubetune/trainer` (digests and tags dropped)."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]
