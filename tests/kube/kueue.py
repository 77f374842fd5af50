"""A real Kueue manager for the local test cluster (issue 12), built by hack/kueue/build.sh.

    kueue = KueueManager(find_kueue(), cluster)
    kueue.start()   # CRDs installed, webhooks registered, manager ready
    ...
    kueue.stop()

It runs as a process next to the API server, like the other control-plane parts: its webhook server listens
on 127.0.0.1 with a serving certificate the cluster's CA signs here (Kueue's internal certificate management
is off), and the API server reaches it through Mutating/ValidatingWebhookConfigurations that name it by
`url` and `caBundle`. Kueue v0.17 reads its metrics certificate from the fixed path /etc/kueue/metrics/certs
when its certificate management is off, so it runs in a mount namespace of its own whose /etc is an overlay
holding that file: nothing on the host's /etc changes. Only Kueue's own kinds (kueue.x-k8s.io) are registered: no job framework is enabled,
so Kueue's pod/Job/... webhooks (failurePolicy Fail) would only block every pod of the cluster.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.kube.binaries import go_part_root
from tests.kube.harness import ClusterError, LocalCluster, wait_for
from tests.kube.pki import KeyPair, create_serving_pair
from tests.kube.processes import ManagedProcess, free_loopback_port, http_get_ok

KUEUE_ENV = "KUBETUNE_KUEUE_BIN"
KUEUE_NAMESPACE = "kueue-system"
METRICS_CERT_DIR = "kueue/metrics/certs"  # under /etc, hard-wired in Kueue's main.go
# Runs argv[3:] with an overlay on /etc (upper directory $1, work directory $2) in a private mount namespace.
OVERLAY_ETC = (
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 && exec "$@"'
)
WEBHOOK_CONFIGURATIONS = ("kubetune-test-kueue-mutating", "kubetune-test-kueue-validating")


class KueueNotFound(RuntimeError):
    """No Kueue build: the message says how to make one."""


@dataclass(frozen=True)
class KueueBuild:
    """What hack/kueue/build.sh leaves: bin/kueue, crd/*.yaml, webhook/manifests.yaml."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "kueue"

    @property
    def crd_dir(self) -> Path:
        return self.root / "crd"

    @property
    def webhook_manifest(self) -> Path:
        return self.root / "webhook" / "manifests.yaml"


def find_kueue() -> KueueBuild:
    """The Kueue build of $KUBETUNE_KUEUE_BIN (its bin directory, as build.sh prints it), else the cached one
    for the pinned version. Raises KueueNotFound naming the command that builds it."""
    root, source = go_part_root("kueue", KUEUE_ENV, KueueNotFound)
    build = KueueBuild(root)
    missing = [p for p in (build.binary, build.crd_dir, build.webhook_manifest) if not p.exists()]
    if missing:
        raise KueueNotFound(
            f"no Kueue build in {source}: {', '.join(map(str, missing))} missing; run `bash hack/kueue/build.sh` "
            f"(about 8 minutes on 2 cores) and export {KUEUE_ENV} to the directory it prints last"
        )
    return build


def webhook_configurations(manifest: Path, url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """Kueue's own webhook registrations with a `url` on the test's loopback instead of a Service, limited to
    the kueue.x-k8s.io kinds; returns the Mutating and the Validating configuration."""
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    configurations = []
    for document, name in zip(documents, WEBHOOK_CONFIGURATIONS, strict=True):
        hooks = []
        for hook in document["webhooks"]:
            if not all(rule["apiGroups"] == ["kueue.x-k8s.io"] for rule in hook["rules"]):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": base64.b64encode(ca_bundle).decode()}
            hooks.append(hook)
        configurations.append({**document, "metadata": {"name": name}, "webhooks": hooks})
    return configurations


def _configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},  # off: nothing scrapes it here
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": []},
    }


class KueueManager:
    """The Kueue manager process against `cluster`'s API server; see the module docstring."""

    def __init__(self, build: KueueBuild, cluster: LocalCluster) -> None:
        self.build = build
        self.cluster = cluster
        self.directory = cluster.workdir / "kueue"
        self.process: ManagedProcess | None = None
        self.health_port = 0
        self.startup_seconds: float | None = None  # CRDs to webhooks answering

    def start(self, timeout: float = 120) -> None:
        """Installs the CRDs, starts the manager, registers its webhooks and waits until they answer.

        Raises ClusterError (or ProcessFailed with Kueue's log tail) when Kueue does not come up.
        """
        began = time.monotonic()
        if getattr(self.cluster, "network", None) is not None:
            raise ClusterError(
                "Kueue's webhooks listen on the host's loopback: use a cluster without real nodes"
            )
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.build.crd_dir))
        for crd in sorted(self.build.crd_dir.glob("*.yaml")):
            name = yaml.safe_load(crd.read_text())["metadata"]["name"]
            self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        api = self.cluster.api_client()
        core: Any = client.CoreV1Api(api)
        if not core.list_namespace(field_selector=f"metadata.name={KUEUE_NAMESPACE}").items:
            core.create_namespace({"metadata": {"name": KUEUE_NAMESPACE}})
        self.directory.mkdir(parents=True, exist_ok=True)
        certs = self.directory / "certs"
        certs.mkdir(exist_ok=True)
        pki = getattr(self.cluster, "_pki", None)
        if pki is None:
            raise ClusterError("the cluster is not started")
        serving = create_serving_pair(certs, "serving", pki.ca, "kueue-webhook", ["localhost"], ["127.0.0.1"])
        # controller-runtime's webhook server reads tls.crt / tls.key from certDir.
        upper, work = self.directory / "etc-upper", self.directory / "etc-work"
        for target in (certs, upper / METRICS_CERT_DIR):
            target.mkdir(parents=True, exist_ok=True)
            (target / "tls.crt").write_bytes(serving.cert.read_bytes())
            (target / "tls.key").write_bytes(serving.key.read_bytes())
        work.mkdir(exist_ok=True)
        webhook_port, self.health_port = free_loopback_port(), free_loopback_port()
        config_file = self.directory / "config.yaml"
        config_file.write_text(yaml.safe_dump(_configuration(webhook_port, self.health_port, certs)))
        self.process = ManagedProcess(
            "kueue",
            [
                *("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", OVERLAY_ETC, "kueue"),
                str(upper),
                str(work),
                str(self.build.binary),
                f"--config={config_file}",
                f"--kubeconfig={self.cluster.kubeconfig}",
                # The visibility API server would need an APIService and its own port: not used here.
                "--feature-gates=VisibilityOnDemand=false",
                "--zap-log-level=2",
            ],
            self.cluster.workdir / "logs",
        )
        self.cluster.processes.append(self.process)  # stopped with the cluster, even on a crash of the test
        self.process.start()
        ready = f"http://127.0.0.1:{self.health_port}/readyz"
        self.process.wait_until(lambda: http_get_ok(ready), timeout, "ready")
        self._register_webhooks(webhook_port, pki.ca)
        self._wait_for_webhooks(timeout)
        self.startup_seconds = time.monotonic() - began

    def _register_webhooks(self, port: int, ca: KeyPair) -> None:
        admission: Any = client.AdmissionregistrationV1Api(self.cluster.api_client())
        mutating, validating = webhook_configurations(
            self.build.webhook_manifest, f"https://127.0.0.1:{port}", ca.cert.read_bytes()
        )
        for existing in WEBHOOK_CONFIGURATIONS:
            for delete in (
                admission.delete_mutating_webhook_configuration,
                admission.delete_validating_webhook_configuration,
            ):
                try:
                    delete(existing)
                except client.ApiException as error:
                    if error.status != 404:
                        raise
        admission.create_mutating_webhook_configuration(mutating)
        admission.create_validating_webhook_configuration(validating)

    def _wait_for_webhooks(self, timeout: float) -> None:
        """Until a ResourceFlavor create (dry run) passes Kueue's mutating and validating webhooks."""
        custom: Any = client.CustomObjectsApi(self.cluster.api_client())
        probe = {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}"},
        }

        def answered() -> bool:
            assert self.process is not None
            self.process.check_running()
            created = custom.create_cluster_custom_object(
                "kueue.x-k8s.io", "v1beta2", "resourceflavors", probe, dry_run="All"
            )
            # The mutating webhook adds Kueue's finalizer: proof that the call reached Kueue.
            return "kueue.x-k8s.io/resource-in-use" in (created["metadata"].get("finalizers") or [])

        wait_for(answered, timeout, "Kueue's webhooks to answer the API server")

    def log(self) -> str:
        """The tail of Kueue's log."""
        path = self.cluster.workdir / "logs" / "kueue.log"
        return path.read_text(errors="replace")[-8000:] if path.exists() else ""

    def stop(self) -> None:
        """Unregisters the webhooks (they would refuse every Kueue object) and stops the manager."""
        admission: Any = client.AdmissionregistrationV1Api(self.cluster.api_client())
        for name in WEBHOOK_CONFIGURATIONS:
            for delete in (
                admission.delete_mutating_webhook_configuration,
                admission.delete_validating_webhook_configuration,
            ):
                with contextlib.suppress(Exception):
                    delete(name)
        if self.process is not None:
            self.process.stop()
