"""A second scheduler with the Coscheduling plugin of kubernetes-sigs/scheduler-plugins, for the local test cluster.

    scheduler = CoschedulingScheduler(find_coscheduling(), cluster)
    scheduler.start()   # PodGroup CRD installed first by the caller; RBAC, config, process, /healthz
    ...
    scheduler.stop()

Built by hack/coscheduling/build.sh: kube-scheduler v1.36.3 (the control plane's) with the plugin of
scheduler-plugins v0.34.1-devel registered, `coscheduling-scheduler`. It runs as a process next to the API server,
beside the default kube-scheduler, as a ServiceAccount bound to the cluster's own roles for a scheduler
(system:kube-scheduler, system:volume-scheduler) plus read access to PodGroups, like scheduler-plugins'
"as a second scheduler" chart. Its one profile, SCHEDULER_NAME, enables Coscheduling at the extension points
scheduler-plugins' own manifests/coscheduling/scheduler-config.yaml does (multiPoint: queueSort, preFilter,
postFilter, permit, reserve; the default queue sort disabled). The plugin reads PodGroups through an informer,
so the PodGroup CRD must be Established before start().
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.kube.binaries import go_part_root
from tests.kube.harness import ClusterError, LocalCluster, _insecure
from tests.kube.processes import ManagedProcess, free_loopback_port, https_get_ok

COSCHEDULING_ENV = "KUBETUNE_COSCHEDULING_BIN"
BINARY = "coscheduling-scheduler"
SCHEDULER_NAME = "scheduler-plugins-scheduler"  # the name scheduler-plugins' second-scheduler chart gives it
SERVICE_ACCOUNT_NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "coscheduling-scheduler"
POD_GROUP_READER = "kubetune-test-coscheduling-podgroups"
# What the plugin waits in Permit for the rest of a gang when the PodGroup names no scheduleTimeoutSeconds
# (scheduler-plugins' manifests use 10 s; kubetune's PodGroups always name one).
PERMIT_WAITING_TIME_SECONDS = 10
# How long a rejected gang stays among the unschedulable pods before the scheduler retries it (see start()).
UNSCHEDULABLE_RETRY_SECONDS = 20


class CoschedulingNotFound(RuntimeError):
    """No build of the coscheduling scheduler: the message says how to make one."""


@dataclass(frozen=True)
class CoschedulingBuild:
    """What hack/coscheduling/build.sh leaves: bin/coscheduling-scheduler and versions.env."""

    root: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / BINARY

    @property
    def scheduler_plugins_version(self) -> str:
        """SCHEDULER_PLUGINS_VERSION of the build's versions.env."""
        for line in (self.root / "versions.env").read_text().splitlines():
            if line.startswith("SCHEDULER_PLUGINS_VERSION="):
                return line.split("=", 1)[1].strip()
        raise CoschedulingNotFound(f"{self.root / 'versions.env'} names no SCHEDULER_PLUGINS_VERSION")


def find_coscheduling() -> CoschedulingBuild:
    """The build of $KUBETUNE_COSCHEDULING_BIN (its bin directory, as build.sh prints it), else the cached one
    for the pinned versions. Raises CoschedulingNotFound naming the command that builds it."""
    root, source = go_part_root("coscheduling", COSCHEDULING_ENV, CoschedulingNotFound)
    build = CoschedulingBuild(root)
    if not build.binary.exists():
        raise CoschedulingNotFound(
            f"no coscheduling scheduler in {source}: {build.binary} missing; run `bash hack/coscheduling/build.sh` "
            f"(under a minute once hack/cluster/build.sh has filled Go's build cache) and export "
            f"{COSCHEDULING_ENV} to the directory it prints last"
        )
    return build


