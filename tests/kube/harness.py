"""A real, local Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK-simulated GPU nodes, all on 127.0.0.1 -- and, on request, real nodes.

    with LocalCluster(gpu_nodes=2, gpus_per_node=8) as cluster:
        cluster.kubectl("get", "nodes")
        pod = cluster.complete_pod("default", "worker-0", exit_code=1, message="CUDA out of memory")

Everything runs from one temporary directory (certificates, etcd data, kubeconfigs, logs) on free
loopback ports, so several clusters can run side by side; `stop()` (or leaving the `with` block, also
through an exception or Ctrl-C) stops every process and removes the directory.

`LocalCluster(real_nodes=2)` adds real nodes (kubelet + containerd + runc + kube-proxy, a pod network and
CoreDNS) beside the KWOK ones. The control plane then runs inside a network namespace of the cluster's
own (the hub), reached from the host through a loopback forwarder; see tests/kube/netns.py for the
topology and tests/kube/real_node.py for a node. Without real nodes nothing changes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from kubernetes import client, config

from tests.kube import coredns, host_cleanup
from tests.kube.binaries import ClusterBinaries, cache_root, find_binaries
from tests.kube.containerd import CachedRoot
from tests.kube.forwarder import NamespaceForwarder
from tests.kube.kubeconfig import write_kubeconfig, write_service_account_kubeconfig
from tests.kube.netns import ClusterNetwork, call_in_namespace, in_namespace, remove_stale_namespaces
from tests.kube.node_binaries import find_node_bin_dir
from tests.kube.node_images import pause_image
from tests.kube.pki import ClusterPKI, create_client_pair, create_cluster_pki
from tests.kube.processes import ManagedProcess, ProcessFailed, free_loopback_port, http_get_ok, https_get_ok
from tests.kube.real_node import RealNode

KWOK_STAGES = Path(__file__).with_name("kwok-stages.yaml")
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
GPU_RESOURCE = "nvidia.com/gpu"
# KWOK manages the nodes that carry this annotation, and only those.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# The annotations read by the `pod-complete-on-request` stage in kwok-stages.yaml.
COMPLETE_ANNOTATION_PREFIX = "pod-complete.stage.kubetune.test/"
START_TIMEOUT_SECONDS = 120.0
WORKDIR_PREFIX = "kubetune-cluster-"
PORT_RACE_ATTEMPTS = 3
# Holds the pid of the Python process that owns a work directory (see remove_stale_workdirs).
OWNER_FILE = "owner.pid"
# With real nodes the API server listens inside the hub namespace, where every port is ours.
HUB_APISERVER_PORT = 6443
REAL_NODE_PREFIX = "real-"
# How long a Node may miss heartbeats before the node controller marks it NotReady (default 50 s).
NODE_MONITOR_GRACE_PERIOD = "20s"

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster could not start, or a requested state was not reached in time."""


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Polls `condition` until it returns something truthy, and returns that.

    Raises ClusterError naming `what` after `timeout` seconds; exceptions from `condition` count as
    "not yet" (the API may briefly refuse while it starts) and the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def remove_stale_workdirs() -> list[Path]:
    """Removes the work directories of clusters whose owning process is gone; returns them.

    A harness killed with SIGKILL takes its cluster's processes with it (parent-death signal) but
    cannot remove its directory; the next start does. Directories of live owners, kept ones
    (`keep_workdir`, which removes the owner file) and foreign ones are left alone.
    """
    removed = []
    for candidate in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((candidate / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being created, kept, or not ours
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            # Real nodes leave shims, mounts (pod volumes, sandboxes' namespaces) under the directory.
            host_cleanup.kill_processes_with_argument_under(candidate)
            host_cleanup.unmount_under(candidate)
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        except PermissionError:
            pass  # alive, someone else's
    return removed


def run_kubectl(
    command: Sequence[str], args: Sequence[str], *, input: str | None, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Runs `command` (kubectl and its connection flags) with `args`. Returns the completed process (text
    stdout/stderr); raises ClusterError with kubectl's stderr when it fails and `check` is true."""
    result = subprocess.run(
        [*command, *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


class LocalCluster:
    """A local control plane plus simulated GPU nodes; see the module docstring.

    With binaries that lack the controller-manager/scheduler (envtest's KUBEBUILDER_ASSETS) only etcd
    and the API server run: check `has_controllers` and `has_nodes`.
    """

    def __init__(
        self,
        binaries: ClusterBinaries | None = None,
        *,
        gpu_nodes: int = 2,
        gpus_per_node: int = 8,
        workdir: Path | None = None,
        keep_workdir: bool = False,
        apiserver_args: Sequence[str] = (),
        real_nodes: int = 0,
        node_bin_dir: Path | None = None,
        cache_node_images: bool = False,
        taint_gpu_nodes: bool = False,
    ):
        self.binaries = binaries or find_binaries()
        self.initial_gpu_nodes = gpu_nodes
        self.gpus_per_node = gpus_per_node
        self._own_workdir = workdir is None
        if workdir is None:
            remove_stale_workdirs()
            remove_stale_namespaces()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.keep_workdir = keep_workdir
        self.apiserver_args = list(apiserver_args)  # extra flags, e.g. an audit log for a benchmark
        # As on GKE: GPU nodes carry the taint nvidia.com/gpu=present:NoSchedule, and the
        # ExtendedResourceToleration admission plugin gives pods that request GPUs the matching toleration,
        # so CPU-only pods (e.g. on real nodes) never land on a simulated GPU node.
        self.taint_gpu_nodes = taint_gpu_nodes
        if taint_gpu_nodes:
            self.apiserver_args.append("--enable-admission-plugins=ExtendedResourceToleration")
        self.processes: list[ManagedProcess] = []
        self.server = ""
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.startup_seconds: float | None = None
        self._pki: ClusterPKI | None = None
        self._api_client: client.ApiClient | None = None
        self._node_count = 0
        self.real_node_count = real_nodes
        self._node_bin_dir = node_bin_dir
        self.network: ClusterNetwork | None = None
        self.real_nodes: list[RealNode] = []
        # Keep each real node's containerd root (images) in $KUBETUNE_CACHE/nodes/containerd between runs.
        self.cache_node_images = cache_node_images
        self._cached_roots: list[CachedRoot] = []
        self._forwarder: NamespaceForwarder | None = None
        # The API server's address as the cluster's own components see it (the hub address with real
        # nodes; the same as `server` without).
        self.internal_server = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def has_controllers(self) -> bool:
        """True when kube-controller-manager and kube-scheduler run (garbage collection, Jobs, binding)."""
        return self.binaries.has_controllers

    @property
    def has_nodes(self) -> bool:
        """True when KWOK runs the fake GPU nodes, so scheduled pods become Running."""
        return self.binaries.has_nodes

    def start(self) -> None:
        """Starts every process and waits until the cluster can run pods.

        Raises ClusterError or ProcessFailed (with the failing process's log tail); on any failure,
        including KeyboardInterrupt, whatever was started is stopped again first.
        """
        began = time.monotonic()
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            try:
                self._start()
                break
            except ProcessFailed as error:
                self._stop_real_nodes()
                self._stop_processes()
                self._delete_network()
                # A free port is picked, released and only then bound by the binary; another process
                # may take it in between. Rare, harmless, and worth a fresh try.
                if "address already in use" not in str(error) or attempt == PORT_RACE_ATTEMPTS:
                    self.stop()
                    raise
                for entry in self.workdir.iterdir():
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            except BaseException:
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - began

    def _start(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
        if self.real_node_count:
            # Checked first: a missing kubelet or containerd fails in a second, not after the control plane.
            self._node_bin_dir = self._node_bin_dir or find_node_bin_dir()
            self.network = ClusterNetwork()
            self.network.create()
        extra_ips = (self.network.hub_ip,) if self.network else ()
        self._pki = pki = create_cluster_pki(self.workdir / "pki", extra_apiserver_ips=extra_ips)
        etcd_url = self._start_etcd()
        self._start_apiserver(etcd_url, pki)
        kubeconfigs = {
            name: write_kubeconfig(
                self.workdir / f"{name}.kubeconfig",
                server=self.internal_server,
                ca_cert=pki.ca.cert,
                user=user,
                client_cert=pair.cert,
                client_key=pair.key,
            )
            for name, user, pair in (
                ("controller-manager", "system:kube-controller-manager", pki.controller_manager),
                ("scheduler", "system:kube-scheduler", pki.scheduler),
                ("kwok", "kwok-controller", pki.kwok),
            )
        }
        if not self.has_controllers:
            return
        # The rest starts in parallel: each only needs the API server.
        controller_manager = self._start_controller_manager(kubeconfigs["controller-manager"], pki)
        scheduler = self._start_scheduler(kubeconfigs["scheduler"])
        if self.has_nodes:
            self._start_kwok(kubeconfigs["kwok"])
            if self.initial_gpu_nodes:
                self.add_gpu_nodes(self.initial_gpu_nodes, self.gpus_per_node)
        for process in (controller_manager, scheduler):
            healthy = functools.partial(https_get_ok, self._health_url(process), _insecure())
            process.wait_until(functools.partial(self._probe, healthy), 60, "healthy")
        # Pods can be created once the service-account controller has made the namespace's `default`
        # ServiceAccount (the ServiceAccount admission plugin requires it).
        core = client.CoreV1Api(self.api_client())
        wait_for(
            lambda: core.read_namespaced_service_account("default", "default"),
            START_TIMEOUT_SECONDS,
            "the default ServiceAccount (kube-controller-manager)",
        )
        if self.has_nodes and self.initial_gpu_nodes:
            self.wait_for_nodes_ready()
        if self.real_node_count:
            self._start_cluster_dns(pki)
            self.add_real_nodes(self.real_node_count)

    def stop(self) -> None:
        """Stops every started process (newest first) and removes the work directory unless kept."""
        self._stop_real_nodes()
        self._stop_processes()
        self._delete_network()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            # Kept for inspection: no longer a candidate for remove_stale_workdirs.
            (self.workdir / OWNER_FILE).unlink(missing_ok=True)

    def _stop_real_nodes(self) -> None:
        for node in reversed(self.real_nodes):
            node.stop()
        self.real_nodes.clear()
        for root in self._cached_roots:
            root.release()
        self._cached_roots.clear()

    def _delete_network(self) -> None:
        """Closes the API forwarder and deletes the cluster's network namespaces (real nodes only)."""
        if self._forwarder is not None:
            self._forwarder.close()
            self._forwarder = None
        if self.network is not None:
            self.network.delete()
            self.network = None

    def _stop_processes(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()
        self.processes.clear()
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()
            self._api_client = None

    def check_running(self) -> None:
        """Raises ProcessFailed when any cluster process has exited."""
        for process in self.processes:
            process.check_running()

    # -- processes -------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> ManagedProcess:
        if self.network is not None:
            argv = in_namespace(self.network.hub, list(argv))
        process = ManagedProcess(name, argv, self.workdir / "logs", env=env)
        self.processes.append(process)
        process.start()
        return process

    def _start_etcd(self) -> str:
        client_port, peer_port = free_loopback_port(), free_loopback_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.binaries.path("etcd")),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # A throw-away test store: durability buys nothing and fsync costs seconds.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        etcd.wait_until(lambda: self._probe(lambda: http_get_ok(f"{client_url}/health")), 30, "healthy")
        return client_url

    def _start_apiserver(self, etcd_url: str, pki: ClusterPKI) -> None:
        if self.network is None:
            port = free_loopback_port()
            self.server = self.internal_server = f"https://127.0.0.1:{port}"
            network_args = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The `kubernetes` Service would get 127.0.0.1 as its endpoint, which the Endpoints
                # validation rejects; nothing here reaches the API server through that Service.
                "--endpoint-reconciler-type=none",
            ]
        else:
            port = HUB_APISERVER_PORT
            hub_ip = self.network.hub_ip
            self.internal_server = f"https://{hub_ip}:{port}"
            self._forwarder = NamespaceForwarder(self.network.hub, hub_ip, port)
            self._forwarder.start()
            self.server = f"https://127.0.0.1:{self._forwarder.port}"
            kubelet_client = create_client_pair(
                self.workdir / "pki", "apiserver-kubelet-client", pki.ca, "kube-apiserver-kubelet-client"
            )
            network_args = [
                # All addresses of the hub namespace: its loopback and the bridge the nodes reach.
                "--bind-address=0.0.0.0",
                # The `kubernetes` Service's endpoint, which pods reach through kube-proxy.
                f"--advertise-address={hub_ip}",
                # For `kubectl logs/exec`: the API server calls the kubelets on their node addresses.
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.path("kube-apiserver")),
                f"--etcd-servers={etcd_url}",
                *network_args,
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                *self.apiserver_args,
            ],
        )
        self.kubeconfig = write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_cert=pki.ca.cert,
            user="kubetune-admin",
            client_cert=pki.admin.cert,
            client_key=pki.admin.key,
        )
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        context.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        apiserver.wait_until(lambda: https_get_ok(f"{self.server}/readyz", context), 90, "ready")

    def _start_controller_manager(self, kubeconfig: Path, pki: ClusterPKI) -> ManagedProcess:
        return self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.path("kube-controller-manager")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_loopback_port()}",
                f"--cert-dir={self.workdir / 'controller-manager'}",
                # One instance: leader election would only add the lease round-trip to the start-up.
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount, as on a real cluster, so RBAC applies.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--controllers=*",
                # The default client rate limit (20/s) spreads the start of ~40 controllers, each
                # fetching its own ServiceAccount token, over several seconds.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--profiling=false",
                *(
                    [f"--node-monitor-grace-period={NODE_MONITOR_GRACE_PERIOD}", "--node-monitor-period=2s"]
                    if self.network
                    else []
                ),
            ],
        )

    def _start_scheduler(self, kubeconfig: Path) -> ManagedProcess:
        return self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.path("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_loopback_port()}",
                f"--cert-dir={self.workdir / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _start_kwok(self, kubeconfig: Path) -> ManagedProcess:
        key, value = KWOK_NODE_ANNOTATION
        # KWOK also reads ~/.kwok/kwok.yaml when it exists; a private HOME keeps a developer's own
        # KWOK configuration out of the tests.
        env = {**os.environ, "HOME": str(self.workdir / "kwok-home")}
        return self._spawn(
            "kwok",
            [
                str(self.binaries.path("kwok")),
                f"--kubeconfig={kubeconfig}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={key}={value}",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
                # No --server-address/--node-port: KWOK then opens no port at all.
            ],
            env=env,
        )

    def _probe(self, check: Callable[[], T]) -> T:
        """Runs a readiness check where the cluster's processes listen: the hub namespace, or right here."""
        if self.network is None:
            return check()
        return call_in_namespace(self.network.hub, check)

    @staticmethod
    def _health_url(process: ManagedProcess) -> str:
        port = next(arg.split("=", 1)[1] for arg in process.argv if arg.startswith("--secure-port="))
        return f"https://127.0.0.1:{port}/healthz"

    # -- clients ---------------------------------------------------------------------------------

    def api_client(self) -> client.ApiClient:
        """Returns a shared admin `kubernetes.client.ApiClient` for this cluster."""
        if self._api_client is None:
            self._api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api_client

    def new_api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """Returns a new ApiClient for `kubeconfig` (default: admin); the caller closes it."""
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the real kubectl against this cluster (admin unless `kubeconfig` is given).

        Returns the completed process (text stdout/stderr). Raises ClusterError with kubectl's
        stderr when it fails and `check` is true.
        """
        command = [
            str(self.binaries.path("kubectl")),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            # Discovery cache next to the cluster rather than in the user's ~/.kube.
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
        ]
        return run_kubectl(command, args, input=input, check=check, timeout=timeout)

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """Writes a kubeconfig that authenticates as ServiceAccount `namespace/name`; returns its path.

        See tests.kube.kubeconfig.write_service_account_kubeconfig (TokenRequest API; raises
        kubernetes.client.ApiException when the ServiceAccount does not exist).
        """
        assert self._pki is not None, "the cluster is not started"
        return write_service_account_kubeconfig(
            self.api_client(),
            self.workdir / "service-accounts" / f"{namespace}.{name}.kubeconfig",
            namespace,
            name,
            server=self.server,
            ca_cert=self._pki.ca.cert,
            expiration_seconds=expiration_seconds,
        )

    # -- simulated GPU nodes ---------------------------------------------------------------------

    def add_gpu_nodes(
        self,
        count: int,
        gpus: int,
        *,
        labels: dict[str, str] | None = None,
        cpu: str = "32",
        memory: str = "256Gi",
    ) -> list[str]:
        """Creates `count` KWOK nodes advertising `gpus` nvidia.com/gpu each; returns their names.

        They become Ready within a second or two (see `wait_for_nodes_ready`). Raises ClusterError
        when KWOK is not available.
        """
        if not self.has_nodes:
            raise ClusterError(f"simulated nodes need kwok and the controllers in {self.binaries.bin_dir}")
        core = client.CoreV1Api(self.api_client())
        names = []
        for _ in range(count):
            self._node_count += 1
            name = f"kwok-gpu-{self._node_count}"
            resources = {"cpu": cpu, "memory": memory, "pods": "110", GPU_RESOURCE: str(gpus)}
            internal_ip = f"10.0.{self._node_count // 250}.{self._node_count % 250 + 1}"
            status = client.V1NodeStatus(
                capacity=resources,
                allocatable=resources,
                addresses=[
                    client.V1NodeAddress(type="InternalIP", address=internal_ip),
                    client.V1NodeAddress(type="Hostname", address=name),
                ],
            )
            node = client.V1Node(
                metadata=client.V1ObjectMeta(
                    name=name,
                    annotations={KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                    labels={
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        "nvidia.com/gpu.present": "true",
                        "nvidia.com/gpu.count": str(gpus),
                        **(labels or {}),
                    },
                ),
                status=status,
                spec=client.V1NodeSpec(
                    taints=[client.V1Taint(key=GPU_RESOURCE, value="present", effect="NoSchedule")]
                    if self.taint_gpu_nodes
                    else None
                ),
            )
            created = core.create_node(node)
            # The API server keeps the status a Node is created with; patch it if a version does not.
            if created.status is None or GPU_RESOURCE not in (created.status.capacity or {}):
                core.patch_node_status(
                    name, {"status": client.ApiClient().sanitize_for_serialization(status)}
                )
            names.append(name)
        return names

    def wait_for_nodes_ready(self, timeout: float = 60) -> list[str]:
        """Waits until every KWOK node is Ready; returns their names. Raises ClusterError on timeout."""
        core = client.CoreV1Api(self.api_client())
        selector = "type=kwok"

        def all_ready() -> list[str] | None:
            nodes = core.list_node(label_selector=selector).items
            ready = [
                str(n.metadata.name if n.metadata else "")
                for n in nodes
                if n.status
                and any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            ]
            return ready if nodes and len(ready) == len(nodes) else None

        return wait_for(all_ready, timeout, "KWOK nodes to become Ready")

    # -- real nodes ------------------------------------------------------------------------------

    def _start_cluster_dns(self, pki: ClusterPKI) -> None:
        """Starts CoreDNS in the hub namespace behind the `kube-system/kube-dns` Service (tests/kube/coredns.py)."""
        assert self.network is not None and self._node_bin_dir is not None
        api = self.api_client()
        coredns.grant_coredns_rights(api)
        coredns.create_kube_dns_service(api, self.network.hub_ip)
        directory = self.workdir / "coredns"
        directory.mkdir(exist_ok=True)
        credentials = create_client_pair(directory, "client", pki.ca, coredns.COREDNS_USER)
        kubeconfig = write_kubeconfig(
            directory / "kubeconfig",
            server=self.internal_server,
            ca_cert=pki.ca.cert,
            user=coredns.COREDNS_USER,
            client_cert=credentials.cert,
            client_key=credentials.key,
        )
        corefile = coredns.write_corefile(directory, self.network.hub_ip, kubeconfig)
        process = self._spawn("coredns", coredns.coredns_argv(self._node_bin_dir / "coredns", corefile))
        health = f"http://{self.network.hub_ip}:{coredns.HEALTH_PORT}/health"
        process.wait_until(lambda: self._probe(lambda: http_get_ok(health)), 60, "healthy")

    def add_real_nodes(self, count: int, timeout: float = 120) -> list[RealNode]:
        """Starts `count` more real nodes (`real-1`, `real-2`, ...) and waits until they are Ready.

        Returns them. Raises ClusterError when the cluster was not started with real nodes, and
        ProcessFailed/ClusterError (with the kubelet's or containerd's log tail) when a node does not come up.
        """
        if self.network is None or self._pki is None or self._node_bin_dir is None:
            raise ClusterError("real nodes need a cluster started with LocalCluster(real_nodes=N), N >= 1")
        sandbox = pause_image()
        added = []
        for _ in range(count):
            network = self.network.add_node()
            name = f"{REAL_NODE_PREFIX}{network.index}"
            containerd_root = None
            if self.cache_node_images:
                cached = CachedRoot(cache_root() / "nodes" / "containerd", name)
                self._cached_roots.append(cached)
                containerd_root = cached.path
            node = RealNode(
                name,
                self.workdir / "nodes" / name,
                network,
                self._node_bin_dir,
                self._pki,
                self.internal_server,
                sandbox,
                containerd_root,
            )
            self.real_nodes.append(node)
            node.start()
            added.append(node)
        self.wait_for_real_nodes_ready([node.name for node in added], timeout)
        return added

    def real_node(self, name: str) -> RealNode:
        """Returns real node `name`; raises KeyError when there is none."""
        for node in self.real_nodes:
            if node.name == name:
                return node
        raise KeyError(f"no real node {name!r}; the cluster has {[n.name for n in self.real_nodes]}")

    def load_image(self, archive: Path, ref: str | None = None) -> dict[str, float]:
        """Imports an image archive (docker-archive or OCI tar) into every running real node's runtime; returns
        the seconds each node took (0 where it already had this archive, see `RealNode.load_image`).

        Nodes import one after the other: a node holds the layer blobs and their unpacked snapshots at once
        only until it discards the blobs, so the disk peak is one image more than the result, not one per node.
        A hard link holds the archive meanwhile: a build of other sources (another checkout sharing the cache)
        deletes the tars of older keys. Raises ClusterError without real nodes, ContainerdError when an
        import fails.
        """
        if not self.real_nodes:
            raise ClusterError("load_image needs real nodes: LocalCluster(real_nodes=N)")
        held_dir = self.workdir / "held-images"
        held_dir.mkdir(exist_ok=True)
        held = held_dir / archive.name
        if not held.exists():
            os.link(archive, held)
        try:
            return {
                node.name: round(node.load_image(held, ref), 1) for node in self.real_nodes if node.running
            }
        finally:
            held.unlink(missing_ok=True)

    def add_local_persistent_volume(
        self, name: str, node: str, *, capacity: str = "1Gi", storage_class: str = "local"
    ) -> Path:
        """Creates PersistentVolume `name`: a `local` volume on real node `node` (a directory under the
        cluster's folder, writable by any uid), with the node affinity that pins its pods there.

        It outlives the pods that use it (e.g. a checkpoint across a suspend and resume). Returns the
        directory. Raises KeyError for an unknown node.
        """
        self.real_node(node)
        directory = self.workdir / "volumes" / name
        directory.mkdir(parents=True)
        directory.chmod(0o777)  # pods run as non-root users
        affinity = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
        volume: Any = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": capacity},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": storage_class,
                "local": {"path": str(directory)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [affinity]}]}},
            },
        }
        client.CoreV1Api(self.api_client()).create_persistent_volume(volume)
        return directory

    def node_condition(self, name: str, condition: str = "Ready") -> str | None:
        """Returns the status ("True", "False", "Unknown") of Node `name`'s `condition`, None when absent."""
        node = client.CoreV1Api(self.api_client()).read_node(name)
        for item in (node.status.conditions if node.status else None) or []:
            if item.type == condition:
                return str(item.status)
        return None

    def wait_for_real_nodes_ready(self, names: Sequence[str] | None = None, timeout: float = 120) -> None:
        """Waits until the real nodes `names` (default: all) report Ready. Raises ClusterError on timeout,
        or ProcessFailed when one of their processes exits meanwhile."""
        nodes = [n for n in self.real_nodes if names is None or n.name in names]

        def all_ready() -> bool:
            for node in nodes:
                for process in node.processes:
                    process.check_running()
            return all(self.node_condition(node.name) == "True" for node in nodes)

        wait_for(all_ready, timeout, f"real nodes {[n.name for n in nodes]} to become Ready", interval=0.5)

    # -- pods ------------------------------------------------------------------------------------

    def wait_for_pod_phase(
        self, namespace: str, name: str, phases: Sequence[str], timeout: float = 60
    ) -> Any:
        """Waits until pod `namespace/name` is in one of `phases`; returns the V1Pod. Raises ClusterError."""
        core = client.CoreV1Api(self.api_client())

        def in_phase() -> Any:
            pod = core.read_namespaced_pod(name, namespace)
            return pod if pod.status and pod.status.phase in phases else None

        return wait_for(in_phase, timeout, f"pod {namespace}/{name} to be {' or '.join(phases)}")

    def complete_pod(
        self,
        namespace: str,
        name: str,
        exit_code: int = 0,
        message: str = "",
        reason: str | None = None,
        timeout: float = 60,
    ) -> Any:
        """Ends a Running pod on a KWOK node as its kubelet would; returns the terminal V1Pod.

        Exit code 0 gives phase Succeeded (reason `Completed`), anything else Failed (reason `Error`
        unless `reason` says otherwise, e.g. `OOMKilled`); every container gets a `terminated` state
        with the exit code, reason and `message` as its termination message. Waits for the pod to
        be Running first. Raises ClusterError on timeout.
        """
        phase = "Succeeded" if exit_code == 0 else "Failed"
        self.wait_for_pod_phase(namespace, name, ["Running"], timeout)
        annotations = {
            f"{COMPLETE_ANNOTATION_PREFIX}phase": phase,
            f"{COMPLETE_ANNOTATION_PREFIX}exit-code": str(exit_code),
            f"{COMPLETE_ANNOTATION_PREFIX}reason": reason or ("Completed" if exit_code == 0 else "Error"),
            f"{COMPLETE_ANNOTATION_PREFIX}message": message,
        }
        core = client.CoreV1Api(self.api_client())
        core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})
        return self.wait_for_pod_phase(namespace, name, [phase], timeout)


def _insecure() -> ssl.SSLContext:
    """A TLS context for the components' own self-signed /healthz endpoints (loopback only)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


__all__ = ["ClusterError", "LocalCluster", "ProcessFailed", "wait_for"]
