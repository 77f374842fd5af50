"""Kubeflow Trainer v2 and JobSet, the side-by-side peer of issue 14, against the local test cluster.

    peer = PeerManagers(find_peer(), cluster)
    peer.start()    # CRDs installed, both managers ready, webhooks registered and answering, runtime applied
    ...
    peer.stop()

Built by hack/peer/build.sh (Trainer's `trainer-controller-manager`, JobSet's controller manager, their CRDs and
webhook registrations). Each manager runs as a process next to the API server, like the other control-plane
parts, under a ServiceAccount of its own bound to cluster-admin (so that the API server's audit log tells its
requests apart from everyone else's), with leader election off and metrics off.

Webhooks run, as in a real installation: both projects' internal certificate management is off, the harness
signs one serving certificate for 127.0.0.1 with the cluster's CA, and each manager serves its webhooks on a
free loopback port (controller-runtime reads tls.crt/tls.key from `$TMPDIR/k8s-webhook-server/serving-certs`
when no directory is configured, which is how Trainer is given them; JobSet takes `webhook.certDir`). The
registrations are the projects' own manifests with `url` + `caBundle` instead of a Service; JobSet's pod hooks
get the objectSelector (`jobset.sigs.k8s.io/jobset-name` exists) its kustomize patches add, so they never see
other pods.

The ClusterTrainingRuntime RUNTIME is the peer's equivalent of a kubetune job: torch distributed, N nodes
(the TrainJob says how many), one process per node, one GPU per node (`nvidia.com/gpu`, on the KWOK GPU nodes).
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.kube.binaries import go_part_root
from tests.kube.harness import ClusterError, LocalCluster, wait_for
from tests.kube.pki import create_serving_pair
from tests.kube.processes import ManagedProcess, free_loopback_port, http_get_ok

PEER_ENV = "KUBETUNE_PEER_BIN"
SERVICE_ACCOUNT_NAMESPACE = "kube-system"
TRAINER = "trainer-controller-manager"
JOBSET = "jobset-controller-manager"
RUNTIME = "kubetune-equivalent-torch"
TRAINER_API = ("trainer.kubeflow.org", "v1alpha1")
WEBHOOK_PREFIX = "kubetune-test-peer"
# A label every pod of a TrainJob carries (JobSet puts it on its Jobs' pod templates): the TrainJob's name.
POD_JOB_LABEL = "jobset.sigs.k8s.io/jobset-name"
# What the runtime's node containers run: nothing on KWOK, the image is never pulled.
NODE_IMAGE = "kubetune-peer/torch:never-pulled"


class PeerNotFound(RuntimeError):
    """No peer build: the message says how to make one."""


@dataclass(frozen=True)
class PeerBuild:
    """What hack/peer/build.sh leaves: bin/{trainer,jobset}-controller-manager, crd/*.yaml, webhook/*.yaml."""

    root: Path

    def binary(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def crd_dir(self) -> Path:
        return self.root / "crd"

    def webhook_manifest(self, project: str) -> Path:
        return self.root / "webhook" / f"{project}.yaml"


def find_peer() -> PeerBuild:
    """The peer build of $KUBETUNE_PEER_BIN (its bin directory, as build.sh prints it), else the cached one for
    the pinned versions. Raises PeerNotFound naming the command that builds it."""
    root, source = go_part_root("peer", PEER_ENV, PeerNotFound)
    build = PeerBuild(root)
    wanted = [
        build.binary(TRAINER),
        build.binary(JOBSET),
        build.crd_dir,
        build.webhook_manifest("trainer"),
        build.webhook_manifest("jobset"),
    ]
    missing = [p for p in wanted if not p.exists()]
    if missing:
        raise PeerNotFound(
            f"no Kubeflow Trainer/JobSet build in {source}: {', '.join(map(str, missing))} missing; run "
            f"`bash hack/peer/build.sh` and export {PEER_ENV} to the directory it prints last"
        )
    return build


def runtime(gpus_per_node: int = 1) -> dict[str, Any]:
    """The ClusterTrainingRuntime equivalent to a kubetune job: torch, N nodes, 1 process per node, GPUs.

    Trainer's stock `torch-distributed` with the node container given a GPU request (and the CPU/memory
    request kubetune's benchmark jobs make), and numProcPerNode 1 instead of "auto"."""
    return {
        "apiVersion": "/".join(TRAINER_API),
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": RUNTIME, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": 1}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {
                                    "labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
                                },
                                "spec": {
                                    "template": {
                                        "spec": {
                                            "containers": [
                                                {
                                                    "name": "node",
                                                    "image": NODE_IMAGE,
                                                    "resources": {
                                                        "requests": {"cpu": "100m", "memory": "128Mi"},
                                                        "limits": {"nvidia.com/gpu": gpus_per_node},
                                                    },
                                                }
                                            ]
                                        }
                                    }
                                },
                            },
                        }
                    ]
                }
            },
        },
    }


def train_job(name: str, nodes: int) -> dict[str, Any]:
    """A TrainJob of `nodes` nodes on RUNTIME (one process and one GPU per node)."""
    return {
        "apiVersion": "/".join(TRAINER_API),
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {
            "runtimeRef": {"name": RUNTIME, "kind": "ClusterTrainingRuntime", "apiGroup": TRAINER_API[0]},
            "trainer": {"numNodes": nodes, "command": ["torchrun", "train.py"]},
        },
    }


def webhook_configurations(manifest: Path, url: str, ca_bundle: bytes, prefix: str) -> list[dict[str, Any]]:
    """A project's webhook registrations with a `url` on the test's loopback instead of a Service; pod hooks
    limited to JobSet's pods. Returns one configuration per document of `manifest`, named `prefix-<kind>`."""
    configurations = []
    for document in (d for d in yaml.safe_load_all(manifest.read_text()) if d):
        for hook in document["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": base64.b64encode(ca_bundle).decode()}
            if any("pods" in rule["resources"] for rule in hook["rules"]):
                hook["objectSelector"] = {"matchExpressions": [{"key": POD_JOB_LABEL, "operator": "Exists"}]}
        name = f"{prefix}-{document['kind'].removesuffix('WebhookConfiguration').lower()}"
        configurations.append({**document, "metadata": {"name": name}})
    return configurations


def _trainer_configuration(webhook_port: int, health_port: int) -> dict[str, Any]:
    """Trainer's shipped manager configuration (manifests/base/manager), with loopback ports, no leader
    election, no metrics and no certificate management."""
    return {
        "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
        "kind": "Configuration",
        "health": {
            "healthProbeBindAddress": f"127.0.0.1:{health_port}",
            "readinessEndpointName": "readyz",
            "livenessEndpointName": "healthz",
        },
        "metrics": {"bindAddress": "0", "secureServing": False},
        "webhook": {"port": webhook_port, "host": "127.0.0.1"},
        "leaderElection": {"leaderElect": False},
        "controller": {
            "groupKindConcurrency": {
                "TrainJob.trainer.kubeflow.org": 5,
                "TrainingRuntime.trainer.kubeflow.org": 1,
                "ClusterTrainingRuntime.trainer.kubeflow.org": 1,
            }
        },
        "certManagement": {"enable": False},
        "clientConnection": {"qps": 50, "burst": 100},
    }


def _jobset_configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """JobSet's defaults (QPS/burst 500) with loopback ports, no leader election and no cert management."""
    return {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
    }


class PeerManagers:
    """Trainer's and JobSet's manager processes against `cluster`; see the module docstring."""

    def __init__(self, build: PeerBuild, cluster: LocalCluster) -> None:
        self.build = build
        self.cluster = cluster
        self.directory = cluster.workdir / "peer"
        self.processes: dict[str, ManagedProcess] = {}
        self.startup_seconds: float | None = None  # CRDs to webhooks answering

    def pids(self) -> dict[str, int]:
        """The managers' process ids, by name."""
        return {name: process.pid for name, process in self.processes.items() if process.pid}

    def start(self, timeout: float = 120) -> None:
        """Installs the CRDs, starts both managers, registers their webhooks, waits until they answer and
        applies RUNTIME. Raises ClusterError (or ProcessFailed with a manager's log tail) when one does not
        come up."""
        began = time.monotonic()
        if getattr(self.cluster, "network", None) is not None:
            raise ClusterError(
                "the peer's webhooks listen on the host's loopback: use a cluster without real nodes"
            )
        pki = getattr(self.cluster, "_pki", None)
        if pki is None:
            raise ClusterError("the cluster is not started")
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.build.crd_dir))
        established = ("wait", "--for=condition=Established", "--timeout=30s")
        for crd in sorted(self.build.crd_dir.glob("*.yaml")):
            name = yaml.safe_load(crd.read_text())["metadata"]["name"]
            # (right after the apply a CRD may have no conditions yet, and kubectl wait then fails at once)
            wait_for(
                lambda name=name: (
                    self.cluster.kubectl(*established, f"crd/{name}", check=False).returncode == 0
                ),
                60,
                f"CRD {name} Established",
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        # controller-runtime's webhook server reads tls.crt / tls.key from its certificate directory; Trainer's
        # is the default one under $TMPDIR.
        tmpdir = self.directory / "tmp"
        certs = tmpdir / "k8s-webhook-server" / "serving-certs"
        certs.mkdir(parents=True, exist_ok=True)
        serving = create_serving_pair(certs, "serving", pki.ca, "peer-webhooks", ["localhost"], ["127.0.0.1"])
        (certs / "tls.crt").write_bytes(serving.cert.read_bytes())
        (certs / "tls.key").write_bytes(serving.key.read_bytes())
        ports = {name: (free_loopback_port(), free_loopback_port()) for name in (TRAINER, JOBSET)}
        configurations = {
            TRAINER: _trainer_configuration(*ports[TRAINER]),
            JOBSET: _jobset_configuration(*ports[JOBSET], certs),
        }
        for name, configuration in configurations.items():
            config_file = self.directory / f"{name}.yaml"
            config_file.write_text(yaml.safe_dump(configuration))
            process = ManagedProcess(
                name,
                [
                    str(self.build.binary(name)),
                    f"--config={config_file}",
                    f"--kubeconfig={self._kubeconfig(name)}",
                    "--zap-log-level=info",
                ],
                self.cluster.workdir / "logs",
                env={**os.environ, "TMPDIR": str(tmpdir)},
            )
            self.cluster.processes.append(process)  # stopped with the cluster, even on a crash of the test
            process.start()
            self.processes[name] = process
        for name, process in self.processes.items():
            ready = f"http://127.0.0.1:{ports[name][1]}/readyz"
            process.wait_until(lambda url=ready: http_get_ok(url), timeout, "ready")  # type: ignore[misc]
        self._register_webhooks(
            {"trainer": ports[TRAINER][0], "jobset": ports[JOBSET][0]}, pki.ca.cert.read_bytes()
        )
        custom: Any = client.CustomObjectsApi(self.cluster.api_client())
        # The runtime's create passes Trainer's validating webhook: proof that it answers.
        wait_for(lambda: self._apply_runtime(custom), timeout, "Trainer's webhook to accept the runtime")
        self._wait_for_jobset_webhook(timeout)
        self.startup_seconds = time.monotonic() - began

    def _kubeconfig(self, name: str) -> Path:
        """A kubeconfig of ServiceAccount kube-system/<name>, bound to cluster-admin."""
        api = self.cluster.api_client()
        core: Any = client.CoreV1Api(api)
        rbac: Any = client.RbacAuthorizationV1Api(api)
        with contextlib.suppress(client.ApiException):
            core.create_namespaced_service_account(SERVICE_ACCOUNT_NAMESPACE, {"metadata": {"name": name}})
        with contextlib.suppress(client.ApiException):
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": f"kubetune-test-{name}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": name, "namespace": SERVICE_ACCOUNT_NAMESPACE}
                    ],
                }
            )
        return self.cluster.kubeconfig_for_service_account(
            SERVICE_ACCOUNT_NAMESPACE, name, expiration_seconds=24 * 3600
        )

    def _register_webhooks(self, ports: dict[str, int], ca_bundle: bytes) -> None:
        admission: Any = client.AdmissionregistrationV1Api(self.cluster.api_client())
        self._unregister_webhooks()
        for project, port in ports.items():
            for configuration in webhook_configurations(
                self.build.webhook_manifest(project),
                f"https://127.0.0.1:{port}",
                ca_bundle,
                f"{WEBHOOK_PREFIX}-{project}",
            ):
                if configuration["kind"] == "MutatingWebhookConfiguration":
                    admission.create_mutating_webhook_configuration(configuration)
                else:
                    admission.create_validating_webhook_configuration(configuration)

    def _unregister_webhooks(self) -> None:
        admission: Any = client.AdmissionregistrationV1Api(self.cluster.api_client())
        for listing, delete in (
            (admission.list_mutating_webhook_configuration, admission.delete_mutating_webhook_configuration),
            (
                admission.list_validating_webhook_configuration,
                admission.delete_validating_webhook_configuration,
            ),
        ):
            for item in listing().items:
                if item.metadata.name.startswith(WEBHOOK_PREFIX):
                    with contextlib.suppress(client.ApiException):
                        delete(item.metadata.name)

    def _apply_runtime(self, custom: Any) -> bool:
        for process in self.processes.values():
            process.check_running()
        try:
            custom.create_cluster_custom_object(*TRAINER_API, "clustertrainingruntimes", runtime())
        except client.ApiException as error:
            # 409: applied before; else the webhook is not reachable yet (500: failed calling webhook)
            return bool(error.status == 409)
        return True

    def _wait_for_jobset_webhook(self, timeout: float) -> None:
        """Until a JobSet create (dry run) comes back defaulted by JobSet's mutating webhook."""
        custom: Any = client.CustomObjectsApi(self.cluster.api_client())
        probe = {
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}", "namespace": "default"},
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "r",
                        "template": {
                            "spec": {
                                "template": {
                                    "spec": {"containers": [{"name": "c", "image": NODE_IMAGE}]},
                                }
                            }
                        },
                    }
                ]
            },
        }

        def answered() -> bool:
            for process in self.processes.values():
                process.check_running()
            try:
                created = custom.create_namespaced_custom_object(
                    "jobset.x-k8s.io", "v1alpha2", "default", "jobsets", probe, dry_run="All"
                )
            except client.ApiException:
                return False
            # The mutating webhook defaults the success policy: proof that the call reached JobSet.
            return "successPolicy" in created["spec"]

        wait_for(answered, timeout, "JobSet's webhooks to answer the API server")

    def log(self, name: str) -> str:
        """The tail of a manager's log."""
        path = self.cluster.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-8000:] if path.exists() else ""

    def stop(self) -> None:
        """Unregisters the webhooks (they would refuse every JobSet pod and Trainer object) and stops both."""
        with contextlib.suppress(Exception):
            self._unregister_webhooks()
        for process in self.processes.values():
            process.stop()