def scheduler_configuration(kubeconfig: Path) -> dict[str, Any]:
    """The KubeSchedulerConfiguration: one profile SCHEDULER_NAME with Coscheduling, as scheduler-plugins'
    manifests/coscheduling/scheduler-config.yaml, under the second scheduler's name."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {"leaderElect": False},
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "profiles": [
            {
                "schedulerName": SCHEDULER_NAME,
                "plugins": {
                    "multiPoint": {"enabled": [{"name": "Coscheduling"}]},
                    "queueSort": {"enabled": [{"name": "Coscheduling"}], "disabled": [{"name": "*"}]},
                },
                "pluginConfig": [
                    {
                        "name": "Coscheduling",
                        "args": {"permitWaitingTimeSeconds": PERMIT_WAITING_TIME_SECONDS},
                    }
                ],
            }
        ],
    }


class CoschedulingScheduler:
    """The coscheduling scheduler process against `cluster`'s API server; see the module docstring."""

    def __init__(self, build: CoschedulingBuild, cluster: LocalCluster) -> None:
        self.build = build
        self.cluster = cluster
        self.directory = cluster.workdir / "coscheduling"
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None

    def start(self, timeout: float = 60) -> None:
        """Grants the ServiceAccount its roles, starts the scheduler and waits for its /healthz.

        Raises ClusterError, or ProcessFailed with the scheduler's log tail when it exits or never gets healthy.
        """
        began = time.monotonic()
        if getattr(self.cluster, "network", None) is not None:
            raise ClusterError(
                "the coscheduling scheduler is set up for KWOK nodes: use a cluster without real nodes"
            )
        self._grant_roles()
        self.directory.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.cluster.kubeconfig_for_service_account(SERVICE_ACCOUNT_NAMESPACE, SERVICE_ACCOUNT)
        config_file = self.directory / "config.yaml"
        config_file.write_text(yaml.safe_dump(scheduler_configuration(kubeconfig)))
        port = free_loopback_port()
        self.process = ManagedProcess(
            BINARY,
            [
                str(self.build.binary),
                f"--config={config_file}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.directory / 'certs'}",
                "--profiling=false",
                # A gang the plugin rejected (at PostFilter, Permit or Unreserve) is requeued by the plugin's
                # events only: a Pod added, a PodGroup added or updated. In an installation, scheduler-plugins'
                # PodGroup controller (cmd/controller, not built here) updates the finished gang's PodGroup
                # status, which requeues the waiting gang at once; without it the scheduler's own periodic
                # retry of unschedulable pods does, after this long (default 5 min).
                f"--pod-max-in-unschedulable-pods-duration={UNSCHEDULABLE_RETRY_SECONDS}s",
                "--v=2",
            ],
            self.cluster.workdir / "logs",
        )
        self.cluster.processes.append(self.process)  # stopped with the cluster, even on a crash of the test
        self.process.start()
        context = _insecure()
        self.process.wait_until(
            lambda: https_get_ok(f"https://127.0.0.1:{port}/healthz", context), timeout, "healthy"
        )
        self.startup_seconds = time.monotonic() - began

    def _grant_roles(self) -> None:
        api = self.cluster.api_client()
        core: Any = client.CoreV1Api(api)
        rbac: Any = client.RbacAuthorizationV1Api(api)
        if not core.list_namespaced_service_account(
            SERVICE_ACCOUNT_NAMESPACE, field_selector=f"metadata.name={SERVICE_ACCOUNT}"
        ).items:
            core.create_namespaced_service_account(
                SERVICE_ACCOUNT_NAMESPACE, {"metadata": {"name": SERVICE_ACCOUNT}}
            )
        if not rbac.list_cluster_role(field_selector=f"metadata.name={POD_GROUP_READER}").items:
            rbac.create_cluster_role(
                {
                    "metadata": {"name": POD_GROUP_READER},
                    "rules": [
                        {
                            "apiGroups": ["scheduling.x-k8s.io"],
                            "resources": ["podgroups"],
                            "verbs": ["get", "list", "watch"],
                        }
                    ],
                }
            )
        for role in ("system:kube-scheduler", "system:volume-scheduler", POD_GROUP_READER):
            name = f"{SERVICE_ACCOUNT}-{role.replace(':', '-')}"
            if rbac.list_cluster_role_binding(field_selector=f"metadata.name={name}").items:
                continue
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "name": SERVICE_ACCOUNT,
                            "namespace": SERVICE_ACCOUNT_NAMESPACE,
                        }
                    ],
                }
            )

    def log(self) -> str:
        """The scheduler's log so far ('' before start)."""
        if self.process is None or not self.process.log_path.exists():
            return ""
        return self.process.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            if self.process in self.cluster.processes:
                self.cluster.processes.remove(self.process)
            self.process = None
