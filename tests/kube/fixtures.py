"""pytest plugin: a real local Kubernetes cluster for the tests that need one.

Fixtures:
- `kube_cluster` (session): the running LocalCluster (or ExistingCluster, see below);
- `kube_namespace` (function): a fresh namespace, deleted after the test;
- `kubectl` (function): runs the real kubectl against the cluster, in that namespace by default;
- `kube_api` (function): an admin `kubernetes.client.ApiClient`.
- `kube_kueue` (session): a real Kueue manager in that cluster (tests/kube/kueue.py); a test that asks for it
  FAILS when Kueue cannot start or is not built, with the reason.
- `kube_peer` (session): Kubeflow Trainer's and JobSet's managers in that cluster (tests/kube/peer.py, the
  side-by-side peer of issue 14); a test that asks for them FAILS when they cannot start or are not built.

Where the binaries come from: see tests/kube/binaries.py. When none are found the tests are skipped,
unless KUBETUNE_REQUIRE_CLUSTER=1 (CI), which turns that into a failure naming what is missing.
KUBETUNE_USE_EXISTING_CLUSTER=1 uses the cluster of $KUBECONFIG instead (nothing is started then,
and tests that need KWOK nodes are skipped).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes import client, config

from tests.kube.binaries import BinariesNotFound, find_binaries
from tests.kube.harness import ClusterError, LocalCluster, run_kubectl, wait_for
from tests.kube.kubeconfig import write_service_account_kubeconfig
from tests.kube.kueue import KueueManager, KueueNotFound, find_kueue
from tests.kube.peer import PeerManagers, PeerNotFound, find_peer

REQUIRE_ENV = "KUBETUNE_REQUIRE_CLUSTER"
EXISTING_ENV = "KUBETUNE_USE_EXISTING_CLUSTER"


class Kubectl(Protocol):
    """The `kubectl` fixture: kubectl(*args, input=None, check=True, namespace=..., kubeconfig=None)."""

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        namespace: str | None = None,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]: ...


class ExistingCluster:
    """A cluster someone else runs ($KUBECONFIG); offers the parts of LocalCluster that need no KWOK."""

    has_controllers = True
    has_nodes = False
    startup_seconds = 0.0

    def __init__(self, kubeconfig: Path):
        self.kubeconfig = kubeconfig
        self._api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.server = str(self._api_client.configuration.host)
        self._tempdir = tempfile.TemporaryDirectory(prefix="kubetune-existing-")

    def api_client(self) -> client.ApiClient:
        """Returns the shared admin ApiClient."""
        return self._api_client

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Runs the kubectl on PATH; raises ClusterError on failure when `check`."""
        command = ["kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig}"]
        return run_kubectl(command, args, input=input, check=check, timeout=timeout)

    def new_api_client(self, kubeconfig: Path | None = None) -> client.ApiClient:
        """Returns a new ApiClient for `kubeconfig` (default: $KUBECONFIG); the caller closes it."""
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """Writes a kubeconfig for ServiceAccount `namespace/name` into a temp dir; returns its path."""
        ca_cert = self._api_client.configuration.ssl_ca_cert
        if not ca_cert:
            raise ClusterError(f"{self.kubeconfig} names no certificate authority for the server")
        return write_service_account_kubeconfig(
            self._api_client,
            Path(self._tempdir.name) / f"{namespace}.{name}.kubeconfig",
            namespace,
            name,
            server=self.server,
            ca_cert=Path(ca_cert),
            expiration_seconds=expiration_seconds,
        )

    def stop(self) -> None:
        """Closes the client; the cluster itself is left alone."""
        self._tempdir.cleanup()
        self._api_client.close()


def _unavailable(reason: str) -> None:
    """Fails (CI, KUBETUNE_REQUIRE_CLUSTER=1) or skips the test with `reason`."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"a real cluster is required ({REQUIRE_ENV}=1) but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Any]:
    """The session's cluster: started once, stopped at the end of the session (also on failure/Ctrl-C)."""
    if os.environ.get(EXISTING_ENV) == "1":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            _unavailable(f"{EXISTING_ENV}=1 needs KUBECONFIG")
        existing = ExistingCluster(Path(str(kubeconfig)))
        yield existing
        existing.stop()
        return
    try:
        binaries = find_binaries()
    except BinariesNotFound as error:
        _unavailable(str(error))
        return
    cluster = LocalCluster(binaries, keep_workdir=os.environ.get("KUBETUNE_KEEP_CLUSTER_DIR") == "1")
    with cluster:
        yield cluster


@pytest.fixture
def kube_api(kube_cluster: Any) -> client.ApiClient:
    """An admin ApiClient for the session's cluster."""
    api: client.ApiClient = kube_cluster.api_client()
    return api


@pytest.fixture
def kube_namespace(kube_cluster: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"kubetune.test/namespace": "true"})
        )
    )
    if kube_cluster.has_controllers:
        # Pods can be created only once the namespace's `default` ServiceAccount exists.
        wait_for(
            lambda: core.read_namespaced_service_account("default", name),
            30,
            f"{name}/default ServiceAccount",
        )
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def kubectl(kube_cluster: Any, kube_namespace: str) -> Kubectl:
    """Runs the real kubectl against the cluster; `namespace` defaults to the test's namespace."""

    def run(
        *args: str,
        input: str | None = None,
        check: bool = True,
        namespace: str | None = None,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = kube_cluster.kubectl(
            f"--namespace={namespace or kube_namespace}",
            *args,
            input=input,
            check=check,
            kubeconfig=kubeconfig,
        )
        return result

    return run


@pytest.fixture
def require_kube_nodes(kube_cluster: Any) -> None:
    """Skips (or fails under KUBETUNE_REQUIRE_CLUSTER=1) when KWOK GPU nodes are not available."""
    if not kube_cluster.has_nodes:
        _unavailable(
            "this test needs KWOK-simulated nodes and the controllers (build them with hack/cluster/build.sh)"
        )


@pytest.fixture
def require_kube_controllers(kube_cluster: Any) -> None:
    """Skips (or fails under KUBETUNE_REQUIRE_CLUSTER=1) without kube-controller-manager/kube-scheduler."""
    if not kube_cluster.has_controllers:
        _unavailable("this test needs kube-controller-manager and kube-scheduler (hack/cluster/build.sh)")


@pytest.fixture(scope="session")
def kube_kueue(kube_cluster: Any) -> Iterator[KueueManager]:
    """The real Kueue manager (CRDs, webhooks, controllers), started once for the session."""
    if not kube_cluster.has_nodes:
        pytest.fail("Kueue needs the local cluster with its controllers and KWOK nodes", pytrace=False)
    try:
        build = find_kueue()
    except KueueNotFound as error:
        pytest.fail(str(error), pytrace=False)
    manager = KueueManager(build, kube_cluster)
    manager.start()
    yield manager
    manager.stop()


@pytest.fixture(scope="session")
def kube_peer(kube_cluster: Any) -> Iterator[PeerManagers]:
    """Kubeflow Trainer v2 and JobSet (CRDs, webhooks, controllers, the kubetune-equivalent runtime), started
    once for the session."""
    if not kube_cluster.has_nodes:
        pytest.fail("the peer needs the local cluster with its controllers and KWOK nodes", pytrace=False)
    try:
        build = find_peer()
    except PeerNotFound as error:
        pytest.fail(str(error), pytrace=False)
    managers = PeerManagers(build, kube_cluster)
    managers.start()
    yield managers
    managers.stop()
