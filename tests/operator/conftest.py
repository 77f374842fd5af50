"""Fixtures for the operator's cluster tests: the CRD installed, a pool of KWOK GPU nodes, and the real
`kubetune operator` process watching the test's namespace with exactly the RBAC of OPERATOR_RULES."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubetune.controller.rbac import cluster_role

from tests.kube.harness import wait_for
from tests.kube.processes import free_loopback_port

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "crd" / "finetunejobs.kubetune.io.yaml"
POOL_LABEL = "kubetune.test/pool"
POOL = "operator"
GPUS_PER_NODE = 8
POOL_NODES = 4


class OperatorProcess:
    """`kubetune operator` as a real subprocess; restartable (kill -9) to test crash recovery."""

    def __init__(
        self,
        namespace: str,
        kubeconfig: Path,
        log_dir: Path,
        extra_args: tuple[str, ...] = ("--standalone",),
        name: str = "operator",
    ) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / f"{name}-{namespace}.log"
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.started_at = 0.0

    def start(self) -> None:
        self.metrics_port, self.health_port = free_loopback_port(), free_loopback_port()
        argv = [
            sys.executable,
            "-m",
            "kubetune.cli",
            "operator",
            "--namespace",
            self.namespace,
            "--backoff-seconds",
            "1",
            "--child-retry-seconds",
            "1",
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--log-format",
            "plain",
            "--image",
            "kubetune/trainer:test",
            *self.extra_args,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started_at = time.monotonic()
        wait_for(self.healthy, 30, "the operator's liveness endpoint")

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as answer:
            text: str = answer.read().decode()
            return text

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def finetunejob_crd(kube_cluster: Any) -> None:
    """The generated CRD, installed and Established."""
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    established = ("wait", "--for=condition=Established", "--timeout=30s", "crd/finetunejobs.kubetune.io")
    # (kubectl wait errors out while a brand-new CRD has no conditions at all yet)
    wait_for(
        lambda: kube_cluster.kubectl(*established, check=False).returncode == 0, 60, "the CRD Established"
    )


@pytest.fixture(scope="session")
def gpu_pool(kube_cluster: Any) -> list[str]:
    """KWOK nodes with 8 nvidia.com/gpu each, labelled for the operator tests' jobs only."""
    if not kube_cluster.has_nodes:
        pytest.skip("needs KWOK nodes")
    names: list[str] = kube_cluster.add_gpu_nodes(POOL_NODES, gpus=GPUS_PER_NODE, labels={POOL_LABEL: POOL})
    kube_cluster.wait_for_nodes_ready()
    return names


@contextlib.contextmanager
def operator_account(
    kube_cluster: Any, namespace: str, kueue: bool = False, coscheduling: bool = False
) -> Iterator[Path]:
    """A ServiceAccount `kubetune-operator` in `namespace` holding exactly OPERATOR_RULES (plus KUEUE_RULES
    with `kueue`, COSCHEDULING_RULES with `coscheduling`), cluster-wide like the chart; yields a kubeconfig
    for it, removes its rights afterwards."""
    api = kube_cluster.api_client()
    core: Any = client.CoreV1Api(api)  # (dict bodies: the client serialises them as they are)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "kubetune-operator"}})
    role_name = f"kubetune-operator-{namespace}"
    rbac.create_cluster_role(cluster_role(role_name, kueue=kueue, coscheduling=coscheduling))
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": namespace}],
        }
    )
    try:
        yield kube_cluster.kubeconfig_for_service_account(namespace, "kubetune-operator")
    finally:
        rbac.delete_cluster_role_binding(role_name)
        rbac.delete_cluster_role(role_name)


@pytest.fixture
def operator_kubeconfig(kube_cluster: Any, kube_namespace: str) -> Iterator[Path]:
    """A kubeconfig for a ServiceAccount holding exactly OPERATOR_RULES (cluster-wide, like the chart)."""
    with operator_account(kube_cluster, kube_namespace) as kubeconfig:
        yield kubeconfig


@pytest.fixture
def operator(
    kube_cluster: Any,
    kube_namespace: str,
    finetunejob_crd: None,
    gpu_pool: list[str],
    operator_kubeconfig: Path,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """`kubetune operator --namespace <test namespace>` running as the least-privilege ServiceAccount."""
    with running(OperatorProcess(kube_namespace, operator_kubeconfig, tmp_path)) as process:
        yield process


@contextlib.contextmanager
def running(process: OperatorProcess) -> Iterator[OperatorProcess]:
    """Starts `process`; stops it on exit, printing the end of its log when it holds a traceback."""
    process.start()
    try:
        yield process
    finally:
        process.stop()
        log = process.log()
        if "Traceback" in log:
            print(f"--- operator log ---\n{log[-6000:]}")


def job_manifest(name: str, nodes: int = 2, processes: int = 1, **spec: Any) -> str:
    """A FineTuneJob for the GPU pool, as YAML for kubectl apply."""
    document: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "prajjwal1/bert-tiny"},
            "dataset": {"name": "glue", "config": "sst2", "textFields": ["sentence"]},
            "distribution": {"nodes": nodes, "processesPerNode": processes},
            # Workers on KWOK nodes run nothing and write no output: their emptyDirs are accepted knowingly.
            "output": {"ephemeral": True},
            "kubernetes": {"nodeSelector": {POOL_LABEL: POOL}},
        },
    }
    for key, value in spec.items():
        document["spec"][key] = value
    return yaml.safe_dump(document, sort_keys=False)
